//! Builds the kernel programs (`ebpf/`, binary `taskscope-probes`) for the BPF target with the
//! nightly toolchain and bpf-linker, and puts the object in OUT_DIR for `include_bytes!`.
//! `cargo xtask setup` installs what this needs.

fn main() -> anyhow::Result<()> {
    let package = aya_build::Package {
        name: "taskscope-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::default())
}
