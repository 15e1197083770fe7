//! Process lifecycle as the agent sees it: a known process tree, threads, pid reuse, slow
//! syscalls, and the raw_tp fallback. Run as root (`cargo xtask test`).

use std::{process::Command, time::Duration};

use serde_json::Value;
use taskscope_e2e::{monotonic_ns, wait_for, workload_binary, Agent, Workload};

fn children_of(processes: &[Value], ppid: u32) -> Vec<Value> {
    processes
        .iter()
        .filter(|p| p["ppid"].as_u64() == Some(ppid as u64))
        .cloned()
        .collect()
}

#[test]
fn a_known_process_tree_has_the_right_parents_exit_codes_signals_and_threads() {
    let agent = Agent::start(&[]);
    let workload = workload_binary();
    // The threads burn 1 s each: the process's exit after it reads its CPU clock (6 to 19 ms
    // in the kernel matrix's emulated machines) must stay well inside the 2% compared below.
    let script = format!(
        r#"
        sh -c 'exit 3' &
        sleep 30 & victim=$!
        sh -c 'exec {w} exit 0' &
        echo | {w} threads 3 1000 > "$THREADS_OUT" &
        sleep 0.2
        kill -TERM $victim
        wait
        "#,
        w = workload.display()
    );
    let threads_out =
        std::env::temp_dir().join(format!("taskscope-threads-{}", std::process::id()));
    let status = Command::new("sh")
        .arg("-c")
        .arg(&script)
        .env("THREADS_OUT", &threads_out)
        .spawn()
        .expect("sh");
    let root = status.id();
    let output = status.wait_with_output().expect("wait");
    assert!(output.status.success());
    // "ready <tid,tid,tid> <process CPU ns>" (CLOCK_PROCESS_CPUTIME_ID at the end).
    let threads_line = std::fs::read_to_string(&threads_out).expect("thread ids");
    let mut fields = threads_line.split_whitespace().skip(1);
    let thread_tids: Vec<u64> = fields
        .next()
        .expect("tids")
        .split(',')
        .map(|t| t.parse().expect("tid"))
        .collect();
    let threaded_cpu_ns: u64 = fields.next().expect("cpu").parse().expect("cpu ns");
    let _ = std::fs::remove_file(&threads_out);

    let processes = agent.processes_after(monotonic_ns());
    let root_process = processes
        .iter()
        .find(|p| p["pid"].as_u64() == Some(root as u64))
        .unwrap_or_else(|| panic!("root sh {root} not seen"));
    assert_eq!(
        root_process["ppid"].as_u64(),
        Some(std::process::id() as u64)
    );
    assert_eq!(root_process["exit"]["kind"], "exited");
    assert_eq!(root_process["exit"]["code"], 0);

    let children = children_of(&processes, root);
    for c in &children {
        println!("child {} {:?} exit {}", c["pid"], c["cmdline"], c["exit"]);
    }
    let exit3 = children
        .iter()
        .find(|c| c["exit"]["code"] == 3)
        .expect("a child that exited 3");
    assert_eq!(exit3["exit"]["kind"], "exited");
    let killed = children
        .iter()
        .find(|c| c["cmdline"] == serde_json::json!(["sleep", "30"]))
        .expect("the sleep 30 child");
    assert_eq!(killed["exit"]["kind"], "signaled");
    assert_eq!(killed["exit"]["signal"], 15);
    assert_eq!(killed["exit"]["signal_name"], "SIGTERM");
    let execed = children
        .iter()
        .find(|c| c["cmdline"].get(1) == Some(&Value::from("exit")))
        .expect("the child that exec'd the workload");
    assert_eq!(
        execed["exe"].as_str(),
        Some(
            workload
                .canonicalize()
                .expect("path")
                .to_str()
                .expect("utf8")
        )
    );
    assert_eq!(execed["exit"]["code"], 0);
    let threaded = children
        .iter()
        .find(|c| c["cmdline"].get(1) == Some(&Value::from("threads")))
        .expect("the threaded child");
    assert_eq!(
        threaded["threads"]["started"].as_u64(),
        Some(4),
        "main + 3 threads"
    );
    taskscope_e2e::assert_close(
        "on-CPU ns of 3 threads rolled up into their process vs CLOCK_PROCESS_CPUTIME_ID",
        threaded["sched"]["on_cpu_ns"].as_u64().expect("on_cpu_ns"),
        threaded_cpu_ns,
        0.02,
    );
    for tid in thread_tids {
        assert!(
            processes.iter().all(|p| p["pid"].as_u64() != Some(tid)),
            "thread {tid} listed as a process"
        );
    }
}

#[test]
fn a_reused_pid_is_a_new_process() {
    let agent = Agent::start(&[]);
    let first = Command::new(workload_binary())
        .args(["exit", "7"])
        .spawn()
        .expect("spawn");
    let pid = first.id();
    assert_eq!(
        first.wait_with_output().expect("wait").status.code(),
        Some(7)
    );
    // Distinct start ticks, then ask the kernel to hand out `pid` again (root, init pid ns).
    std::thread::sleep(Duration::from_millis(30));
    let second = wait_for(
        "the kernel to reuse the pid",
        Duration::from_secs(30),
        || {
            std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string())
                .expect("ns_last_pid");
            let child = Command::new(workload_binary())
                .args(["exit", "9"])
                .spawn()
                .expect("spawn");
            if child.id() == pid {
                Some(child)
            } else {
                let _ = child.wait_with_output();
                None
            }
        },
    );
    assert_eq!(
        second.wait_with_output().expect("wait").status.code(),
        Some(9)
    );
    let seen = wait_for(
        "both processes with the pid",
        Duration::from_secs(20),
        || {
            let answer = agent.get(&format!("/api/v1/processes/{pid}"));
            let list = answer["processes"].as_array()?.clone();
            (list.len() == 2 && list.iter().all(|p| p["state"] == "exited")).then_some(list)
        },
    );
    println!("pid {pid}: {} / {}", seen[0]["key"], seen[1]["key"]);
    assert_ne!(seen[0]["key"], seen[1]["key"]);
    assert_eq!(seen[0]["exit"]["code"], 9, "newest first");
    assert_eq!(seen[1]["exit"]["code"], 7);
}

#[test]
fn a_zombie_from_before_the_agent_is_exited_and_not_lost_when_reaped() {
    // The test is its parent and does not reap it yet: a zombie when the agent starts.
    let mut zombie = Command::new(workload_binary())
        .args(["exit", "5"])
        .spawn()
        .expect("spawn");
    let pid = zombie.id();
    wait_for("the child to exit", Duration::from_secs(10), || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat.rsplit(')')
            .next()?
            .trim_start()
            .starts_with('Z')
            .then_some(())
    });
    let agent = Agent::start(&[]);
    let found = agent.get(&format!("/api/v1/processes/{pid}"))["processes"][0].clone();
    println!("zombie {pid} as the agent found it: {found}");
    assert_eq!(found["state"], "exited");
    assert_eq!(found["exit"]["code"], 5, "the exit code from /proc");
    assert_eq!(zombie.wait().expect("reap").code(), Some(5));
    // Sweeps look for live processes gone from /proc every 10 polls (2 s here): a lost exit
    // is counted at the second sweep after the process is gone.
    std::thread::sleep(Duration::from_secs(5));
    let lost = agent.lost("task_model", "exit_not_seen");
    println!("exit_not_seen after it was reaped: {lost}");
    assert_eq!(
        lost, 0,
        "a process that exited before the agent was counted lost"
    );
}

#[test]
fn slow_syscalls_reach_the_process_one_by_one() {
    let agent = Agent::start(&["--slow-syscall", "100ms"]);
    let child = Workload::run(&["sleep", "300"]);
    let process = agent.process_after(child.pid(), monotonic_ns());
    let slow = process["slow_syscalls"].as_array().expect("slow_syscalls");
    println!("slow syscalls: {slow:?}");
    let sleep = slow
        .iter()
        .find(|s| s["name"] == "clock_nanosleep" || s["name"] == "nanosleep")
        .expect("the 300 ms sleep");
    let ns = sleep["duration_ns"].as_u64().expect("duration");
    assert!(
        (300_000_000..1_000_000_000).contains(&ns),
        "sleep took {ns} ns"
    );
    child.finish();
}

#[test]
fn raw_tracepoints_work_as_the_fallback() {
    let agent = Agent::start(&["--attach", "raw-tp"]);
    let status = agent.get("/api/v1/status");
    for hook in status["hooks"].as_array().expect("hooks") {
        assert_eq!(hook["attach_type"], "raw_tp", "{hook}");
    }
    let child = Workload::run(&["cpu-burn", "200"]);
    let process = agent.process_after(child.pid(), monotonic_ns());
    assert!(process["sched"]["on_cpu_ns"].as_u64().unwrap_or(0) >= 190_000_000);
    assert_eq!(process["observed_from_start"], true);
    child.finish();
}

#[test]
fn the_default_attach_type_is_tp_btf_on_this_kernel() {
    let agent = Agent::start(&[]);
    let status = agent.get("/api/v1/status");
    for hook in status["hooks"].as_array().expect("hooks") {
        assert_eq!(hook["attach_type"], "tp_btf", "{hook}");
    }
    let lost: u64 = status["lost"]
        .as_array()
        .expect("lost")
        .iter()
        .map(|l| l["count"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(
        lost, 0,
        "nothing lost on an idle machine: {}",
        status["lost"]
    );
}

#[test]
fn a_full_ring_buffer_is_counted_not_silent() {
    // The smallest ring buffer, and an agent that cannot drain it: stopped with SIGSTOP while
    // 300 processes start and exit (each makes fork, exec and exit events).
    let agent = Agent::start(&["--ring-buffer-kib", "64"]);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(agent.pid() as i32, libc::SIGSTOP) };
    let status = Command::new("sh")
        .arg("-c")
        .arg("for i in $(seq 300); do /bin/true; done")
        .status();
    unsafe { libc::kill(agent.pid() as i32, libc::SIGCONT) };
    assert!(status.expect("sh").success());
    let lost = wait_for("the loss to be reported", Duration::from_secs(20), || {
        let status = agent.get("/api/v1/status");
        status["lost"]
            .as_array()?
            .iter()
            .find(|l| l["source"] == "ringbuf" && l["reason"] == "buffer_full")?["count"]
            .as_u64()
            .filter(|&n| n > 0)
    });
    let events = agent.get("/api/v1/status")["events"].clone();
    println!("ring buffer reservations that failed: {lost}; events received: {events}");
    // 300 x (fork + exec + exit) = 900 events were made; what did not fit is counted.
    let received: u64 = ["fork", "exec", "exit"]
        .iter()
        .map(|k| events[k].as_u64().unwrap_or(0))
        .sum();
    assert!(
        received + lost >= 900,
        "received {received} + lost {lost} < 900 made"
    );
}

#[test]
fn cgroup_and_uid_come_from_the_exec() {
    use std::os::unix::fs::MetadataExt;
    let agent = Agent::start(&[]);
    let root = taskscope_e2e::cgroup2_root();
    let name = format!("taskscope-e2e-{}", std::process::id());
    let dir = std::path::Path::new(&root).join(&name);
    std::fs::create_dir(&dir).expect("create a cgroup");
    let id = std::fs::metadata(&dir).expect("cgroup").ino();
    // Join the cgroup, drop to nobody, then exec the workload: the exec carries both.
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec setpriv --reuid=65534 --regid=65534 --clear-groups {} sleep 30000",
        dir.display(),
        workload_binary().display()
    );
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(&script)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("sh");
    let pid = child.id();
    let process = wait_for("the exec into the cgroup", Duration::from_secs(20), || {
        let p = agent.process_after(pid, monotonic_ns());
        (p["comm"] == "workload").then_some(p)
    });
    println!(
        "pid {pid}: cgroup {} uid {}",
        process["cgroup"], process["uid"]
    );
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir(&dir);
    assert_eq!(process["cgroup"]["path"], format!("/{name}"));
    assert_eq!(process["cgroup"]["id"].as_u64(), Some(id));
    assert_eq!(process["uid"].as_u64(), Some(65534));
}
