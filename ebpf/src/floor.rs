//! The floor of `cargo xtask bench`: one empty program, loaded once per hook the agent uses,
//! to measure what any tool pays for being attached at all (the tracepoint's dispatch and the
//! program call), next to what the agent's programs add on top.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

/// Does nothing; the section's tracepoint is a placeholder, the loader names the real one.
#[cfg(target_arch = "bpf")]
#[aya_ebpf::macros::btf_tracepoint(function = "sched_switch")]
pub fn ts_floor(_ctx: aya_ebpf::programs::BtfTracePointContext) -> i32 {
    0
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable: the program has no panicking path.
    loop {}
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
