#![no_main]
//! `taskscope::fuzzing::proc_files` (see agent/src/fuzzing.rs).

libfuzzer_sys::fuzz_target!(|data: &[u8]| taskscope::fuzzing::proc_files(data));
