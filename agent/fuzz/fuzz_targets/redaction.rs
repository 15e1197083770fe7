#![no_main]
//! `taskscope::fuzzing::redaction` (see agent/src/fuzzing.rs).

libfuzzer_sys::fuzz_target!(|data: &[u8]| taskscope::fuzzing::redaction(data));
