//! `cargo xtask bench`: what the agent costs, in figures, next to libbpf-tools.
//!
//! First a cost table, with the kernel's BPF run statistics off: hackbench and a getppid loop
//! timed alone, under empty programs on the agent's hooks (the floor), under the agent (with
//! and without its syscall hooks), under runqlat, and under runqlat + `syscount -L`; rounds
//! rotate the order, and the medians and ratios are printed.
//!
//! Then, with the statistics on (`kernel.bpf_stats_enabled=1`), a context-switch-heavy
//! workload (hackbench) and a syscall-heavy one (dd with 1-byte blocks) under the agent, the
//! empty programs and the reference tools: per program runs and ns per run, the agent's CPU
//! time and peak RSS, and the agent's RSS with many live tasks. Figures, not pass/fail: the
//! targets are printed beside them.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Barrier},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::Value;

#[derive(Args)]
pub struct BenchArgs {
    /// hackbench loops (`hackbench -g 10 -l N`).
    #[arg(long, default_value_t = 500)]
    hackbench_loops: u32,
    /// Bytes copied by `dd bs=1` (two syscalls per byte).
    #[arg(long, default_value_t = 1_000_000)]
    dd_bytes: u64,
    /// Live threads for the memory figure.
    #[arg(long, default_value_t = 10_000)]
    live_tasks: usize,
    /// Rounds of (taskscope, runqlat, syscount); the summary gives medians.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// hackbench loops of the cost table (`hackbench -g 4 -l N`).
    #[arg(long, default_value_t = 600)]
    table_hackbench_loops: u32,
    /// getppid calls of the cost table.
    #[arg(long, default_value_t = 3_000_000)]
    getppid_calls: u32,
    /// Rounds of the cost table (every setup once per round, in a rotating order).
    #[arg(long, default_value_t = 5)]
    table_rounds: usize,
    #[command(flatten)]
    scale: crate::scale::ScaleArgs,
}

/// Run statistics of one BPF program.
#[derive(Debug, Clone, Copy, Default)]
struct ProgStats {
    run_cnt: u64,
    run_time_ns: u64,
}

/// Every loaded BPF program: id -> (name, stats). Debian's bpftool cannot tell which process
/// owns a program, so a tool's programs are the ids that appear when it starts.
fn all_programs() -> Result<BTreeMap<u64, (String, ProgStats)>> {
    let out = Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()
        .context("bpftool")?;
    let progs: Value = serde_json::from_slice(&out.stdout).context("bpftool JSON")?;
    Ok(progs
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let stats = ProgStats {
                run_cnt: p["run_cnt"].as_u64().unwrap_or(0),
                run_time_ns: p["run_time_ns"].as_u64().unwrap_or(0),
            };
            Some((p["id"].as_u64()?, (p["name"].as_str()?.to_string(), stats)))
        })
        .collect())
}

/// Stats of the programs `ids`, summed by name.
fn prog_stats(ids: &BTreeSet<u64>) -> Result<BTreeMap<String, ProgStats>> {
    let mut stats: BTreeMap<String, ProgStats> = BTreeMap::new();
    for (id, (name, s)) in all_programs()? {
        if ids.contains(&id) {
            let entry = stats.entry(name).or_default();
            entry.run_cnt += s.run_cnt;
            entry.run_time_ns += s.run_time_ns;
        }
    }
    Ok(stats)
}

/// Ids of programs loaded since `before`.
fn new_programs(before: &BTreeSet<u64>) -> Result<BTreeSet<u64>> {
    Ok(all_programs()?
        .into_keys()
        .filter(|id| !before.contains(id))
        .collect())
}

fn program_ids() -> Result<BTreeSet<u64>> {
    Ok(all_programs()?.into_keys().collect())
}

fn delta(
    before: &BTreeMap<String, ProgStats>,
    after: &BTreeMap<String, ProgStats>,
) -> BTreeMap<String, ProgStats> {
    after
        .iter()
        .map(|(name, a)| {
            let b = before.get(name).copied().unwrap_or_default();
            (
                name.clone(),
                ProgStats {
                    run_cnt: a.run_cnt.saturating_sub(b.run_cnt),
                    run_time_ns: a.run_time_ns.saturating_sub(b.run_time_ns),
                },
            )
        })
        .collect()
}

fn ns_per_run(s: &ProgStats) -> f64 {
    if s.run_cnt == 0 {
        0.0
    } else {
        s.run_time_ns as f64 / s.run_cnt as f64
    }
}

fn print_programs(title: &str, stats: &BTreeMap<String, ProgStats>) {
    println!("  {title}");
    for (name, s) in stats.iter().filter(|(_, s)| s.run_cnt > 0) {
        println!(
            "    {name:<24} {:>12} runs  {:>8.1} ns/run",
            s.run_cnt,
            ns_per_run(s)
        );
    }
}

/// (utime + stime) of a process, in seconds.
pub(crate) fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    Ok(ticks as f64 / 100.0)
}

pub(crate) fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(&format!("{field}:")))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

fn http_ok(addr: &str, path: &str) -> bool {
    let Ok(mut stream) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
    if write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .is_err()
    {
        return false;
    }
    let mut body = String::new();
    let _ = stream.read_to_string(&mut body);
    body.starts_with("HTTP/1.1 200")
}

/// Where the bench's agent listens.
pub(crate) const AGENT_ADDR: &str = "127.0.0.1:9799";

/// The agent under measurement, stopped on drop.
pub(crate) struct Agent {
    child: Child,
    programs: BTreeSet<u64>,
}

impl Agent {
    pub(crate) fn start(binary: &Path) -> Result<Self> {
        Self::start_with(binary, &[])
    }

    fn start_with(binary: &Path, extra: &[&str]) -> Result<Self> {
        let addr = AGENT_ADDR;
        let before = program_ids()?;
        let child = Command::new(binary)
            .args([
                "run",
                "--listen",
                addr,
                "--log-format",
                "text",
                "--log-level",
                "error",
            ])
            .args(extra)
            .stdout(Stdio::null())
            .spawn()
            .context("start the agent")?;
        let start = Instant::now();
        while !http_ok(addr, "/api/v1/status") {
            if start.elapsed() > Duration::from_secs(60) {
                bail!("the agent did not answer on {addr}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let programs = new_programs(&before)?;
        Ok(Agent { child, programs })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe extern "C" {
            fn kill(pid: i32, sig: i32) -> i32;
        }
        unsafe { kill(self.child.id() as i32, 15) };
        let _ = self.child.wait();
    }
}

/// Starts a libbpf-tools program and waits until its BPF programs are loaded.
fn start_tool(args: &[&str]) -> Result<(Child, BTreeSet<u64>)> {
    let before = program_ids()?;
    let child = Command::new(args[0])
        .args(&args[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("start {}", args[0]))?;
    let start = Instant::now();
    loop {
        // Loaded and attached a moment later: wait for the set to stop growing.
        let first = new_programs(&before)?;
        std::thread::sleep(Duration::from_millis(500));
        let programs = new_programs(&before)?;
        if !programs.is_empty() && programs == first {
            return Ok((child, programs));
        }
        if start.elapsed() > Duration::from_secs(30) {
            bail!("{} loaded no programs", args[0]);
        }
    }
}

/// Starts `syscount -L` (counts and times every syscall, as the agent does).
/// syscount, timing syscalls (`-L`, both hooks) or counting them (`sys_exit` alone).
fn start_syscount(latency: bool) -> Result<(Child, BTreeSet<u64>)> {
    // syscount attaches classic tracepoints, which need tracefs.
    let mounted_tracefs = mount_tracefs()?;
    let started = if latency {
        start_tool(&["syscount", "-L", "-i", "3600"])
    } else {
        start_tool(&["syscount", "-i", "3600"])
    };
    if mounted_tracefs {
        // Mounted only while syscount attaches: attached links survive the unmount.
        let _ = Command::new("umount").arg(TRACEFS).status();
    }
    started
}

fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

const TRACEFS: &str = "/sys/kernel/tracing";

/// Mounts tracefs when it is not; returns whether it did.
fn mount_tracefs() -> Result<bool> {
    if Path::new(TRACEFS).join("events").exists() {
        return Ok(false);
    }
    crate::run(Command::new("mount").args(["-t", "tracefs", "nodev", TRACEFS]))?;
    Ok(true)
}

fn hackbench(loops: u32) -> Result<Duration> {
    hackbench_groups(10, loops)
}

fn hackbench_groups(groups: u32, loops: u32) -> Result<Duration> {
    let start = Instant::now();
    crate::run(
        Command::new("hackbench")
            .args(["-g", &groups.to_string(), "-l", &loops.to_string()])
            .stdout(Stdio::null()),
    )?;
    Ok(start.elapsed())
}

fn dd(bytes: u64) -> Result<Duration> {
    let start = Instant::now();
    crate::run(
        Command::new("dd")
            .args(["if=/dev/zero", "of=/dev/null", "bs=1"])
            .arg(format!("count={bytes}"))
            .stderr(Stdio::null()),
    )?;
    Ok(start.elapsed())
}

/// Measures one workload under a tool: its programs' stats and its CPU time.
fn measure(
    owner: u32,
    programs: &BTreeSet<u64>,
    workload: impl FnOnce() -> Result<Duration>,
) -> Result<(BTreeMap<String, ProgStats>, Duration, f64)> {
    let before = prog_stats(programs)?;
    let cpu_before = cpu_seconds(owner)?;
    let wall = workload()?;
    let cpu = cpu_seconds(owner)? - cpu_before;
    Ok((delta(&before, &prog_stats(programs)?), wall, cpu))
}

fn sum(stats: &BTreeMap<String, ProgStats>, names: &[&str]) -> ProgStats {
    names
        .iter()
        .filter_map(|n| stats.get(*n))
        .fold(ProgStats::default(), |acc, s| ProgStats {
            run_cnt: acc.run_cnt + s.run_cnt,
            run_time_ns: acc.run_time_ns + s.run_time_ns,
        })
}

pub fn run(args: &BenchArgs, agent_binary: &Path) -> Result<()> {
    // The cost table first, with the kernel's run statistics off: they add two clock reads to
    // every program run, which would count against every tool.
    cost_table(args, agent_binary)?;
    const STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";
    let previous = std::fs::read_to_string(STATS).unwrap_or_else(|_| "0".into());
    std::fs::write(STATS, "1").context("enable kernel.bpf_stats_enabled")?;
    let result = run_inner(args, agent_binary);
    let _ = std::fs::write(STATS, previous.trim());
    result?;
    crate::scale::run(&args.scale, agent_binary)
}

/// What is attached while the cost table's workloads run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Setup {
    Alone,
    /// Empty programs on the agent's hooks.
    Floor,
    Taskscope,
    /// The agent with its syscall hooks detached: its scheduling and lifecycle hooks alone.
    TaskscopeNoSyscalls,
    Runqlat,
    /// runqlat and `syscount -L` together: what the agent does, done by the reference tools.
    Reference,
    /// The agent with `sys_enter` detached: syscalls counted at `sys_exit` alone.
    TaskscopeUntimed,
    /// runqlat and `syscount` (counts, `sys_exit` alone): the reference for the above.
    ReferenceCounts,
}

const SETUPS: [Setup; 8] = [
    Setup::Alone,
    Setup::Floor,
    Setup::Taskscope,
    Setup::TaskscopeNoSyscalls,
    Setup::Runqlat,
    Setup::Reference,
    Setup::TaskscopeUntimed,
    Setup::ReferenceCounts,
];

impl Setup {
    fn title(self) -> &'static str {
        match self {
            Setup::Alone => "alone",
            Setup::Floor => "empty programs",
            Setup::Taskscope => "taskscope",
            Setup::TaskscopeNoSyscalls => "taskscope, no syscall hooks",
            Setup::Runqlat => "runqlat",
            Setup::Reference => "runqlat + syscount -L",
            Setup::TaskscopeUntimed => "taskscope, syscalls untimed",
            Setup::ReferenceCounts => "runqlat + syscount",
        }
    }
}

/// The two workloads' figures under one setup: hackbench seconds, ns per getppid.
#[derive(Debug, Clone, Copy)]
struct Timings {
    hackbench_s: f64,
    getppid_ns: f64,
}

/// `calls` getppid calls (glibc does not cache it): ns per call.
fn getppid_ns(calls: u32) -> f64 {
    let start = Instant::now();
    let mut sum = 0u64;
    for _ in 0..calls {
        sum = sum.wrapping_add(u64::from(std::os::unix::process::parent_id()));
    }
    std::hint::black_box(sum);
    start.elapsed().as_nanos() as f64 / f64::from(calls.max(1))
}

/// Attaches `setup`, runs both workloads, detaches.
fn timings_under(setup: Setup, args: &BenchArgs, agent_binary: &Path) -> Result<Timings> {
    let mut tools = Vec::new();
    let (mut agent, mut floor) = (None, None);
    match setup {
        Setup::Alone => {}
        Setup::Floor => floor = Some(crate::floor::Floor::attach()?),
        Setup::Taskscope => agent = Some(Agent::start(agent_binary)?),
        Setup::TaskscopeNoSyscalls => {
            agent = Some(Agent::start_with(
                agent_binary,
                &["--disable-probes", "syscalls"],
            )?)
        }
        Setup::Runqlat => tools.push(start_tool(&["runqlat", "3600", "1"])?.0),
        Setup::Reference | Setup::ReferenceCounts => {
            tools.push(start_tool(&["runqlat", "3600", "1"])?.0);
            tools.push(start_syscount(setup == Setup::Reference)?.0);
        }
        Setup::TaskscopeUntimed => {
            agent = Some(Agent::start_with(
                agent_binary,
                &["--disable-probes", "syscall_latency"],
            )?)
        }
    }
    // Let start-up work (the agent's first reads) settle.
    std::thread::sleep(Duration::from_secs(1));
    let hackbench_s = hackbench_groups(4, args.table_hackbench_loops)?.as_secs_f64();
    let getppid_ns = getppid_ns(args.getppid_calls);
    tools.into_iter().for_each(stop);
    drop((agent, floor));
    Ok(Timings {
        hackbench_s,
        getppid_ns,
    })
}

/// Each setup once per round, the order rotating, then the medians side by side.
fn cost_table(args: &BenchArgs, agent_binary: &Path) -> Result<()> {
    let floor = crate::floor::Floor::attach()?;
    println!(
        "== cost table: hackbench -g 4 -l {} and {} getppid calls; {} rounds; the floor attaches to {}",
        args.table_hackbench_loops,
        args.getppid_calls,
        args.table_rounds,
        floor.programs.keys().copied().collect::<Vec<_>>().join(", ")
    );
    drop(floor);
    let mut figures: BTreeMap<usize, Vec<Timings>> = BTreeMap::new();
    for round in 0..args.table_rounds {
        for i in 0..SETUPS.len() {
            let index = (i + round) % SETUPS.len();
            let t = timings_under(SETUPS[index], args, agent_binary)?;
            println!(
                "  round {}: {:<28} hackbench {:.3} s, getppid {:.1} ns",
                round + 1,
                SETUPS[index].title(),
                t.hackbench_s,
                t.getppid_ns
            );
            figures.entry(index).or_default().push(t);
        }
    }
    let med = |setup: Setup, f: fn(&Timings) -> f64| {
        let index = SETUPS.iter().position(|s| *s == setup).unwrap_or(0);
        median(figures.get(&index).into_iter().flatten().map(f).collect())
    };
    let hackbench = |s| med(s, |t| t.hackbench_s);
    let getppid = |s| med(s, |t| t.getppid_ns);
    println!();
    println!("== cost table: medians");
    println!(
        "{:<28} {:>14} {:>18}",
        "", "hackbench (s)", "getppid (ns/call)"
    );
    let (hb_alone, gp_alone) = (hackbench(Setup::Alone), getppid(Setup::Alone));
    for setup in SETUPS {
        let (hb, gp) = (hackbench(setup), getppid(setup));
        println!(
            "{:<28} {:>6.2} ({:>+4.0}%) {:>8.1} ({:>+6.1})",
            setup.title(),
            hb,
            100.0 * (hb / hb_alone - 1.0),
            gp,
            gp - gp_alone
        );
    }
    let added_hb = |s| hackbench(s) - hb_alone;
    let added_gp = |s| getppid(s) - gp_alone;
    println!(
        "syscall: taskscope adds {:.1} ns [<= 120], {:.2} of what runqlat + syscount -L add [<= 0.25]; the empty programs add {:.1} ns",
        added_gp(Setup::Taskscope),
        added_gp(Setup::Taskscope) / added_gp(Setup::Reference),
        added_gp(Setup::Floor)
    );
    println!(
        "syscall, untimed (--disable-probes syscall_latency): taskscope adds {:.1} ns [<= 120], {:.2} of what runqlat + syscount add",
        added_gp(Setup::TaskscopeUntimed),
        added_gp(Setup::TaskscopeUntimed) / added_gp(Setup::ReferenceCounts),
    );
    println!(
        "hackbench: taskscope's scheduling hooks add {:.2} of what runqlat adds [<= 0.25]; all of taskscope {:.2} of runqlat + syscount -L; the empty programs add {:+.1}%",
        added_hb(Setup::TaskscopeNoSyscalls) / added_hb(Setup::Runqlat),
        added_hb(Setup::Taskscope) / added_hb(Setup::Reference),
        100.0 * added_hb(Setup::Floor) / hb_alone
    );
    println!();
    Ok(())
}

/// Figures of one round: taskscope and the reference tools on the same workloads.
struct Round {
    agent_switch: f64,
    /// The empty program's ns per run on sched_switch, and per syscall (enter + exit).
    floor_switch: f64,
    floor_syscall: f64,
    runqlat_switch: f64,
    agent_syscall: f64,
    syscount_syscall: f64,
    agent_cpu_share: f64,
    agent_hwm_kib: u64,
}

pub(crate) fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// ns per syscall for an enter and an exit program.
fn per_syscall(enter: &ProgStats, exit: &ProgStats) -> f64 {
    if enter.run_cnt == 0 {
        0.0
    } else {
        (enter.run_time_ns + exit.run_time_ns) as f64 / enter.run_cnt as f64
    }
}

fn round(args: &BenchArgs, agent_binary: &Path, verbose: bool) -> Result<Round> {
    if verbose {
        println!("== taskscope agent");
    }
    let agent = Agent::start(agent_binary)?;
    let (hb, hb_wall, hb_cpu) = measure(agent.pid(), &agent.programs, || {
        hackbench(args.hackbench_loops)
    })?;
    let (sc, sc_wall, _) = measure(agent.pid(), &agent.programs, || dd(args.dd_bytes))?;
    if verbose {
        let title = format!(
            "hackbench -g 10 -l {} ({hb_wall:.2?})",
            args.hackbench_loops
        );
        print_programs(&title, &hb);
        print_programs(
            &format!("dd bs=1 count={} ({sc_wall:.2?})", args.dd_bytes),
            &sc,
        );
    }
    let agent_switch = ns_per_run(&sum(&hb, &["ts_switch_btf", "ts_switch_raw"]));
    let agent_syscall = per_syscall(
        &sum(&sc, &["ts_sys_enter_btf", "ts_sys_enter_raw"]),
        &sum(&sc, &["ts_sys_exit_btf", "ts_sys_exit_raw"]),
    );
    let agent_hwm_kib = status_kib(agent.pid(), "VmHWM");
    drop(agent);

    let (floor_switch, floor_syscall) = floor_costs(args)?;
    if verbose {
        println!("== empty programs (same workloads): switch {floor_switch:.1} ns/run, syscall {floor_syscall:.1} ns");
    }

    let (runqlat, programs) = start_tool(&["runqlat", "3600", "1"])?;
    let (rq, rq_wall, _) = measure(runqlat.id(), &programs, || hackbench(args.hackbench_loops))?;
    stop(runqlat);
    if verbose {
        println!("== libbpf-tools runqlat (same hackbench)");
        print_programs(&format!("hackbench ({rq_wall:.2?})"), &rq);
    }

    let (syscount, programs) = start_syscount(true)?;
    let (sy, sy_wall, _) = measure(syscount.id(), &programs, || dd(args.dd_bytes))?;
    stop(syscount);
    if verbose {
        println!("== libbpf-tools syscount -L (same dd; it counts and times syscalls too)");
        print_programs(&format!("dd ({sy_wall:.2?})"), &sy);
    }
    Ok(Round {
        agent_switch,
        floor_switch,
        floor_syscall,
        runqlat_switch: ns_per_run(&sum(&rq, &["handle_sched_switch", "sched_switch"])),
        agent_syscall,
        syscount_syscall: per_syscall(&sum(&sy, &["sys_enter"]), &sum(&sy, &["sys_exit"])),
        agent_cpu_share: 100.0 * hb_cpu / hb_wall.as_secs_f64(),
        agent_hwm_kib,
    })
}

/// The empty programs' ns per run on sched_switch during hackbench, and per syscall (enter +
/// exit) during dd.
fn floor_costs(args: &BenchArgs) -> Result<(f64, f64)> {
    let floor = crate::floor::Floor::attach()?;
    let read = || -> Result<BTreeMap<String, ProgStats>> {
        let all = all_programs()?;
        Ok(floor
            .programs
            .iter()
            .filter_map(|(tracepoint, id)| Some((tracepoint.to_string(), all.get(id)?.1)))
            .collect())
    };
    let before = read()?;
    hackbench(args.hackbench_loops)?;
    let switch = delta(&before, &read()?);
    let before = read()?;
    dd(args.dd_bytes)?;
    let syscall = delta(&before, &read()?);
    Ok((
        ns_per_run(&sum(&switch, &["sched_switch"])),
        per_syscall(
            &sum(&syscall, &["sys_enter"]),
            &sum(&syscall, &["sys_exit"]),
        ),
    ))
}

fn run_inner(args: &BenchArgs, agent_binary: &Path) -> Result<()> {
    // This machine is shared and noisy: rounds alternate taskscope and the reference tools,
    // and the summary compares medians.
    let mut rounds = Vec::new();
    for i in 0..args.rounds {
        let r = round(args, agent_binary, i == 0)?;
        println!(
            "round {}: switch taskscope {:.1} / runqlat {:.1} ns/run; syscall taskscope {:.1} / syscount {:.1} ns; agent CPU {:.2}% of a core",
            i + 1,
            r.agent_switch,
            r.runqlat_switch,
            r.agent_syscall,
            r.syscount_syscall,
            r.agent_cpu_share
        );
        rounds.push(r);
    }

    custom_probe_cost(agent_binary)?;
    println!("== agent memory with {} live tasks", args.live_tasks);
    let (live_hwm, live_rss, seen) = live_tasks_rss(agent_binary, args.live_tasks)?;

    let med = |f: fn(&Round) -> f64| median(rounds.iter().map(f).collect());
    let (switch, runqlat) = (med(|r| r.agent_switch), med(|r| r.runqlat_switch));
    let (syscall, syscount) = (med(|r| r.agent_syscall), med(|r| r.syscount_syscall));
    let (floor_switch, floor_syscall) = (med(|r| r.floor_switch), med(|r| r.floor_syscall));
    println!();
    println!(
        "== summary: medians of {} rounds (target in brackets)",
        rounds.len()
    );
    println!(
        "context switch: taskscope {switch:.1} ns/run, runqlat {runqlat:.1} ns/run, ratio {:.2} [<= 150 and below runqlat]",
        switch / runqlat
    );
    println!(
        "syscall enter+exit: taskscope {syscall:.1} ns/syscall, syscount -L {syscount:.1} ns/syscall, ratio {:.2} [<= 120]",
        syscall / syscount
    );
    println!(
        "empty programs: {floor_switch:.1} ns/run on sched_switch (taskscope {:.1} ns above), {floor_syscall:.1} ns/syscall (taskscope {:.1} ns above)",
        switch - floor_switch,
        syscall - floor_syscall
    );
    println!(
        "agent CPU during hackbench: {:.2}% of one core [<= 1%]",
        med(|r| r.agent_cpu_share)
    );
    println!(
        "agent peak RSS over the workloads: {:.1} MiB",
        med(|r| r.agent_hwm_kib as f64) / 1024.0
    );
    println!(
        "agent with {seen} live tasks in its model: RSS {:.1} MiB, peak {:.1} MiB [<= 64 MiB]",
        live_rss as f64 / 1024.0,
        live_hwm as f64 / 1024.0
    );
    Ok(())
}

/// `cargo xtask bench-custom`: [`custom_probe_cost`] with the kernel's run statistics on.
pub fn custom(agent_binary: &Path) -> Result<()> {
    const STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";
    let previous = std::fs::read_to_string(STATS).unwrap_or_else(|_| "0".into());
    std::fs::write(STATS, "1").context("enable kernel.bpf_stats_enabled")?;
    let result = custom_probe_cost(agent_binary);
    let _ = std::fs::write(STATS, previous.trim());
    result
}

/// Runs `known_calls CALLS 0` (tests/c/known_calls.c) and returns its own clock's ns per call
/// of `taskscope_known_work`, an almost empty function.
fn ns_per_known_call(binary: &Path, calls: u64) -> Result<f64> {
    use std::io::BufRead;
    let mut child = Command::new(binary)
        .args([calls.to_string(), "0".to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("known_calls")?;
    let mut stdout = std::io::BufReader::new(child.stdout.take().context("stdout")?);
    let mut line = String::new();
    stdout.read_line(&mut line)?;
    child.stdin.take().context("stdin")?.write_all(b"go\n")?;
    line.clear();
    stdout.read_line(&mut line)?;
    let _ = child.wait();
    let total: f64 = line
        .split_whitespace()
        .next()
        .and_then(|t| t.parse().ok())
        .with_context(|| format!("known_calls said {line:?}"))?;
    Ok(total / calls as f64)
}

/// Custom metrics: what a latency metric (uprobe at a function's entry, uretprobe at its
/// return) costs per call, in the kernel (ns per program run) and to the application (the
/// call's time against the function alone), next to libbpf-tools' funclatency timing the same
/// function the same way.
fn custom_probe_cost(agent_binary: &Path) -> Result<()> {
    const CALLS: u64 = 200_000;
    let dir = std::env::temp_dir().join(format!("taskscope-bench-custom-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let binary = dir.join("known_calls");
    crate::run(
        Command::new("cc")
            .args(["-O2", "-g", "-o"])
            .arg(&binary)
            .arg(crate::root().join("tests/c/known_calls.c")),
    )?;
    let function = format!("{}:taskscope_known_work", binary.display());
    let config = dir.join("custom.toml");
    std::fs::write(
        &config,
        format!("[[custom_metrics]]\nname = \"bench\"\nkind = \"latency\"\nstart = \"uprobe:{function}\"\nend = \"uretprobe:{function}\"\n"),
    )?;
    let alone = ns_per_known_call(&binary, CALLS)?;
    let measure = |programs: &BTreeSet<u64>| -> Result<(f64, ProgStats)> {
        let before = prog_stats(programs)?;
        let per_call = ns_per_known_call(&binary, CALLS)?;
        let runs = delta(&before, &prog_stats(programs)?);
        let total = runs.values().fold(ProgStats::default(), |a, s| ProgStats {
            run_cnt: a.run_cnt + s.run_cnt,
            run_time_ns: a.run_time_ns + s.run_time_ns,
        });
        Ok((per_call, total))
    };
    let agent = Agent::start_with(agent_binary, &["--config", &config.to_string_lossy()])?;
    let custom: BTreeSet<u64> = all_programs()?
        .into_iter()
        .filter(|(id, (name, _))| agent.programs.contains(id) && name == "ts_custom")
        .map(|(id, _)| id)
        .collect();
    let (taskscope_call, taskscope_runs) = measure(&custom)?;
    drop(agent);
    let (tool, tool_programs) = start_tool(&["funclatency", &function])?;
    let (tool_call, tool_runs) = measure(&tool_programs)?;
    stop(tool);
    let _ = std::fs::remove_dir_all(&dir);
    println!("== custom metrics: a latency metric on a function, {CALLS} calls");
    println!(
        "in the kernel: taskscope {:.1} ns/run over {} runs (entry + return), funclatency {:.1} ns/run over {} runs",
        ns_per_run(&taskscope_runs),
        taskscope_runs.run_cnt,
        ns_per_run(&tool_runs),
        tool_runs.run_cnt
    );
    println!(
        "to the application, per call: alone {alone:.0} ns, under taskscope {taskscope_call:.0} ns (+{:.0} ns), under funclatency {tool_call:.0} ns (+{:.0} ns): ratio of the added costs {:.2}",
        taskscope_call - alone,
        tool_call - alone,
        (taskscope_call - alone) / (tool_call - alone)
    );
    Ok(())
}

/// Starts `count` sleeping threads in this process, lets the agent see them, and returns the
/// agent's (peak RSS KiB, RSS KiB, tasks it reported).
fn live_tasks_rss(agent_binary: &Path, count: usize) -> Result<(u64, u64, u64)> {
    let agent = Agent::start(agent_binary)?;
    let release = Arc::new(Barrier::new(count + 1));
    let mut threads = Vec::with_capacity(count);
    for _ in 0..count {
        let release = Arc::clone(&release);
        threads.push(
            std::thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn(move || {
                    release.wait();
                })
                .context("spawn a thread (raise the thread limit?)")?,
        );
    }
    // Two polls, then a full API answer (the largest thing the agent builds).
    std::thread::sleep(Duration::from_secs(3));
    let me = std::process::id();
    let mut seen = 0;
    if let Ok(mut stream) = TcpStream::connect(AGENT_ADDR) {
        let _ = write!(
            stream,
            "GET /api/v1/processes/{me} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        );
        let mut body = String::new();
        let _ = stream.read_to_string(&mut body);
        if let Some((_, json)) = body.split_once("\r\n\r\n") {
            let v: Value = serde_json::from_str(json).unwrap_or(Value::Null);
            seen = v["processes"][0]["threads"]["live"].as_u64().unwrap_or(0);
        }
    }
    http_ok(AGENT_ADDR, "/api/v1/processes");
    let hwm = status_kib(agent.pid(), "VmHWM");
    let rss = status_kib(agent.pid(), "VmRSS");
    release.wait();
    for t in threads {
        let _ = t.join();
    }
    drop(agent);
    Ok((hwm, rss, seen))
}

#[derive(Args)]
pub struct ScrapeArgs {
    /// Workloads: cgroups, each with one sleeping process.
    #[arg(long, default_value_t = 1000)]
    workloads: usize,
    /// Scrapes timed per configuration.
    #[arg(long, default_value_t = 20)]
    scrapes: usize,
}

/// One GET of /metrics as Prometheus asks for it: (duration, body bytes).
fn timed_scrape() -> Result<(Duration, usize)> {
    scrape_text().map(|(time, body)| (time, body.len()))
}

/// One GET of /metrics: (duration, body).
fn scrape_text() -> Result<(Duration, String)> {
    timed_get("/metrics", "application/openmetrics-text;version=1.0.0")
}

/// One GET of `path` from the bench's agent, accepting `accept`: (duration, the whole answer
/// with its headers).
pub(crate) fn timed_get(path: &str, accept: &str) -> Result<(Duration, String)> {
    let start = Instant::now();
    let mut stream = TcpStream::connect(AGENT_ADDR)?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
    )?;
    let mut body = Vec::new();
    stream.read_to_end(&mut body)?;
    Ok((start.elapsed(), String::from_utf8_lossy(&body).into_owned()))
}

/// Where cgroup v2 is mounted.
pub(crate) fn cgroup2_root() -> Result<PathBuf> {
    std::fs::read_to_string("/proc/self/mountinfo")?
        .lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            (right.split_whitespace().next()? == "cgroup2")
                .then(|| left.split_whitespace().nth(4).map(PathBuf::from))?
        })
        .context("no cgroup v2 mount")
}

/// Cgroups with one process each, for bench-scrape and bench-live; removed on drop.
pub(crate) struct BenchWorkloads {
    base: PathBuf,
    v1_base: Option<PathBuf>,
    io_dir: PathBuf,
    count: usize,
    sleepers: Vec<Child>,
}

impl BenchWorkloads {
    /// `count` cgroups under the cgroup v2 `root`, each with a process that makes a failing
    /// syscall and one direct 4 KiB block write, then sleeps; with a memory limit.
    pub(crate) fn start(root: &Path, count: usize) -> Result<BenchWorkloads> {
        let name = format!("taskscope-bench-{}", std::process::id());
        let base = root.join(&name);
        std::fs::create_dir(&base)?;
        // Memory accounting: cgroup v2's controller where it is available, else the v1 memory
        // hierarchy at the same paths (hybrid hosts), so the memory families are populated.
        let v2_has_memory = std::fs::read_to_string(root.join("cgroup.controllers"))
            .unwrap_or_default()
            .split_whitespace()
            .any(|c| c == "memory");
        let v1_base = if v2_has_memory {
            std::fs::write(root.join("cgroup.subtree_control"), "+memory")?;
            std::fs::write(base.join("cgroup.subtree_control"), "+memory")?;
            None
        } else {
            let v1_base = Path::new("/sys/fs/cgroup/memory").join(&name);
            std::fs::create_dir(&v1_base).ok().map(|_| v1_base)
        };
        let io_dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target")
            .join(&name);
        std::fs::create_dir_all(&io_dir)?;
        let mut workloads = BenchWorkloads {
            base,
            v1_base,
            io_dir,
            count: 0,
            sleepers: Vec::new(),
        };
        for i in 0..count {
            let dir = workloads.base.join(format!("w{i}"));
            std::fs::create_dir(&dir)?;
            workloads.count += 1;
            let mut script = format!("echo $$ > {}/cgroup.procs; ", dir.display());
            match &workloads.v1_base {
                Some(v1_base) => {
                    let v1 = v1_base.join(format!("w{i}"));
                    std::fs::create_dir(&v1)?;
                    std::fs::write(v1.join("memory.limit_in_bytes"), "67108864")?;
                    script += &format!("echo $$ > {}/cgroup.procs; ", v1.display());
                }
                None => std::fs::write(dir.join("memory.max"), "67108864")?,
            }
            script += &format!(
                "cat /nonexistent 2>/dev/null; dd if=/dev/zero of={}/w{i} bs=4096 count=1 oflag=direct 2>/dev/null; exec sleep 3600",
                workloads.io_dir.display()
            );
            workloads
                .sleepers
                .push(Command::new("sh").arg("-c").arg(script).spawn()?);
        }
        Ok(workloads)
    }
}

impl Drop for BenchWorkloads {
    fn drop(&mut self) {
        for s in &mut self.sleepers {
            let _ = s.kill();
            let _ = s.wait();
        }
        for i in 0..self.count {
            let _ = std::fs::remove_dir(self.base.join(format!("w{i}")));
            if let Some(v1_base) = &self.v1_base {
                let _ = std::fs::remove_dir(v1_base.join(format!("w{i}")));
            }
        }
        let _ = std::fs::remove_dir(&self.base);
        if let Some(v1_base) = &self.v1_base {
            let _ = std::fs::remove_dir(v1_base);
        }
        let _ = std::fs::remove_dir_all(&self.io_dir);
    }
}

/// `cargo xtask bench-scrape`: /metrics with many workloads, all families populated.
pub fn scrape(args: &ScrapeArgs, agent_binary: &Path) -> Result<()> {
    let root = cgroup2_root()?;
    for (title, extra) in [
        ("default cap (--max-series 10000)", vec![]),
        (
            "no cap (--max-series 100000000)",
            vec!["--max-series", "100000000"],
        ),
    ] {
        // The agent first, so that it sees the workloads' syscalls and IO.
        let agent = Agent::start_with(agent_binary, &extra)?;
        let workloads = BenchWorkloads::start(&root, args.workloads)?;
        std::thread::sleep(Duration::from_secs(5));
        timed_scrape()?; // warm-up
        let mut times = Vec::new();
        let mut size = 0;
        for _ in 0..args.scrapes {
            let (time, bytes) = timed_scrape()?;
            times.push(time.as_secs_f64() * 1000.0);
            size = bytes;
        }
        times.sort_by(f64::total_cmp);
        println!(
            "{} workloads, {title}: scrape median {:.1} ms, max {:.1} ms, {:.1} KiB [target <= 20 ms]",
            args.workloads,
            times[times.len() / 2],
            times[times.len() - 1],
            size as f64 / 1024.0
        );
        // What was in it: series per family (taskscope_series).
        let (_, body) = scrape_text()?;
        let families: Vec<String> = body
            .lines()
            .filter_map(|l| l.strip_prefix("taskscope_series{family=\"taskscope_"))
            .map(|l| l.replacen("\"} ", "=", 1))
            .collect();
        println!("  series per family: {}", families.join(", "));
        drop(workloads);
        drop(agent);
    }
    Ok(())
}
