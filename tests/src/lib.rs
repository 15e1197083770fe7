//! Harness for the end-to-end tests: start the real agent (real kernel programs), run known
//! workloads, and read both the agent's API and the kernel's own accounting in /proc.
//!
//! The agent binary is `$TASKSCOPE_BIN`, or `target/release/taskscope` (built by
//! `cargo xtask test`).

pub mod live;
pub mod runtimes;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

/// Path of the agent binary under test.
pub fn agent_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("TASKSCOPE_BIN") {
        return PathBuf::from(path);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/taskscope")
}

/// Path of the workload binary: cargo builds it next to the `deps/` folder that holds the
/// test executables.
pub fn workload_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps/<test>");
    profile_dir.join("workload")
}

/// Where cgroup v2 is mounted (`/sys/fs/cgroup/unified` on hybrid hosts).
pub fn cgroup2_root() -> String {
    std::fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            (right.split_whitespace().next()? == "cgroup2")
                .then(|| left.split_whitespace().nth(4).map(str::to_string))?
        })
        .expect("a cgroup v2 mount")
}

/// A free TCP port on localhost.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Plain HTTP/1.1 GET; returns (status, body).
pub fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    http_request(addr, "GET", path, &[], b"")
}

/// A plain HTTP/1.1 request with extra headers and a body; returns (status, body).
pub fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    // The server may answer (413) and close before reading a large body: not an error here.
    let _ = stream.write_all(body);
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((status, body))
}

/// The body of a `Transfer-Encoding: chunked` response.
fn dechunk(mut rest: &str) -> String {
    let mut body = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size =
            usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16).unwrap_or(0);
        let (Some(chunk), Some(next)) = (after.get(..size), after.get(size..)) else {
            break;
        };
        if size == 0 {
            break;
        }
        body.push_str(chunk);
        rest = next.trim_start_matches("\r\n");
    }
    body
}

/// Runs `sh -c script` to its end and returns its pid (the span or process to look for).
pub fn run_shell(script: &str) -> u32 {
    let mut child = Command::new("sh").args(["-c", script]).spawn().expect("sh");
    let pid = child.id();
    let _ = child.wait();
    pid
}

/// Waits for `check` to return `Some`, polling every 50 ms; panics with `what` after `limit`.
/// A synchronisation helper, not a timing assertion: `limit` is generous.
pub fn wait_for<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// CLOCK_MONOTONIC now, in ns (the clock of the agent's `collected_at_monotonic_ns`).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid timespec pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A running agent, stopped with SIGTERM when dropped.
pub struct Agent {
    pub child: Child,
    pub addr: String,
    pub log: PathBuf,
}

impl Agent {
    /// Starts `taskscope run` with a short poll interval plus `extra` flags, and waits until
    /// its API answers.
    pub fn start(extra: &[&str]) -> Agent {
        Self::start_with_env(extra, &[])
    }

    /// [`Agent::start`] with extra environment variables.
    pub fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Agent {
        let addr = format!("127.0.0.1:{}", free_port());
        let log =
            std::env::temp_dir().join(format!("taskscope-e2e-{}.log", addr.replace(':', "-")));
        let log_file = std::fs::File::create(&log).expect("log file");
        let log_format: &[&str] = if extra.contains(&"--log-format") {
            &[]
        } else {
            &["--log-format", "text"]
        };
        let child = Command::new(agent_binary())
            .args(["run", "--listen", &addr, "--poll-interval", "200ms"])
            .args(log_format)
            .args(extra)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", agent_binary().display()));
        let mut agent = Agent { child, addr, log };
        wait_for("the agent's API", Duration::from_secs(60), || {
            if let Ok(Some(status)) = agent.child.try_wait() {
                panic!("the agent exited with {status}: {}", agent.log_text());
            }
            http_get(&agent.addr, "/livez")
                .ok()
                .filter(|(s, _)| *s == 200)
        });
        agent
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// GET a JSON document; panics on a non-200 answer.
    pub fn get(&self, path: &str) -> Value {
        let (status, body) = http_get(&self.addr, path).expect("GET");
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).expect("JSON")
    }

    /// A request with `Authorization: Bearer <token>`: (status, body as JSON, or as a JSON
    /// string when it is not JSON).
    pub fn request_with_token(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: &str,
    ) -> (u16, Value) {
        let auth = format!("Bearer {token}");
        let (status, text) = http_request(
            &self.addr,
            method,
            path,
            &[("Authorization", &auth)],
            body.as_bytes(),
        )
        .expect("request");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// The `lost` entry of `/api/v1/status` for (source, reason); 0 when absent.
    pub fn lost(&self, source: &str, reason: &str) -> u64 {
        self.get("/api/v1/status")["lost"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|l| l["source"] == source && l["reason"] == reason)
            .and_then(|l| l["count"].as_u64())
            .unwrap_or(0)
    }

    /// The newest process with `pid`, from an answer whose kernel read started after `after_ns`
    /// (CLOCK_MONOTONIC), so that it includes everything the kernel had counted by then.
    pub fn process_after(&self, pid: u32, after_ns: u64) -> Value {
        wait_for(
            &format!("pid {pid} in a read after {after_ns}"),
            Duration::from_secs(20),
            || {
                let (status, body) =
                    http_get(&self.addr, &format!("/api/v1/processes/{pid}")).ok()?;
                if status != 200 {
                    return None;
                }
                let answer: Value = serde_json::from_str(&body).ok()?;
                (answer["collected_at_monotonic_ns"].as_u64()? > after_ns)
                    .then(|| answer["processes"][0].clone())
            },
        )
    }

    /// Every process, after a kernel read later than `after_ns`.
    pub fn processes_after(&self, after_ns: u64) -> Vec<Value> {
        wait_for("a fresh process list", Duration::from_secs(20), || {
            let answer = self.get("/api/v1/processes?limit=10000");
            (answer["collected_at_monotonic_ns"].as_u64()? > after_ns)
                .then(|| answer["processes"].as_array().cloned().unwrap_or_default())
        })
    }

    /// Sends SIGTERM and waits; returns the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait().expect("wait for the agent")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
    }
}

/// A workload process (see src/bin/workload.rs) that has done its work and is blocked.
pub struct Workload {
    pub child: Child,
    stdin: Option<ChildStdin>,
    /// What it printed after `ready`.
    pub output: String,
}

impl Workload {
    /// Starts a workload and waits until it is `ready`.
    pub fn run(args: &[&str]) -> Workload {
        let mut command = Command::new(workload_binary());
        command.args(args);
        Self::start(command, args)
    }

    /// Starts a workload inside the cgroups at `dirs` (one per hierarchy: the shell moves
    /// itself there, then execs the workload) and waits until it is `ready`.
    pub fn run_in_cgroups(dirs: &[&Path], args: &[&str]) -> Workload {
        Self::run_pinned_in_cgroups(dirs, None, args)
    }

    /// As [`Workload::run_in_cgroups`], on CPU `cpu` alone when given (`taskset`).
    pub fn run_pinned_in_cgroups(dirs: &[&Path], cpu: Option<usize>, args: &[&str]) -> Workload {
        let mut script = String::new();
        for dir in dirs {
            script += &format!("echo $$ > {}/cgroup.procs && ", dir.display());
        }
        let pin = cpu.map_or(String::new(), |cpu| format!("taskset -c {cpu} "));
        script += &format!(
            "exec {pin}{} {}",
            workload_binary().display(),
            args.join(" ")
        );
        let mut command = Command::new("sh");
        command.arg("-c").arg(script);
        Self::start(command, args)
    }

    fn start(mut command: Command, args: &[&str]) -> Workload {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn workload");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read ready");
        let output = line
            .strip_prefix("ready")
            .unwrap_or_else(|| panic!("workload {args:?} said {line:?}"))
            .trim()
            .to_string();
        let stdin = child.stdin.take();
        Workload {
            child,
            stdin,
            output,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Writes `text` to its stdin (a workload that blocks reading it reads it and blocks again).
    pub fn send(&mut self, text: &str) {
        use std::io::Write;
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin
            .write_all(text.as_bytes())
            .expect("write to the workload");
        stdin.flush().expect("flush");
    }

    /// Lets it exit and reaps it.
    pub fn finish(mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

/// Waits (at most 10 s) until `pid` is blocked (state `S` or `D` in `/proc/<pid>/stat`): a
/// workload that said it is ready may still be on a CPU, or waiting for one, for a moment
/// before it blocks; the kernel's figures read before that are not its final ones.
pub fn wait_until_blocked(pid: u32) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .unwrap_or("?")
            .to_string();
        if state == "S" || state == "D" {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "pid {pid} is still in state {state} 10 s after it said it was ready"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Per-CPU (busy, idle) ticks from /proc/stat; idle includes iowait.
pub fn proc_stat_cpus() -> Vec<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").expect("/proc/stat");
    text.lines()
        .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
        .map(|l| {
            let f: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .map(|v| v.parse().unwrap_or(0))
                .collect();
            let idle = f[3] + f[4];
            let busy: u64 = f[..8].iter().sum::<u64>() - idle;
            (busy, idle)
        })
        .collect()
}

/// `/proc/<pid>/schedstat`: (ns on CPU, ns waiting on a run queue, timeslices).
pub fn schedstat(pid: u32) -> (u64, u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/schedstat")).expect("schedstat");
    let f: Vec<u64> = text
        .split_whitespace()
        .map(|v| v.parse().expect("number"))
        .collect();
    (f[0], f[1], f[2])
}

/// A numeric field of a `/proc/<pid>/<file>` made of `name: value` lines, such as `status`
/// (`voluntary_ctxt_switches`) or `io` (`write_bytes`).
pub fn proc_field(pid: u32, file: &str, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).expect(file);
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/{file}"))
}

/// The value of the first sample of `family` in a Prometheus scrape whose labels contain every
/// `label="value"` given.
pub fn sample(scrape: &str, family: &str, labels: &[&str]) -> Option<f64> {
    scrape
        .lines()
        .filter(|l| l.starts_with(family) && l[family.len()..].starts_with('{'))
        .find(|l| labels.iter().all(|want| l.contains(want)))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// A cgroup's CPU time as the kernel accounts it (`cpu.stat` `usage_usec`, in every cgroup of
/// the v2 hierarchy whether or not the cpu controller is enabled there).
pub fn cgroup_usage_usec(dir: &Path) -> u64 {
    let stat = std::fs::read_to_string(dir.join("cpu.stat")).expect("cpu.stat");
    stat.lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no usage_usec in {}/cpu.stat", dir.display()))
}

/// Asserts `measured` is within `tolerance` (a fraction) of `truth`, printing both.
pub fn assert_close(what: &str, measured: u64, truth: u64, tolerance: f64) {
    let diff = measured.abs_diff(truth) as f64;
    let allowed = (truth as f64 * tolerance).max(0.0);
    let ratio = if truth == 0 { 0.0 } else { diff / truth as f64 };
    println!(
        "{what}: taskscope {measured}, kernel {truth}, difference {:.3}% (allowed {:.1}%)",
        ratio * 100.0,
        tolerance * 100.0
    );
    assert!(
        diff <= allowed,
        "{what}: taskscope {measured} vs kernel {truth}: off by {:.3}%, allowed {:.1}%",
        ratio * 100.0,
        tolerance * 100.0
    );
}

/// Asserts two counts agree within `tolerance`, rounding the allowance up to a whole count.
pub fn assert_count_close(what: &str, measured: u64, truth: u64, tolerance: f64) {
    let allowed = (truth as f64 * tolerance).ceil() as u64;
    println!("{what}: taskscope {measured}, kernel {truth}, allowed difference {allowed}");
    assert!(
        measured.abs_diff(truth) <= allowed,
        "{what}: taskscope {measured} vs kernel {truth}: more than {allowed} apart"
    );
}
