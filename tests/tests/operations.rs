//! Operating the agent: health probes, configuration (file, validation, live reload), the
//! admin API and its token, structured logs, and running with only the documented
//! capabilities. Probe attachment is checked against the kernel's own list of BPF links
//! (bpftool), not against what the agent says.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use taskscope_e2e::{agent_binary, free_port, http_get, http_request, run_shell, wait_for, Agent};

const TOKEN: &str = "e2e-admin-token-0123456789";

fn tmp(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{}-{name}", std::process::id()))
}

/// (status, body as JSON) of a request with the admin token.
fn admin(agent: &Agent, method: &str, path: &str, body: &str) -> (u16, Value) {
    agent.request_with_token(TOKEN, method, path, body)
}

fn health(agent: &Agent) -> (u16, Value) {
    let (code, body) = http_get(&agent.addr, "/health").expect("GET /health");
    (code, serde_json::from_str(&body).expect("JSON health"))
}

/// Our programs' BPF links as the kernel lists them: (link id, program name).
fn kernel_links() -> Vec<(u64, String)> {
    let json = |args: &[&str]| -> Value {
        let out = Command::new("bpftool")
            .args(args)
            .output()
            .expect("bpftool (installed by cargo xtask setup --for-tests)");
        assert!(out.status.success(), "bpftool {args:?}");
        serde_json::from_slice(&out.stdout).expect("bpftool JSON")
    };
    let programs = json(&["-j", "prog", "show"]);
    let name_of = |id: u64| {
        programs
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["id"].as_u64() == Some(id))
            .and_then(|p| p["name"].as_str())
            .unwrap_or("")
            .to_string()
    };
    let mut links: Vec<(u64, String)> = json(&["-j", "link", "show"])
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| Some((l["id"].as_u64()?, name_of(l["prog_id"].as_u64()?))))
        .filter(|(_, name)| name.starts_with("ts_"))
        .collect();
    links.sort();
    links
}

#[test]
fn the_kernel_maps_and_their_memory_are_what_the_kernel_says() {
    let agent = Agent::start(&["--max-tasks", "4096", "--max-io-requests", "1024"]);
    let status = agent.get("/api/v1/status");
    let maps = status["kernel_maps"]
        .as_array()
        .expect("kernel_maps")
        .clone();
    let (_, scrape) = http_get(&agent.addr, "/metrics").expect("scrape");
    let mut total = 0;
    for map in &maps {
        let (name, id) = (
            map["name"].as_str().expect("name"),
            map["id"].as_u64().expect("id"),
        );
        let out = Command::new("bpftool")
            .args(["-j", "map", "show", "id", &id.to_string()])
            .output()
            .expect("bpftool (installed by cargo xtask setup --for-tests)");
        assert!(out.status.success(), "bpftool map show id {id}");
        let kernel: Value = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
        println!(
            "{name:<22} agent: {:>8} entries {:>10} bytes; bpftool: {} {:>8} entries {:>10} bytes",
            map["max_entries"],
            map["bytes"],
            kernel["name"],
            kernel["max_entries"],
            kernel["bytes_memlock"]
        );
        // The kernel keeps 15 bytes of a map's name.
        assert!(
            name.starts_with(kernel["name"].as_str().unwrap_or("?")),
            "{kernel}"
        );
        assert_eq!(map["max_entries"], kernel["max_entries"]);
        let (ours, theirs) = (
            map["bytes"].as_u64().unwrap_or(0),
            kernel["bytes_memlock"].as_u64().unwrap_or(1),
        );
        if kernel["flags"].as_u64().unwrap_or(0) & 1 == 0 {
            assert_eq!(ours, theirs, "{name}: preallocated, fixed");
        } else {
            // BPF_F_NO_PREALLOC: it grows and shrinks as the node's processes come and go,
            // between our read and bpftool's.
            assert!(
                ours.abs_diff(theirs) * 100 <= theirs,
                "{name}: {ours} vs {theirs}"
            );
        }
        let exported = taskscope_e2e::sample(
            &scrape,
            "taskscope_kernel_map_bytes",
            &[&format!("map=\"{name}\"")],
        );
        assert!(exported.is_some(), "{name} not on /metrics");
        total += map["bytes"].as_u64().unwrap_or(0);
    }
    println!(
        "{} maps, {:.1} MiB in all",
        maps.len(),
        total as f64 / (1 << 20) as f64
    );
    let entries = |name: &str| {
        maps.iter()
            .find(|m| m["name"] == name)
            .and_then(|m| m["max_entries"].as_u64())
    };
    assert_eq!(entries("TASKS"), Some(4096));
    assert_eq!(entries("IO_STARTS"), Some(1024));
    assert_eq!(entries("SYSCALLS"), Some(524_288));
    assert_eq!(entries("WORKLOAD_SYSCALLS"), Some(262_144));
}

fn links_of(links: &[(u64, String)], prefixes: &[&str]) -> Vec<(u64, String)> {
    links
        .iter()
        .filter(|(_, n)| prefixes.iter().any(|p| n.starts_with(p)))
        .cloned()
        .collect()
}

const BLOCK_IO_PROGRAMS: &[&str] = &["ts_io_"];
const OTHER_PROGRAMS: &[&str] = &[
    "ts_fork",
    "ts_exec",
    "ts_exit",
    "ts_switch",
    "ts_wakeup",
    "ts_sys_",
];

fn lost_total(status: &Value) -> u64 {
    status["lost"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| l["source"] != "otlp_spans" && l["source"] != "kubernetes_pods")
        .filter_map(|l| l["count"].as_u64())
        .sum()
}

#[test]
fn probes_answer_and_a_reload_under_load_changes_thresholds_and_probe_groups_live() {
    let config = tmp("reload.toml");
    std::fs::write(
        &config,
        "slow_syscall = \"10s\"\nhealth_interval = \"1s\"\n",
    )
    .expect("config");
    let agent = Agent::start_with_env(
        &["--config", config.to_str().expect("path")],
        &[("TASKSCOPE_ADMIN_TOKEN", TOKEN)],
    );
    let (code, body) = http_get(&agent.addr, "/livez").expect("livez");
    assert_eq!((code, body.trim()), (200, "ok"));
    wait_for("/readyz 200", Duration::from_secs(20), || {
        let (code, body) = http_get(&agent.addr, "/readyz").ok()?;
        println!("/readyz: {code} {}", body.trim());
        (code == 200).then_some(())
    });
    let (code, report) = health(&agent);
    println!("/health: {code} {report}");
    assert_eq!(code, 200);
    assert_eq!(report["status"], "healthy");
    for key in [
        "timestamp",
        "version",
        "uptime_seconds",
        "components",
        "message",
    ] {
        assert!(!report[key].is_null(), "/health lacks {key}");
    }
    for component in [
        "probes_scheduling",
        "probes_lifecycle",
        "probes_syscalls",
        "probes_block_io",
        "ring_buffer",
        "task_model",
        "metadata_cgroup",
        "metadata_kubernetes",
        "exporter_prometheus",
        "exporter_otlp_traces",
    ] {
        assert!(
            report["components"][component]["status"].is_string(),
            "/health lacks component {component}"
        );
    }

    // Load: processes starting all the time, and one making 20 ms syscalls (nanosleep).
    let forks = KillOnDrop(
        Command::new("sh")
            .args(["-c", "while :; do /bin/true; sleep 0.01; done"])
            .spawn()
            .expect("sh"),
    );
    let sleeper = KillOnDrop(
        Command::new("sh")
            .args(["-c", "while :; do sleep 0.02; done"])
            .spawn()
            .expect("sh"),
    );
    std::thread::sleep(Duration::from_secs(1));
    let links_before = kernel_links();
    let status_before = agent.get("/api/v1/status");
    let slow_before = status_before["events"]["slow_syscall"]
        .as_u64()
        .unwrap_or(0);
    println!("links before: {links_before:?}; slow syscall events so far: {slow_before}");
    assert_eq!(slow_before, 0, "nothing reaches 10 s");
    assert_eq!(links_of(&links_before, BLOCK_IO_PROGRAMS).len(), 2);

    // The file changes; SIGHUP applies it.
    std::fs::write(
        &config,
        "slow_syscall = \"5ms\"\nhealth_interval = \"1s\"\ndisable_probes = [\"block_io\"]\n",
    )
    .expect("config");
    let _ = Command::new("kill")
        .args(["-HUP", &agent.pid().to_string()])
        .status();
    let slow_after = wait_for(
        "slow syscalls under the new threshold",
        Duration::from_secs(20),
        || {
            let n = agent.get("/api/v1/status")["events"]["slow_syscall"].as_u64()?;
            (n > 0).then_some(n)
        },
    );
    let links_after = kernel_links();
    println!("after SIGHUP: links {links_after:?}; slow syscall events {slow_after}");
    assert_eq!(
        links_of(&links_after, OTHER_PROGRAMS),
        links_of(&links_before, OTHER_PROGRAMS),
        "the other probe groups were re-attached"
    );
    assert!(
        links_of(&links_after, BLOCK_IO_PROGRAMS).is_empty(),
        "block IO still attached"
    );
    let components = wait_for(
        "block IO reported switched off",
        Duration::from_secs(10),
        || {
            let (_, report) = health(&agent);
            (report["components"]["probes_block_io"]["status"] == "disabled").then_some(report)
        },
    );
    println!(
        "/health with block IO off: {}",
        components["components"]["probes_block_io"]
    );
    let (code, _) = http_get(&agent.addr, "/readyz").expect("readyz");
    assert_eq!(
        code, 200,
        "a group switched off on purpose keeps the agent ready"
    );
    let (code, view) = admin(&agent, "GET", "/api/v1/config", "");
    assert_eq!(code, 200);
    assert_eq!(view["settings"]["slow_syscall"]["value"], "5ms");
    assert_eq!(view["settings"]["slow_syscall"]["source"], "file");

    // An invalid file (PUT) keeps the running configuration and says why.
    let (code, answer) = admin(
        &agent,
        "PUT",
        "/api/v1/config",
        "slow_syscall = \"5 parsecs\"\n",
    );
    println!("invalid reload: {code} {answer}");
    assert_eq!(code, 400);
    let message = answer["error"].as_str().unwrap_or_default();
    assert!(
        message.contains("key `slow_syscall`") && message.contains("unchanged"),
        "{message}"
    );
    // A value out of its range is refused the same way, with the range.
    let (code, answer) = admin(
        &agent,
        "PUT",
        "/api/v1/config",
        "slow_syscall = \"5ms\"\npoll_interval = \"0s\"\n",
    );
    println!("out-of-range reload: {code} {answer}");
    assert_eq!(code, 400);
    let message = answer["error"].as_str().unwrap_or_default();
    assert!(
        message.contains("key `poll_interval`")
            && message.contains("from 10ms to 1h")
            && message.contains("unchanged"),
        "{message}"
    );
    let (_, view) = admin(&agent, "GET", "/api/v1/config", "");
    assert_eq!(view["settings"]["slow_syscall"]["value"], "5ms");

    // Block IO back on (PUT): only its links are new.
    let (code, answer) = admin(
        &agent,
        "PUT",
        "/api/v1/config",
        "slow_syscall = \"5ms\"\nhealth_interval = \"1s\"\n",
    );
    println!("re-enable: {code} {answer}");
    assert_eq!(code, 200);
    assert_eq!(answer["applied"], serde_json::json!(["disable_probes"]));
    let links_back = kernel_links();
    println!("links after block IO back: {links_back:?}");
    assert_eq!(
        links_of(&links_back, OTHER_PROGRAMS),
        links_of(&links_before, OTHER_PROGRAMS)
    );
    assert_eq!(links_of(&links_back, BLOCK_IO_PROGRAMS).len(), 2);

    drop((forks, sleeper));
    let status = agent.get("/api/v1/status");
    println!(
        "events {} ; lost (kernel and model) {}",
        status["events"],
        lost_total(&status)
    );
    assert_eq!(
        lost_total(&status),
        0,
        "events were lost across the reloads: {}",
        status["lost"]
    );
    assert!(agent.log_text().contains("configuration reloaded"));
    let _ = std::fs::remove_file(&config);
}

#[test]
fn probes_tell_the_truth_while_the_ring_buffer_overflows_and_the_collector_is_down() {
    let dead_port = free_port();
    let agent = Agent::start(&[
        "--ring-buffer-kib",
        "64",
        "--health-interval",
        "1s",
        "--otlp-endpoint",
        &format!("http://127.0.0.1:{dead_port}"),
        "--otlp-retry-for",
        "2s",
    ]);
    wait_for("/readyz 200", Duration::from_secs(20), || {
        (http_get(&agent.addr, "/readyz").ok()?.0 == 200).then_some(())
    });
    // Stopped, the agent cannot drain: a burst of processes overflows its 64 KiB ring.
    let pid = agent.pid().to_string();
    let _ = Command::new("kill").args(["-STOP", &pid]).status();
    let burst = Command::new("sh")
        .args([
            "-c",
            "i=0; while [ $i -lt 1500 ]; do /bin/true; i=$((i+1)); done",
        ])
        .status();
    let _ = Command::new("kill").args(["-CONT", &pid]).status();
    assert!(burst.expect("sh").success());
    let (code, report) = wait_for(
        "ring buffer losses in /health",
        Duration::from_secs(20),
        || {
            let (code, report) = health(&agent);
            (report["components"]["ring_buffer"]["status"] != "healthy").then_some((code, report))
        },
    );
    println!("/health after the overflow: {code} {report}");
    let ring = &report["components"]["ring_buffer"];
    assert!(
        ring["message"]
            .as_str()
            .unwrap_or_default()
            .contains("events lost"),
        "{ring}"
    );
    assert_eq!(
        code == 503,
        report["status"] == "unhealthy",
        "503 exactly when unhealthy"
    );
    let (code, body) = http_get(&agent.addr, "/livez").expect("livez");
    println!("/livez: {code} {}", body.trim());
    assert_eq!(code, 200, "losing events is not being dead");

    let (code, report) = wait_for(
        "the exporter reported down",
        Duration::from_secs(30),
        || {
            let (code, report) = health(&agent);
            (report["components"]["exporter_otlp_traces"]["status"] == "degraded")
                .then_some((code, report))
        },
    );
    println!(
        "/health with the collector down: {code} exporter_otlp_traces {}",
        report["components"]["exporter_otlp_traces"]
    );
    assert_ne!(
        code, 503,
        "a collector down degrades, it does not make the agent unhealthy"
    );
    let (code, _) = http_get(&agent.addr, "/readyz").expect("readyz");
    assert_eq!(code, 200);
    let metrics = http_get(&agent.addr, "/metrics").expect("metrics").1;
    let line = metrics
        .lines()
        .find(|l| l.starts_with("taskscope_health_status{component=\"exporter_otlp_traces\"}"))
        .expect("taskscope_health_status of the exporter");
    println!("{line}");
    assert!(line.ends_with(" 0.5"), "{line}");
}

/// Runs `taskscope run --config FILE` and returns (exit code, stderr).
fn run_with_config(text: Option<&str>, name: &str) -> (Option<i32>, String) {
    let path = tmp(name);
    if let Some(text) = text {
        std::fs::write(&path, text).expect("config");
    }
    let out = Command::new(agent_binary())
        .args(["run", "--listen", &format!("127.0.0.1:{}", free_port())])
        .arg("--config")
        .arg(&path)
        .output()
        .expect("run");
    let _ = std::fs::remove_file(&path);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    )
}

#[test]
fn every_kind_of_bad_config_exits_2_naming_the_file_and_the_key() {
    let cases: &[(Option<&str>, &str, &str)] = &[
        (
            Some("poll_intervall = \"1s\"\n"),
            "unknown.toml",
            "unknown key `poll_intervall` (did you mean `poll_interval`?); the keys are the flags of `taskscope run` in snake_case, listed in docs/configuration.md",
        ),
        (
            Some("slow_syscall = \"5 parsecs\"\n"),
            "duration.toml",
            "key `slow_syscall`: invalid value '5 parsecs' for '--slow-syscall <SLOW_SYSCALL>': '5 parsecs' has unknown unit 'parsecs': use ns, us, ms, s, m or h",
        ),
        (
            Some("process_metrics = [\"name=postgres\"]\n"),
            "selector.toml",
            "key `process_metrics`: invalid value 'name=postgres' for '--process-metrics <SELECTOR>': invalid process selector 'name=postgres': unknown key 'name'",
        ),
        (
            Some("span_sample_ratio = 1.5\n"),
            "range.toml",
            "key `span_sample_ratio`: invalid value '1.5' for '--span-sample-ratio <SPAN_SAMPLE_RATIO>': 1.5 is out of range: write a ratio from 0 to 1, e.g. 0.1",
        ),
        (
            Some("health_failing_exits = 0\n"),
            "range2.toml",
            "key `health_failing_exits`: invalid value '0' for '--health-failing-exits <HEALTH_FAILING_EXITS>': 0 is not in 1..18446744073709551615",
        ),
        (Some("slow_syscall = \n"), "syntax.toml", "not valid TOML:"),
        (None, "missing.toml", "cannot read it: No such file or directory (os error 2); check the path given to --config (or TASKSCOPE_CONFIG)"),
    ];
    for (text, name, expected) in cases {
        let (code, stderr) = run_with_config(*text, name);
        println!("{name}: exit {code:?}: {stderr}");
        assert_eq!(code, Some(2), "{name}: {stderr}");
        let file = tmp(name);
        let prefix = format!("taskscope: config file {}: ", file.display());
        assert!(stderr.starts_with(&prefix), "{name}: {stderr}");
        assert!(
            stderr.contains(expected),
            "{name}: expected {expected:?} in {stderr:?}"
        );
    }
    // A bad standard OTLP variable, or an unreadable CA file: exit 2 before anything is
    // loaded, naming the variable or flag.
    for (args, env, expected) in [
        (
            vec![],
            vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"), ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")],
            "taskscope: OTLP export: OTEL_EXPORTER_OTLP_PROTOCOL: protocol 'http/json' is not supported: use http/protobuf or grpc",
        ),
        (
            vec!["--otlp-endpoint", "https://127.0.0.1:4318", "--otlp-ca-file", "/nonexistent/ca.pem"],
            vec![],
            "taskscope: OTLP export: --otlp-ca-file: cannot read /nonexistent/ca.pem: No such file or directory (os error 2); give a readable PEM file",
        ),
    ] {
        let out = Command::new(agent_binary())
            .args(["run", "--listen", &format!("127.0.0.1:{}", free_port())])
            .args(&args)
            .envs(env.iter().copied())
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr.lines().last().unwrap_or_default();
        println!("{args:?} {env:?}: exit {:?}: {last}", out.status.code());
        assert_eq!(out.status.code(), Some(2));
        assert_eq!(last, expected);
        assert!(!stderr.contains("attached"), "programs were loaded before the check");
    }
}

/// The JSON API's answers to a request without a token, with a wrong one and with the right
/// one, for every read endpoint.
fn json_api_codes(agent: &Agent) -> Vec<(&'static str, u16, u16, u16)> {
    let auth = format!("Bearer {TOKEN}");
    let code = |path: &str, headers: &[(&str, &str)]| {
        http_request(&agent.addr, "GET", path, headers, b"")
            .expect(path)
            .0
    };
    [
        "/api/v1/processes",
        "/api/v1/processes/1",
        "/api/v1/spans",
        "/api/v1/node",
        "/api/v1/status",
    ]
    .into_iter()
    .map(|path| {
        (
            path,
            code(path, &[]),
            code(path, &[("Authorization", "Bearer not-the-token-at-all")]),
            code(path, &[("Authorization", &auth)]),
        )
    })
    .collect()
}

#[test]
fn the_shipped_config_closes_the_json_api_and_leaves_metrics_and_the_probes_open() {
    // The sample config as shipped (listening on every address), the token from the
    // environment as the DaemonSet gives it.
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/taskscope.toml");
    let sample = sample.to_str().expect("path");
    let agent = Agent::start_with_env(
        &["--config", sample, "--health-interval", "1s"],
        &[("TASKSCOPE_ADMIN_TOKEN", TOKEN)],
    );
    for (path, none, wrong, right) in json_api_codes(&agent) {
        println!("{path}: no token {none}, wrong token {wrong}, the token {right}");
        assert_eq!((none, wrong), (401, 401), "{path} without the token");
        assert_eq!(right, 200, "{path} with the token");
    }
    wait_for("/readyz 200", Duration::from_secs(20), || {
        (http_get(&agent.addr, "/readyz").ok()?.0 == 200).then_some(())
    });
    for open in ["/metrics", "/livez", "/readyz", "/health"] {
        let code = http_get(&agent.addr, open).expect(open).0;
        println!("{open}: {code} without a token");
        assert_eq!(code, 200, "{open} wants a token");
    }
    assert!(
        !agent.log_text().contains("OPEN TO THE NETWORK"),
        "warned although the API is closed"
    );
    drop(agent);

    // No token at all: the JSON API is closed to everyone, the agent says so and runs.
    let agent = Agent::start(&["--config", sample]);
    for (path, none, wrong, _) in json_api_codes(&agent) {
        println!("no token configured: {path}: {none}, {wrong}");
        assert_eq!((none, wrong), (403, 403), "{path}");
    }
    assert_eq!(http_get(&agent.addr, "/metrics").expect("metrics").0, 200);
    assert!(agent.log_text().contains("no token is set"), "no warning");
    drop(agent);

    // Without the shipped config, beyond loopback and without a token: a loud warning.
    let log = tmp("open-api.log");
    let mut open = KillOnDrop(
        Command::new(agent_binary())
            .args(["run", "--log-format", "text"])
            .args(["--listen", &format!("0.0.0.0:{}", free_port())])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("agent"),
    );
    let warning = wait_for("the open-API warning", Duration::from_secs(30), || {
        if let Ok(Some(status)) = open.0.try_wait() {
            panic!("the agent exited with {status}");
        }
        std::fs::read_to_string(&log)
            .ok()?
            .lines()
            .find(|l| l.contains("OPEN TO THE NETWORK"))
            .map(str::to_string)
    });
    drop(open);
    let _ = std::fs::remove_file(&log);
    println!("{warning}");
}

#[test]
fn admin_endpoints_refuse_without_the_token_and_change_nothing() {
    // No token configured: admin endpoints are off.
    let agent = Agent::start(&[]);
    let (code, body) = http_request(
        &agent.addr,
        "PUT",
        "/api/v1/config",
        &[],
        b"slow_syscall = \"1ms\"",
    )
    .expect("PUT");
    println!("no token configured: {code} {body}");
    assert_eq!(code, 403);
    assert!(body.contains("admin endpoints are off"));
    drop(agent);

    let token_file = tmp("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).expect("token");
    let agent = Agent::start(&[
        "--admin-token-file",
        token_file.to_str().expect("path"),
        "--api-auth",
        "--health-interval",
        "1s",
    ]);
    let put = |headers: &[(&str, &str)], body: &[u8]| {
        http_request(&agent.addr, "PUT", "/api/v1/config", headers, body).expect("PUT")
    };
    let (code, body) = put(&[], b"slow_syscall = \"1ms\"");
    println!("without a token: {code} {body}");
    assert_eq!(code, 401);
    let (code, body) = put(
        &[("Authorization", "Bearer wrong-token-wrong-token")],
        b"slow_syscall = \"1ms\"",
    );
    println!("wrong token: {code} {body}");
    assert_eq!(code, 401);
    assert!(!body.contains("wrong-token"), "the answer echoes the token");
    let auth = format!("Bearer {TOKEN}");
    let huge = format!("slow_syscall = \"1ms\"\n# {}\n", "x".repeat(200 * 1024));
    let (code, body) = put(&[("Authorization", &auth)], huge.as_bytes());
    println!(
        "200 KiB body: {code} {}",
        body.chars().take(200).collect::<String>()
    );
    assert_eq!(code, 413);
    // A file whose syntax error sits on the line with a secret: the error names the place,
    // never the text, in the answer and in the log.
    let secret = "ghp_e2eSecretThatMustNotLeak0123456789";
    let broken =
        format!("slow_syscall = \"1ms\"\notlp_headers = [\"authorization=Bearer {secret}]\n");
    let (code, body) = put(&[("Authorization", &auth)], broken.as_bytes());
    println!("a broken file with a secret: {code} {body}");
    assert_eq!(code, 400);
    assert!(body.contains("line 2"), "{body}");
    assert!(!body.contains(secret) && !agent.log_text().contains(secret));
    let (code, view) = admin(&agent, "GET", "/api/v1/config", "");
    assert_eq!(code, 200);
    assert_eq!(
        view["settings"]["slow_syscall"]["value"], "100ms",
        "nothing changed"
    );
    assert!(
        !view.to_string().contains(TOKEN),
        "the config view shows the token"
    );
    // --api-auth: the JSON API wants the token, /metrics and the probes do not.
    assert_eq!(
        http_get(&agent.addr, "/api/v1/status").expect("status").0,
        401
    );
    let (code, _) = http_request(
        &agent.addr,
        "GET",
        "/api/v1/status",
        &[("Authorization", &auth)],
        b"",
    )
    .expect("status");
    assert_eq!(code, 200);
    for open in ["/metrics", "/livez", "/health"] {
        let code = http_get(&agent.addr, open).expect(open).0;
        assert!(code == 200 || code == 503, "{open}: {code}");
        assert_ne!(code, 401, "{open} wants a token");
    }
    // Debug mode, switched at runtime.
    let (code, answer) = admin(&agent, "POST", "/api/v1/debug?enabled=true", "");
    assert_eq!((code, &answer["debug"]), (200, &Value::Bool(true)));
    let debug_line = wait_for("a debug line in the log", Duration::from_secs(10), || {
        agent
            .log_text()
            .lines()
            .find(|l| l.contains("DEBUG"))
            .map(str::to_string)
    });
    println!("in debug mode: {debug_line}");
    let (_, answer) = admin(&agent, "POST", "/api/v1/debug?enabled=false", "");
    assert_eq!(answer["debug"], false);
    let _ = std::fs::remove_file(&token_file);
}

#[test]
fn logs_are_json_lines_and_a_slow_task_carries_the_trace_id_of_its_span() {
    let agent = Agent::start(&["--log-format", "json", "--slow-task", "1s"]);
    let mut job = Command::new("sleep").arg("1.6").spawn().expect("sleep");
    let job_pid = job.id();
    let _ = job.wait();
    let span = wait_for("the job's span", Duration::from_secs(20), || {
        agent.get(&format!("/api/v1/spans?pid={job_pid}"))["spans"]
            .as_array()?
            .iter()
            .find(|s| s["pid"].as_u64() == Some(u64::from(job_pid)))
            .cloned()
    });
    let log = agent.log_text();
    let mut slow_line = None;
    for line in log.lines() {
        let entry: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("a log line is not JSON ({e}): {line}"));
        for key in ["timestamp", "level", "target", "message"] {
            assert!(entry[key].is_string(), "log line without {key}: {line}");
        }
        if entry["message"] == "slow task" && entry["pid"].as_u64() == Some(u64::from(job_pid)) {
            slow_line = Some(entry);
        }
    }
    let slow = slow_line.unwrap_or_else(|| panic!("no slow-task line for pid {job_pid}: {log}"));
    println!(
        "slow task: {slow}\nspan: trace {} span {}",
        span["trace_id"], span["span_id"]
    );
    assert_eq!(slow["trace_id"], span["trace_id"]);
    assert_eq!(slow["span_id"], span["span_id"]);
    assert!(slow["wall_seconds"].as_f64().unwrap_or(0.0) >= 1.0);
}

#[test]
fn workloads_are_judged_starved_failing_and_churning_with_reasons() {
    let agent = Agent::start(&[
        "--health-interval",
        "2s",
        "--health-starved-runqueue-p99",
        "2ms",
        "--health-failing-exits",
        "3",
        "--health-churn-starts-per-second",
        "5",
    ]);
    let root = taskscope_e2e::cgroup2_root();
    let cgroup = Path::new(&root).join(format!("taskscope-health-{}", std::process::id()));
    std::fs::create_dir(&cgroup).expect("cgroup");
    // Three spinners on one CPU wait for it in turn (starved); short processes that fail,
    // many per second (failing, churning).
    let script = format!(
        "echo $$ > {}/cgroup.procs; \
         for i in 1 2 3; do taskset -c 0 timeout 4 sh -c 'while :; do :; done' & done; \
         end=$(( $(date +%s) + 4 )); while [ $(date +%s) -lt $end ]; do sh -c 'exit 1'; done; wait",
        cgroup.display()
    );
    let load = KillOnDrop(
        Command::new("sh")
            .args(["-c", &script])
            .spawn()
            .expect("sh"),
    );
    let label = format!(
        "/{}",
        cgroup
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
    );
    let judged = wait_for("the workload judged", Duration::from_secs(30), || {
        let (_, body) = http_get(&agent.addr, "/health/detailed").ok()?;
        let report: Value = serde_json::from_str(&body).ok()?;
        let workload = report["workloads"]
            .as_array()?
            .iter()
            .find(|w| w["cgroup"] == label.as_str())?
            .clone();
        let states = workload["states"].as_object()?;
        (states.contains_key("starved")
            && states.contains_key("failing")
            && states.contains_key("churning"))
        .then_some(workload)
    });
    println!("/health/detailed: {judged}");
    assert!(judged["states"]["failing"]
        .as_str()
        .unwrap_or_default()
        .contains("exited with failure"));
    assert!(judged["states"]["starved"]
        .as_str()
        .unwrap_or_default()
        .contains("run-queue latency p99"));
    let metrics = http_get(&agent.addr, "/metrics").expect("metrics").1;
    let series: Vec<&str> = metrics
        .lines()
        .filter(|l| {
            l.starts_with("taskscope_workload_health_status{")
                && l.contains(&format!("cgroup=\"{label}\""))
        })
        .collect();
    println!("{series:#?}");
    assert!(series.iter().any(|l| l.contains("state=\"failing\"")));
    drop(load);
    std::thread::sleep(Duration::from_secs(5));
    let _ = std::fs::remove_dir(&cgroup);
}

/// A child process killed when dropped (a failed assertion must not leave an agent behind).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        let _ = self.0.wait();
    }
}

/// The agent as `nobody` with exactly these capabilities (setpriv, from util-linux).
fn agent_with_caps(caps: &str, addr: &str) -> KillOnDrop {
    KillOnDrop(
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(format!("--inh-caps=-all,{caps}"))
            .arg(format!("--ambient-caps=-all,{caps}"))
            .arg(format!("--bounding-set=-all,{caps}"))
            .arg(agent_binary())
            .args([
                "run",
                "--listen",
                addr,
                "--health-interval",
                "1s",
                "--poll-interval",
                "200ms",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("setpriv"),
    )
}

#[test]
fn the_documented_capabilities_are_enough_and_without_cap_bpf_the_error_says_so() {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut child = agent_with_caps("+bpf,+perfmon,+sys_ptrace", &addr);
    let ready = wait_for(
        "the unprivileged agent ready",
        Duration::from_secs(60),
        || {
            if let Ok(Some(status)) = child.0.try_wait() {
                panic!("the agent exited with {status}");
            }
            http_get(&addr, "/readyz").ok().filter(|(c, _)| *c == 200)
        },
    );
    println!(
        "as nobody with CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE: /readyz {}",
        ready.1.trim()
    );
    let job_pid = run_shell("exit 3");
    let process = wait_for("the job seen", Duration::from_secs(20), || {
        let (_, body) = http_get(&addr, &format!("/api/v1/processes/{job_pid}")).ok()?;
        let answer: Value = serde_json::from_str(&body).ok()?;
        let p = answer["processes"].get(0)?.clone();
        (!p["exit"].is_null()).then_some(p)
    });
    println!("job: exit {}", process["exit"]);
    let status: Value =
        serde_json::from_str(&http_get(&addr, "/api/v1/status").expect("status").1).expect("JSON");
    println!("capabilities held: {}", status["capabilities"]);
    assert_eq!(
        status["capabilities"],
        serde_json::json!(["CAP_BPF", "CAP_PERFMON", "CAP_SYS_PTRACE"])
    );
    drop(child);

    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args([
            "--inh-caps=-all,+perfmon,+sys_ptrace",
            "--ambient-caps=-all,+perfmon,+sys_ptrace",
        ])
        .args(["--bounding-set=-all,+perfmon,+sys_ptrace"])
        .arg(agent_binary())
        .args(["run", "--listen", &format!("127.0.0.1:{}", free_port())])
        .output()
        .expect("setpriv");
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!(
        "without CAP_BPF: exit {:?}: {}",
        out.status.code(),
        stderr.trim()
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("taskscope run needs CAP_BPF (or root)"),
        "{stderr}"
    );
}
