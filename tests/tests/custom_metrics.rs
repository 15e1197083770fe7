//! Custom metrics against real programs: a C function called exactly N times (uprobe and
//! uretprobe), Debian's Python 3.11 (`function__entry`, behind a USDT semaphore), PostgreSQL
//! 15 under pgbench (`query__start`/`query__done` against pg_stat_statements and
//! pg_stat_database), a copy of a binary in another root filesystem found through
//! `/proc/<pid>/root`, and bad definitions (exit 2, 400, a reload that changes nothing, links
//! detached in the kernel's own list).

use std::{
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use taskscope_e2e::{agent_binary, cgroup2_root, free_port, http_request, wait_for, Agent};

const TOKEN: &str = "e2e-custom-metrics-token-0123456789";
const C_SOURCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/c/known_calls.c");
/// Debian's interpreter (a `python3.11` earlier on PATH may be another build, without USDT).
const PYTHON: &str = "/usr/bin/python3.11";
const POSTGRES_BIN: &str = "/usr/lib/postgresql/15/bin";

/// A directory of this test's own under /var/tmp, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = PathBuf::from(format!(
            "/var/tmp/taskscope-custom-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A cgroup v2 directory of its own, removed on drop.
struct Cgroup(PathBuf);

impl Cgroup {
    fn new(name: &str) -> Cgroup {
        let dir = Path::new(&cgroup2_root()).join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::create_dir(&dir);
        Cgroup(dir)
    }

    /// The path the agent names it by.
    fn path(&self) -> String {
        format!("/{}", self.0.file_name().expect("leaf").to_string_lossy())
    }

    /// `sh -c` prefix that moves the shell (and what it execs) here.
    fn join(&self) -> String {
        format!("echo $$ > {}/cgroup.procs && exec ", self.0.display())
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Compiles the test's C program to `out` (statically linked with `static_link`: it then runs
/// in an empty root filesystem).
fn compile(out: &Path, static_link: bool) {
    let mut cc = Command::new("cc");
    cc.args(["-O2", "-g", "-o"]).arg(out).arg(C_SOURCE);
    if static_link {
        cc.arg("-static");
    }
    let status = cc
        .status()
        .expect("cc (gcc) is installed by `cargo xtask setup`");
    assert!(status.success(), "cc failed");
}

/// A running `known_calls N USEC`.
struct KnownCalls {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl KnownCalls {
    /// Starts `sh -c script` (which execs the program) and waits for its `ready`.
    fn start(script: &str) -> KnownCalls {
        let mut child = Command::new("sh")
            .args(["-c", script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("sh");
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("ready");
        assert_eq!(line.trim(), "ready", "{script}");
        KnownCalls {
            child,
            stdin,
            stdout,
        }
    }

    /// Makes the calls; returns the time they took by the program's own clock (ns).
    fn go(&mut self) -> u64 {
        let stdin = self.stdin.as_mut().expect("stdin");
        stdin.write_all(b"go\n").expect("go");
        stdin.flush().expect("flush");
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("result");
        line.split_whitespace()
            .next()
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("known_calls said {line:?}"))
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for KnownCalls {
    fn drop(&mut self) {
        self.stdin.take();
        let _ = self.child.wait();
    }
}

/// An agent with the admin token and `extra` flags.
fn agent(scratch: &Path, extra: &[&str]) -> Agent {
    let token = scratch.join("token");
    std::fs::write(&token, TOKEN).expect("token");
    let mut args = vec!["--admin-token-file", token.to_str().expect("path")];
    args.extend_from_slice(extra);
    Agent::start(&args)
}

/// An admin request; returns (status, JSON body).
fn admin(agent: &Agent, method: &str, path: &str, body: &str) -> (u16, Value) {
    agent.request_with_token(TOKEN, method, path, body)
}

/// The definition called `name` as `/api/v1/custom-metrics` shows it.
fn metric(agent: &Agent, name: &str) -> Value {
    let (status, list) = admin(agent, "GET", "/api/v1/custom-metrics", "");
    assert_eq!(status, 200, "{list}");
    list.as_array()
        .into_iter()
        .flatten()
        .find(|m| m["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no custom metric {name} in {list}"))
}

/// (count, total ns) of `name` in the workload of cgroup `path` (0s when it has none yet).
fn workload_figures(agent: &Agent, name: &str, path: &str) -> (u64, u64) {
    let view = metric(agent, name);
    view["workloads"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|w| w["cgroup"] == path)
        .map(|w| {
            (
                w["count"].as_u64().unwrap_or(0),
                w["total_ns"].as_u64().unwrap_or(0),
            )
        })
        .unwrap_or((0, 0))
}

/// Waits until the workload's count of `name` reaches `count` (the agent reads the kernel
/// every 200 ms here), then a little longer to see that it stays.
fn wait_count(agent: &Agent, name: &str, path: &str, count: u64) -> (u64, u64) {
    wait_for(
        &format!("{count} occurrences of {name} in {path}"),
        Duration::from_secs(20),
        || (workload_figures(agent, name, path).0 >= count).then_some(()),
    );
    std::thread::sleep(Duration::from_millis(600));
    workload_figures(agent, name, path)
}

/// Kernel ids of every BPF link (`bpftool link list`, the kernel's own list).
fn kernel_link_ids() -> Vec<u64> {
    let out = Command::new("bpftool")
        .args(["--json", "link", "list"])
        .output()
        .expect("bpftool (installed by `cargo xtask setup`)");
    let links: Value = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
    links
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["id"].as_u64())
        .collect()
}

fn link_ids(view: &Value) -> Vec<u64> {
    view["link_ids"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_u64)
        .collect()
}

fn latency_config(name: &str, binary: &Path, symbol: &str) -> String {
    format!(
        "[[custom_metrics]]\nname = \"{name}\"\nkind = \"latency\"\nstart = \"uprobe:{b}:{symbol}\"\nend = \"uretprobe:{b}:{symbol}\"\n",
        b = binary.display()
    )
}

#[test]
fn a_function_called_n_times_is_counted_exactly_and_timed_within_5_percent() {
    const CALLS: u64 = 2000;
    const USEC: u64 = 200;
    let scratch = Scratch::new("uprobe");
    let binary = scratch.0.join("known_calls");
    compile(&binary, false);
    let config = scratch.0.join("taskscope.toml");
    std::fs::write(
        &config,
        latency_config("known_work", &binary, "taskscope_known_work"),
    )
    .expect("config");
    let agent = agent(
        &scratch.0,
        &[
            "--config",
            config.to_str().expect("path"),
            "--health-interval",
            "1s",
        ],
    );
    // Health has a component per definition.
    let health = wait_for("the definition in health", Duration::from_secs(20), || {
        let health = agent.get("/health/detailed");
        let component = health["components"]["custom_metric:known_work"].clone();
        (!component.is_null()).then_some(component)
    });
    println!("health of known_work: {health}");
    assert_eq!(health["status"], "healthy", "{health}");
    let cgroup = Cgroup::new("taskscope-custom-uprobe");
    let mut program = KnownCalls::start(&format!(
        "{}{} {CALLS} {USEC}",
        cgroup.join(),
        binary.display()
    ));
    let own_ns = program.go();
    let (count, total_ns) = wait_count(&agent, "known_work", &cgroup.path(), CALLS);
    let known_ns = CALLS * USEC * 1000;
    let off = (total_ns as f64 - known_ns as f64).abs() / known_ns as f64 * 100.0;
    println!(
        "taskscope_known_work calls: taskscope {count}, known {CALLS} (exact); time: taskscope {total_ns} ns, known {known_ns} ns (N x {USEC} us), difference {off:.2}% (allowed 5%); the program's own clock around the calls: {own_ns} ns"
    );
    assert_eq!(count, CALLS);
    assert!(off <= 5.0, "{total_ns} ns is {off:.2}% off {known_ns} ns");
    // The process is alive: its own figures are in the JSON API.
    let view = metric(&agent, "known_work");
    let process = view["processes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["pid"] == program.pid())
        .unwrap_or_else(|| panic!("pid {} not in {view}", program.pid()));
    assert_eq!(process["count"], CALLS);
    assert_eq!(view["state"], "attached");
    // /metrics: a counter and a histogram per workload, with the usual labels.
    let (_, text) = taskscope_e2e::http_get(&agent.addr, "/metrics").expect("metrics");
    let label = format!("cgroup=\"{}\"", cgroup.path());
    let sample = |family: &str| {
        text.lines()
            .find(|l| l.starts_with(family) && l.contains(&label))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no {family} for {label}"))
    };
    let exported = sample("taskscope_custom_known_work_total{");
    let histogram = sample("taskscope_custom_known_work_seconds_count{");
    let seconds = sample("taskscope_custom_known_work_seconds_sum{");
    println!("/metrics: taskscope_custom_known_work_total {exported}, _seconds_count {histogram}, _seconds_sum {seconds}");
    assert_eq!(exported as u64, CALLS);
    assert_eq!(histogram as u64, CALLS);
    assert!((seconds - total_ns as f64 / 1e9).abs() < 1e-6);
}

#[test]
fn a_copy_of_the_binary_in_another_root_started_later_is_probed_through_its_root() {
    const CALLS: u64 = 500;
    let scratch = Scratch::new("root");
    let binary = scratch.0.join("known_calls");
    compile(&binary, false);
    let config = scratch.0.join("taskscope.toml");
    std::fs::write(
        &config,
        latency_config("rooted_work", &binary, "taskscope_known_work"),
    )
    .expect("config");
    let agent = agent(&scratch.0, &["--config", config.to_str().expect("path")]);
    let host_copy = metric(&agent, "rooted_work");
    assert_eq!(host_copy["files"].as_array().map(Vec::len), Some(1));
    // Another root filesystem (a new mount namespace, chrooted, as a container's) holding
    // its own copy at the same path: a different file, which the host's uprobe does not see.
    let root = scratch.0.join("root");
    let inside = root.join(binary.strip_prefix("/").expect("absolute"));
    std::fs::create_dir_all(inside.parent().expect("dir")).expect("rootfs");
    compile(&inside, true);
    let cgroup = Cgroup::new("taskscope-custom-root");
    let mut program = KnownCalls::start(&format!(
        "{}unshare --mount chroot {} {} {CALLS} 10",
        cgroup.join(),
        root.display(),
        binary.display()
    ));
    // Found at the next look at the roots (every 10 s).
    let view = wait_for(
        "the copy in the other root attached",
        Duration::from_secs(30),
        || {
            let view = metric(&agent, "rooted_work");
            (view["files"].as_array()?.len() == 2).then_some(view)
        },
    );
    let via_root = format!("/proc/{}/root", program.pid());
    println!("files probed: {}", view["files"]);
    assert!(
        view["files"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|f| f["path"].as_str().is_some_and(|p| p.starts_with(&via_root))),
        "the copy was not opened through /proc/<pid>/root: {}",
        view["files"]
    );
    program.go();
    let (count, _) = wait_count(&agent, "rooted_work", &cgroup.path(), CALLS);
    println!("calls of the copy in the other root: taskscope {count}, known {CALLS}");
    assert_eq!(count, CALLS);
}

#[test]
fn python_function_entries_are_counted_with_the_probe_semaphore_raised() {
    const CALLS: u64 = 3000;
    let scratch = Scratch::new("python");
    let script = scratch.0.join("calls.py");
    // CPython 3.11 fires function__entry only while a profile or trace function is set (its
    // DTrace hooks sit on the tracing path); a no-op profiler is enough.
    std::fs::write(
        &script,
        "import sys\ndef known():\n    pass\nsys.setprofile(lambda *a: None)\nfor _ in range(int(sys.argv[1])):\n    known()\n",
    )
    .expect("script");
    let agent = agent(&scratch.0, &["--uprobes"]);
    let definition = format!(
        r#"{{"name": "py_calls", "kind": "count", "start": "usdt:{PYTHON}:python:function__entry", "selector": "comm=python3*"}}"#
    );
    let (status, view) = admin(&agent, "POST", "/api/v1/custom-metrics", &definition);
    assert_eq!(status, 201, "{view}");
    // The same script without the calls: what the interpreter enters on its own.
    let mut counts = Vec::new();
    for (name, calls) in [("taskscope-custom-py0", 0), ("taskscope-custom-pyn", CALLS)] {
        let cgroup = Cgroup::new(name);
        let mut child = Command::new("sh")
            .args([
                "-c",
                &format!("{}{PYTHON} {} {calls}", cgroup.join(), script.display()),
            ])
            .spawn()
            .expect("python");
        assert!(child.wait().expect("python").success());
        let count = wait_for("the script's entries", Duration::from_secs(20), || {
            let (count, _) = workload_figures(&agent, "py_calls", &cgroup.path());
            (count > 0).then_some(count)
        });
        std::thread::sleep(Duration::from_millis(600));
        counts.push(
            workload_figures(&agent, "py_calls", &cgroup.path())
                .0
                .max(count),
        );
    }
    println!(
        "python:function__entry: {} without the calls, {} with {CALLS} calls: taskscope {} more, known {CALLS} (exact)",
        counts[0],
        counts[1],
        counts[1] - counts[0]
    );
    assert_eq!(counts[1] - counts[0], CALLS);
}

/// A throwaway PostgreSQL cluster in `dir` (its own cgroup), stopped on drop.
struct Postgres {
    dir: PathBuf,
    port: u16,
}

impl Postgres {
    fn start(dir: &Path, cgroup: &Cgroup) -> Postgres {
        let port = free_port();
        let chown = Command::new("chown")
            .args(["-R", "postgres"])
            .arg(dir)
            .status()
            .expect("chown");
        assert!(chown.success());
        let data = dir.join("data");
        let init = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(format!("{POSTGRES_BIN}/initdb"))
            .args(["-A", "trust", "-U", "postgres", "-D"])
            .arg(&data)
            .stdout(Stdio::null())
            .status()
            .expect("initdb");
        assert!(init.success());
        let options = format!(
            "-k {} -p {port} -c listen_addresses='' -c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track_planning=on",
            dir.display()
        );
        let start = Command::new("sh")
            .args([
                "-c",
                &format!(
                    "{}runuser -u postgres -- {POSTGRES_BIN}/pg_ctl -D {} -l {}/log -w -o \"{options}\" start",
                    cgroup.join(),
                    data.display(),
                    dir.display()
                ),
            ])
            .stdout(Stdio::null())
            .status()
            .expect("pg_ctl");
        assert!(start.success(), "PostgreSQL did not start");
        Postgres {
            dir: dir.to_path_buf(),
            port,
        }
    }

    fn sql(&self, query: &str) -> String {
        let out = Command::new("psql")
            .args(["-X", "-q", "-A", "-t", "-U", "postgres", "-h"])
            .arg(&self.dir)
            .args(["-p", &self.port.to_string(), "-c", query])
            .output()
            .expect("psql");
        assert!(
            out.status.success(),
            "{query}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn pgbench(&self, args: &[&str]) {
        let status = Command::new("pgbench")
            .args(["-U", "postgres", "-h"])
            .arg(&self.dir)
            .args(["-p", &self.port.to_string()])
            .args(args)
            .arg("postgres")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("pgbench");
        assert!(status.success(), "pgbench {args:?}");
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(format!("{POSTGRES_BIN}/pg_ctl"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .status();
    }
}

#[test]
fn postgresql_queries_match_pg_stat_statements_and_pg_stat_database() {
    let scratch = Scratch::new("postgres");
    let cgroup = Cgroup::new("taskscope-custom-postgres");
    let postgres = Postgres::start(&scratch.0, &cgroup);
    let config = scratch.0.join("taskscope.toml");
    let probe = |name: &str| format!("usdt:{POSTGRES_BIN}/postgres:postgresql:{name}");
    std::fs::write(
        &config,
        format!(
            "[[custom_metrics]]\nname = \"pg_query\"\nkind = \"latency\"\nstart = \"{}\"\nend = \"{}\"\nselector = \"comm=postgres\"\n",
            probe("query__start"),
            probe("query__done")
        ),
    )
    .expect("config");
    let agent = agent(&scratch.0, &["--config", config.to_str().expect("path")]);
    postgres.sql("CREATE EXTENSION pg_stat_statements");
    postgres.pgbench(&["-i", "-q"]);
    let active_before: f64 = postgres
        .sql("SELECT active_time FROM pg_stat_database WHERE datname = 'postgres'")
        .parse()
        .expect("active_time");
    // From here on, pg_stat_statements counts what pgbench runs (the reset is left out below).
    postgres.sql("SELECT pg_stat_statements_reset()");
    // Every query so far counted, and no new one running.
    std::thread::sleep(Duration::from_millis(800));
    let (count_before, ns_before) = workload_figures(&agent, "pg_query", &cgroup.path());
    postgres.pgbench(&["-n", "-c", "2", "-t", "500"]);
    let stats = postgres.sql(
        "SELECT sum(calls), sum(total_exec_time + total_plan_time) FROM pg_stat_statements WHERE query NOT LIKE '%pg_stat_statements%'",
    );
    let (calls, statements_ms) = stats.split_once('|').expect("calls|time");
    let calls: u64 = calls.parse().expect("calls");
    let statements_ms: f64 = statements_ms.parse().expect("time");
    // The statistics query above is one more query__start in the workload.
    let (count_after, ns_after) =
        wait_count(&agent, "pg_query", &cgroup.path(), count_before + calls + 1);
    let active_ms: f64 = postgres
        .sql("SELECT active_time FROM pg_stat_database WHERE datname = 'postgres'")
        .parse::<f64>()
        .expect("active_time")
        - active_before;
    let counted = count_after - count_before - 1;
    let measured_ms = (ns_after - ns_before) as f64 / 1e6;
    let off = (measured_ms - active_ms).abs() / active_ms * 100.0;
    println!(
        "pgbench queries: taskscope {counted}, pg_stat_statements calls {calls} (exact); time in queries: taskscope {measured_ms:.1} ms, pg_stat_database active_time {active_ms:.1} ms, difference {off:.1}% (allowed 15%); pg_stat_statements planning + execution {statements_ms:.1} ms (a part of a query's time: without parsing, locks and commit)"
    );
    assert_eq!(counted, calls);
    assert!(
        off <= 15.0,
        "{measured_ms:.1} ms vs active_time {active_ms:.1} ms"
    );
    assert!(measured_ms >= statements_ms);
}

#[test]
fn bad_definitions_are_refused_by_name_and_removal_detaches_the_probes() {
    let scratch = Scratch::new("bad");
    let binary = scratch.0.join("known_calls");
    compile(&binary, false);
    let stripped = scratch.0.join("stripped");
    compile(&stripped, false);
    assert!(Command::new("strip")
        .arg(&stripped)
        .status()
        .expect("strip")
        .success());
    // At start-up: exit 2, one line naming the definition and what is wrong.
    let start = |text: &str| {
        let config = scratch.0.join("bad.toml");
        std::fs::write(&config, text).expect("config");
        let out = Command::new(agent_binary())
            .args(["run", "--listen", "127.0.0.1:0", "--config"])
            .arg(&config)
            .output()
            .expect("agent");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let last = stderr.lines().last().unwrap_or_default().to_string();
        println!("exit {:?}: {last}", out.status.code());
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        last
    };
    let missing = start(&latency_config("gone", Path::new("/no/such/binary"), "f"));
    assert!(
        missing.contains("gone") && missing.contains("/no/such/binary"),
        "{missing}"
    );
    let strip = start(&latency_config("strip", &stripped, "taskscope_known_work"));
    assert!(strip.contains("stripped"), "{strip}");
    let usdt = start(&format!(
        "[[custom_metrics]]\nname = \"nope\"\nkind = \"count\"\nstart = \"usdt:{POSTGRES_BIN}/postgres:postgresql:query__starts\"\n"
    ));
    assert!(
        usdt.contains("no USDT probe postgresql:query__starts")
            && usdt.contains("postgresql:query__start,"),
        "{usdt}"
    );
    let syntax = start(
        "[[custom_metrics]]\nname = \"x\"\nkind = \"count\"\nstart = \"kprobe:do_sys_open\"\n",
    );
    assert!(syntax.contains("unknown form 'kprobe'"), "{syntax}");

    // The admin API: the same checks, 400; nothing attached.
    let config = scratch.0.join("taskscope.toml");
    let good = latency_config("known_work", &binary, "taskscope_known_work");
    std::fs::write(&config, &good).expect("config");
    let agent = agent(&scratch.0, &["--config", config.to_str().expect("path")]);
    let before = metric(&agent, "known_work");
    let links = link_ids(&before);
    assert_eq!(links.len(), 2);
    let kernel = kernel_link_ids();
    assert!(
        links.iter().all(|l| kernel.contains(l)),
        "{links:?} not in {kernel:?}"
    );
    let refused = |body: &str, expect: &str| {
        let (status, answer) = admin(&agent, "POST", "/api/v1/custom-metrics", body);
        println!("POST {body}: {status} {answer}");
        assert_eq!(status, 400);
        assert!(
            answer["error"].as_str().is_some_and(|e| e.contains(expect)),
            "{answer}"
        );
    };
    refused("not json", "not a custom metric definition");
    refused(
        &format!(
            r#"{{"name": "x", "kind": "count", "start": "uprobe:{}:no_such_fn"}}"#,
            binary.display()
        ),
        "no function no_such_fn",
    );
    refused(
        &format!(
            r#"{{"name": "known_work", "kind": "count", "start": "uprobe:{}:main"}}"#,
            binary.display()
        ),
        "already defined",
    );
    let (status, _) = http_request(
        &agent.addr,
        "POST",
        "/api/v1/custom-metrics",
        &[],
        br#"{"name": "x", "kind": "count", "start": "uprobe:/bin/true:main"}"#,
    )
    .expect("request");
    assert_eq!(status, 401, "adding without the token");

    // A reload with a bad definition changes nothing: the same links stay.
    let (status, answer) = admin(
        &agent,
        "PUT",
        "/api/v1/config",
        &format!(
            "{good}{}",
            latency_config("gone", Path::new("/no/such/binary"), "f")
        ),
    );
    println!("reload with a bad definition: {status} {answer}");
    assert_eq!(status, 400);
    assert_eq!(link_ids(&metric(&agent, "known_work")), links);

    // Removal detaches: the kernel's list of links no longer has them.
    let (status, answer) = admin(&agent, "DELETE", "/api/v1/custom-metrics/known_work", "");
    assert_eq!(status, 200, "{answer}");
    let kernel = kernel_link_ids();
    println!(
        "links of known_work {links:?}; in the kernel's list after removal: {:?}",
        links
            .iter()
            .filter(|l| kernel.contains(l))
            .collect::<Vec<_>>()
    );
    assert!(links.iter().all(|l| !kernel.contains(l)));
    let (status, _) = admin(&agent, "DELETE", "/api/v1/custom-metrics/known_work", "");
    assert_eq!(status, 404);
}

#[test]
fn a_syscall_source_counts_the_selected_processes_calls_exactly_and_once() {
    let (calls, failures) = (5000u64, 1234u64);
    let scratch = Scratch::new("syscall");
    let config = scratch.0.join("taskscope.toml");
    std::fs::write(
        &config,
        "[[custom_metrics]]\nname = \"pgid_calls\"\nkind = \"count\"\nstart = \"syscall:getpgid\"\nselector = \"comm=workload\"\n",
    )
    .expect("config");
    let agent = agent(&scratch.0, &["--config", config.to_str().expect("path")]);
    let cgroup = Cgroup::new("taskscope-custom-syscall");
    let child = taskscope_e2e::Workload::run_in_cgroups(
        &[&cgroup.0],
        &["syscalls", &calls.to_string(), &failures.to_string()],
    );
    let (live, _) = wait_count(&agent, "pgid_calls", &cgroup.path(), calls);
    child.finish();
    // After the exit (and the reads that follow it), still counted once.
    std::thread::sleep(Duration::from_millis(1500));
    let (after_exit, _) = workload_figures(&agent, "pgid_calls", &cgroup.path());
    println!(
        "getpgid calls of the selected process: taskscope {live} while it ran, {after_exit} after its exit; known {calls} (exact)"
    );
    assert_eq!(live, calls);
    assert_eq!(after_exit, calls);
}
