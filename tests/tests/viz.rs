//! The visualisation data (`/api/v1/viz/heatmap`, `/api/v1/viz/binpacking`) against the
//! kernel's own figures and the agent's other exports, with the real programs loaded. Run as
//! root (`cargo xtask test`).

use std::{
    path::Path,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde_json::Value;
use taskscope_e2e::{
    live::{Spinner, CAP_MEMORY_BYTES},
    proc_stat_cpus, schedstat, wait_for, Agent, Workload,
};

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn heatmap(agent: &Agent, query: &str) -> Value {
    agent.get(&format!("/api/v1/viz/heatmap?{query}"))
}

/// Waits until the history has its first interval (it takes two readings, a second apart).
fn wait_for_first_interval(agent: &Agent) {
    wait_for("a first heatmap interval", Duration::from_secs(10), || {
        let map = heatmap(agent, "kind=cpu_busy");
        (!map["x"]["values"].as_array()?.is_empty()).then_some(())
    });
}

/// The last CPU: the one the spinners are pinned to.
fn last_cpu() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()) - 1
}

/// A half-busy workload pinned to one CPU: that CPU's busy share in the heatmap's intervals
/// that fall inside a window equals /proc/stat's over the window.
#[test]
fn the_cpu_busy_heatmap_of_a_pinned_half_busy_workload_matches_proc_stat() {
    let agent = Agent::start(&[]);
    let cpu = last_cpu();
    wait_for_first_interval(&agent);
    // Half busy: 5 ms on, 5 ms asleep, on one CPU, for 5 s (it exits by itself).
    let mut duty = std::process::Command::new(taskscope_e2e::workload_binary())
        .args(["duty", &cpu.to_string(), "5000", "5000", "5000"])
        .spawn()
        .expect("spawn duty");
    std::thread::sleep(Duration::from_millis(1000));
    let (stat_before, from_ms) = (proc_stat_cpus(), unix_ms());
    std::thread::sleep(Duration::from_millis(3000));
    let (stat_after, to_ms) = (proc_stat_cpus(), unix_ms());
    // The interval ending after `to_ms` is recorded within a second.
    std::thread::sleep(Duration::from_millis(1500));
    let map = heatmap(&agent, "kind=cpu_busy&seconds=30");
    let _ = duty.wait();
    assert_eq!(map["kind"], "cpu_busy");
    assert_eq!(map["y"]["name"], "cpu");
    let times: Vec<u64> = map["x"]["values"]
        .as_array()
        .expect("x")
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    // Intervals (a second and a poll at most, ending at their time) wholly inside the window.
    let inside: Vec<usize> = (0..times.len())
        .filter(|&i| times[i] >= from_ms + 1300 && times[i] <= to_ms)
        .collect();
    assert!(
        !inside.is_empty(),
        "no interval inside the window: {times:?} vs {from_ms}..{to_ms}"
    );
    let shares: Vec<f64> = inside
        .iter()
        .map(|&i| map["cells"][cpu][i].as_f64().expect("a busy share"))
        .collect();
    let heatmap_share = shares.iter().sum::<f64>() / shares.len() as f64;
    let ((b0, i0), (b1, i1)) = (stat_before[cpu], stat_after[cpu]);
    let stat_share = (b1 - b0) as f64 / ((b1 - b0) + (i1 - i0)) as f64;
    println!(
        "cpu {cpu} with a pinned half-busy workload: heatmap busy share {:.3} (intervals {shares:?}), /proc/stat {:.3} over the window (allowed 0.03)",
        heatmap_share, stat_share
    );
    assert!(
        (heatmap_share - stat_share).abs() <= 0.03,
        "busy share {heatmap_share:.3} vs /proc/stat {stat_share:.3}"
    );
    // About half on a quiet machine; more where other work shares the CPU.
    assert!(
        stat_share >= 0.3,
        "the workload did not keep its CPU busy: {stat_share}"
    );
}

/// Two spinners sharing one CPU in a cgroup of their own: the workload's run-queue heatmap holds
/// every wait the agent counted for it (the same number as /metrics), and about as many as
/// the times the kernel ran them (each run of a CPU-bound task follows a wait).
#[test]
fn the_runqueue_heatmap_of_a_workload_holds_its_waits() {
    let agent = Agent::start(&[]);
    wait_for_first_interval(&agent);
    let cgroup_dir = std::path::Path::new(&taskscope_e2e::cgroup2_root())
        .join(format!("taskscope-viz-{}", std::process::id()));
    std::fs::create_dir(&cgroup_dir).expect("create cgroup");
    let cpu = last_cpu();
    let spinners: Vec<Workload> = std::thread::scope(|scope| {
        let dir = &cgroup_dir;
        let handles: Vec<_> = (0..2)
            .map(|_| {
                scope.spawn(move || {
                    Workload::run_pinned_in_cgroups(&[dir], Some(cpu), &["cpu-burn", "700"])
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("spinner"))
            .collect()
    });
    let timeslices: u64 = spinners.iter().map(|s| schedstat(s.pid()).2).sum();
    let process = agent.process_after(spinners[0].pid(), taskscope_e2e::monotonic_ns());
    let cgroup = process["cgroup"]["path"]
        .as_str()
        .expect("cgroup")
        .to_string();
    let query = format!("kind=runqueue&workload={cgroup}");
    let metrics_count = || {
        let (_, scrape) = taskscope_e2e::http_get(&agent.addr, "/metrics").expect("scrape");
        let label = format!("cgroup=\"{cgroup}\"");
        taskscope_e2e::sample(
            &scrape,
            "taskscope_runqueue_latency_seconds_count",
            &[&label],
        )
        .unwrap_or(0.0) as u64
    };
    let heatmap_count = |map: &Value| -> u64 {
        map["cells"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|row| row.as_array().into_iter().flatten())
            .filter_map(Value::as_f64)
            .sum::<f64>() as u64
    };
    // The spinners are blocked now: the counts stop moving once the next interval is recorded.
    let (map, in_heatmap, in_metrics) = wait_for(
        "the heatmap to hold every wait",
        Duration::from_secs(10),
        || {
            let map = heatmap(&agent, &query);
            let (h, m) = (heatmap_count(&map), metrics_count());
            (h == m && h > 0).then_some((map, h, m))
        },
    );
    for spinner in spinners {
        spinner.finish();
    }
    let _ = std::fs::remove_dir(&cgroup_dir);
    println!(
        "{cgroup}: run-queue waits in the heatmap {in_heatmap}, on /metrics {in_metrics}, timeslices the kernel ran them {timeslices} (allowed 5%); rows {}, p99 per interval {}",
        map["y"]["values"], map["p99_ns"]
    );
    assert_eq!(map["workload"], cgroup.as_str());
    assert_eq!(map["intervals_with_workloads_left_out"], 0);
    let tolerance = (timeslices as f64 * 0.05).max(3.0);
    assert!(
        (in_heatmap as f64 - timeslices as f64).abs() <= tolerance,
        "waits {in_heatmap} vs timeslices {timeslices}"
    );
}

/// `usage_usec` of a cgroup v2 directory's `cpu.stat` (the kernel keeps it in every cgroup).
fn cpu_stat_usage_us(dir: &Path) -> u64 {
    let stat = std::fs::read_to_string(dir.join("cpu.stat")).expect("cpu.stat");
    stat.lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .and_then(|v| v.trim().parse().ok())
        .expect("usage_usec")
}

/// Memory charged to a cgroup: v2's `memory.current` where the controller is on, else the v1
/// memory hierarchy's `memory.usage_in_bytes` at the same path (a hybrid host).
fn cgroup_memory_bytes(dir: &Path) -> u64 {
    let leaf = dir.file_name().expect("leaf");
    let v1 = Path::new("/sys/fs/cgroup/memory").join(leaf);
    [dir.join("memory.current"), v1.join("memory.usage_in_bytes")]
        .iter()
        .find_map(|file| std::fs::read_to_string(file).ok()?.trim().parse().ok())
        .expect("the cgroup's memory usage")
}

/// A workload capped at half a CPU and 64 MiB: the bin-packing view has its limits as its
/// cgroup has them, its CPU use as its `cpu.stat` counts it over the same seconds, its memory
/// as the cgroup charges it, and marks it squeezed; the node's capacity is its CPUs and
/// memory.
#[test]
fn the_binpacking_view_of_a_capped_workload_matches_its_cgroup() {
    let agent = Agent::start(&[]);
    let capped = Spinner::start_with_limits("taskscope-packed", true);
    let cgroup = capped.cgroup();
    // The window is the recorder's last three readings: let it fill with the spinner.
    std::thread::sleep(Duration::from_secs(4));
    // cpu.stat every 20 ms for 5 s, to take the ones at the ends of the answer's window.
    let mut usage: Vec<(u64, u64)> = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        usage.push((unix_ms(), cpu_stat_usage_us(&capped.dir)));
        std::thread::sleep(Duration::from_millis(20));
    }
    let view = agent.get("/api/v1/viz/binpacking");
    let memory_now = cgroup_memory_bytes(&capped.dir);
    let window_s = view["cpu_window_s"].as_f64().expect("cpu_window_s");
    // The figures are of the kernel read at `unix_ms`, over the window before it.
    let to_ms = view["unix_ms"].as_u64().expect("unix_ms");
    let from_ms = to_ms - (window_s * 1000.0) as u64;
    let at = |ms: u64| {
        *usage
            .iter()
            .min_by_key(|(t, _)| t.abs_diff(ms))
            .expect("samples")
    };
    let ((t0, u0), (t1, u1)) = (at(from_ms), at(to_ms));
    let reference = (u1 - u0) as f64 / 1e3 / (t1 - t0) as f64;
    let row = |resource: &str| -> Value {
        view[resource]["rows"]
            .as_array()
            .expect("rows")
            .iter()
            .find(|r| r["cgroup"] == cgroup.as_str())
            .cloned()
            .unwrap_or_else(|| panic!("{cgroup} not in the {resource} rows: {view}"))
    };
    let (cpu, memory) = (row("cpu"), row("memory"));
    let used = cpu["used"].as_f64().expect("used");
    println!(
        "{cgroup}: CPU {used:.3} over {window_s:.2} s (cpu.stat {reference:.3}), limit {} \
         (cpu.max 0.5), of limit {}, squeezed {}; memory {} (cgroup {memory_now}), limit {} \
         (cgroup {CAP_MEMORY_BYTES})",
        cpu["limit"], cpu["of_limit"], cpu["squeezed"], memory["used"], memory["limit"]
    );
    assert_eq!(cpu["limit"].as_f64(), Some(0.5));
    assert!(
        (used - reference).abs() <= 0.03,
        "CPU {used} vs cpu.stat {reference} (0.03)"
    );
    assert_eq!(cpu["squeezed"], true, "at its CPU limit");
    assert_eq!(memory["limit"].as_f64(), Some(CAP_MEMORY_BYTES as f64));
    let memory_used = memory["used"].as_f64().expect("memory used");
    assert!(
        (memory_used - memory_now as f64).abs() <= (1 << 20) as f64,
        "memory {memory_used} vs the cgroup's {memory_now} (1 MiB)"
    );
    assert_eq!(
        view["cpu"]["capacity"].as_f64(),
        Some(proc_stat_cpus().len() as f64)
    );
    let meminfo = std::fs::read_to_string("/proc/meminfo").expect("meminfo");
    let total_kib: f64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("MemTotal");
    assert_eq!(
        view["memory"]["capacity"].as_f64(),
        Some(total_kib * 1024.0)
    );
    // Every workload's use over its window adds up to at most the node's CPUs: a task that
    // ran before the agent started brings none of its past to a window (it did: 2.14 CPUs
    // of 2 in CI, a kworker's 1.45 s lifetime at once here). Allowed 0.25 over: a workload
    // newer than the window is over a shorter one.
    let node_used = view["cpu"]["used"].as_f64().expect("used");
    let capacity = view["cpu"]["capacity"].as_f64().expect("capacity");
    println!("node: {node_used:.3} CPUs used of {capacity}");
    assert!(
        node_used <= capacity + 0.25,
        "{node_used} CPUs used of {capacity}"
    );
    assert!(node_used >= used, "{node_used} CPUs used in all");
}

/// A process that used CPU before the agent started and wakes after: its past is in its
/// figures (the kernel's lifetime counters, as /proc's) but in no window of the bin-packing
/// view (nor of the live feed's rates, made the same way).
#[test]
fn a_process_from_before_the_agent_brings_no_past_cpu_to_a_window() {
    let dir = Path::new(&taskscope_e2e::cgroup2_root())
        .join(format!("taskscope-prior-{}", std::process::id()));
    std::fs::create_dir(&dir).expect("create cgroup");
    // Burns CPU, then waits for a child sleeping 6 s: blocked, so the agent first sees it when
    // it wakes.
    let script = format!(
        "echo $$ > {}/cgroup.procs && i=0 && while [ $i -lt 800000 ]; do i=$((i+1)); done && sleep 6",
        dir.display()
    );
    let mut shell = std::process::Command::new("sh")
        .args(["-c", &script])
        .spawn()
        .expect("sh");
    let pid = shell.id();
    wait_for(
        "the shell to wait for its child",
        Duration::from_secs(30),
        || {
            let children = format!("/proc/{pid}/task/{pid}/children");
            let children = std::fs::read_to_string(children).ok()?;
            (!children.trim().is_empty()).then_some(())
        },
    );
    let past_ns = schedstat(pid).0;
    let agent = Agent::start(&[]);
    let usage_from = cpu_stat_usage_us(&dir);
    let cgroup = format!(
        "/{}",
        dir.file_name().and_then(|n| n.to_str()).expect("name")
    );
    let (mut most, mut answers, mut exited_at) = (0.0f64, 0, None);
    let deadline = Instant::now() + Duration::from_secs(20);
    while exited_at.is_none_or(|at: Instant| at.elapsed() < Duration::from_secs(4)) {
        if Instant::now() > deadline {
            break;
        }
        let view = agent.get("/api/v1/viz/binpacking");
        let used = view["cpu"]["rows"]
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["cgroup"] == cgroup.as_str()))
            .and_then(|row| row["used"].as_f64())
            .unwrap_or(0.0);
        most = most.max(used);
        answers += 1;
        if exited_at.is_none() && shell.try_wait().expect("wait").is_some() {
            exited_at = Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let usage_since_us = cpu_stat_usage_us(&dir) - usage_from;
    let _ = shell.kill();
    let _ = shell.wait();
    let _ = std::fs::remove_dir(&dir);
    assert!(exited_at.is_some(), "the shell did not exit in 20 s");
    println!(
        "{cgroup}: {past_ns} ns on CPU before the agent started; since, cpu.stat {usage_since_us} \
         us; the most CPU in {answers} bin-packing answers: {most:.4} (it would be {:.2} with \
         its past in a 3 s window)",
        past_ns as f64 / 3e9
    );
    assert!(
        past_ns >= 200_000_000,
        "the shell's loop took only {past_ns} ns"
    );
    assert!(most <= 0.02, "{most} CPUs: its past came into a window");
}

/// Wrong requests get a 400 or 404 naming what is wrong; the endpoint needs the API's token
/// when the API does (`--api-auth`).
#[test]
fn heatmap_requests_are_checked_and_guarded() {
    let agent = Agent::start(&[]);
    for (query, status, says) in [
        ("", 400, "kind is required"),
        ("kind=heat", 400, "cpu_busy, idle_gaps, runqueue"),
        ("kind=runqueue&seconds=301", 400, "from 1 to 300"),
        ("kind=idle_gaps&workload=/x", 400, "only for kind=runqueue"),
        ("kind=runqueue&workload=/no-such-cgroup", 404, "no workload"),
    ] {
        let (code, body) =
            taskscope_e2e::http_get(&agent.addr, &format!("/api/v1/viz/heatmap?{query}"))
                .expect("request");
        println!("?{query}: {code} {body}");
        assert_eq!(code, status, "?{query}: {body}");
        assert!(body.contains(says), "?{query}: {body}");
    }
    let map = heatmap(&agent, "kind=idle_gaps&seconds=5");
    assert_eq!(map["y"]["name"], "cpu");
    assert_eq!(map["x"]["name"], "idle_period_below_ns");
    drop(agent);

    let token = "e2e-viz-token-0123456789abcdef";
    let token_file =
        std::env::temp_dir().join(format!("taskscope-viz-token-{}", std::process::id()));
    std::fs::write(&token_file, format!("{token}\n")).expect("token");
    let agent = Agent::start(&[
        "--admin-token-file",
        token_file.to_str().expect("path"),
        "--api-auth",
    ]);
    for path in [
        "/api/v1/viz/heatmap?kind=cpu_busy",
        "/api/v1/viz/binpacking",
    ] {
        let (code, _) = taskscope_e2e::http_get(&agent.addr, path).expect("request");
        assert_eq!(code, 401, "{path}: no token");
        let auth = format!("Bearer {token}");
        let (code, body) =
            taskscope_e2e::http_request(&agent.addr, "GET", path, &[("Authorization", &auth)], b"")
                .expect("request");
        println!("--api-auth {path}: without the token 401, with it {code}");
        assert_eq!(code, 200, "{body}");
    }
    let _ = std::fs::remove_file(&token_file);
}
