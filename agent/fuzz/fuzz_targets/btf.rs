#![no_main]
//! `taskscope::fuzzing::btf` (see agent/src/fuzzing.rs).

libfuzzer_sys::fuzz_target!(|data: &[u8]| taskscope::fuzzing::btf(data));
