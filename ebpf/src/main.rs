//! taskscope's kernel programs. One module per hook family; each module reads top to bottom:
//! its maps, one handler per hook, the helpers it needs. Every hook has two entry points, a
//! `tp_btf` one (cheapest) and a `raw_tp` fallback; both receive the tracepoint's `TP_PROTO`
//! arguments as an array of u64, so they share one handler.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]

#[cfg(target_arch = "bpf")]
mod probes;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable: the programs contain no panicking paths (the verifier would reject a loop).
    loop {}
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
