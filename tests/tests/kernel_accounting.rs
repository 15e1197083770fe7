//! The agent's numbers against the kernel's own accounting (/proc/<pid>/schedstat, status, io),
//! with the real programs loaded into the running kernel. Run as root (`cargo xtask test`).

use taskscope_e2e::{
    assert_close, assert_count_close, io_field, monotonic_ns, schedstat, status_field, Agent,
    Workload,
};

#[test]
fn on_cpu_time_of_a_cpu_bound_child_matches_schedstat_within_2_percent() {
    let agent = Agent::start(&[]);
    let child = Workload::run(&["cpu-burn", "1000"]);
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
    let truth: Vec<_> = children
        .iter()
        .map(|c| {
            (
                schedstat(c.pid()),
                status_field(c.pid(), "voluntary_ctxt_switches"),
                status_field(c.pid(), "nonvoluntary_ctxt_switches"),
            )
        })
        .collect();
    let read_at = monotonic_ns();
    let mut total_wait = 0;
    for (child, ((on_cpu, runq, _), voluntary, involuntary)) in children.iter().zip(&truth) {
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
        assert!(
            hist_total > 0,
            "pid {pid}: empty run-queue latency histogram"
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
    let agent = Agent::start(&[]);
    let (calls, failures) = (5000u64, 1234u64);
    let child = Workload::run(&["syscalls", &calls.to_string(), &failures.to_string()]);
    let process = agent.process_after(child.pid(), monotonic_ns());
    let getpgid = process["syscalls"]["by_syscall"]
        .as_array()
        .expect("by_syscall")
        .iter()
        .find(|s| s["name"] == "getpgid")
        .cloned()
        .unwrap_or_else(|| panic!("no getpgid in {}", process["syscalls"]));
    println!(
        "getpgid: taskscope {getpgid}, workload made {calls} calls, {failures} failed with ESRCH"
    );
    assert_eq!(getpgid["count"].as_u64(), Some(calls));
    assert_eq!(getpgid["errors"].as_u64(), Some(failures));
    assert_eq!(getpgid["errnos"][0]["name"], "ESRCH");
    assert_eq!(getpgid["errnos"][0]["count"].as_u64(), Some(failures));
    assert_eq!(getpgid["errnos"].as_array().map(Vec::len), Some(1));
    let hist_total: u64 = getpgid["latency"]
        .as_array()
        .expect("latency")
        .iter()
        .map(|b| b["count"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(hist_total, calls, "latency histogram holds every call");
    child.finish();
}

#[test]
fn direct_writes_are_attributed_to_the_writer_within_1_percent() {
    let agent = Agent::start(&[]);
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("direct-write.bin");
    let bytes: u64 = 32 << 20;
    let child = Workload::run(&[
        "direct-write",
        path.to_str().expect("path"),
        &bytes.to_string(),
    ]);
    let proc_write_bytes = io_field(child.pid(), "write_bytes");
    let process = agent.process_after(child.pid(), monotonic_ns());
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
    child.finish();
    let _ = std::fs::remove_file(path);
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
