//! The agent's numbers against the kernel's own accounting (/proc/<pid>/schedstat, status, io),
//! with the real programs loaded into the running kernel. Run as root (`cargo xtask test`).

use taskscope_e2e::{
    assert_close, assert_count_close, monotonic_ns, proc_field, proc_stat_cpus, schedstat,
    wait_until_blocked, Agent, Workload,
};

#[test]
fn on_cpu_time_of_a_cpu_bound_child_matches_schedstat_within_2_percent() {
    let agent = Agent::start(&[]);
    let child = Workload::run(&["cpu-burn", "1000"]);
    // Its final figure: read once it is blocked. Right after `ready` it may still be on a CPU
    // (on a slow emulated kernel for tens of ms), and the agent's later read would count that.
    wait_until_blocked(child.pid());
    let (on_cpu, _, _) = schedstat(child.pid());
    let read_at = monotonic_ns();
    let process = agent.process_after(child.pid(), read_at);
    let measured = process["sched"]["on_cpu_ns"].as_u64().expect("on_cpu_ns");
    assert_close("on-CPU ns of a 1 s CPU burner", measured, on_cpu, 0.02);
    assert!(on_cpu > 900_000_000, "the burner ran only {on_cpu} ns");
    child.finish();
}

#[test]
fn runqueue_wait_and_switches_of_competing_processes_match_the_kernel() {
    let agent = Agent::start(&[]);
    // Four CPU burners on this machine's cores (2 here): each waits for a CPU a lot.
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let children: Vec<Workload> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..cores * 2)
            .map(|_| scope.spawn(|| Workload::run(&["cpu-burn", "700"])))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("workload"))
            .collect()
    });
    // Each one's final figures: read once it is blocked (waiting to be told to exit).
    for child in &children {
        wait_until_blocked(child.pid());
    }
    let truth: Vec<_> = children
        .iter()
        .map(|c| {
            (
                schedstat(c.pid()),
                proc_field(c.pid(), "status", "voluntary_ctxt_switches"),
                proc_field(c.pid(), "status", "nonvoluntary_ctxt_switches"),
            )
        })
        .collect();
    let read_at = monotonic_ns();
    let mut total_wait = 0;
    for (child, ((on_cpu, runq, slices), voluntary, involuntary)) in children.iter().zip(&truth) {
        let p = agent.process_after(child.pid(), read_at);
        let pid = child.pid();
        assert_close(
            &format!("pid {pid} run-queue wait ns"),
            p["sched"]["runqueue_wait_ns"]
                .as_u64()
                .expect("runqueue_wait_ns"),
            *runq,
            0.05,
        );
        assert_close(
            &format!("pid {pid} on-CPU ns"),
            p["sched"]["on_cpu_ns"].as_u64().expect("on_cpu_ns"),
            *on_cpu,
            0.02,
        );
        assert_count_close(
            &format!("pid {pid} voluntary switches"),
            p["sched"]["voluntary_switches"]
                .as_u64()
                .expect("voluntary"),
            *voluntary,
            0.01,
        );
        assert_count_close(
            &format!("pid {pid} involuntary switches"),
            p["sched"]["involuntary_switches"]
                .as_u64()
                .expect("involuntary"),
            *involuntary,
            0.01,
        );
        let hist_total: u64 = p["sched"]["runqueue_latency"]
            .as_array()
            .expect("histogram")
            .iter()
            .map(|b| b["count"].as_u64().unwrap_or(0))
            .sum();
        // The histogram is measured by the programs themselves (wakeup or preemption to
        // switch-in): one wait per time the kernel put the task on a CPU (schedstat field 3).
        assert_count_close(
            &format!("pid {pid} run-queue waits in the histogram vs timeslices"),
            hist_total,
            *slices,
            0.01,
        );
        total_wait += runq;
    }
    assert!(
        total_wait > 100_000_000,
        "the burners hardly competed ({total_wait} ns of run-queue wait in all)"
    );
    for child in children {
        child.finish();
    }
}

#[test]
fn syscall_counts_and_errors_are_exact() {
    syscall_counts_and_errors_are_exact_with(&[], true);
}

/// With `sys_enter` detached, `sys_exit` counts alone: the same counts, no latency.
#[test]
fn syscall_counts_and_errors_are_exact_untimed() {
    syscall_counts_and_errors_are_exact_with(&["--disable-probes", "syscall_latency"], false);
}

fn syscall_counts_and_errors_are_exact_with(flags: &[&str], timed: bool) {
    let agent = Agent::start(flags);
    let (calls, failures) = (5000u64, 1234u64);
    // In a cgroup of its own: its workload's figures (kept per cgroup by the kernel, with the
    // latency histograms) are the process's alone.
    let cgroup_dir = std::path::Path::new(&taskscope_e2e::cgroup2_root())
        .join(format!("taskscope-syscalls-{}-{timed}", std::process::id()));
    std::fs::create_dir(&cgroup_dir).expect("create cgroup");
    let child = Workload::run_in_cgroups(
        &[&cgroup_dir],
        &["syscalls", &calls.to_string(), &failures.to_string()],
    );
    let process = agent.process_after(child.pid(), monotonic_ns());
    let getpgid = syscall_of(&process, "getpgid");
    println!(
        "getpgid (timed: {timed}): taskscope {getpgid}, workload made {calls} calls, {failures} failed with ESRCH"
    );
    assert_eq!(getpgid["count"].as_u64(), Some(calls));
    assert_eq!(getpgid["errors"].as_u64(), Some(failures));
    assert_eq!(getpgid["errnos"][0]["name"], "ESRCH");
    assert_eq!(getpgid["errnos"][0]["count"].as_u64(), Some(failures));
    assert_eq!(getpgid["errnos"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        getpgid["total_latency_ns"]
            .as_u64()
            .is_some_and(|ns| ns > 0),
        timed,
        "latency only when timed"
    );
    // The workload's series: the same counts, and a latency histogram holding every call
    // (none when untimed).
    let (cgroup, series) = workload_series(&agent, &process, &["syscall=\"getpgid\""]);
    let (total, errors, histogram) = (
        series("taskscope_syscalls_total"),
        series("taskscope_syscall_errors_total"),
        series("taskscope_syscall_latency_seconds_count"),
    );
    println!("workload {cgroup}: taskscope_syscalls_total {total}, taskscope_syscall_errors_total (all errnos) {errors}, latency histogram count {histogram}");
    assert_eq!(total, calls as f64);
    if timed {
        assert_eq!(
            histogram, calls as f64,
            "latency histogram holds every call"
        );
    } else {
        assert!(histogram.is_nan(), "a latency histogram while untimed");
    }
    assert_eq!(errors, failures as f64);
    child.finish();
    let _ = std::fs::remove_dir(&cgroup_dir);

    // fork() returns twice: once in the parent, once in the child, which never called it.
    // Only the parent's is a syscall (an untimed exit takes the number from the registers,
    // which the child inherits).
    let forks = 3;
    let parent = Workload::run(&["many-processes", &forks.to_string(), "1"]);
    let children: Vec<u32> = parent
        .output
        .split(',')
        .map(|p| p.parse().expect("pid"))
        .collect();
    let clones = |pid: u32| {
        let process = agent.process_after(pid, monotonic_ns());
        process["syscalls"]["by_syscall"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| s["name"] == "clone" || s["name"] == "fork")
            .filter_map(|s| s["count"].as_u64())
            .sum::<u64>()
    };
    let (parent_clones, child_clones) = (
        clones(parent.pid()),
        children.iter().map(|&pid| clones(pid)).collect::<Vec<_>>(),
    );
    println!("fork (timed: {timed}): the parent made {forks}, taskscope counted {parent_clones}; its children made none, taskscope counted {child_clones:?}");
    assert_eq!(parent_clones, forks);
    assert!(child_clones.iter().all(|&n| n == 0), "{child_clones:?}");
    parent.finish();
}

/// An agent whose `syscall_latency` probe group a test switches live (config file + SIGHUP).
struct LatencySwitch {
    agent: Agent,
    config: std::path::PathBuf,
}

impl LatencySwitch {
    fn start(name: &str, timed: bool) -> Self {
        let config =
            std::env::temp_dir().join(format!("taskscope-{name}-{}.toml", std::process::id()));
        Self::write(&config, timed);
        let agent = Agent::start(&["--config", config.to_str().expect("path")]);
        Self { agent, config }
    }

    fn write(config: &std::path::Path, timed: bool) {
        let disabled = if timed { "" } else { "\"syscall_latency\"" };
        std::fs::write(
            config,
            format!("health_interval = \"1s\"\ndisable_probes = [{disabled}]\n"),
        )
        .expect("config");
    }

    /// Switches timing on or off and waits until health says it is; returns the status seen.
    fn set(&self, timed: bool) -> &'static str {
        Self::write(&self.config, timed);
        let _ = std::process::Command::new("kill")
            .args(["-HUP", &self.agent.pid().to_string()])
            .status();
        let want = if timed { "healthy" } else { "disabled" };
        let status = || {
            let (_, body) = taskscope_e2e::http_get(&self.agent.addr, "/health").expect("health");
            let report: serde_json::Value = serde_json::from_str(&body).expect("JSON");
            report["components"]["probes_syscall_latency"]["status"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        };
        taskscope_e2e::wait_for(
            &format!("probes_syscall_latency {want}"),
            std::time::Duration::from_secs(10),
            || (status() == want).then_some(()),
        );
        want
    }
}

impl Drop for LatencySwitch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.config);
    }
}

/// Syscall timing switched off and on (reload) while processes make syscalls: `sys_exit`
/// counts untimed from before `sys_enter` goes until after it is back, so none is lost.
#[test]
fn switching_syscall_latency_live_loses_no_syscall() {
    use std::sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    };
    let switch = LatencySwitch::start("syscall-latency", false);
    let cgroup_dir = std::path::Path::new(&taskscope_e2e::cgroup2_root())
        .join(format!("taskscope-latency-switch-{}", std::process::id()));
    std::fs::create_dir(&cgroup_dir).expect("create cgroup");
    const CALLS: u64 = 20_000;
    let stop = Arc::new(AtomicBool::new(false));
    let runner = {
        let (stop, dir) = (stop.clone(), cgroup_dir.clone());
        std::thread::spawn(move || {
            let (mut runs, mut last) = (0u64, 0u32);
            while !stop.load(Ordering::Relaxed) {
                let w = Workload::run_in_cgroups(&[&dir], &["syscalls", &CALLS.to_string(), "0"]);
                last = w.pid();
                w.finish();
                runs += 1;
            }
            (runs, last)
        })
    };
    let mut seen = Vec::new();
    for timed in [true, false, true, false, true] {
        seen.push(switch.set(timed));
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    stop.store(true, Ordering::Relaxed);
    let (runs, last) = runner.join().expect("runner");
    let process = switch.agent.process_after(last, monotonic_ns());
    let (cgroup, series) = workload_series(&switch.agent, &process, &["syscall=\"getpgid\""]);
    let (total, timed) = (
        series("taskscope_syscalls_total"),
        series("taskscope_syscall_latency_seconds_count"),
    );
    println!(
        "{cgroup}: {runs} processes of {CALLS} getpgid calls while syscall_latency went {seen:?}; taskscope_syscalls_total {total}, of them timed {timed}"
    );
    assert_eq!(
        total,
        (runs * CALLS) as f64,
        "syscalls lost across the switches"
    );
    assert!(timed > 0.0 && timed < total, "some timed, not all");
    let _ = std::fs::remove_dir(&cgroup_dir);
}

/// The start a blocked `read` left when timing went off is stale once it is back on: the next
/// `read`, begun while untimed, must end untimed, not be timed from the first one's start.
#[test]
fn a_syscall_start_from_before_timing_went_off_is_not_used_after_it_is_back() {
    let switch = LatencySwitch::start("stale-start", true);
    // It makes no syscall of its own, then blocks reading stdin.
    let mut reader = Workload::run(&["syscalls", "0", "0"]);
    wait_until_blocked(reader.pid());
    switch.set(false);
    // The first read returns (untimed); the second begins with no `sys_enter` to see it.
    reader.send("x\n");
    wait_until_blocked(reader.pid());
    let stale_for = std::time::Duration::from_millis(1500);
    std::thread::sleep(stale_for);
    switch.set(true);
    let pid = reader.pid();
    // The second read returns 0 (end of input) with timing back on.
    reader.finish();
    let process = switch.agent.process_after(pid, monotonic_ns());
    let read = syscall_of(&process, "read");
    let latency_ns = read["total_latency_ns"].as_u64().expect("total_latency_ns");
    println!(
        "read: {read}; the stale start was at least {stale_for:?} old when the last read ended, its reads' total latency is {latency_ns} ns"
    );
    assert!(
        read["count"].as_u64().is_some_and(|n| n >= 2),
        "both blocking reads counted"
    );
    assert!(
        latency_ns < 200_000_000,
        "a read was timed from a stale start: {latency_ns} ns"
    );
}

/// The process's figures for the syscall `name` (its entry of `syscalls.by_syscall`).
fn syscall_of(process: &serde_json::Value, name: &str) -> serde_json::Value {
    process["syscalls"]["by_syscall"]
        .as_array()
        .expect("by_syscall")
        .iter()
        .find(|s| s["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no {name} in {}", process["syscalls"]))
}

/// The process's workload (cgroup path) and its series on a fresh scrape: a family's value
/// with the workload's labels and `labels` (NaN when absent).
fn workload_series(
    agent: &Agent,
    process: &serde_json::Value,
    labels: &[&str],
) -> (String, impl Fn(&str) -> f64) {
    let (_, scrape) = taskscope_e2e::http_get(&agent.addr, "/metrics").expect("scrape");
    let cgroup = process["cgroup"]["path"]
        .as_str()
        .unwrap_or("/")
        .to_string();
    let mut all = vec![format!("cgroup=\"{cgroup}\"")];
    all.extend(labels.iter().map(|l| l.to_string()));
    let series = move |family: &str| {
        let labels: Vec<&str> = all.iter().map(String::as_str).collect();
        taskscope_e2e::sample(&scrape, family, &labels).unwrap_or(f64::NAN)
    };
    (cgroup, series)
}

/// What `/proc/diskstats` says of one device (`major:minor`).
struct DiskStats {
    /// Read requests merged into another before they reached the device.
    reads_merged: u64,
    /// Write requests merged into another before they reached the device.
    writes_merged: u64,
    sectors_written: u64,
    /// Time the device's write requests took, summed (ms), fsync's empty preflush ones included.
    write_ms: u64,
    /// Time its flush requests took (ms; Linux 5.5+).
    flush_ms: u64,
}

fn diskstats(device: &str) -> DiskStats {
    let text = std::fs::read_to_string("/proc/diskstats").expect("diskstats");
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if format!("{}:{}", f[0], f[1]) == device {
            let field = |i: usize| -> u64 {
                f.get(i)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("diskstats field {i}: {line}"))
            };
            return DiskStats {
                reads_merged: field(4),
                writes_merged: field(8),
                sectors_written: field(9),
                write_ms: field(10),
                flush_ms: field(19),
            };
        }
    }
    panic!("device {device} not in /proc/diskstats");
}

fn device_written_bytes(node: &serde_json::Value, device: &str) -> u64 {
    node["block_devices"]
        .as_array()
        .expect("block_devices")
        .iter()
        .filter(|d| d["device"] == device && d["op"] == "write")
        .map(|d| d["bytes"].as_u64().unwrap_or(0))
        .sum()
}

/// Where the O_DIRECT workloads do their IO, and its device: a file `name` on the disk that
/// holds the target directory or, in the kernel matrix's virtual machines, the whole virtio
/// disk given in TASKSCOPE_DIRECT_WRITE_TARGET.
fn direct_io_target(name: &str) -> (std::path::PathBuf, u64) {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    match std::env::var_os("TASKSCOPE_DIRECT_WRITE_TARGET") {
        Some(disk) => {
            let meta = std::fs::metadata(&disk).expect("TASKSCOPE_DIRECT_WRITE_TARGET");
            assert!(
                meta.file_type().is_block_device(),
                "{disk:?} is not a block device"
            );
            (std::path::PathBuf::from(disk), meta.rdev())
        }
        None => {
            let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
            let dev = std::fs::metadata(dir).expect("target dir").dev();
            (dir.join(name), dev)
        }
    }
}

#[test]
fn direct_writes_are_attributed_to_the_writer_and_the_device_within_1_percent() {
    let agent = Agent::start(&[]);
    let (path, dev) = direct_io_target("direct-write.bin");
    let device = format!("{}:{}", libc::major(dev), libc::minor(dev));
    let bytes: u64 = 32 << 20;

    // In a cgroup of its own, so that its workload's series are the writer's alone.
    let cgroup_dir = std::path::Path::new(&taskscope_e2e::cgroup2_root())
        .join(format!("taskscope-direct-write-{}", std::process::id()));
    std::fs::create_dir(&cgroup_dir).expect("create cgroup");

    let node_before = wait_fresh_node(&agent);
    let lost_before = agent.lost("io_starts_map", "map_full");
    let missed_before = completions_missed(&agent);
    let disk_before = diskstats(&device);
    let child = Workload::run_in_cgroups(
        &[&cgroup_dir],
        &[
            "direct-write",
            path.to_str().expect("path"),
            &bytes.to_string(),
        ],
    );
    let proc_write_bytes = proc_field(child.pid(), "io", "write_bytes");
    let process = agent.process_after(child.pid(), monotonic_ns());
    let disk_after = diskstats(&device);
    let node_after = wait_fresh_node(&agent);

    let measured = process["block_io"]["write_bytes"]
        .as_u64()
        .expect("write_bytes");
    assert_close(
        "block bytes written vs bytes the workload wrote",
        measured,
        bytes,
        0.01,
    );
    assert_close(
        "block bytes written vs /proc/<pid>/io write_bytes",
        measured,
        proc_write_bytes,
        0.01,
    );
    assert!(process["block_io"]["write_requests"].as_u64().unwrap_or(0) > 0);
    // The same bytes on /metrics, labelled with the device, in the writer's workload.
    let (_, scrape) = taskscope_e2e::http_get(&agent.addr, "/metrics").expect("scrape");
    let cgroup = process["cgroup"]["path"]
        .as_str()
        .unwrap_or("/")
        .to_string();
    let on_metrics: f64 = scrape
        .lines()
        .filter(|l| l.starts_with("taskscope_block_io_bytes_total{"))
        .filter(|l| l.contains(&format!("cgroup=\"{cgroup}\"")))
        .filter(|l| l.contains(&format!("device=\"{device}\"")) && l.contains("op=\"write\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    println!("taskscope_block_io_bytes_total{{cgroup=\"{cgroup}\",device=\"{device}\",op=\"write\"}} = {on_metrics}");
    assert!(on_metrics >= bytes as f64, "{on_metrics} < {bytes}");
    // Its requests' latency: every one completed (fsync waited), so the histogram counts them
    // all; their summed latency is part of the device's write time in /proc/diskstats.
    let series = |family: &str| -> f64 {
        scrape
            .lines()
            .find(|l| {
                l.starts_with(family)
                    && l.contains(&format!("cgroup=\"{cgroup}\""))
                    && l.contains(&format!("device=\"{device}\""))
                    && l.contains("op=\"write\"")
            })
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(f64::NAN)
    };
    let requests = series("taskscope_block_io_requests_total{");
    let completed = series("taskscope_block_io_latency_seconds_count{");
    let latency_ms = series("taskscope_block_io_latency_seconds_sum{") * 1e3;
    let device_ms = disk_after.write_ms - disk_before.write_ms;
    let flush_ms = disk_after.flush_ms - disk_before.flush_ms;
    // The kernel counts fsync's empty preflush request as a write that lasts as long as the
    // flush; before Linux 6.5 (no block_io_start) the agent does not see that request, so the
    // lower bound leaves the flush time out.
    let data_ms = device_ms.saturating_sub(flush_ms);
    println!(
        "workload write requests {requests}, latency histogram count {completed}; its latency sum {latency_ms:.1} ms vs {device_ms} ms the device spent writing in the window ({flush_ms} ms of it flushing; /proc/diskstats, all writers): must be at most the write time (+1 ms of rounding) and at least half of it without the flushes"
    );
    // Every request completes, except one the scheduler merged into another (it never
    // completes on its own; the kernel counts it as merged) and one whose completion the
    // hook missed because it was already running on that CPU (counted as a recursion miss).
    let merged = (disk_after.writes_merged - disk_before.writes_merged) as f64;
    let missed = (completions_missed(&agent) - missed_before) as f64;
    println!(
        "without a latency: {}; writes merged away on {device} (/proc/diskstats, all writers): {merged}; completions the hook missed (recursion): {missed}",
        requests - completed
    );
    assert!(completed <= requests, "{completed} completed of {requests}");
    assert!(
        completed + merged + missed >= requests,
        "{completed} completed + {merged} merged + {missed} missed < {requests} requests"
    );
    // The fsync's flush and the journal's writes complete too: none is taken for a lost start.
    let lost = agent.lost("io_starts_map", "map_full") - lost_before;
    println!("io_starts_map/map_full rose by {lost} (table at its default size)");
    assert_eq!(lost, 0);
    assert!(latency_ms <= device_ms as f64 + 1.0 && latency_ms >= 0.5 * data_ms as f64);
    // Everyone's writes to the device in the window (journal and writeback too), both ways.
    assert_close(
        &format!("device {device} bytes written vs /proc/diskstats"),
        device_written_bytes(&node_after, &device) - device_written_bytes(&node_before, &device),
        (disk_after.sectors_written - disk_before.sectors_written) * 512,
        0.01,
    );
    child.finish();
    if std::fs::metadata(&path).is_ok_and(|m| m.is_file()) {
        let _ = std::fs::remove_file(path);
    }
    let _ = std::fs::remove_dir(&cgroup_dir);
}

/// Requests started and requests completed (the latency histogram's count) on every device.
fn node_requests(node: &serde_json::Value) -> (u64, u64) {
    let devices = node["block_devices"].as_array().expect("block_devices");
    let sum = |f: &dyn Fn(&serde_json::Value) -> u64| devices.iter().map(f).sum::<u64>();
    (
        sum(&|d| d["requests"].as_u64().unwrap_or(0)),
        sum(&|d| {
            d["latency"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|b| b["count"].as_u64().unwrap_or(0))
                .sum()
        }),
    )
}

#[test]
fn block_requests_whose_start_the_full_table_lost_are_counted() {
    // Room for 16 requests in flight, against submissions of 128 O_DIRECT reads at once (one
    // io_submit plugs them: at least 32 start before any is dispatched): the LRU table evicts
    // starts of requests still in flight, whose latency is then lost.
    let agent = Agent::start(&["--max-io-requests", "16"]);
    let (path, dev) = direct_io_target(&format!("aio-reads-{}.bin", std::process::id()));
    let device = format!("{}:{}", libc::major(dev), libc::minor(dev));
    let cgroup_dir = std::path::Path::new(&taskscope_e2e::cgroup2_root())
        .join(format!("taskscope-aio-reads-{}", std::process::id()));
    std::fs::create_dir(&cgroup_dir).expect("create cgroup");

    let node_before = wait_fresh_node(&agent);
    let lost_before = agent.lost("io_starts_map", "map_full");
    let missed_before = completions_missed(&agent);
    let disk_before = diskstats(&device);
    let child = Workload::run_in_cgroups(
        &[&cgroup_dir],
        &["aio-reads", path.to_str().expect("path"), "16", "128"],
    );
    let process = agent.process_after(child.pid(), monotonic_ns());
    let node_after = wait_fresh_node(&agent);
    let lost = agent.lost("io_starts_map", "map_full") - lost_before;
    let missed = completions_missed(&agent) - missed_before;
    let merged = diskstats(&device).reads_merged - disk_before.reads_merged;

    let device_label = format!("device=\"{device}\"");
    let (_, series) = workload_series(&agent, &process, &[&device_label, "op=\"read\""]);
    let series = |family| series(family) as u64;
    let started = series("taskscope_block_io_requests_total");
    let measured = series("taskscope_block_io_latency_seconds_count");
    let missing = started - measured;
    let (node_started, _) = node_requests(&node_after);
    let others = node_started - node_requests(&node_before).0 - started;
    println!(
        "the workload's reads on {device}: {started} started, {measured} with a latency, {missing} without; io_starts_map/map_full rose by {lost}; other requests on the node in the window: {others}; reads merged away on {device} (/proc/diskstats, all readers): {merged}; completions the hook missed (recursion): {missed}"
    );
    assert!(
        started >= 16 * 128,
        "{started} reads started, fewer than the 2048 made"
    );
    assert!(
        missing > 0,
        "128 reads at once never overflowed a table of 16"
    );
    // Every read without a latency is counted, except one the scheduler merged into another
    // request (it never completes on its own; the kernel counts it as merged) and one whose
    // completion ran while the hook was already running on that CPU (the kernel counts it as a
    // recursion miss). The workload's own reads, 64 KiB apart, do not merge; its other reads
    // (of its binary, say) may. Anything more than the misses was someone else's request.
    assert!(
        lost + merged + missed >= missing,
        "{lost} counted + {merged} merged + {missed} missed < {missing} lost"
    );
    assert!(
        lost <= missing + others,
        "{lost} counted > {missing} + {others}"
    );
    child.finish();
    if std::fs::metadata(&path).is_ok_and(|m| m.is_file()) {
        let _ = std::fs::remove_file(&path);
    }
    let _ = std::fs::remove_dir(&cgroup_dir);
}

/// Runs of the block completion hook the kernel skipped: it was already running on that CPU.
fn completions_missed(agent: &Agent) -> u64 {
    ["ts_io_done_btf", "ts_io_done_raw"]
        .iter()
        .map(|program| agent.lost(program, "recursion_miss"))
        .sum()
}

/// /api/v1/node from a kernel read that started after now.
fn wait_fresh_node(agent: &Agent) -> serde_json::Value {
    let after = monotonic_ns();
    taskscope_e2e::wait_for(
        "a fresh node read",
        std::time::Duration::from_secs(20),
        || {
            let node = agent.get("/api/v1/node");
            (node["collected_at_monotonic_ns"].as_u64()? > after).then_some(node)
        },
    )
}

#[test]
fn per_cpu_busy_share_matches_proc_stat() {
    // Every request reads the kernel afresh, so that the agent's window and /proc/stat's
    // line up to within a request's latency.
    let agent = Agent::start(&["--max-staleness", "0ns"]);
    let stat_before = proc_stat_cpus();
    let before = wait_fresh_node(&agent);
    // One core's worth of work for a while, so that busy and idle both move.
    let child = Workload::run(&["cpu-burn", "1500"]);
    let stat_after = proc_stat_cpus();
    let after = wait_fresh_node(&agent);
    child.finish();
    for (cpu, ((b0, i0), (b1, i1))) in stat_before.iter().zip(&stat_after).enumerate() {
        let get = |node: &serde_json::Value, key: &str| node["cpus"][cpu][key].as_u64().expect(key);
        let busy = get(&after, "busy_ns") - get(&before, "busy_ns");
        let idle = get(&after, "idle_ns") - get(&before, "idle_ns");
        let agent_share = busy as f64 / (busy + idle) as f64;
        let stat_share = (b1 - b0) as f64 / ((b1 - b0) + (i1 - i0)) as f64;
        println!(
            "cpu {cpu}: busy share taskscope {:.2}% ({busy} ns busy, {idle} ns idle), /proc/stat {:.2}% (allowed 3 points)",
            agent_share * 100.0,
            stat_share * 100.0
        );
        assert!(
            (agent_share - stat_share).abs() <= 0.03,
            "cpu {cpu}: busy share {agent_share:.4} vs /proc/stat {stat_share:.4}"
        );
        assert!(after["cpus"][cpu]["observed"] == true);
    }
}

#[test]
fn the_agents_own_activity_is_not_counted() {
    let agent = Agent::start(&[]);
    // Make the agent work: every request reads the maps and answers.
    for _ in 0..20 {
        agent.get("/api/v1/processes");
    }
    let (agent_cpu, _, _) = schedstat(agent.pid());
    let me = agent.process_after(agent.pid(), monotonic_ns());
    println!(
        "agent pid {}: kernel says {agent_cpu} ns on CPU; taskscope counted sched {} and syscalls {}",
        agent.pid(),
        me["sched"],
        me["syscalls"]["count"]
    );
    assert!(agent_cpu > 0);
    assert_eq!(me["sched"]["on_cpu_ns"].as_u64(), Some(0));
    assert_eq!(me["sched"]["voluntary_switches"].as_u64(), Some(0));
    assert_eq!(me["sched"]["involuntary_switches"].as_u64(), Some(0));
    assert_eq!(me["syscalls"]["count"].as_u64(), Some(0));
}
