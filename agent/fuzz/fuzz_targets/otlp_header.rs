#![no_main]
//! `taskscope::fuzzing::otlp_header` (see agent/src/fuzzing.rs).

libfuzzer_sys::fuzz_target!(|data: &[u8]| taskscope::fuzzing::otlp_header(data));
