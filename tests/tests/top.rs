//! `taskscope top` in a real tmux (send-keys, capture-pane) against the real agent with a
//! known CPU-bound workload in a cgroup of its own, its `--once` text against the live feed's
//! own frames, and its one-line errors. Run as root (`cargo xtask test`).

use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::{Command, Output},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::Value;
use taskscope_e2e::{
    agent_binary, free_port,
    live::{agent_with_token, connect, next_frame, Spinner, TOKEN},
    wait_for,
};

/// The spinner's CPU: it spins one CPU, so 1.0 within this (a shared 2-core machine).
const CPU_TOLERANCE: f64 = 0.15;

/// Where the screens are saved for a person to look at.
fn screens_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/top-screens");
    std::fs::create_dir_all(&dir).expect("screens dir");
    dir
}

/// A tmux server of its own running one command in a window of a known size.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(command: &str, width: u16, height: u16) -> Tmux {
        let tmux = Tmux {
            socket: format!("taskscope-top-e2e-{}", std::process::id()),
        };
        let status = Command::new("tmux")
            .args(["-L", &tmux.socket, "new-session", "-d", "-s", "top"])
            .args(["-x", &width.to_string(), "-y", &height.to_string()])
            .arg(command)
            .status()
            .expect("run tmux");
        assert!(status.success(), "tmux new-session: {status}");
        tmux
    }

    /// Sends keys (tmux key names: `Enter`, `Escape`, `Tab`, or text).
    fn keys(&self, keys: &[&str]) {
        let status = Command::new("tmux")
            .args(["-L", &self.socket, "send-keys", "-t", "top"])
            .args(keys)
            .status()
            .expect("tmux send-keys");
        assert!(status.success(), "send-keys {keys:?}");
    }

    /// The text on the screen now.
    fn screen(&self) -> String {
        let output = Command::new("tmux")
            .args(["-L", &self.socket, "capture-pane", "-p", "-t", "top"])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Waits until the screen shows what `check` looks for.
    fn wait<T>(&self, what: &str, check: impl Fn(&str) -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let screen = self.screen();
            if let Some(found) = check(&screen) {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "the screen never showed {what}:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn save(&self, name: &str) -> String {
        let screen = self.screen();
        std::fs::write(screens_dir().join(format!("{name}.txt")), &screen).expect("save screen");
        screen
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .status();
    }
}

/// The CPU figure of the workload line named `name` (past its health states, if any).
fn cpu_of(screen: &str, name: &str) -> Option<f64> {
    cpu_after(screen, name, 0)
}

/// The CPU figure of the line of process `pid` (past its command).
fn process_cpu_of(screen: &str, pid: &str) -> Option<f64> {
    cpu_after(screen, pid, 1)
}

/// The figure `skip` words (and any `[state]`) after the word `first` of a line; `None`
/// when there is no such line or it has no figure yet (`-`).
fn cpu_after(screen: &str, first: &str, skip: usize) -> Option<f64> {
    screen.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        (words.next()? == first).then_some(())?;
        let mut words = words.skip(skip).skip_while(|w| w.starts_with('['));
        words.next()?.parse().ok()
    })
}

/// The frame number in the title line.
fn frame_number(screen: &str) -> Option<u64> {
    let after = screen.split("frame #").nth(1)?;
    after.split_whitespace().next()?.parse().ok()
}

/// The table's lines: those between the column header and the status line.
fn table_lines(screen: &str, header: &str) -> Vec<String> {
    screen
        .lines()
        .skip_while(|l| !l.trim_start().starts_with(header))
        .skip(1)
        .take_while(|l| !l.trim().is_empty() && !l.contains("?:help"))
        .map(str::to_string)
        .collect()
}

#[test]
fn top_in_tmux_shows_the_spinner_and_its_keys_work() {
    let (agent, token_file) = agent_with_token();
    let spinner = Spinner::start("top-spin");
    let cgroup = spinner.cgroup();
    let snapshots = tempdir("top-snapshots");
    let exit_file = snapshots.join("exit");
    let command = format!(
        "{} top --url http://{} --token-file {} --snapshot-dir {}; echo \"exit $?\" > {}; sleep 60",
        agent_binary().display(),
        agent.addr,
        token_file.display(),
        snapshots.display(),
        exit_file.display()
    );
    let tmux = Tmux::start(&command, 100, 30);
    let cpu = tmux.wait("the spinner's workload with ~1 CPU", |screen| {
        cpu_of(screen, &cgroup).filter(|cpu| (cpu - 1.0).abs() <= CPU_TOLERANCE)
    });
    println!("spinner workload in top: {cpu:.2} CPU, known 1.0 (allowed {CPU_TOLERANCE})");
    tmux.save("workloads");

    // Sort by name (the first column), then by CPU.
    tmux.keys(&["1"]);
    let names = tmux.wait("the table sorted by name", |screen| {
        screen.contains("WORKLOAD▲").then(|| {
            table_lines(screen, "WORKLOAD")
                .iter()
                .filter_map(|l| l.split_whitespace().next().map(str::to_lowercase))
                .collect::<Vec<_>>()
        })
    });
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "sorted by name");
    tmux.keys(&["2"]);
    tmux.wait("the table sorted by CPU", |s| {
        s.contains("CPU▼").then_some(())
    });
    println!(
        "sorting: by name ({} rows in order), then by CPU",
        names.len()
    );

    // Filter by typing: only the spinner's workload is left.
    tmux.keys(&["/", "top-spin", "Enter"]);
    let rows = tmux.wait("the filtered table", |screen| {
        let rows = table_lines(screen, "WORKLOAD");
        (screen.contains("filter \"top-spin\"") && rows.len() == 1).then_some(rows)
    });
    assert!(rows[0].contains(&cgroup), "{rows:?}");
    println!("filter \"top-spin\": one row, {}", rows[0].trim());

    // Its page. The spinning process is the one in the spinner's cgroup.
    tmux.keys(&["Enter"]);
    let pids = std::fs::read_to_string(spinner.dir.join("cgroup.procs")).expect("cgroup.procs");
    let pid = pids
        .split_whitespace()
        .find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "workload")
        })
        .expect("the spinning process")
        .to_string();
    tmux.wait("the workload's page", |s| {
        (s.contains("RUN-QUEUE LATENCY") && s.contains("TOP SYSCALLS")).then_some(())
    });
    tmux.save("workload-page");
    tmux.keys(&["End"]);
    tmux.wait("the end of the workload's page", |s| {
        (s.contains("PROCESSES (tree") && s.contains(&pid) && s.contains("SLOW EVENTS"))
            .then_some(())
    });
    tmux.save("workload-page-end");
    tmux.keys(&["Escape"]);
    tmux.wait("the table again", |s| s.contains("CPU▼").then_some(()));

    // Pause freezes the screen; resuming moves it on.
    tmux.keys(&["p"]);
    let frozen = tmux.wait("the paused screen", |s| {
        s.contains("PAUSED").then(|| frame_number(s)).flatten()
    });
    std::thread::sleep(Duration::from_millis(3500));
    assert_eq!(frame_number(&tmux.screen()), Some(frozen), "paused");
    tmux.keys(&["p"]);
    let resumed = tmux.wait("frames again", |s| {
        frame_number(s).filter(|&n| n > frozen && !s.contains("PAUSED"))
    });
    println!("paused at frame #{frozen} for 3.5 s; resumed at #{resumed}");

    // An agent that stops answering (SIGSTOP) shows as such; then the screen goes on.
    let signal = |name: &str| {
        let status = Command::new("kill")
            .args([name, &agent.pid().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill {name}");
    };
    signal("-STOP");
    let quiet = tmux.wait("the quiet feed", |s| {
        s.lines()
            .next()
            .filter(|l| l.contains("NO FRAME FOR"))
            .map(str::to_string)
    });
    signal("-CONT");
    tmux.wait("frames after the agent went on", |s| {
        (!s.contains("NO FRAME FOR")).then_some(())
    });
    println!("agent stopped: {}; continued: frames again", quiet.trim());

    // The processes: the spinner itself at ~1 CPU (the filter matches its cgroup).
    tmux.keys(&["Tab"]);
    let cpu = tmux.wait("the spinner's process with ~1 CPU", |screen| {
        process_cpu_of(screen, &pid).filter(|cpu| (cpu - 1.0).abs() <= CPU_TOLERANCE)
    });
    println!("spinner process {pid} in top: {cpu:.2} CPU");
    tmux.keys(&["t"]);
    tmux.wait("the tree", |s| s.contains("  tree").then_some(()));
    tmux.save("processes");

    // A snapshot of the screen to a file, the help, and quit.
    tmux.keys(&["w"]);
    let written = wait_for("a snapshot file", Duration::from_secs(10), || {
        std::fs::read_dir(&snapshots)
            .ok()?
            .flatten()
            .find(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("taskscope-top-")
            })
            .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
    });
    assert!(
        written.contains("taskscope top") && written.contains(&pid),
        "{written}"
    );
    tmux.keys(&["?"]);
    tmux.wait("the help", |s| s.contains(" keys ").then_some(()));
    tmux.keys(&["Escape"]);
    tmux.keys(&["q"]);
    let exit = wait_for("top to quit", Duration::from_secs(10), || {
        std::fs::read_to_string(&exit_file).ok()
    });
    assert_eq!(exit.trim(), "exit 0");
    println!("snapshot written, help shown, q quit with exit 0");
    let _ = std::fs::remove_dir_all(&snapshots);
    let _ = std::fs::remove_file(&token_file);
}

#[test]
fn top_once_prints_what_the_feed_says() {
    let (agent, token_file) = agent_with_token();
    let spinner = Spinner::start("top-once");
    let cgroup = spinner.cgroup();
    // The feed's own frames, as a plain WebSocket client sees them, by number.
    let frames: Arc<Mutex<BTreeMap<u64, Value>>> = Arc::default();
    let mut socket =
        connect(&agent, &[("Authorization", &format!("Bearer {TOKEN}"))]).expect("the live feed");
    let collected = Arc::clone(&frames);
    let reader = std::thread::spawn(move || {
        let until = Instant::now() + Duration::from_secs(25);
        while Instant::now() < until {
            let frame = next_frame(&mut socket);
            let seq = frame["seq"].as_u64().expect("seq");
            collected.lock().expect("frames").insert(seq, frame);
        }
    });
    // Until the spinner's workload has a CPU figure over a whole window.
    std::thread::sleep(Duration::from_secs(4));
    let output = top(&[
        "--once",
        "--width",
        "160",
        "--url",
        &format!("http://{}", agent.addr),
        "--token-file",
        token_file.to_str().expect("path"),
    ]);
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{output:?}");
    std::fs::write(screens_dir().join("once.txt"), &text).expect("save");
    assert!(
        !text.contains('\u{1b}'),
        "no escape sequences in a snapshot"
    );
    let seq = frame_number(&text).expect("a frame number");
    let shown = cpu_of(&text, &cgroup).expect("the spinner's row");
    let frame = wait_for(
        "the same frame from the feed",
        Duration::from_secs(5),
        || frames.lock().expect("frames").get(&seq).cloned(),
    );
    let row = frame["workloads"]["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .find(|r| r["cgroup"] == cgroup.as_str())
        .cloned()
        .expect("the spinner in the frame");
    let feed_cpu = row["cpu"].as_f64().expect("cpu");
    println!(
        "--once frame #{seq}: spinner {shown:.2} CPU; the feed's frame #{seq}: {feed_cpu:.4} (to 2 decimals: {feed_cpu:.2}); known 1.0 (allowed {CPU_TOLERANCE})"
    );
    assert_eq!(format!("{shown:.2}"), format!("{feed_cpu:.2}"));
    assert!((shown - 1.0).abs() <= CPU_TOLERANCE, "{shown}");
    let running = row["running"].as_u64().expect("running");
    let line = text.lines().find(|l| l.contains(&cgroup)).expect("line");
    assert_eq!(
        line.split_whitespace().last(),
        Some(running.to_string().as_str()),
        "{line}"
    );
    reader.join().expect("the feed's reader");
    let _ = std::fs::remove_file(&token_file);
}

#[test]
fn top_says_what_is_wrong_in_one_line() {
    let (agent, token_file) = agent_with_token();
    let url = format!("http://{}", agent.addr);
    let down = format!("http://127.0.0.1:{}", free_port());
    let cases: [(&str, Vec<&str>, &str); 4] = [
        (
            "a wrong token",
            vec!["--once", "--url", &url, "--token", "not-the-token"],
            "refused the token",
        ),
        (
            "no token",
            vec!["--once", "--url", &url],
            "needs the API token",
        ),
        (
            "the agent down",
            vec!["--once", "--url", &down],
            "connection refused",
        ),
        (
            "an https URL",
            vec!["--once", "--url", "https://127.0.0.1:9720"],
            "plain HTTP",
        ),
    ];
    for (what, args, says) in cases {
        let output = top(&args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        println!("{what}: exit {:?}, {}", output.status.code(), stderr.trim());
        assert_eq!(output.status.code(), Some(1), "{what}: {output:?}");
        assert_eq!(
            stderr.trim().lines().count(),
            1,
            "{what}: one line: {stderr}"
        );
        assert!(stderr.contains(says), "{what}: {stderr}");
        assert!(output.stdout.is_empty(), "{what}: nothing on stdout");
    }
    let _ = std::fs::remove_file(&token_file);
}

/// Runs `taskscope top` with `args` (no token from the environment).
fn top(args: &[&str]) -> Output {
    Command::new(agent_binary())
        .arg("top")
        .args(args)
        .env_remove("TASKSCOPE_ADMIN_TOKEN")
        .env_remove("TASKSCOPE_URL")
        .output()
        .expect("run taskscope top")
}

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}
