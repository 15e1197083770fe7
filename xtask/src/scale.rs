//! The bench's scale run: a node of many live processes, then a storm of process starts, at
//! the agent's default sizes. Prints every loss counter that moved (none should), the agent's
//! RSS and CPU, the kernel maps' memory and the scrape time.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::{
    bench::{cpu_seconds, status_kib, Agent, AGENT_ADDR},
    soak::{get_from, status_from},
};

#[derive(Args)]
pub struct ScaleArgs {
    /// Live processes of the scale run, each making 30 distinct syscalls (0: no scale run).
    #[arg(long, default_value_t = 10_000)]
    scale_processes: usize,
    /// Process starts a second in the scale run's storm, while those live.
    #[arg(long, default_value_t = 5_000)]
    scale_starts_per_second: u64,
    /// How long the storm lasts, in seconds.
    #[arg(long, default_value_t = 30)]
    scale_seconds: u64,
}

/// The test suite's workload program (`tests/src/bin/workload.rs`), built for the run.
fn workload_binary() -> Result<PathBuf> {
    crate::run(crate::cargo().args([
        "build",
        "--release",
        "--package",
        "taskscope-e2e",
        "--bin",
        "workload",
    ]))?;
    Ok(crate::root().join("target/release/workload"))
}

/// Starts the workload and waits for its `ready` line: (the child, what followed `ready`).
fn start_workload(binary: &Path, args: &[&str]) -> Result<(Child, String)> {
    let mut child = Command::new(binary)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("start the workload")?;
    let stdout = child.stdout.take().context("the workload's stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let Some(rest) = line.strip_prefix("ready") else {
        bail!("the workload {args:?} said {line:?}");
    };
    Ok((child, rest.trim().to_string()))
}

/// Median time of `count` scrapes of /metrics, in ms, and the body's size in KiB.
fn scrape_ms(count: usize) -> (f64, f64) {
    let mut times = Vec::new();
    let mut size = 0;
    for _ in 0..count {
        let (_, body, took) = get_from(AGENT_ADDR, "/metrics");
        times.push(took.as_secs_f64() * 1000.0);
        size = body.len();
    }
    (crate::bench::median(times), size as f64 / 1024.0)
}

/// What the agent says and costs at one moment.
fn report(title: &str, agent: &Agent, before: &BTreeMap<String, u64>) -> Result<()> {
    let (lost, status) = status_from(AGENT_ADDR).context("the agent's status")?;
    let kernel_bytes: u64 = status["kernel_maps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["bytes"].as_u64())
        .sum();
    let (scrape, size) = scrape_ms(5);
    println!(
        "  {title}: {} live processes in the model; agent RSS {:.1} MiB (peak {:.1}); kernel maps {:.1} MiB; /metrics {scrape:.1} ms ({size:.0} KiB)",
        status["live_processes"].as_u64().unwrap_or(0),
        status_kib(agent.pid(), "VmRSS") as f64 / 1024.0,
        status_kib(agent.pid(), "VmHWM") as f64 / 1024.0,
        kernel_bytes as f64 / (1024.0 * 1024.0)
    );
    let moved: Vec<String> = lost
        .iter()
        .filter_map(|(what, n)| {
            let added = n.saturating_sub(before.get(what).copied().unwrap_or(0));
            (added > 0).then(|| format!("{what} +{added}"))
        })
        .collect();
    if moved.is_empty() {
        println!("  {title}: no loss counter moved [every one must stay at 0]");
    } else {
        println!(
            "  {title}: LOST {} [every one must stay at 0]",
            moved.join(", ")
        );
    }
    Ok(())
}

/// The agent's CPU share (of one core) over `window`.
fn cpu_share_over(agent: &Agent, window: Duration) -> Result<f64> {
    let before = cpu_seconds(agent.pid())?;
    std::thread::sleep(window);
    Ok(100.0 * (cpu_seconds(agent.pid())? - before) / window.as_secs_f64())
}

pub fn run(args: &ScaleArgs, agent_binary: &Path) -> Result<()> {
    if args.scale_processes == 0 {
        return Ok(());
    }
    let workload = workload_binary()?;
    println!(
        "== scale: {} live processes of 30 distinct syscalls each, then {} process starts a second for {} s, default sizes",
        args.scale_processes, args.scale_starts_per_second, args.scale_seconds
    );
    let agent = Agent::start(agent_binary)?;
    let (before, _) = status_from(AGENT_ADDR).context("the agent's status")?;
    let forked = Instant::now();
    let processes = args.scale_processes.to_string();
    let (mut live, _) = start_workload(&workload, &["many-processes", &processes, "1"])?;
    println!(
        "  {} processes forked and made their syscalls in {:.1?}",
        args.scale_processes,
        forked.elapsed()
    );
    // Two polls and more, then the agent's cost while nothing happens.
    std::thread::sleep(Duration::from_secs(3));
    let idle = cpu_share_over(&agent, Duration::from_secs(10))?;
    println!("  agent CPU with them live and idle: {idle:.2}% of one core");
    report("live", &agent, &before)?;

    let cpu_before = cpu_seconds(agent.pid())?;
    let (rate, seconds) = (
        args.scale_starts_per_second.to_string(),
        args.scale_seconds.to_string(),
    );
    let (mut storm, made) = start_workload(&workload, &["churn", &rate, &seconds])?;
    let _ = storm.wait();
    let (started, took) = made.split_once(' ').unwrap_or(("0", "1"));
    let took: f64 = took.parse().unwrap_or(1.0);
    let cpu = 100.0 * (cpu_seconds(agent.pid())? - cpu_before) / took;
    println!(
        "  storm: {started} processes started in {took:.1} s ({:.0} a second); agent CPU {cpu:.1}% of one core",
        started.parse::<f64>().unwrap_or(0.0) / took
    );
    std::thread::sleep(Duration::from_secs(3));
    report("after the storm", &agent, &before)?;
    drop(live.stdin.take());
    let _ = live.wait();
    Ok(())
}
