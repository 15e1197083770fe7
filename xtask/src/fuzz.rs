//! `cargo xtask fuzz --seconds N`: every cargo-fuzz (libFuzzer) target of `agent/fuzz` for N
//! seconds each, one after the other, with the kept inputs of `agent/fuzz/regressions/<target>`
//! as seeds. Prints, per target, the executions, their rate, the coverage libFuzzer reached and
//! what it found; fails if any target crashed (its input is then in
//! `agent/fuzz/artifacts/<target>/`: fix the bug, and keep the input in `regressions/`).

use std::{path::Path, process::Command};

use anyhow::{bail, Context, Result};

/// The cargo-fuzz release installed into the tools directory.
const CARGO_FUZZ_VERSION: &str = "0.13.1";

/// The targets, as named in agent/fuzz/Cargo.toml (and agent/src/fuzzing.rs).
const TARGETS: &[&str] = &[
    "ringbuf_decoder",
    "proc_files",
    "cgroup_workload",
    "redaction",
    "btf",
    "config",
    "otlp_header",
    "exposition",
];

/// What `cargo xtask fuzz` takes.
#[derive(clap::Args)]
pub struct FuzzArgs {
    /// Seconds of fuzzing per target.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Only these targets (default: all).
    #[arg(long = "target")]
    pub targets: Vec<String>,
    /// Stop each target after this many inputs, with a fixed seed: the same run on every
    /// machine (what `cargo xtask test` does, so that CI replays what was checked).
    #[arg(long)]
    pub runs: Option<u64>,
}

/// What one target's run printed at its end.
#[derive(Default)]
struct Figures {
    execs: u64,
    execs_per_second: u64,
    coverage: u64,
    features: u64,
    corpus: u64,
    crashed: bool,
}

/// Installs cargo-fuzz (crates.io) into the tools directory when it is not there.
pub fn install(tools: &Path) -> Result<()> {
    let cargo_fuzz = tools.join("bin/cargo-fuzz");
    if cargo_fuzz.is_file() {
        return Ok(());
    }
    super::run(
        Command::new("cargo")
            .args(["install", "cargo-fuzz", "--locked", "--version"])
            .arg(CARGO_FUZZ_VERSION)
            .arg("--root")
            .arg(tools),
    )
}

pub fn run(args: &FuzzArgs) -> Result<()> {
    install(&super::tools_dir())?;
    let agent = super::root().join("agent");
    let targets: Vec<&str> = if args.targets.is_empty() {
        TARGETS.to_vec()
    } else {
        for target in &args.targets {
            if !TARGETS.contains(&target.as_str()) {
                bail!(
                    "no fuzz target {target}: the targets are {}",
                    TARGETS.join(", ")
                );
            }
        }
        args.targets.iter().map(String::as_str).collect()
    };
    super::run(cargo_fuzz(&agent).args(["build", "-O"]))?;
    let mut table = Vec::new();
    for target in targets {
        let corpus = super::root().join("target/fuzz-corpus").join(target);
        std::fs::create_dir_all(&corpus)?;
        let mut command = cargo_fuzz(&agent);
        command.args(["run", "-O", target]).arg(&corpus);
        // libFuzzer refuses a seed directory that does not exist.
        let kept = agent.join("fuzz/regressions").join(target);
        if kept.is_dir() {
            command.arg(kept);
        }
        command
            .arg("--")
            .arg(format!("-max_total_time={}", args.seconds))
            .args(
                args.runs
                    .map(|runs| [format!("-runs={runs}"), "-seed=1".to_string()])
                    .into_iter()
                    .flatten(),
            )
            .args(["-rss_limit_mb=2048", "-timeout=10", "-print_final_stats=1"]);
        if target == "config" {
            command.arg(format!(
                "-dict={}",
                agent.join("fuzz/config.dict").display()
            ));
        }
        println!("xtask: fuzzing {target} for {} s", args.seconds);
        let output = command.output().context("cargo fuzz")?;
        let log = String::from_utf8_lossy(&output.stderr);
        let mut figures = figures(&log);
        figures.crashed = !output.status.success();
        if figures.crashed {
            eprintln!("{log}");
        }
        table.push((target, figures));
    }
    println!(
        "\n| target | seconds | executions | per second | coverage (edges) | features | corpus | result |\n|---|---|---|---|---|---|---|---|"
    );
    for (target, f) in &table {
        println!(
            "| {target} | {} | {} | {} | {} | {} | {} | {} |",
            args.seconds,
            f.execs,
            f.execs_per_second,
            f.coverage,
            f.features,
            f.corpus,
            if f.crashed { "CRASHED" } else { "no crash" }
        );
    }
    let crashed: Vec<&str> = table
        .iter()
        .filter(|(_, f)| f.crashed)
        .map(|(t, _)| *t)
        .collect();
    if !crashed.is_empty() {
        bail!(
            "fuzz targets crashed: {} (inputs in agent/fuzz/artifacts/)",
            crashed.join(", ")
        );
    }
    Ok(())
}

/// `cargo +nightly fuzz` in `agent/`, with the tools on PATH.
fn cargo_fuzz(agent: &Path) -> Command {
    let mut command = Command::new("cargo");
    command
        .args(["+nightly", "fuzz"])
        .current_dir(agent)
        .env("PATH", super::tool_path());
    command
}

/// The figures of libFuzzer's last status line and final statistics.
fn figures(log: &str) -> Figures {
    let mut figures = Figures::default();
    let field = |line: &str, key: &str| -> Option<u64> {
        let mut words = line.split_whitespace();
        words.find(|w| *w == key)?;
        words.next()?.trim_end_matches(['k', 'M', 'b']).parse().ok()
    };
    for line in log.lines() {
        if line.starts_with('#') && line.contains("cov:") {
            figures.coverage = field(line, "cov:").unwrap_or(figures.coverage);
            figures.features = field(line, "ft:").unwrap_or(figures.features);
            figures.corpus = field(line, "corp:")
                .or_else(|| {
                    let after = line.split("corp: ").nth(1)?;
                    after.split('/').next()?.parse().ok()
                })
                .unwrap_or(figures.corpus);
        }
        if let Some(value) = line.strip_prefix("stat::number_of_executed_units: ") {
            figures.execs = value.trim().parse().unwrap_or(0);
        }
        if let Some(value) = line.strip_prefix("stat::average_exec_per_sec: ") {
            figures.execs_per_second = value.trim().parse().unwrap_or(0);
        }
    }
    figures
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libfuzzer_final_lines_are_read() {
        let log = "#2\tINITED cov: 120 ft: 130 corp: 5/200b exec/s: 0 rss: 40Mb\n\
                   #91234\tDONE   cov: 456 ft: 789 corp: 61/3210b lim: 4096 exec/s: 3041 rss: 301Mb\n\
                   Done 91234 runs in 31 second(s)\n\
                   stat::number_of_executed_units: 91234\n\
                   stat::average_exec_per_sec:     2943\n";
        let f = figures(log);
        assert_eq!((f.execs, f.execs_per_second), (91234, 2943));
        assert_eq!((f.coverage, f.features, f.corpus), (456, 789, 61));
    }
}
