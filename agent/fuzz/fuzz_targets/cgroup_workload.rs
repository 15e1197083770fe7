#![no_main]
//! `taskscope::fuzzing::cgroup_workload` (see agent/src/fuzzing.rs).

libfuzzer_sys::fuzz_target!(|data: &[u8]| taskscope::fuzzing::cgroup_workload(data));
