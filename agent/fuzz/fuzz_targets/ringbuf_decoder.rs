#![no_main]
//! `taskscope::fuzzing::ringbuf_decoder` (see agent/src/fuzzing.rs).

libfuzzer_sys::fuzz_target!(|data: &[u8]| taskscope::fuzzing::ringbuf_decoder(data));
