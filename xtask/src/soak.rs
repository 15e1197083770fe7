//! `cargo xtask soak --seconds N`: the agent under sustained abuse, in figures.
//!
//! For N seconds (600 for the real run; `cargo xtask test` runs 60): 1,000 process starts a
//! second spread over 200 cgroups that are removed and made again all the time, a process
//! calling made-up syscall numbers, a scrape of /metrics every second, and 64 API clients
//! listing every process. Prints the agent's RSS over time (flat within 10% after the first
//! fifth?), its CPU, every loss counter, the /livez latency (p99 under 100 ms?), and the API's
//! answers. Fails only on what must never happen whatever the machine's speed: /livez not
//! answering 200, the agent dying or panicking, or processes missing without a counted loss.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// What `cargo xtask soak` takes.
#[derive(clap::Args)]
pub struct SoakArgs {
    /// How long the abuse lasts.
    #[arg(long, default_value_t = 600)]
    pub seconds: u64,
}

const ADDR: &str = "127.0.0.1:9798";
const CGROUPS: usize = 200;
const STARTS_PER_SECOND: u64 = 1000;
const SPAWNERS: u64 = 5;
const API_CLIENTS: usize = 64;
const EXITED_RETENTION: &str = "60s";

/// One GET: (status, body, time taken); status 0 when the agent did not answer.
fn get(path: &str) -> (u16, String, Duration) {
    get_from(ADDR, path)
}

/// One GET of the agent at `addr`, as [`get`].
pub(crate) fn get_from(addr: &str, path: &str) -> (u16, String, Duration) {
    let started = Instant::now();
    let answer = (|| -> std::io::Result<String> {
        let mut stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )?;
        let mut text = String::new();
        stream.read_to_string(&mut text)?;
        Ok(text)
    })()
    .unwrap_or_default();
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body, started.elapsed())
}

unsafe extern "C" {
    fn syscall(number: i64, ...) -> i64;
}

/// The 200 churning cgroups: each slot's current directory, remade under a new name.
struct Cgroups {
    base: PathBuf,
    slots: Mutex<Vec<PathBuf>>,
    churned: AtomicU64,
}

impl Cgroups {
    fn create(root: &Path) -> Result<Cgroups> {
        let base = root.join(format!("taskscope-soak-{}", std::process::id()));
        std::fs::create_dir_all(&base).context("create the soak's cgroup")?;
        let mut slots = Vec::new();
        for i in 0..CGROUPS {
            slots.push(Self::make(&base, i, 0)?);
        }
        Ok(Cgroups {
            base,
            slots: Mutex::new(slots),
            churned: AtomicU64::new(0),
        })
    }

    fn make(base: &Path, slot: usize, generation: u64) -> Result<PathBuf> {
        let dir = base.join(format!("w{slot}-g{generation}"));
        std::fs::create_dir(&dir)?;
        Ok(dir)
    }

    /// The `cgroup.procs` of a slot's current cgroup.
    fn procs_of(&self, slot: usize) -> Option<PathBuf> {
        let slots = self.slots.lock().ok()?;
        slots.get(slot).map(|dir| dir.join("cgroup.procs"))
    }

    /// Replaces one slot's cgroup with a new one; the old one goes once it is empty.
    fn churn(&self, slot: usize, generation: u64) {
        let Ok(new) = Self::make(&self.base, slot, generation) else {
            return;
        };
        let old = self
            .slots
            .lock()
            .ok()
            .and_then(|mut s| s.get_mut(slot).map(|entry| std::mem::replace(entry, new)));
        if let Some(dir) = old {
            for _ in 0..50 {
                if std::fs::remove_dir(&dir).is_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            self.churned.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn remove(&self) {
        if let Ok(slots) = self.slots.lock() {
            for dir in slots.iter() {
                let _ = std::fs::remove_dir(dir);
            }
        }
        let _ = std::fs::remove_dir(&self.base);
    }
}

/// The agent's `lost` counters and model counters from /api/v1/status.
fn status() -> Option<(BTreeMap<String, u64>, Value)> {
    status_from(ADDR).map(|(lost, status)| (lost, status["model"].clone()))
}

/// The agent's loss counters ("source/reason" -> count) and its whole status.
pub(crate) fn status_from(addr: &str) -> Option<(BTreeMap<String, u64>, Value)> {
    let (code, body, _) = get_from(addr, "/api/v1/status");
    if code != 200 {
        return None;
    }
    let status: Value = serde_json::from_str(&body).ok()?;
    let lost = status["lost"]
        .as_array()?
        .iter()
        .map(|l| {
            (
                format!(
                    "{}/{}",
                    l["source"].as_str().unwrap_or("?"),
                    l["reason"].as_str().unwrap_or("?")
                ),
                l["count"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    Some((lost, status))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len().max(1) - 1) as f64 * p).round() as usize;
    sorted.get(i).copied().unwrap_or_default()
}

pub fn run(args: &SoakArgs, agent_binary: &Path) -> Result<()> {
    let root = PathBuf::from("/sys/fs/cgroup");
    let root = if root.join("cgroup.procs").exists() && root.join("cgroup.controllers").exists() {
        root
    } else {
        root.join("unified")
    };
    let log_path = std::env::temp_dir().join("taskscope-soak.log");
    let mut agent = Command::new(agent_binary)
        .args([
            "run",
            "--listen",
            ADDR,
            "--log-format",
            "text",
            "--log-level",
            "warn",
        ])
        // Exited processes are kept this long: the RSS is flat once it has passed.
        .args(["--exited-retention", EXITED_RETENTION])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path)?)
        .spawn()
        .context("start the agent")?;
    let agent_pid = agent.id();
    let ready = Instant::now();
    while get("/livez").0 != 200 {
        if ready.elapsed() > Duration::from_secs(60) {
            bail!("the agent did not answer on {ADDR}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let result = soak(args, &root, agent_pid);
    // SAFETY: signalling our own child.
    unsafe extern "C" {
        fn kill(pid: i32, sig: i32) -> i32;
    }
    let alive = agent.try_wait().ok().flatten().is_none();
    unsafe { kill(agent_pid as i32, 15) };
    let _ = agent.wait();
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    let report = result?;
    if !alive {
        bail!("the agent died during the soak: {log}");
    }
    if log.contains("panicked") {
        bail!("the agent panicked during the soak: {log}");
    }
    println!(
        "soak: the agent's log has no panic ({} lines at warn and above)",
        log.lines().count()
    );
    report.check()
}

/// What must hold whatever the machine's speed.
struct Verdict {
    livez_failures: u64,
    unexplained_missing: Option<String>,
}

impl Verdict {
    fn check(&self) -> Result<()> {
        if self.livez_failures > 0 {
            bail!("/livez did not answer 200 {} times", self.livez_failures);
        }
        if let Some(why) = &self.unexplained_missing {
            bail!("{why}");
        }
        println!("soak: /livez answered 200 every time; every missing process is explained by a counted loss");
        Ok(())
    }
}

fn soak(args: &SoakArgs, cgroup_root: &Path, agent_pid: u32) -> Result<Verdict> {
    let cgroups = Arc::new(Cgroups::create(cgroup_root)?);
    let stop = Arc::new(AtomicBool::new(false));
    let started = Arc::new(AtomicU64::new(0));
    let (before_lost, before_model) = status().context("status before the soak")?;
    let model_started = |model: &Value| model["processes_started"].as_u64().unwrap_or(0);
    let mut threads = Vec::new();

    // 1,000 process starts a second: shells starting `/bin/true` in batches (a small shell
    // forks far faster than this large, threaded process could), each moved to another of the
    // 200 cgroups every 100 ms, so that every cgroup has processes starting in it.
    let mut shells = Vec::new();
    for _ in 0..SPAWNERS {
        let per_batch = STARTS_PER_SECOND / SPAWNERS / 10;
        let script = format!(
            "while :; do i=0; while [ $i -lt {per_batch} ]; do /bin/true; i=$((i+1)); done; echo; sleep 0.1; done"
        );
        let mut shell = Command::new("sh")
            .args(["-c", &script])
            .stdout(Stdio::piped())
            .spawn()
            .context("start a spawner shell")?;
        let stdout = shell.stdout.take().context("spawner's stdout")?;
        let (stop, started) = (Arc::clone(&stop), Arc::clone(&started));
        threads.push(std::thread::spawn(move || {
            // One line per batch.
            let mut batches = std::io::BufReader::new(stdout);
            let mut line = String::new();
            while !stop.load(Ordering::Relaxed) {
                line.clear();
                match std::io::BufRead::read_line(&mut batches, &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => started.fetch_add(per_batch, Ordering::Relaxed),
                };
            }
        }));
        shells.push(shell);
    }
    {
        let pids: Vec<u32> = shells.iter().map(Child::id).collect();
        let (cgroups, stop) = (Arc::clone(&cgroups), Arc::clone(&stop));
        threads.push(std::thread::spawn(move || {
            let mut turn = 0usize;
            while !stop.load(Ordering::Relaxed) {
                for (i, pid) in pids.iter().enumerate() {
                    if let Some(procs) = cgroups.procs_of((turn * pids.len() + i) % CGROUPS) {
                        let _ = std::fs::write(&procs, pid.to_string());
                    }
                }
                turn += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
        }));
    }
    // The cgroups churn: one remade every 50 ms (each lives about 10 s).
    {
        let (cgroups, stop) = (Arc::clone(&cgroups), Arc::clone(&stop));
        threads.push(std::thread::spawn(move || {
            let mut generation = 1;
            while !stop.load(Ordering::Relaxed) {
                cgroups.churn(generation as usize % CGROUPS, generation);
                generation += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
        }));
    }
    // A process calling syscall numbers that do not exist (this thread: xtask is one).
    let invalid = Arc::new(AtomicU64::new(0));
    {
        let (stop, invalid) = (Arc::clone(&stop), Arc::clone(&invalid));
        threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for nr in 1000..40_000 {
                    // SAFETY: an unassigned syscall number only returns ENOSYS.
                    unsafe { syscall(nr) };
                }
                invalid.fetch_add(39_000, Ordering::Relaxed);
                // About a fifth of a core: the flood is about the tables, not the CPU.
                std::thread::sleep(Duration::from_millis(200));
            }
        }));
    }
    // A scrape every second, and 64 API clients listing every process.
    let scrapes = Arc::new(Mutex::new(Vec::new()));
    {
        let (stop, scrapes) = (Arc::clone(&stop), Arc::clone(&scrapes));
        threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let (code, _, took) = get("/metrics");
                if let Ok(mut s) = scrapes.lock() {
                    s.push((code, took));
                }
                std::thread::sleep(Duration::from_secs(1).saturating_sub(took));
            }
        }));
    }
    let api: Arc<Mutex<BTreeMap<u16, u64>>> = Arc::new(Mutex::new(BTreeMap::new()));
    for _ in 0..API_CLIENTS {
        let (stop, api) = (Arc::clone(&stop), Arc::clone(&api));
        threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let (code, _, _) = get("/api/v1/processes");
                if let Ok(mut a) = api.lock() {
                    *a.entry(code).or_default() += 1;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }));
    }

    // The probe, every 250 ms; the agent's RSS and CPU every 5 s.
    let begin = Instant::now();
    let mut livez = Vec::new();
    let mut livez_failures = 0;
    let mut samples: Vec<(u64, u64, f64)> = Vec::new();
    let mut last_sample = Instant::now();
    let cpu_at_start = super::bench::cpu_seconds(agent_pid).unwrap_or(0.0);
    println!("| t (s) | agent RSS (MiB) | agent CPU (% of a core, last 5 s) | starts so far |\n|---|---|---|---|");
    let mut cpu_before = cpu_at_start;
    while begin.elapsed() < Duration::from_secs(args.seconds) {
        let (code, _, took) = get("/livez");
        livez.push(took);
        if code != 200 {
            livez_failures += 1;
        }
        if last_sample.elapsed() >= Duration::from_secs(5) {
            let cpu = super::bench::cpu_seconds(agent_pid).unwrap_or(cpu_before);
            let share = (cpu - cpu_before) / last_sample.elapsed().as_secs_f64() * 100.0;
            cpu_before = cpu;
            last_sample = Instant::now();
            let rss = super::bench::status_kib(agent_pid, "VmRSS");
            let t = begin.elapsed().as_secs();
            samples.push((t, rss, share));
            println!(
                "| {t} | {:.1} | {share:.1} | {} |",
                rss as f64 / 1024.0,
                started.load(Ordering::Relaxed)
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let elapsed = begin.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for mut shell in shells {
        let _ = shell.kill();
        let _ = shell.wait();
    }
    for thread in threads {
        let _ = thread.join();
    }
    let cpu_total = super::bench::cpu_seconds(agent_pid).unwrap_or(0.0) - cpu_at_start;
    // Let the agent read the last exits (two polls), then take the accounts.
    std::thread::sleep(Duration::from_secs(3));
    let (after_lost, after_model) = status().context("status after the soak")?;
    cgroups.remove();

    let made = started.load(Ordering::Relaxed);
    let seen = model_started(&after_model).saturating_sub(model_started(&before_model));
    println!(
        "\nsoak: {elapsed:.0} s; {made} processes started ({:.0}/s) in {CGROUPS} cgroups, {} cgroups remade; {} calls of made-up syscall numbers",
        made as f64 / elapsed,
        cgroups.churned.load(Ordering::Relaxed),
        invalid.load(Ordering::Relaxed)
    );
    println!("soak: the agent saw {seen} processes start (counted in processes_started)");
    let mut losses = Vec::new();
    for (key, after) in &after_lost {
        let grew = after.saturating_sub(before_lost.get(key).copied().unwrap_or(0));
        if grew > 0 {
            losses.push(format!("{key} {grew}"));
        }
    }
    println!(
        "soak: losses during the soak: {}",
        if losses.is_empty() {
            "none".to_string()
        } else {
            losses.join(", ")
        }
    );
    livez.sort();
    println!(
        "soak: /livez {} times: p50 {:?}, p99 {:?} (target < 100 ms), max {:?}; {livez_failures} not 200",
        livez.len(),
        percentile(&livez, 0.5),
        percentile(&livez, 0.99),
        livez.last().copied().unwrap_or_default()
    );
    let scrapes = scrapes.lock().map(|s| s.clone()).unwrap_or_default();
    let mut scrape_times: Vec<Duration> = scrapes.iter().map(|(_, t)| *t).collect();
    scrape_times.sort();
    println!(
        "soak: /metrics scraped {} times ({} not 200): p50 {:?}, max {:?}",
        scrapes.len(),
        scrapes.iter().filter(|(c, _)| *c != 200).count(),
        percentile(&scrape_times, 0.5),
        scrape_times.last().copied().unwrap_or_default()
    );
    println!(
        "soak: {API_CLIENTS} API clients' answers by status: {:?}",
        api.lock().map(|a| a.clone()).unwrap_or_default()
    );
    println!(
        "soak: agent CPU {:.1}% of a core on average",
        cpu_total / elapsed * 100.0
    );
    let warm: Vec<u64> = samples
        .iter()
        .filter(|(t, _, _)| *t as f64 >= elapsed / 5.0)
        .map(|(_, rss, _)| *rss)
        .collect();
    if let (Some(min), Some(max)) = (warm.iter().min(), warm.iter().max()) {
        let spread = (*max - *min) as f64 / (*min).max(1) as f64 * 100.0;
        println!(
            "soak: RSS after the first fifth: {:.1} to {:.1} MiB, {spread:.1}% apart ({})",
            *min as f64 / 1024.0,
            *max as f64 / 1024.0,
            if spread <= 10.0 {
                "flat within 10%"
            } else {
                "NOT flat within 10%"
            }
        );
    }
    // Every process started and not seen must be explained by a counted loss.
    let explained: u64 = ["ringbuf/buffer_full", "task_model/max_live_reached"]
        .iter()
        .map(|k| {
            after_lost
                .get(*k)
                .copied()
                .unwrap_or(0)
                .saturating_sub(before_lost.get(*k).copied().unwrap_or(0))
        })
        .sum();
    let unexplained_missing = (seen < made && explained == 0).then(|| {
        format!("{made} processes started, the agent saw {seen}, and no loss was counted")
    });
    Ok(Verdict {
        livez_failures,
        unexplained_missing,
    })
}
