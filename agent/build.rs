//! Builds the kernel programs (`ebpf/`, binary `taskscope-probes`) for the BPF target with the
//! nightly toolchain and bpf-linker, and puts the object in OUT_DIR for `include_bytes!`; and
//! compresses the dashboard's assets (`ui/src`, and uPlot from `ui/node_modules`) into OUT_DIR
//! for the agent to serve. `cargo xtask setup` installs what this needs (npm ci in agent/ui).

use std::{fmt::Write as _, io::Write as _, path::Path};

/// The dashboard's files: (served name, source under agent/ui, content type).
const UI_ASSETS: &[(&str, &str, &str)] = &[
    ("index.html", "src/index.html", "text/html; charset=utf-8"),
    ("login.html", "src/login.html", "text/html; charset=utf-8"),
    ("login.js", "src/login.js", "text/javascript; charset=utf-8"),
    ("app.js", "src/app.js", "text/javascript; charset=utf-8"),
    ("logic.js", "src/logic.js", "text/javascript; charset=utf-8"),
    ("style.css", "src/style.css", "text/css; charset=utf-8"),
    (
        "uPlot.iife.min.js",
        "node_modules/uplot/dist/uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
    ),
    (
        "uPlot.min.css",
        "node_modules/uplot/dist/uPlot.min.css",
        "text/css; charset=utf-8",
    ),
];

fn main() -> anyhow::Result<()> {
    ui_assets()?;
    let package = aya_build::Package {
        name: "taskscope-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::default())
}

/// Gzips each asset into OUT_DIR and writes `ui_assets.rs`, a slice of
/// `(name, content type, gzipped bytes)`.
fn ui_assets() -> anyhow::Result<()> {
    let ui = Path::new(env!("CARGO_MANIFEST_DIR")).join("ui");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let mut table = String::from("&[\n");
    for (name, source, content_type) in UI_ASSETS {
        let path = ui.join(source);
        println!("cargo:rerun-if-changed={}", path.display());
        let bytes = std::fs::read(&path).map_err(|err| {
            anyhow::anyhow!(
                "cannot read the dashboard asset {}: {err}; run `cargo xtask setup` (it runs \
                 `npm ci` in agent/ui for the dashboard's packages)",
                path.display()
            )
        })?;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        encoder.write_all(&bytes)?;
        let gzipped = out.join(format!("{name}.gz"));
        std::fs::write(&gzipped, encoder.finish()?)?;
        writeln!(
            table,
            "    ({name:?}, {content_type:?}, include_bytes!({:?}).as_slice()),",
            gzipped.display().to_string()
        )?;
    }
    table.push(']');
    std::fs::write(out.join("ui_assets.rs"), table)?;
    Ok(())
}
