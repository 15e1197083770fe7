#![no_main]
//! `taskscope::fuzzing::config` (see agent/src/fuzzing.rs).

libfuzzer_sys::fuzz_target!(|data: &[u8]| taskscope::fuzzing::config(data));
