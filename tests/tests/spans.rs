//! Task spans: a known process tree arrives as one trace at an OTLP receiver built on the
//! official OpenTelemetry protobuf definitions (tests/otlp_receiver.py, PyPI
//! opentelemetry-proto, installed by `cargo xtask setup --for-tests`), and in /api/v1/spans.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use taskscope_e2e::{free_port, run_shell, wait_for, workload_binary, Agent};

/// The receiver, killed when dropped.
struct Receiver {
    child: Child,
    port: u16,
    out: PathBuf,
}

impl Receiver {
    fn start(dir: &Path) -> Receiver {
        Self::start_on(dir, free_port())
    }

    fn start_on(dir: &Path, port: u16) -> Receiver {
        Self::start_with(dir, port, "http")
    }

    /// `transport`: `http` (OTLP/HTTP protobuf) or `grpc`.
    fn start_with(dir: &Path, port: u16, transport: &str) -> Receiver {
        Self::start_tls(dir, port, transport, None)
    }

    /// With `tls` (certificate and key PEM files), the receiver speaks TLS.
    fn start_tls(dir: &Path, port: u16, transport: &str, tls: Option<(&Path, &Path)>) -> Receiver {
        let out = dir.join(format!("otlp-spans-{port}.jsonl"));
        let _ = std::fs::remove_file(&out);
        let python_lib = std::env::var("TASKSCOPE_PYTHON_LIB").unwrap_or_else(|_| {
            format!(
                "{}/.cache/taskscope/python",
                std::env::var("HOME").unwrap_or_default()
            )
        });
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("otlp_receiver.py");
        let mut child = Command::new("python3")
            .arg(&script)
            .arg(port.to_string())
            .arg(&out)
            .arg(transport)
            .args(tls.into_iter().flat_map(|(cert, key)| [cert, key]))
            .env("PYTHONPATH", &python_lib)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("receiver output");
        assert_eq!(
            line.trim(),
            "listening",
            "the OTLP receiver did not start (opentelemetry-proto in {python_lib}? run `cargo xtask setup --for-tests`)"
        );
        Receiver { child, port, out }
    }

    fn records(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    fn spans(&self) -> Vec<Value> {
        self.records()
            .into_iter()
            .filter(|r| r["signal"] != "metrics")
            .collect()
    }

    fn metric_points(&self) -> Vec<Value> {
        self.records()
            .into_iter()
            .filter(|r| r["signal"] == "metrics")
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.out);
    }
}

/// `/proc/<pid>/schedstat` as a process wrote it about itself: (on-CPU ns, run-queue ns).
fn report(path: &Path) -> (u64, u64) {
    let text = std::fs::read_to_string(path).expect("schedstat report");
    let mut fields = text
        .split_whitespace()
        .map(|f| f.parse::<u64>().expect("number"));
    (
        fields.next().expect("on-CPU"),
        fields.next().expect("run-queue"),
    )
}

fn attr<'a>(span: &'a Value, key: &str) -> &'a Value {
    &span["attributes"][key]
}

fn seconds(span: &Value, key: &str) -> f64 {
    attr(span, key).as_f64().unwrap_or(f64::NAN)
}

fn duration_s(span: &Value) -> f64 {
    (span["end_unix_nano"].as_u64().unwrap_or(0) as f64
        - span["start_unix_nano"].as_u64().unwrap_or(0) as f64)
        / 1e9
}

fn within(what: &str, measured: f64, truth: f64, tolerance: f64) {
    let diff = (measured - truth).abs() / truth.abs().max(1e-9);
    println!(
        "{what}: taskscope {measured:.6}, kernel {truth:.6}, difference {:.2}% (allowed {:.0}%)",
        diff * 100.0,
        tolerance * 100.0
    );
    assert!(diff <= tolerance, "{what}: {measured} vs {truth}");
}

#[test]
fn a_process_tree_is_one_trace_with_statuses_and_where_the_time_went() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let receiver = Receiver::start(&dir);
    let agent = Agent::start(&[
        "--otlp-endpoint",
        &format!("http://127.0.0.1:{}", receiver.port),
    ]);
    let sleeper_report = dir.join(format!("sleeper-{}.schedstat", receiver.port));
    let spinner_report = dir.join(format!("spinner-{}.schedstat", receiver.port));
    let w = workload_binary();
    let w = w.display();
    // The known tree: a shell with five children, one after the other.
    let script = format!(
        "{w} exit 3; sh -c 'kill -TERM $$'; {w} sleep-report 1000 {s}; {w} spin-report 1000 {c}; sh -c 'exec {w} exit 0'; exit 0",
        s = sleeper_report.display(),
        c = spinner_report.display()
    );
    let mut root = Command::new("sh")
        .arg("-c")
        .arg(&script)
        .stdin(Stdio::null())
        .spawn()
        .expect("sh");
    let root_pid = root.id();
    assert!(root.wait().expect("wait").success());

    // Six spans of one trace: the shell and its five children.
    let spans = wait_for(
        "the tree's six spans at the receiver",
        Duration::from_secs(30),
        || {
            let spans = receiver.spans();
            let root_span = spans
                .iter()
                .find(|s| attr(s, "process.pid").as_u64() == Some(u64::from(root_pid)))?
                .clone();
            let trace: Vec<Value> = spans
                .into_iter()
                .filter(|s| s["trace_id"] == root_span["trace_id"])
                .collect();
            (trace.len() >= 6).then_some((root_span, trace))
        },
    );
    let (root_span, trace) = spans;
    for s in &trace {
        println!(
            "span {} pid {} parent {} status {} {:?} {:.3}s: on-CPU {:.4}s, run-queue {:.4}s, blocked {:.4}s",
            s["name"],
            attr(s, "process.pid"),
            s["parent_span_id"],
            s["status_code"],
            s["status_message"],
            duration_s(s),
            seconds(s, "taskscope.on_cpu_seconds"),
            seconds(s, "taskscope.runqueue_wait_seconds"),
            seconds(s, "taskscope.blocked_seconds"),
        );
    }
    assert_eq!(trace.len(), 6, "one trace: the shell and its five children");
    assert_eq!(
        root_span["parent_span_id"], "",
        "the shell is the trace's root"
    );
    assert_eq!(root_span["scope"], "taskscope");
    assert_eq!(root_span["transport"], "http");
    assert_eq!(root_span["resource"]["service.name"], "taskscope");
    let children: Vec<&Value> = trace
        .iter()
        .filter(|s| s["span_id"] != root_span["span_id"])
        .collect();
    assert!(
        children
            .iter()
            .all(|c| c["parent_span_id"] == root_span["span_id"]
                && attr(c, "process.parent_pid").as_u64() == Some(u64::from(root_pid))),
        "every child's parent is the shell's span"
    );
    assert_eq!(root_span["status_code"], "STATUS_CODE_UNSET");
    assert_eq!(attr(&root_span, "process.exit.code").as_i64(), Some(0));

    let find = |pred: &dyn Fn(&Value) -> bool| -> &Value {
        children
            .iter()
            .copied()
            .find(|s| pred(s))
            .expect("a child span")
    };
    let failed = find(&|s| attr(s, "process.exit.code").as_i64() == Some(3));
    assert_eq!(failed["status_code"], "STATUS_CODE_ERROR");
    assert_eq!(failed["status_message"], "exit code 3");
    let killed = find(&|s| attr(s, "process.exit.signal_name") == "SIGTERM");
    assert_eq!(killed["status_code"], "STATUS_CODE_ERROR");
    assert_eq!(killed["status_message"], "killed by SIGTERM");
    let execed = find(&|s| {
        s["events"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["name"] == "exec"))
            && attr(s, "process.exit.code").as_i64() == Some(0)
            && s["name"] == "workload"
    });
    assert_eq!(execed["status_code"], "STATUS_CODE_UNSET");

    // Where the time went, against what each process read of itself in /proc just before exit.
    let (sleeper_cpu, sleeper_wait) = report(&sleeper_report);
    let (spinner_cpu, _) = report(&spinner_report);
    let sleeper = find(&|s| {
        attr(s, "process.command_line")
            .as_str()
            .is_some_and(|c| c.contains("sleep-report"))
    });
    let spinner = find(&|s| {
        attr(s, "process.command_line")
            .as_str()
            .is_some_and(|c| c.contains("spin-report"))
    });
    let sleeper_blocked_truth = duration_s(sleeper) - (sleeper_cpu + sleeper_wait) as f64 / 1e9;
    within(
        "sleeper: blocked seconds vs duration - schedstat on-CPU - run-queue",
        seconds(sleeper, "taskscope.blocked_seconds"),
        sleeper_blocked_truth,
        0.05,
    );
    assert!(
        seconds(sleeper, "taskscope.blocked_seconds") > 0.9 * duration_s(sleeper),
        "mostly blocked"
    );
    within(
        "spinner: on-CPU seconds vs its /proc/self/schedstat",
        seconds(spinner, "taskscope.on_cpu_seconds"),
        spinner_cpu as f64 / 1e9,
        0.05,
    );
    assert!(
        seconds(spinner, "taskscope.on_cpu_seconds") > 0.8 * duration_s(spinner),
        "mostly on CPU"
    );
    for s in &trace {
        let parts = seconds(s, "taskscope.on_cpu_seconds")
            + seconds(s, "taskscope.runqueue_wait_seconds")
            + seconds(s, "taskscope.blocked_seconds");
        assert!(
            (parts - duration_s(s)).abs() < 1e-6,
            "{}: on-CPU + run-queue + blocked = {parts} s, duration {} s",
            s["name"],
            duration_s(s)
        );
    }

    // The same trace in the JSON API, by the pid of any member.
    let api = agent.get(&format!("/api/v1/spans?pid={root_pid}"));
    let api_spans = api["spans"].as_array().expect("spans");
    println!("/api/v1/spans?pid={root_pid}: {} spans", api_spans.len());
    assert_eq!(api_spans.len(), 6);
    assert!(api_spans
        .iter()
        .all(|s| s["trace_id"] == root_span["trace_id"]));
    let status = agent.get("/api/v1/status");
    println!("status.otlp: {}", status["otlp"]);
    assert!(status["otlp"]["exported"].as_u64().unwrap_or(0) >= 6);
    let _ = std::fs::remove_file(sleeper_report);
    let _ = std::fs::remove_file(spinner_report);
}

fn lost(status: &Value, source: &str, reason: &str) -> u64 {
    status["lost"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| l["source"] == source && l["reason"] == reason)
        .filter_map(|l| l["count"].as_u64())
        .sum()
}

#[test]
fn a_collector_that_is_down_costs_counted_spans_and_export_resumes() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let port = free_port();
    // Nothing listens on the port yet. A small queue and a short retry window, so that both
    // ways of dropping happen within the test.
    let agent = Agent::start(&[
        "--otlp-endpoint",
        &format!("http://127.0.0.1:{port}"),
        "--otlp-queue",
        "32",
        "--otlp-retry-for",
        "3s",
        // Few exited processes kept and small syscall tables, so that memory measures the
        // export path, not retention or the transient copy of the kernel maps (with the
        // default 16,384 syscall entries, each read copies ~5 MB, and the allocator keeps such
        // pages: RSS then wandered by 12 to 16.5 MiB here, against the 16 MiB bound, with or
        // without anything queued).
        "--max-exited",
        "100",
        "--max-syscall-entries",
        "1024",
    ]);
    let burst = |n: usize| {
        let status = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "i=0; while [ $i -lt {n} ]; do /bin/true; i=$((i+1)); done"
            ))
            .status()
            .expect("sh");
        assert!(status.success());
    };
    let rss_kib = |pid: u32| -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or(0)
    };
    let rss_before = rss_kib(agent.pid());
    let went_down = std::time::Instant::now();
    burst(200);
    let down = wait_for(
        "spans dropped while the collector is down",
        Duration::from_secs(30),
        || {
            let status = agent.get("/api/v1/status");
            (lost(&status, "otlp_spans", "queue_full") > 0
                && lost(&status, "otlp_spans", "export_failed") > 0)
                .then_some(status)
        },
    );
    println!(
        "collector down: made {}, queue_full {}, export_failed {}, otlp {}",
        down["model"]["spans"],
        lost(&down, "otlp_spans", "queue_full"),
        lost(&down, "otlp_spans", "export_failed"),
        down["otlp"]
    );
    assert_eq!(down["otlp"]["up"], false);
    assert!(down["otlp"]["failed_requests"].as_u64().unwrap_or(0) > 0);
    // A second burst while it is still down: the queue holds, memory does not follow the load.
    burst(400);
    let rss_down = rss_kib(agent.pid());
    println!("agent RSS: {rss_before} KiB before, {rss_down} KiB after 600 spans with the collector down (bound: +16 MiB: the queue is bounded; what grows is the transient read of the kernel maps, bounded by their sizes)");
    assert!(
        rss_down < rss_before + 16 * 1024,
        "memory grew with the spans it could not send"
    );

    // Down for 30 s in all, under load (a burst every second), as a collector restart might.
    while went_down.elapsed() < Duration::from_secs(30) {
        burst(20);
        std::thread::sleep(Duration::from_secs(1));
    }
    let rss_down = rss_kib(agent.pid()).max(rss_down);
    let status = agent.get("/api/v1/status");
    println!(
        "after {:.0} s down: agent RSS {rss_down} KiB, queue_full {}, export_failed {}, failed requests {}",
        went_down.elapsed().as_secs_f64(),
        lost(&status, "otlp_spans", "queue_full"),
        lost(&status, "otlp_spans", "export_failed"),
        status["otlp"]["failed_requests"]
    );
    assert!(
        rss_down < rss_before + 16 * 1024,
        "memory grew with the spans it could not send"
    );
    assert_eq!(status["otlp"]["up"], false);

    // The collector comes back: export resumes (what was queued goes first), new spans
    // arrive, and every span made is accounted for.
    let receiver = Receiver::start_on(&dir, port);
    wait_for(
        "the exporter to be up again",
        Duration::from_secs(30),
        || (agent.get("/api/v1/status")["otlp"]["up"] == true).then_some(()),
    );
    let marker_pid = run_shell("/bin/true; exit 7");
    let resumed = (0..400).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        receiver
            .spans()
            .iter()
            .any(|s| attr(s, "process.pid").as_u64() == Some(u64::from(marker_pid)))
    });
    assert!(
        resumed,
        "export did not resume in 40 s: status {}; received {}; log {}",
        agent.get("/api/v1/status"),
        receiver.spans().len(),
        agent.log_text()
    );
    let settled = wait_for("every span accounted for", Duration::from_secs(30), || {
        let status = agent.get("/api/v1/status");
        let made = status["model"]["spans"].as_u64()?;
        let exported = status["otlp"]["exported"].as_u64()?;
        let dropped = lost(&status, "otlp_spans", "queue_full")
            + lost(&status, "otlp_spans", "export_failed")
            + status["model"]["spans_dropped"].as_u64()?;
        (made == exported + dropped).then_some((made, exported, dropped, status))
    });
    println!(
        "collector back: made {} = exported {} + dropped {}; received {}; otlp {}",
        settled.0,
        settled.1,
        settled.2,
        receiver.spans().len(),
        settled.3["otlp"]
    );
    assert_eq!(settled.3["otlp"]["up"], true);
    assert_eq!(
        receiver.spans().len() as u64,
        settled.1,
        "the receiver got what was exported"
    );
}

#[test]
fn traceparent_joins_the_trace_and_secrets_arrive_redacted_everywhere() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let receiver = Receiver::start(&dir);
    let agent = Agent::start(&[
        "--otlp-endpoint",
        &format!("http://127.0.0.1:{}", receiver.port),
    ]);
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent_id = "00f067aa0ba902b7";
    // A job started by an instrumented runner: TRACEPARENT in its environment, a secret on its
    // command line; it runs a child.
    let mut job = Command::new("sh")
        .args([
            "-c",
            "sleep 0.3; exit 0",
            "job",
            "--password=hunter2",
            "--token",
            "s3cr3tvalue",
        ])
        .env("TRACEPARENT", format!("00-{trace_id}-{parent_id}-01"))
        .spawn()
        .expect("sh");
    let job_pid = job.id();
    assert!(job.wait().expect("wait").success());

    let (job_span, child_span) = wait_for(
        "the job's spans at the receiver",
        Duration::from_secs(30),
        || {
            let spans = receiver.spans();
            let job_span = spans
                .iter()
                .find(|s| attr(s, "process.pid").as_u64() == Some(u64::from(job_pid)))?
                .clone();
            let child = spans
                .iter()
                .find(|s| s["parent_span_id"] == job_span["span_id"])?
                .clone();
            Some((job_span, child))
        },
    );
    println!(
        "job span: trace {} parent {} command line {}; its child {} in trace {}",
        job_span["trace_id"],
        job_span["parent_span_id"],
        attr(&job_span, "process.command_line"),
        child_span["name"],
        child_span["trace_id"]
    );
    assert_eq!(job_span["trace_id"], trace_id);
    assert_eq!(job_span["parent_span_id"], parent_id);
    assert_eq!(child_span["trace_id"], trace_id, "its children follow it");
    // Joining a trace named by the process itself is said in an attribute; its child's
    // parent is the job's span, ours.
    assert_eq!(
        attr(&job_span, "taskscope.trace.joined_from"),
        "TRACEPARENT"
    );
    assert!(attr(&child_span, "taskscope.trace.joined_from").is_null());

    // The secrets, everywhere something leaves the agent.
    let command_line = attr(&job_span, "process.command_line")
        .as_str()
        .unwrap_or("")
        .to_string();
    let api_span = agent.get(&format!("/api/v1/spans?pid={job_pid}"));
    let api_process = agent.get(&format!("/api/v1/processes/{job_pid}"));
    let (_, scrape) = taskscope_e2e::http_get(&agent.addr, "/metrics").expect("scrape");
    let outputs = [
        ("OTLP span", command_line.clone()),
        ("/api/v1/spans", api_span.to_string()),
        ("/api/v1/processes/{pid}", api_process.to_string()),
        ("/metrics", scrape),
        ("the agent's log", agent.log_text()),
    ];
    println!("OTLP command line: {command_line}");
    for (where_, text) in &outputs {
        assert!(
            !text.contains("hunter2") && !text.contains("s3cr3tvalue"),
            "a secret in {where_}"
        );
    }
    assert!(
        command_line.contains("--password=[REDACTED]")
            && command_line.contains("--token [REDACTED]")
    );
    assert!(api_process.to_string().contains("[REDACTED]"));
}

/// A CA and a server certificate for 127.0.0.1 signed by it (openssl), in `dir`:
/// (CA PEM, certificate PEM, key PEM).
fn test_certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = dir.join("otlp-ca.key");
    let ca = dir.join("otlp-ca.pem");
    let key = dir.join("otlp-server.key");
    let csr = dir.join("otlp-server.csr");
    let cert = dir.join("otlp-server.pem");
    let ext = dir.join("otlp-server.ext");
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .expect("ext file");
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let p = |path: &PathBuf| path.to_str().expect("utf-8 path").to_string();
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=taskscope test CA",
        "-keyout",
        &p(&ca_key),
        "-out",
        &p(&ca),
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        &p(&key),
        "-out",
        &p(&csr),
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        &p(&csr),
        "-CA",
        &p(&ca),
        "-CAkey",
        &p(&ca_key),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        &p(&ext),
        "-out",
        &p(&cert),
    ]);
    (ca, cert, key)
}

#[test]
fn spans_and_metrics_arrive_over_tls_with_headers_from_flags_and_environment() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let (ca, cert, key) = test_certificates(&dir);
    for transport in ["http", "grpc"] {
        let receiver = Receiver::start_tls(&dir, free_port(), transport, Some((&cert, &key)));
        let protocol = if transport == "grpc" {
            "grpc"
        } else {
            "http/protobuf"
        };
        let endpoint = format!("https://127.0.0.1:{}", receiver.port);
        // Endpoint, protocol and headers from the standard variables; the flag's header wins
        // over the variable's for the same name.
        let agent = Agent::start_with_env(
            &[
                "--otlp-ca-file",
                ca.to_str().expect("path"),
                "--otlp-header",
                "x-tenant=from-flag",
                "--otlp-metrics-interval",
                "1s",
            ],
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
                (
                    "OTEL_EXPORTER_OTLP_HEADERS",
                    "authorization=Bearer%20s3cret-t0ken,x-tenant=from-env",
                ),
            ],
        );
        let job_pid = run_shell("/bin/true; exit 5");
        let span = (0..300).find_map(|_| {
            std::thread::sleep(Duration::from_millis(100));
            receiver
                .spans()
                .into_iter()
                .find(|s| attr(s, "process.pid").as_u64() == Some(u64::from(job_pid)))
        });
        let Some(span) = span else {
            panic!(
                "no span of the job (pid {job_pid}) over OTLP/{transport} with TLS in 30 s: otlp {}, model {}; received spans {:?}; api spans {}; log {}",
                agent.get("/api/v1/status")["otlp"],
                agent.get("/api/v1/status")["model"],
                receiver.spans().iter().map(|s| (attr(s, "process.pid").clone(), s["name"].clone())).collect::<Vec<_>>(),
                agent.get(&format!("/api/v1/spans?pid={job_pid}")),
                agent.log_text().lines().filter(|l| !l.contains("attached")).collect::<Vec<_>>().join("\n")
            );
        };
        let point = wait_for(
            &format!("a metric point over OTLP/{transport} with TLS"),
            Duration::from_secs(30),
            || receiver.metric_points().into_iter().next(),
        );
        println!(
            "over {} with TLS: span {} headers {} owner {}; metric {} headers {}",
            span["transport"],
            span["name"],
            span["headers"],
            attr(&span, "process.owner"),
            point["name"],
            point["headers"]
        );
        for row in [&span, &point] {
            assert_eq!(row["transport"], transport);
            assert_eq!(row["headers"]["authorization"], "Bearer s3cret-t0ken");
            assert_eq!(row["headers"]["x-tenant"], "from-flag");
        }
        assert_eq!(attr(&span, "process.exit.code").as_i64(), Some(5));
        // The tests run as root: uid 0, named by /etc/passwd.
        assert_eq!(attr(&span, "process.user.id").as_i64(), Some(0));
        assert_eq!(attr(&span, "process.owner"), "root");
        assert!(
            !agent.log_text().contains("s3cret"),
            "a header value reached the log"
        );
    }
}

#[test]
fn spans_arrive_over_grpc_too() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let receiver = Receiver::start_with(&dir, free_port(), "grpc");
    let _agent = Agent::start(&[
        "--otlp-protocol",
        "grpc",
        "--otlp-endpoint",
        &format!("http://127.0.0.1:{}", receiver.port),
    ]);
    let job_pid = run_shell("/bin/true; exit 4");
    let span = wait_for("the job's span over gRPC", Duration::from_secs(30), || {
        receiver
            .spans()
            .into_iter()
            .find(|s| attr(s, "process.pid").as_u64() == Some(u64::from(job_pid)))
    });
    println!(
        "over {}: span {} status {} {}",
        span["transport"], span["name"], span["status_code"], span["status_message"]
    );
    assert_eq!(span["transport"], "grpc");
    assert_eq!(span["status_message"], "exit code 4");
    assert_eq!(attr(&span, "process.exit.code").as_i64(), Some(4));
}

#[test]
fn at_sample_ratio_zero_only_trees_with_a_failure_are_exported_whole() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let receiver = Receiver::start(&dir);
    let agent = Agent::start(&[
        "--otlp-endpoint",
        &format!("http://127.0.0.1:{}", receiver.port),
        "--span-sample-ratio",
        "0",
    ]);
    let run = |script: &str| {
        let mut child = Command::new("sh").args(["-c", script]).spawn().expect("sh");
        let pid = child.id();
        let _ = child.wait();
        pid
    };
    let ordinary = run("/bin/true; /bin/true; exit 0");
    let failing = run("/bin/true; /bin/false; exit 0");
    let kept = wait_for(
        "the failing tree at the receiver",
        Duration::from_secs(30),
        || {
            let spans = receiver.spans();
            let root = spans
                .iter()
                .find(|s| attr(s, "process.pid").as_u64() == Some(u64::from(failing)))?
                .clone();
            let tree: Vec<Value> = spans
                .into_iter()
                .filter(|s| s["trace_id"] == root["trace_id"])
                .collect();
            (tree.len() >= 3).then_some(tree)
        },
    );
    let status = agent.get("/api/v1/status");
    let sampled_out = lost(&status, "otlp_spans", "sampled_out");
    let ordinary_exported = receiver
        .spans()
        .iter()
        .any(|s| attr(s, "process.pid").as_u64() == Some(u64::from(ordinary)));
    println!(
        "ratio 0: failing tree exported with {} spans ({} in error); ordinary tree exported: {ordinary_exported}; sampled out {sampled_out}",
        kept.len(),
        kept.iter().filter(|s| s["status_code"] == "STATUS_CODE_ERROR").count()
    );
    assert_eq!(
        kept.len(),
        3,
        "the failing tree, whole: the shell and both children"
    );
    assert!(
        !ordinary_exported,
        "an ordinary tree was exported at ratio 0"
    );
    assert!(sampled_out >= 3, "the ordinary tree's spans are counted");
}

#[test]
fn long_waits_for_a_cpu_and_slow_block_io_are_span_events() {
    let agent = Agent::start(&["--slow-runqueue-wait", "2ms", "--slow-block-io", "1us"]);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let file = dir.join(format!("slow-io-{}.bin", std::process::id()));
    let w = workload_binary();
    let w = w.display();
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    // Twice as many CPU burners as cores (they wait for a CPU), then 4 MiB of direct writes.
    let burners = vec![format!("{w} cpu-burn 400 &"); cores * 2].join(" ");
    let script = format!(
        "{burners} wait; {w} direct-write {} 4194304 < /dev/null",
        file.display()
    );
    let mut root = Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("sh");
    let root_pid = root.id();
    assert!(root.wait().expect("wait").success());
    let spans = wait_for("the tree's spans", Duration::from_secs(30), || {
        let spans = agent.get(&format!("/api/v1/spans?pid={root_pid}"))["spans"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        (spans.len() > cores * 2 + 1).then_some(spans)
    });
    let waits = |s: &Value, kind: &str| -> Vec<Value> {
        s["slow_waits"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|w| w["kind"] == kind)
            .cloned()
            .collect()
    };
    let mut burners_with_waits = 0;
    for s in spans.iter().filter(|s| {
        s["command_line"]
            .as_array()
            .is_some_and(|c| c.iter().any(|a| a == "cpu-burn"))
    }) {
        let long = waits(s, "runqueue_wait");
        let sum: u64 = long.iter().filter_map(|w| w["duration_ns"].as_u64()).sum();
        let run_delay = s["time"]["runqueue_wait_ns"].as_u64().unwrap_or(0);
        println!(
            "burner {}: {} waits of 2 ms or more, {sum} ns in all, of {run_delay} ns run-queue wait (the kernel's run_delay)",
            s["pid"],
            long.len()
        );
        assert!(long
            .iter()
            .all(|w| w["duration_ns"].as_u64().unwrap_or(0) >= 2_000_000));
        assert!(
            sum <= run_delay,
            "long waits add up to more than the whole wait"
        );
        burners_with_waits += usize::from(!long.is_empty());
    }
    assert!(burners_with_waits > 0, "no burner waited 2 ms for a CPU");

    let writer = spans
        .iter()
        .find(|s| {
            s["command_line"]
                .as_array()
                .is_some_and(|c| c.iter().any(|a| a == "direct-write"))
        })
        .expect("the writer's span");
    let io = waits(writer, "block_io");
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(&dir).expect("dir").dev();
    let device = format!("{}:{}", libc::major(dev), libc::minor(dev));
    println!(
        "writer: {} slow block IO events (threshold 1 us), first {:?}; block IO time {} ns",
        io.len(),
        io.first(),
        writer["time"]["block_io_ns"]
    );
    // Its writes (it may also have read its own binary from disk).
    assert!(io.iter().any(|e| e["device"] == device.as_str()
        && e["op"] == "write"
        && e["bytes"].as_u64() > Some(0)));
    // Every one over the threshold (fsync's flush requests may complete with no bytes).
    assert!(
        io.iter().all(|e| e["duration_ns"].as_u64() >= Some(1_000)),
        "{io:#?}"
    );
    let _ = std::fs::remove_file(file);
}

#[test]
fn the_metrics_families_arrive_over_otlp_http_and_grpc_with_the_kernels_values() {
    for transport in ["http", "grpc"] {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let receiver = Receiver::start_with(&dir, free_port(), transport);
        let protocol = if transport == "grpc" {
            "grpc"
        } else {
            "http/protobuf"
        };
        let agent = Agent::start(&[
            "--otlp-protocol",
            protocol,
            "--otlp-endpoint",
            &format!("http://127.0.0.1:{}", receiver.port),
            "--otlp-metrics-interval",
            "1s",
        ]);
        // A process that burns 0.5 s of CPU in a cgroup of its own, and reports its own figure.
        let cgroup = std::path::Path::new(&taskscope_e2e::cgroup2_root()).join(format!(
            "taskscope-otlp-metrics-{}-{transport}",
            std::process::id()
        ));
        std::fs::create_dir(&cgroup).expect("cgroup");
        let report_path = dir.join(format!("otlp-metrics-{}.schedstat", receiver.port));
        let status = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "echo $$ > {}/cgroup.procs && exec {} spin-report 500 {}",
                cgroup.display(),
                workload_binary().display(),
                report_path.display()
            ))
            .status()
            .expect("sh");
        assert!(status.success());
        let (kernel_cpu_ns, _) = report(&report_path);
        let label = format!(
            "/{}",
            cgroup
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
        );
        // A point exported after the process ended carries its whole CPU time.
        let mut point = None;
        for _ in 0..100 {
            std::thread::sleep(Duration::from_millis(300));
            point = receiver
                .metric_points()
                .into_iter()
                .rfind(|p| {
                    p["name"] == "taskscope_cpu_seconds"
                        && p["attributes"]["cgroup"] == label.as_str()
                })
                .filter(|p| {
                    p["value"].as_f64().unwrap_or(0.0) * 1e9 >= 0.95 * kernel_cpu_ns as f64
                });
            if point.is_some() {
                break;
            }
        }
        let Some(point) = point else {
            let points = receiver.metric_points();
            panic!(
                "no final CPU point for {label} over OTLP/{transport} in 30 s: status {}; {} points; this cgroup's: {:?}",
                agent.get("/api/v1/status")["otlp_metrics"],
                points.len(),
                points
                    .iter()
                    .filter(|p| p["attributes"]["cgroup"] == label.as_str() && p["name"] == "taskscope_cpu_seconds")
                    .map(|p| p["value"].clone())
                    .collect::<Vec<_>>()
            );
        };
        let points = receiver.metric_points();
        let value = point["value"].as_f64().unwrap_or(f64::NAN);
        within(
            &format!("taskscope_cpu_seconds of the cgroup over OTLP/{transport} vs the process's own schedstat (s)"),
            value,
            kernel_cpu_ns as f64 / 1e9,
            0.05,
        );
        assert_eq!(point["type"], "sum");
        assert_eq!(point["monotonic"], true);
        assert_eq!(point["transport"], transport);
        assert_eq!(point["resource"]["service.name"], "taskscope");
        let histogram = points
            .iter()
            .find(|p| p["name"] == "taskscope_runqueue_latency_seconds" && p["type"] == "histogram")
            .expect("a run-queue histogram point");
        let bucket_total: u64 = histogram["bucket_counts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_u64)
            .sum();
        assert_eq!(
            Some(bucket_total),
            histogram["count"].as_u64(),
            "buckets add up to the count"
        );
        let names: std::collections::BTreeSet<&str> =
            points.iter().filter_map(|p| p["name"].as_str()).collect();
        println!(
            "OTLP/{transport}: {} points of {} families, e.g. {:?}",
            points.len(),
            names.len(),
            names.iter().take(6).collect::<Vec<_>>()
        );
        for family in [
            "taskscope_tasks_running",
            "taskscope_node_cpu_busy_ratio",
            "taskscope_events_lost",
            "process_resident_memory_bytes",
        ] {
            assert!(
                names.contains(family),
                "{family} missing over OTLP/{transport}"
            );
        }
        let status = agent.get("/api/v1/status");
        println!("status.otlp_metrics: {}", status["otlp_metrics"]);
        assert!(
            status["otlp_metrics"]["exported_requests"]
                .as_u64()
                .unwrap_or(0)
                > 0
        );
        drop(agent);
        let _ = std::fs::remove_dir(&cgroup);
        let _ = std::fs::remove_file(report_path);
    }
}
