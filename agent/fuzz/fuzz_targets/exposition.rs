#![no_main]
//! `taskscope::fuzzing::exposition` (see agent/src/fuzzing.rs).

libfuzzer_sys::fuzz_target!(|data: &[u8]| taskscope::fuzzing::exposition(data));
