//! The agent scraped by a real Prometheus server (Debian's `prometheus`, installed by
//! `cargo xtask setup --for-tests`), and its exposition checked by `promtool`.

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use taskscope_e2e::{
    cgroup2_root, free_port, http_get, sample, schedstat, wait_for, workload_binary, Agent,
    Workload,
};

/// A Prometheus server on loopback scraping `target` every second; killed when dropped.
struct Prometheus {
    child: Child,
    addr: String,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Prometheus {
    fn start(target: &str) -> Prometheus {
        Self::start_with_rules(target, None)
    }

    /// With `rules`: a rule file Prometheus loads (deploy/prometheus/rules.yaml).
    fn start_with_rules(target: &str, rules: Option<&std::path::Path>) -> Prometheus {
        let dir = std::env::temp_dir().join(format!("taskscope-prom-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: taskscope\n    static_configs:\n      - targets: ['{target}']\n{}",
                rules.map_or(String::new(), |r| format!("rule_files:\n  - {}\n", r.display()))
            ),
        )
        .expect("config");
        let addr = format!("127.0.0.1:{}", free_port());
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (Debian package `prometheus`, installed by cargo xtask setup --for-tests)");
        let server = Prometheus {
            child,
            addr,
            _dir: TempDir(dir),
        };
        wait_for("Prometheus to be ready", Duration::from_secs(60), || {
            http_get(&server.addr, "/-/ready")
                .ok()
                .filter(|(s, _)| *s == 200)
        });
        // Its scrape manager starts scraping a few seconds after it is ready.
        wait_for("Prometheus's first scrape", Duration::from_secs(60), || {
            let up = server.query_at("up{job=\"taskscope\"}", unix_now());
            up.first().filter(|u| u["value"][1] == "1").map(|_| ())
        });
        server
    }

    /// An instant query evaluated at `time` (unix seconds); the result vector.
    fn query_at(&self, promql: &str, time: f64) -> Vec<Value> {
        let encoded: String = promql
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' | b'-' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let path = format!("/api/v1/query?query={encoded}&time={time:.3}");
        let (status, body) = http_get(&self.addr, &path).expect("query");
        assert_eq!(status, 200, "{promql}: {body}");
        let answer: Value = serde_json::from_str(&body).expect("JSON");
        answer["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// A counter of Prometheus itself, from its own /metrics.
    fn own_counter(&self, name: &str) -> f64 {
        let (_, body) = http_get(&self.addr, "/metrics").expect("prometheus /metrics");
        body.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Wall-clock seconds, the time base of Prometheus samples and queries.
fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[test]
fn prometheus_sees_one_cpu_of_a_cpu_bound_cgroup() {
    let agent = Agent::start(&[]);
    let prometheus = Prometheus::start(&agent.addr);
    let name = format!("taskscope-prom-{}", std::process::id());
    let dir = std::path::Path::new(&cgroup2_root()).join(&name);
    std::fs::create_dir(&dir).expect("create a cgroup");
    // One thread spinning for 12 s, in its own cgroup.
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec {} spin-for 12000",
        dir.display(),
        workload_binary().display()
    );
    let mut spinner = Command::new("sh")
        .arg("-c")
        .arg(&script)
        .spawn()
        .expect("sh");
    let query = format!("rate(taskscope_cpu_seconds_total{{cgroup=\"/{name}\"}}[5s])");
    // The kernel's own CPU time of the spinner (sh exec'd it, same pid) over a 5 s window that
    // ends when Prometheus evaluates the rate.
    let spinner_pid = spinner.id();
    std::thread::sleep(Duration::from_secs(3));
    let (cpu_start, at_start) = (schedstat(spinner_pid).0, unix_now());
    std::thread::sleep(Duration::from_secs(5));
    let (cpu_end, at_end) = (schedstat(spinner_pid).0, unix_now());
    // Let the scrape after the window's end land before evaluating at that time.
    std::thread::sleep(Duration::from_millis(1500));
    let result = prometheus.query_at(&query, at_end);
    let up = prometheus.query_at("up{job=\"taskscope\"}", at_end);
    let samples = prometheus.query_at(
        &format!("taskscope_cpu_seconds_total{{cgroup=\"/{name}\"}}[6s]"),
        at_end,
    );
    let _ = spinner.wait();
    let _ = std::fs::remove_dir(&dir);

    println!("{query} = {result:?}");
    println!("samples in the last 6 s: {samples:?}");
    let rate: f64 = result
        .first()
        .and_then(|r| r["value"][1].as_str()?.parse().ok())
        .unwrap_or_else(|| panic!("no series for {query}: {result:?}"));
    let kernel_rate = (cpu_end - cpu_start) as f64 / 1e9 / (at_end - at_start);
    println!(
        "CPUs used by a one-thread spinner over 5 s: Prometheus rate {rate:.4}, kernel (schedstat) {kernel_rate:.4}, allowed 5% apart"
    );
    assert!(
        (rate - kernel_rate).abs() <= 0.05 * kernel_rate,
        "Prometheus {rate} vs kernel {kernel_rate}"
    );
    assert!(
        kernel_rate > 0.5,
        "the spinner hardly ran ({kernel_rate} CPUs)"
    );
    assert_eq!(
        up.first().map(|u| u["value"][1].clone()),
        Some(Value::from("1")),
        "{up:?}"
    );
    let rejected = prometheus.own_counter("prometheus_target_scrapes_sample_out_of_order_total")
        + prometheus.own_counter("prometheus_target_scrapes_sample_duplicate_timestamp_total")
        + prometheus.own_counter("prometheus_target_scrapes_sample_out_of_bounds_total")
        + prometheus.own_counter("prometheus_target_scrapes_exceeded_sample_limit_total");
    println!("samples Prometheus rejected: {rejected}");
    assert_eq!(rejected, 0.0);
}

#[test]
fn log2_buckets_put_prometheus_quantiles_in_the_kernels_own_bucket() {
    const SLEEPS: u64 = 300;
    let agent = Agent::start(&["--histogram-buckets", "log2"]);
    let prometheus = Prometheus::start(&agent.addr);
    let name = format!("taskscope-log2-{}", std::process::id());
    let dir = std::path::Path::new(&cgroup2_root()).join(&name);
    std::fs::create_dir(&dir).expect("create a cgroup");
    // 1.3 ms sleeps: the kernel's bucket [2^20, 2^21) ns, which the log4 spacing would blur
    // into (1.05 ms, 4.19 ms].
    let sleeper = Workload::run_in_cgroups(&[&dir], &["sleeps", "1300", &SLEEPS.to_string()]);
    let median_ns: u64 = sleeper.output.parse().expect("median");
    let series = format!("cgroup=\"/{name}\",syscall=\"clock_nanosleep\"");
    wait_for(
        "Prometheus to have scraped every sleep",
        Duration::from_secs(30),
        || {
            let count = prometheus.query_at(
                &format!("taskscope_syscall_latency_seconds_count{{{series}}}"),
                unix_now(),
            );
            let count: f64 = count.first()?["value"][1].as_str()?.parse().ok()?;
            (count >= SLEEPS as f64).then_some(())
        },
    );
    let query = format!(
        "histogram_quantile(0.5, sum by (le) (taskscope_syscall_latency_seconds_bucket{{{series}}}))"
    );
    let result = prometheus.query_at(&query, unix_now());
    let buckets = prometheus.query_at(
        &format!("count(taskscope_syscall_latency_seconds_bucket{{{series}}})"),
        unix_now(),
    );
    sleeper.finish();
    let _ = std::fs::remove_dir(&dir);
    let p50: f64 = result
        .first()
        .and_then(|r| r["value"][1].as_str()?.parse().ok())
        .unwrap_or_else(|| panic!("no result for {query}: {result:?}"));
    // The kernel's bucket of the median sleep as measured by the sleeper: [2^(b-1), 2^b) ns.
    let bits = 64 - median_ns.leading_zeros();
    let (low, high) = (
        (1u64 << (bits - 1)) as f64 / 1e9,
        (1u64 << bits) as f64 / 1e9,
    );
    println!(
        "median of {SLEEPS} sleeps of 1.3 ms: measured by the sleeper {:.3} ms (kernel bucket {:.3} to {:.3} ms); Prometheus {query} = {:.3} ms; buckets per series: {buckets:?}",
        median_ns as f64 / 1e6,
        low * 1e3,
        high * 1e3,
        p50 * 1e3
    );
    assert!(
        p50 >= low && p50 <= high,
        "Prometheus's median {p50} s is outside the kernel's bucket [{low}, {high}] of the true median"
    );
    // 25 finite bounds (1.024 µs to 2^34 ns, every power of two) and +Inf.
    assert_eq!(
        buckets.first().map(|b| b["value"][1].clone()),
        Some(Value::from("26"))
    );
}

#[test]
fn the_shipped_rules_evaluate_on_a_live_scrape() {
    let agent = Agent::start(&[]);
    let rules =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus/rules.yaml");
    let prometheus = Prometheus::start_with_rules(&agent.addr, Some(&rules));
    // A workload whose processes fail, in a cgroup of its own.
    let name = format!("taskscope-rules-{}", std::process::id());
    let dir = std::path::Path::new(&cgroup2_root()).join(&name);
    std::fs::create_dir(&dir).expect("create a cgroup");
    let script = format!(
        "echo $$ > {}/cgroup.procs; i=0; while [ $i -lt 40 ]; do sh -c 'exit 1'; sleep 0.1; i=$((i+1)); done",
        dir.display()
    );
    let status = Command::new("sh")
        .arg("-c")
        .arg(&script)
        .status()
        .expect("sh");
    assert!(status.success());
    let query = format!("workload:taskscope_tasks_failed:rate5m{{cgroup=\"/{name}\"}}");
    let failed = wait_for(
        "the recording rule's series",
        Duration::from_secs(30),
        || {
            let result = prometheus.query_at(&query, unix_now());
            let value: f64 = result.first()?["value"][1].as_str()?.parse().ok()?;
            (value > 0.0).then_some(value)
        },
    );
    println!("{query} = {failed:.3} per second (40 processes exited 1 within ~6 s)");
    for recorded in [
        "workload:taskscope_cpu_seconds:rate5m",
        "workload:taskscope_runqueue_latency_seconds:p99_5m",
        "workload:taskscope_syscalls:rate5m",
        "namespace:taskscope_task_failure_ratio:rate5m",
        "instance:taskscope_node_cpu_busy_ratio:avg",
    ] {
        let result = wait_for(recorded, Duration::from_secs(30), || {
            let r = prometheus.query_at(recorded, unix_now());
            (!r.is_empty()).then_some(r)
        });
        println!("{recorded}: {} series", result.len());
    }
    let failures = prometheus.own_counter("prometheus_rule_evaluation_failures_total");
    println!("rule evaluation failures: {failures}");
    assert_eq!(failures, 0.0);

    // Every dashboard query is valid PromQL for this Prometheus, with the dashboard's
    // variables as Grafana substitutes them ("All" is .*).
    let grafana = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana");
    let (mut queries, mut with_data) = (0, 0);
    for entry in std::fs::read_dir(&grafana).expect("deploy/grafana") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let dashboard: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("dashboard"))
                .expect("JSON");
        let variables: Vec<String> = dashboard["templating"]["list"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v["name"].as_str().map(str::to_string))
            .collect();
        for panel in dashboard["panels"].as_array().into_iter().flatten() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                let Some(expr) = target["expr"].as_str() else {
                    continue;
                };
                let mut promql = expr.replace("$__rate_interval", "1m");
                for variable in &variables {
                    promql = promql.replace(&format!("${variable}"), ".*");
                }
                assert!(
                    !promql.contains('$'),
                    "{}: {expr}: an undefined variable",
                    path.display()
                );
                let result = prometheus.query_at(&promql, unix_now());
                queries += 1;
                if !result.is_empty() {
                    with_data += 1;
                }
            }
        }
    }
    println!("dashboard queries: {queries} valid, {with_data} with data from this agent");
    assert!(queries >= 30);
    let _ = std::fs::remove_dir(&dir);
}

#[test]
fn promtool_finds_nothing_to_say_about_a_live_scrape() {
    let agent = Agent::start(&[]);
    let (status, body) = http_get(&agent.addr, "/metrics").expect("GET /metrics");
    assert_eq!(status, 200);
    let (success, said) = promtool_check_metrics(&body);
    println!(
        "promtool check metrics on {} lines: {:?}",
        body.lines().count(),
        said
    );
    assert!(success, "{said}");
    assert!(said.trim().is_empty(), "{said}");
}

/// `promtool check metrics` on an exposition: (whether it passed, what it said).
fn promtool_check_metrics(exposition: &str) -> (bool, String) {
    use std::io::Write;
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package `prometheus`)");
    promtool
        .stdin
        .take()
        .expect("stdin")
        .write_all(exposition.as_bytes())
        .expect("write");
    let out = promtool.wait_with_output().expect("promtool");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

#[test]
fn containers_and_pods_are_named_from_real_cgroups() {
    let agent = Agent::start(&[]);
    let root = cgroup2_root();
    let id = |n: u8| format!("{:064x}", u128::from(n) * 0x1111_1111_1111_1111);
    let uid = "0f8e7d6c-5b4a-4938-8271-605f4e3d2c1b";
    let uid_ = uid.replace('-', "_");
    let tag = std::process::id();
    // (cgroup path, expected pod label, expected container_id label)
    let cases = [
        (format!("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{}.scope", id(1)), uid.to_string(), id(1)),
        (format!("kubepods/besteffort/pod{uid}/{}", id(2)), uid.to_string(), id(2)),
        (format!("system.slice/crio-{}.scope", id(3)), String::new(), id(3)),
        (format!("system.slice/docker-{}.scope", id(4)), String::new(), id(4)),
        (format!("machine.slice/libpod-{}.scope", id(5)), String::new(), id(5)),
        (format!("taskscope-plain-{tag}"), String::new(), String::new()),
    ];
    let mut children = Vec::new();
    for (path, _, _) in &cases {
        let dir = std::path::Path::new(&root).join(path);
        std::fs::create_dir_all(&dir).expect("create cgroup");
        let script = format!(
            "echo $$ > {}/cgroup.procs && exec {} sleep 60000",
            dir.display(),
            workload_binary().display()
        );
        children.push(
            Command::new("sh")
                .arg("-c")
                .arg(&script)
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .spawn()
                .expect("sh"),
        );
    }
    let scrape = wait_for("every cgroup in /metrics", Duration::from_secs(20), || {
        let (_, body) = http_get(&agent.addr, "/metrics").ok()?;
        cases
            .iter()
            .all(|(path, _, _)| body.contains(&format!("cgroup=\"/{path}\"")))
            .then_some(body)
    });
    for child in &mut children {
        let _ = child.kill();
        let _ = child.wait();
    }
    for (path, pod, container_id) in &cases {
        let running = sample(
            &scrape,
            "taskscope_tasks_running",
            &[
                &format!("cgroup=\"/{path}\""),
                &format!("pod=\"{pod}\""),
                &format!("container_id=\"{container_id}\""),
            ],
        );
        println!("/{path}: pod {pod:?} container_id {container_id:?} running {running:?}");
        assert_eq!(running, Some(1.0), "/{path} not attributed as expected");
    }
    // Remove the cgroups, deepest first, once their processes are gone.
    for (path, _, _) in &cases {
        let mut dir = std::path::PathBuf::from(&root).join(path);
        while dir != std::path::Path::new(&root) {
            let _ = std::fs::remove_dir(&dir);
            dir.pop();
        }
    }
}

/// A memory cgroup for a test: on cgroup v2 where its memory controller is available, else in
/// the v1 memory hierarchy at the same path (hybrid hosts, like this one). Removed on drop.
struct MemoryCgroup {
    /// The v2 cgroup (always: it is the workload's identity) and the v1 memory one, if used.
    v2: std::path::PathBuf,
    v1: Option<std::path::PathBuf>,
}

impl MemoryCgroup {
    fn create(name: &str) -> MemoryCgroup {
        let root = std::path::PathBuf::from(cgroup2_root());
        let controllers =
            std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
        let v2 = root.join(name);
        std::fs::create_dir(&v2).expect("create v2 cgroup");
        if controllers.split_whitespace().any(|c| c == "memory") {
            std::fs::write(root.join("cgroup.subtree_control"), "+memory").expect("enable memory");
            return MemoryCgroup { v2, v1: None };
        }
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        let v1_root = mounts
            .lines()
            .find_map(|l| {
                let (left, right) = l.split_once(" - ")?;
                let mut f = right.split_whitespace();
                (f.next()? == "cgroup" && f.nth(1)?.split(',').any(|o| o == "memory"))
                    .then(|| left.split_whitespace().nth(4).map(std::path::PathBuf::from))?
            })
            .expect("no memory controller on cgroup v2 nor a v1 memory hierarchy");
        let v1 = v1_root.join(name);
        std::fs::create_dir(&v1).expect("create v1 memory cgroup");
        MemoryCgroup { v2, v1: Some(v1) }
    }

    /// Sets the limit (`None`: unlimited), through whichever hierarchy accounts memory.
    fn set_limit(&self, bytes: Option<u64>) {
        let result = match &self.v1 {
            Some(v1) => std::fs::write(
                v1.join("memory.limit_in_bytes"),
                bytes.map_or("-1".to_string(), |b| b.to_string()),
            ),
            None => std::fs::write(
                self.v2.join("memory.max"),
                bytes.map_or("max".to_string(), |b| b.to_string()),
            ),
        };
        result.expect("set memory limit");
    }

    /// The kernel's own figure of the memory charged to the cgroup.
    fn usage(&self) -> u64 {
        let file = match &self.v1 {
            Some(v1) => v1.join("memory.usage_in_bytes"),
            None => self.v2.join("memory.current"),
        };
        std::fs::read_to_string(file)
            .expect("memory usage")
            .trim()
            .parse()
            .expect("a number")
    }

    fn dirs(&self) -> Vec<&std::path::Path> {
        std::iter::once(self.v2.as_path())
            .chain(self.v1.as_deref())
            .collect()
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        for dir in self.dirs() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

#[test]
fn workload_memory_and_its_limit_match_the_cgroup() {
    const HELD_MIB: u64 = 64;
    const LIMIT: u64 = 256 << 20;
    let agent = Agent::start(&[]);
    let name = format!("taskscope-memory-{}", std::process::id());
    let cgroup = MemoryCgroup::create(&name);
    cgroup.set_limit(Some(LIMIT));
    let held = Workload::run_in_cgroups(&cgroup.dirs(), &["hold-memory", &HELD_MIB.to_string()]);
    let label = format!("cgroup=\"/{name}\"");
    let scrape_for = |what: &str, family: &'static str| {
        wait_for(what, Duration::from_secs(10), || {
            let (_, body) = http_get(&agent.addr, "/metrics").ok()?;
            let kernel = cgroup.usage();
            sample(&body, family, &[&label]).map(|v| (v, kernel, body))
        })
    };
    let (usage, kernel, scrape) =
        scrape_for("the memory of the cgroup", "taskscope_memory_usage_bytes");
    let limit = sample(&scrape, "taskscope_memory_limit_bytes", &[&label]);
    println!(
        "memory of /{name} ({}): taskscope {usage} B, kernel {kernel} B read just after (tolerance 5%); {HELD_MIB} MiB written by the workload; limit {limit:?} vs {LIMIT} set",
        if cgroup.v1.is_some() { "cgroup v1 memory hierarchy" } else { "cgroup v2" }
    );
    assert!(
        (usage - kernel as f64).abs() <= 0.05 * kernel as f64,
        "usage {usage} vs kernel {kernel}"
    );
    assert!(
        usage >= (HELD_MIB << 20) as f64,
        "{usage} B is less than the {HELD_MIB} MiB held"
    );
    assert_eq!(limit, Some(LIMIT as f64));

    // Unlimited: no limit series (a ratio to it would be meaningless).
    cgroup.set_limit(None);
    let (_, _, scrape) = scrape_for(
        "the cgroup after lifting its limit",
        "taskscope_memory_usage_bytes",
    );
    let limit = sample(&scrape, "taskscope_memory_limit_bytes", &[&label]);
    println!("after lifting the limit: taskscope_memory_limit_bytes {limit:?}");
    assert_eq!(limit, None);
    held.finish();
}

#[test]
fn a_burst_of_new_cgroups_is_attributed_at_once() {
    // Containers starting together: many cgroups created within the resolver's rescan limit.
    const CGROUPS: usize = 200;
    let agent = Agent::start(&["--max-series", "100000000"]);
    let burst = CgroupSleepers::start(&format!("taskscope-burst-{}", std::process::id()), CGROUPS);
    let prefix = format!("cgroup=\"/{}/", burst.name);
    let counted = |scrape: &str| {
        scrape
            .lines()
            .filter(|l| {
                l.starts_with("taskscope_tasks_running{")
                    && l.contains(&prefix)
                    && l.ends_with(" 1")
            })
            .count()
    };
    let seen = wait_for(
        "every new cgroup in /metrics",
        Duration::from_secs(15),
        || {
            let (_, scrape) = http_get(&agent.addr, "/metrics").ok()?;
            let n = counted(&scrape);
            (n == CGROUPS).then_some(n)
        },
    );
    println!("{CGROUPS} cgroups created in a burst: {seen} with their process attributed");
}

/// `count` cgroups under `/<name>` with one sleeping process each; all removed on drop, also
/// when a test fails.
struct CgroupSleepers {
    name: String,
    base: std::path::PathBuf,
    children: Vec<Child>,
}

impl CgroupSleepers {
    fn start(name: &str, count: usize) -> CgroupSleepers {
        let base = std::path::Path::new(&cgroup2_root()).join(name);
        std::fs::create_dir(&base).expect("cgroup");
        let mut sleepers = CgroupSleepers {
            name: name.to_string(),
            base,
            children: Vec::new(),
        };
        for i in 0..count {
            let dir = sleepers.base.join(format!("c{i}"));
            std::fs::create_dir(&dir).expect("cgroup");
            let script = format!("echo $$ > {}/cgroup.procs && exec sleep 600", dir.display());
            sleepers.children.push(
                Command::new("sh")
                    .arg("-c")
                    .arg(script)
                    .spawn()
                    .expect("sh"),
            );
        }
        sleepers
    }

    /// Ends the processes (the cgroups stay until drop).
    fn kill(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for CgroupSleepers {
    fn drop(&mut self) {
        self.kill();
        for i in 0..self.children.len() {
            let _ = std::fs::remove_dir(self.base.join(format!("c{i}")));
        }
        let _ = std::fs::remove_dir(&self.base);
    }
}

/// Workload families: every sample line of them in a scrape.
const WORKLOAD_FAMILIES: [&str; 10] = [
    "taskscope_cpu_seconds",
    "taskscope_context_switches",
    "taskscope_runqueue_latency_seconds",
    "taskscope_syscalls",
    "taskscope_syscall_errors",
    "taskscope_syscall_latency_seconds",
    "taskscope_block_io",
    "taskscope_tasks",
    "taskscope_task_duration_seconds",
    "taskscope_memory",
];

fn workload_sample_lines(scrape: &str) -> usize {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.contains("cgroup=\""))
        .filter(|l| WORKLOAD_FAMILIES.iter().any(|f| l.starts_with(f)))
        .count()
}

fn gauge_sum(scrape: &str, family: &str) -> f64 {
    scrape
        .lines()
        .filter(|l| l.starts_with(family))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn the_series_cap_and_ttl_hold_with_520_cgroups() {
    let cap = 3000;
    let agent = Agent::start(&["--max-series", &cap.to_string(), "--series-ttl", "2s"]);
    let mut many = CgroupSleepers::start(&format!("taskscope-many-{}", std::process::id()), 520);
    let prefix = format!("cgroup=\"/{}/", many.name);
    wait_for("all 520 sleepers running", Duration::from_secs(60), || {
        let (_, body) = http_get(&agent.addr, "/api/v1/processes?limit=10000").ok()?;
        (body.matches("\"sleep\",\"600\"").count() >= 520).then_some(())
    });
    let (_, scrape) = http_get(&agent.addr, "/metrics").expect("scrape");
    let exposed = workload_sample_lines(&scrape);
    let counted = gauge_sum(&scrape, "taskscope_series{");
    let dropped = gauge_sum(&scrape, "taskscope_series_dropped_total");
    let kept_cgroups = scrape
        .lines()
        .filter(|l| l.starts_with("taskscope_tasks_running{") && l.contains(&prefix))
        .count();
    println!(
        "520 workload cgroups: {exposed} workload series exposed, taskscope_series says {counted}, cap {cap}, dropped {dropped}, test cgroups kept {kept_cgroups}"
    );
    assert_eq!(
        exposed as f64, counted,
        "taskscope_series counts what is exposed"
    );
    assert!(exposed <= cap, "{exposed} series over the cap {cap}");
    assert!(dropped > 0.0 && kept_cgroups < 520, "the cap cut nothing");

    // Gone workloads expire after the TTL.
    many.kill();
    let after = wait_for(
        "the TTL to expire the gone cgroups",
        Duration::from_secs(30),
        || {
            let (_, body) = http_get(&agent.addr, "/metrics").ok()?;
            (!body.contains(&prefix)).then_some(body)
        },
    );
    println!(
        "after the TTL: {} workload series",
        workload_sample_lines(&after)
    );
}

#[test]
fn selected_processes_get_their_own_series() {
    let agent = Agent::start(&["--process-metrics", "comm=workload,exe=*/workload"]);
    let child = taskscope_e2e::Workload::run(&["cpu-burn", "300"]);
    let (kernel_ns, _, _) = schedstat(child.pid());
    let after = taskscope_e2e::monotonic_ns();
    // A scrape after the kernel read: its figures include everything up to then.
    wait_for("a read after the burn", Duration::from_secs(20), || {
        let p = agent.process_after(child.pid(), after);
        p["sched"]["on_cpu_ns"].as_u64()
    });
    let (_, scrape) = http_get(&agent.addr, "/metrics").expect("scrape");
    let value = sample(
        &scrape,
        "taskscope_process_cpu_seconds_total",
        &[&format!("pid=\"{}\"", child.pid()), "comm=\"workload\""],
    )
    .unwrap_or_else(|| panic!("no series for pid {}", child.pid()));
    let others = scrape
        .lines()
        .filter(|l| l.starts_with("taskscope_process_cpu_seconds_total"))
        .filter(|l| !l.contains("comm=\"workload\""))
        .count();
    child.finish();
    taskscope_e2e::assert_close(
        "selected process CPU seconds vs schedstat",
        (value * 1e9) as u64,
        kernel_ns,
        0.02,
    );
    assert_eq!(others, 0, "only selected processes get series");
}

#[test]
fn bpf_program_statistics_are_exported_only_when_asked_for() {
    let runs = |scrape: &str| {
        sample(
            scrape,
            "taskscope_bpf_program_runs_total",
            &["program=\"ts_switch_btf\""],
        )
    };
    let quiet = Agent::start(&[]);
    let (_, scrape) = http_get(&quiet.addr, "/metrics").expect("scrape");
    assert_eq!(runs(&scrape), Some(0.0), "statistics are off by default");
    drop(quiet);

    let agent = Agent::start(&["--bpf-stats"]);
    std::thread::sleep(Duration::from_millis(300));
    let (_, scrape) = http_get(&agent.addr, "/metrics").expect("scrape");
    let ours = runs(&scrape).expect("runs of ts_switch_btf");
    // The kernel's own figure, read after the scrape: at least as large.
    let out = Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()
        .expect("bpftool");
    let progs: Value = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
    let kernel = progs
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["name"] == "ts_switch_btf")
        .filter_map(|p| p["run_cnt"].as_f64())
        .fold(0.0, f64::max);
    println!("ts_switch_btf runs: /metrics {ours}, bpftool afterwards {kernel}");
    assert!(ours > 0.0 && ours <= kernel, "{ours} vs {kernel}");
}

/// An agent started in a cgroup of its own with a cgroup namespace rooted there, as a
/// container runtime starts it (killed when dropped).
struct NamespacedAgent {
    child: Child,
    addr: String,
    cgroup: std::path::PathBuf,
}

impl Drop for NamespacedAgent {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
        std::thread::sleep(Duration::from_millis(200));
        let _ = std::fs::remove_dir(&self.cgroup);
    }
}

#[test]
fn an_agent_in_its_own_cgroup_namespace_names_workloads_as_the_host_does() {
    let root = std::path::PathBuf::from(cgroup2_root());
    let id = std::process::id();
    let agent_cgroup = root.join(format!("taskscope-ns-agent-{id}"));
    let workload = root.join(format!("taskscope-ns-workload-{id}"));
    std::fs::create_dir(&agent_cgroup).expect("agent cgroup");
    std::fs::create_dir(&workload).expect("workload cgroup");
    let addr = format!("127.0.0.1:{}", free_port());
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec unshare --cgroup {} run --listen {addr} --poll-interval 200ms",
        agent_cgroup.display(),
        taskscope_e2e::agent_binary().display()
    );
    let agent = NamespacedAgent {
        child: Command::new("sh")
            .args(["-c", &script])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("unshare (util-linux)"),
        addr,
        cgroup: agent_cgroup.clone(),
    };
    wait_for("the namespaced agent", Duration::from_secs(60), || {
        http_get(&agent.addr, "/livez")
            .ok()
            .filter(|(c, _)| *c == 200)
    });
    // Inside its namespace the agent's own /proc/self/cgroup says "/"; other processes' paths
    // start with "/..".
    let agent_pid = std::fs::read_to_string(agent_cgroup.join("cgroup.procs")).expect("procs");
    println!(
        "agent in {}: pids {}",
        agent_cgroup.display(),
        agent_pid.trim()
    );
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {}/cgroup.procs; i=0; while [ $i -lt 20 ]; do /bin/true; i=$((i+1)); done",
            workload.display()
        ))
        .status()
        .expect("sh");
    assert!(status.success());
    let label = format!(
        "cgroup=\"/{}\"",
        workload
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
    );
    let scrape = wait_for("the workload's series", Duration::from_secs(20), || {
        let (_, body) = http_get(&agent.addr, "/metrics").ok()?;
        body.lines()
            .any(|l| {
                l.starts_with("taskscope_tasks_started_total{")
                    && l.contains(&label)
                    && !l.ends_with(" 0")
            })
            .then_some(body)
    });
    let cgroups: std::collections::BTreeSet<&str> = scrape
        .lines()
        .filter(|l| l.starts_with("taskscope_tasks_started_total{"))
        .filter_map(|l| l.split("cgroup=\"").nth(1)?.split('"').next())
        .collect();
    println!("workloads seen from inside the namespace: {cgroups:?}");
    assert!(
        cgroups.iter().all(|c| !c.contains("..")),
        "paths relative to the namespace leaked: {cgroups:?}"
    );
    let started = sample(&scrape, "taskscope_tasks_started_total", &[&label]).unwrap_or(0.0);
    println!("{label}: {started} processes started (20 /bin/true after the shell moved itself)");
    assert!(started >= 20.0);
    let _ = std::fs::remove_dir(&workload);
}

#[test]
fn label_values_with_quotes_backslashes_newlines_and_bad_utf8_survive_promtool_and_prometheus() {
    use std::os::unix::ffi::OsStrExt;
    // A cgroup named with `"` and `\` (the kernel refuses a newline there), and a program
    // whose file name, and so its comm, holds `"`, `\`, a newline and a byte that is no UTF-8.
    let name = format!("taskscope-esc-\"q\\-{}", std::process::id());
    let dir = std::path::Path::new(&cgroup2_root()).join(&name);
    std::fs::create_dir(&dir).expect("create a cgroup");
    let bin_dir = std::env::temp_dir().join(format!("taskscope-esc-{}", std::process::id()));
    std::fs::create_dir_all(&bin_dir).expect("dir");
    let program = bin_dir.join(std::ffi::OsStr::from_bytes(b"t\"q\\\n\xffz"));
    std::fs::copy("/bin/sleep", &program).expect("copy sleep");
    let expected_comm = "t\"q\\\n\u{FFFD}z";
    let start = || {
        Command::new("sh")
            .arg("-c")
            .arg("echo $$ > \"$1\"/cgroup.procs && exec \"$2\" 60")
            .arg("sh")
            .arg(&dir)
            .arg(&program)
            .spawn()
            .expect("sh")
    };
    // One found in /proc at start, one seen at exec.
    let mut before = start();
    std::thread::sleep(Duration::from_millis(300));
    let agent = Agent::start(&["--process-metrics", "cgroup=/taskscope-esc-*"]);
    let mut after = start();
    let pids = [before.id(), after.id()];
    let scrape = wait_for("both processes' series", Duration::from_secs(20), || {
        let (_, scrape) = http_get(&agent.addr, "/metrics").ok()?;
        pids.iter()
            .all(|pid| scrape.contains(&format!("pid=\"{pid}\"")))
            .then_some(scrape)
    });
    let escaped: Vec<&str> = scrape
        .lines()
        .filter(|l| l.starts_with("taskscope_process_cpu_seconds_total{"))
        .collect();
    println!("{}", escaped.join("\n"));

    // promtool parses the whole exposition and finds nothing to say.
    let (success, said) = promtool_check_metrics(&scrape);
    println!("promtool check metrics: {:?}", said.trim());
    assert!(success && said.trim().is_empty(), "{said}");

    // Prometheus ingests every sample (a parse error would fail the whole scrape: up 0) and
    // gives the label values back exactly.
    let prometheus = Prometheus::start(&agent.addr);
    std::thread::sleep(Duration::from_secs(3));
    let now = unix_now();
    let up = prometheus.query_at("up{job=\"taskscope\"}", now);
    assert_eq!(
        up.first().map(|u| u["value"][1].clone()),
        Some(Value::from("1"))
    );
    for pid in pids {
        let series = prometheus.query_at(
            &format!("taskscope_process_cpu_seconds_total{{pid=\"{pid}\"}}"),
            now,
        );
        let labels = &series
            .first()
            .unwrap_or_else(|| panic!("no series of pid {pid}"))["metric"];
        println!(
            "pid {pid}: comm {:?}, cgroup {:?}",
            labels["comm"], labels["cgroup"]
        );
        assert_eq!(labels["comm"], expected_comm);
        assert_eq!(labels["cgroup"], format!("/{name}"));
    }
    let cgroup_query = format!(
        "taskscope_cpu_seconds_total{{cgroup=\"/{}\"}}",
        name.replace('\\', "\\\\").replace('"', "\\\"")
    );
    assert_eq!(
        prometheus.query_at(&cgroup_query, now).len(),
        1,
        "{cgroup_query}"
    );
    let rejected = prometheus.own_counter("prometheus_target_scrapes_sample_out_of_order_total")
        + prometheus.own_counter("prometheus_target_scrapes_sample_duplicate_timestamp_total")
        + prometheus.own_counter("prometheus_target_scrapes_sample_out_of_bounds_total");
    assert_eq!(rejected, 0.0);
    for child in [&mut before, &mut after] {
        let _ = child.kill();
        let _ = child.wait();
    }
    std::thread::sleep(Duration::from_millis(300));
    let _ = std::fs::remove_dir(&dir);
    let _ = std::fs::remove_dir_all(&bin_dir);
}
