//! The agent as a program: `check`, shutdown, and clear errors with a non-zero exit code.

use std::{process::Command, time::Duration};

use taskscope_e2e::{agent_binary, free_port, http_get, wait_for, Agent};

fn loaded_taskscope_programs() -> usize {
    let out = Command::new("bpftool")
        .args(["prog", "show"])
        .output()
        .expect("bpftool (installed by cargo xtask setup)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(" name ts_"))
        .count()
}

/// The kernel frees a program shortly after its last reference goes (RCU), so counts are
/// awaited rather than read once.
fn await_loaded_programs(count: usize, when: &str) {
    wait_for(
        &format!("{count} taskscope programs loaded {when}"),
        Duration::from_secs(30),
        || (loaded_taskscope_programs() == count).then_some(()),
    );
}

#[test]
fn sigterm_leaves_nothing_attached_or_loaded() {
    // Earlier tests' agents (and `check`) may still be on their way out.
    await_loaded_programs(0, "before the agent starts");
    let mut agent = Agent::start(&[]);
    let during = loaded_taskscope_programs();
    let hooks = agent.get("/api/v1/status")["hooks"]
        .as_array()
        .map_or(0, Vec::len);
    let status = agent.stop();
    println!("taskscope programs loaded while running: {during}");
    assert!(
        status.success(),
        "exit status {status}: {}",
        agent.log_text()
    );
    assert!(hooks >= 10, "the agent reports {hooks} hooks");
    assert_eq!(during, hooks, "one program per hook");
    await_loaded_programs(0, "after SIGTERM");
    assert!(agent.log_text().contains("nothing is left attached"));
}

#[test]
fn check_reports_every_requirement_and_succeeds_here() {
    let out = Command::new(agent_binary())
        .arg("check")
        .output()
        .expect("check");
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}");
    for name in [
        "kernel version",
        "kernel BTF",
        "capabilities",
        "attach type tp_btf",
        "attach type raw_tp",
        "tracefs",
        "bpffs",
        "bpf_stats",
    ] {
        assert!(
            text.lines()
                .any(|l| l.contains(name) && (l.starts_with("ok") || l.starts_with("missing"))),
            "no line for {name}"
        );
    }
    assert!(out.status.success());
}

/// `check` and `run` agree on what this kernel gives: `check`'s verdict (exit 0, or exit 3 with
/// "runs, degraded: ...") is what `/api/v1/status` and `/health` say once `run` is up, in the
/// same words. Runs on the host and on every kernel of the matrix (kernel_matrix.rs).
#[test]
fn check_and_run_agree_on_what_this_kernel_gives() {
    let out = Command::new(agent_binary())
        .arg("check")
        .output()
        .expect("check");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("{text}");
    let verdict = text.lines().last().unwrap_or("").to_string();
    let code = out.status.code();
    assert!(
        matches!(code, Some(0) | Some(3)),
        "check says run cannot work here ({code:?}): {verdict}"
    );

    let agent = Agent::start(&[]);
    let status = agent.get("/api/v1/status");
    let health = wait_for("a health evaluation", Duration::from_secs(30), || {
        // 503 "starting" until the first evaluation, which may come after /livez's first 200.
        let (code, body) = http_get(&agent.addr, "/health/detailed").ok()?;
        let health: serde_json::Value = serde_json::from_str(&body).ok().filter(|_| code == 200)?;
        health["components"]["probes_scheduling"]["status"]
            .is_string()
            .then_some(health)
    });
    let probes: Vec<(String, String, String)> = ["scheduling", "lifecycle", "syscalls", "block_io"]
        .iter()
        .map(|group| {
            let c = &health["components"][format!("probes_{group}")];
            (
                group.to_string(),
                c["status"].as_str().unwrap_or("").to_string(),
                c["message"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    println!(
        "check: {verdict} (exit {code:?})\n/api/v1/status degraded: {}\n/health probes: {probes:?}",
        status["degraded"]
    );
    let (ready, body) = taskscope_e2e::http_get(&agent.addr, "/readyz").expect("readyz");
    if code == Some(0) {
        assert_eq!(verdict, "taskscope run can work on this host");
        assert!(status.get("degraded").is_none(), "{}", status["degraded"]);
        for (group, state, message) in &probes {
            assert_eq!(state, "healthy", "probes_{group}: {message}");
        }
    } else {
        let summary = verdict
            .strip_prefix("taskscope run ")
            .expect("the verdict line");
        assert!(summary.starts_with("runs, degraded: "), "{verdict}");
        assert_eq!(status["degraded"].as_str(), Some(summary));
        for (group, state, message) in &probes {
            if state == "degraded" {
                assert!(
                    summary.contains(message.as_str()),
                    "probes_{group}: {message}"
                );
            } else {
                assert_eq!(state, "healthy", "probes_{group}: {message}");
            }
        }
        assert!(probes.iter().any(|(_, state, _)| state == "degraded"));
    }
    // Missing optional hooks do not take the agent out of service.
    assert_eq!(ready, 200, "{body}");
}

/// Runs the agent with `args`, expects it to fail, and returns what it printed on stderr.
fn failing_agent(args: &[&str]) -> String {
    let out = Command::new(agent_binary())
        .args(args)
        .output()
        .expect("run the agent");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    println!("{stderr}");
    assert!(!out.status.success(), "{args:?} succeeded");
    stderr
}

#[test]
fn a_port_in_use_is_a_clear_error() {
    let port = free_port();
    let _taken = std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind");
    let stderr = failing_agent(&["run", "--listen", &format!("127.0.0.1:{port}")]);
    assert!(
        stderr.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{stderr}"
    );
    assert!(stderr.contains("--listen"));
}

/// The agent as `nobody` with no capabilities at all (setpriv, from util-linux).
fn unprivileged_agent(args: &[&str]) -> std::process::Output {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args(["--inh-caps=-all", "--bounding-set=-all"])
        .arg(agent_binary())
        .args(args)
        .output()
        .expect("setpriv")
}

#[test]
fn without_capabilities_run_fails_and_check_says_why() {
    let addr = format!("127.0.0.1:{}", free_port());
    let run = unprivileged_agent(&["run", "--listen", &addr]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    println!("{stderr}");
    assert!(!run.status.success());
    assert!(stderr.contains("needs CAP_BPF and CAP_PERFMON"), "{stderr}");

    let check = unprivileged_agent(&["check"]);
    let text = String::from_utf8_lossy(&check.stdout);
    println!("{text}");
    assert!(!check.status.success());
    assert!(
        text.lines().any(|l| l.starts_with("missing  capabilities")),
        "{text}"
    );
}

/// Zero and absurd durations, sizes and queue lengths (`--poll-interval 0s` used to crash the
/// collector after attaching; `--otlp-queue 9223372036854775807` panicked): exit 2 naming the
/// flag or key and its range, before anything is loaded.
#[test]
fn zero_and_absurd_values_stop_the_agent_before_anything_is_loaded() {
    let listen = format!("127.0.0.1:{}", free_port());
    for (flag, value, range) in [
        ("--poll-interval", "0s", "from 10ms to 1h"),
        ("--drain-interval", "0s", "from 1ms to 10s"),
        ("--otlp-queue", "9223372036854775807", "from 1 to 1000000"),
        ("--max-series", "0", "from 1 to 100000000"),
        ("--exited-retention", "100000h", "from 1s to 24h"),
    ] {
        let out = Command::new(agent_binary())
            .args(["run", "--listen", &listen, flag, value])
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        println!("{flag} {value}: exit {:?}: {stderr}", out.status.code());
        assert_eq!(out.status.code(), Some(2), "{flag} {value}");
        assert!(stderr.contains(flag) && stderr.contains(range), "{stderr}");
        assert!(
            !stderr.contains("attached"),
            "programs were loaded: {stderr}"
        );
    }
    // The same in the config file, naming the key.
    let config = std::env::temp_dir().join(format!("taskscope-range-{}.toml", std::process::id()));
    std::fs::write(&config, "poll_interval = \"0s\"\n").expect("config");
    let out = Command::new(agent_binary())
        .args(["run", "--listen", &listen, "--config"])
        .arg(&config)
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("config file: exit {:?}: {stderr}", out.status.code());
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr.contains("key `poll_interval`") && stderr.contains("from 10ms to 1h"),
        "{stderr}"
    );
    let _ = std::fs::remove_file(&config);
}

#[test]
fn bad_flags_are_rejected_with_the_reason() {
    let out = Command::new(agent_binary())
        .args(["run", "--poll-interval", "5 parsecs"])
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    println!("{stderr}");
    assert!(
        stderr.contains("invalid value '5 parsecs' for '--poll-interval <POLL_INTERVAL>': '5 parsecs' has unknown unit 'parsecs'"),
        "{stderr}"
    );
}

#[test]
fn a_kernel_without_btf_is_a_clear_error() {
    let listen = format!("127.0.0.1:{}", free_port());
    let stderr = failing_agent(&[
        "run",
        "--listen",
        &listen,
        "--kernel-btf",
        "/nonexistent/vmlinux",
    ]);
    assert!(
        stderr.contains("cannot read kernel BTF at /nonexistent/vmlinux"),
        "{stderr}"
    );
    assert!(stderr.contains("CONFIG_DEBUG_INFO_BTF"), "{stderr}");

    let check = Command::new(agent_binary())
        .args(["check", "--kernel-btf", "/nonexistent/vmlinux"])
        .output()
        .expect("check");
    let text = String::from_utf8_lossy(&check.stdout);
    assert!(!check.status.success());
    assert!(
        text.lines().any(|l| l.starts_with("missing  kernel BTF")),
        "{text}"
    );
}

#[test]
fn an_invalid_process_selector_is_rejected_at_start_up() {
    let out = Command::new(agent_binary())
        .args(["run", "--process-metrics", "name=postgres"])
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stderr}");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr.contains("invalid process selector 'name=postgres': unknown key 'name'"),
        "{stderr}"
    );
}
