//! `taskscope record`: a window of the node as a Chrome trace event file (opens in Perfetto or
//! chrome://tracing): one track per CPU showing which task ran, one per process showing its
//! life; and the window's task spans as JSON lines.
//!
//! It loads its own copy of the kernel programs with context-switch reporting on (a ring-buffer
//! record per switch, which the long-running agent never pays for).

use std::{
    collections::HashMap,
    io::Write,
    path::{Path, PathBuf},
};
use taskscope_common::Thresholds;

use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, watch};

use crate::{
    check::{effective_caps, missing_capabilities},
    cli::RecordArgs,
    clock::Clocks,
    collector::{
        sampling::SamplingConfig, Collector, CollectorConfig, Page, ProcessesResponse, Query,
        Recording, SpanFilter,
    },
    model::{host::SystemHost, ModelConfig, TaskModel},
    probes::{LoadOptions, Probes},
    procfs::{cgroup2_mount, CgroupResolver},
};

/// Why a recording failed.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("taskscope record needs {0} (or root)")]
    Capabilities(String),
    #[error(transparent)]
    Load(#[from] crate::probes::LoadError),
    #[error(transparent)]
    Collector(#[from] crate::collector::CollectorError),
    #[error("the collector stopped before the recording was taken")]
    CollectorStopped,
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What `record` wrote.
#[derive(Debug)]
pub struct RecordSummary {
    pub switches: usize,
    pub switches_dropped: u64,
    pub processes: usize,
    pub spans: usize,
    pub spans_output: PathBuf,
}

async fn ask<T>(
    queries: &mpsc::Sender<Query>,
    make: impl FnOnce(oneshot::Sender<T>) -> Query,
) -> Result<T, RecordError> {
    crate::collector::ask(queries, make)
        .await
        .ok_or(RecordError::CollectorStopped)
}

/// Records for `args.duration` and writes the files.
pub async fn run(args: &RecordArgs) -> Result<RecordSummary, RecordError> {
    let missing = missing_capabilities(effective_caps());
    if !missing.is_empty() {
        return Err(RecordError::Capabilities(missing.join(" and ")));
    }
    // Opened before anything is loaded: a path that cannot be written fails fast.
    let spans_output = args
        .spans_output
        .clone()
        .unwrap_or_else(|| args.output.with_extension("spans.jsonl"));
    let mut trace_file = create(&args.output)?;
    let mut spans_file = create(&spans_output)?;
    let poll_interval = std::time::Duration::from_millis(200);
    let collector = recording_collector(args, poll_interval)?;
    let (queries, queries_rx) = mpsc::channel(8);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let collector = tokio::spawn(collector.run(queries_rx, shutdown_rx));

    // The window starts once the programs are attached and the recording is empty.
    let _ = ask(&queries, Query::TakeRecording).await?;
    let start = Clocks::now();
    println!("recording for {:?}", args.duration);
    let _ = std::io::stdout().flush();
    tokio::time::sleep(args.duration).await;
    let recording = ask(&queries, Query::TakeRecording).await?;
    let end = Clocks::now();
    // Spans of processes that ended in the window appear two polls after their exit.
    tokio::time::sleep(poll_interval * 3).await;
    let processes = ask(&queries, |tx| Query::Processes(Page::ALL, tx)).await?;
    let spans = ask(&queries, |tx| {
        Query::Spans(
            SpanFilter {
                trace_id: None,
                pid: None,
                limit: usize::MAX,
            },
            tx,
        )
    })
    .await?;
    let _ = shutdown_tx.send(true);
    let _ = collector.await;

    let trace = chrome_trace(&recording, &processes, &start, &end);
    write(
        &mut trace_file,
        &args.output,
        serde_json::to_string(&trace).unwrap_or_default().as_bytes(),
    )?;
    let in_window: Vec<String> = spans
        .spans
        .iter()
        .filter(|s| {
            s.end_unix_ns >= start.monotonic_to_unix(start.monotonic_ns)
                && s.end_unix_ns <= end.monotonic_to_unix(end.monotonic_ns)
        })
        .filter_map(|s| serde_json::to_string(s).ok())
        .collect();
    let mut text = in_window.join("\n");
    if !text.is_empty() {
        text.push('\n');
    }
    write(&mut spans_file, &spans_output, text.as_bytes())?;
    Ok(RecordSummary {
        switches: recording.switches.len(),
        switches_dropped: recording.dropped,
        processes: processes.processes.len(),
        spans: in_window.len(),
        spans_output,
    })
}

/// The programs loaded with the switch recorder on, and a collector of their own (thresholds
/// as `run`'s defaults, every span kept).
fn recording_collector(
    args: &RecordArgs,
    poll_interval: std::time::Duration,
) -> Result<Collector, RecordError> {
    let probes = Probes::load(&LoadOptions {
        agent_tgid: std::process::id(),
        thresholds: Thresholds {
            slow_syscall_ns: 100_000_000,
            slow_runqueue_wait_ns: 50_000_000,
            slow_io_ns: 100_000_000,
            // Set by the loader: syscalls are timed exactly while `sys_enter` is attached.
            timed_since_ns: 0,
            // Set by the loader (`record_switches` below).
            record_switches: 0,
        },
        disabled_groups: Vec::new(),
        record_switches: true,
        max_tasks: 32768,
        max_syscall_entries: 16384,
        max_workload_syscall_entries: 16384,
        max_syscall_entries_per_process: 128,
        max_io_requests: 16384,
        ring_buffer_bytes: 16 << 20,
        force_raw_tp: false,
        kernel_btf: args.kernel.kernel_btf.clone(),
    })?;
    let model = TaskModel::new(
        ModelConfig {
            cpu_window: poll_interval,
            ..ModelConfig::default()
        },
        Box::new(SystemHost::new(CgroupResolver::new(cgroup2_mount()))),
    );
    Ok(Collector::new(
        probes,
        model,
        CollectorConfig {
            poll_interval,
            max_staleness: std::time::Duration::from_millis(100),
            drain_interval: std::time::Duration::from_millis(50),
            process_selectors: Vec::new(),
            span_sink: None,
            sampling: SamplingConfig {
                ratio: 1.0,
                slow_span: std::time::Duration::from_secs(10),
                max_per_second: 0,
                max_pending: 0,
                max_wait: std::time::Duration::ZERO,
            },
            record_switches: true,
            slow_task: crate::model::SlowTaskConfig::NEVER,
        },
    )?)
}

/// Creates (or truncates) an output file, never through a symbolic link: record runs as
/// root, and a link planted where its output goes would make it overwrite the link's target.
fn create(path: &Path) -> Result<std::fs::File, RecordError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|source| {
            let source = if source.raw_os_error() == Some(libc::ELOOP) {
                std::io::Error::other(
                    "it is a symbolic link, which record does not follow: remove it or name another path",
                )
            } else {
                source
            };
            RecordError::Write {
                path: path.to_path_buf(),
                source,
            }
        })
}

fn write(file: &mut std::fs::File, path: &Path, bytes: &[u8]) -> Result<(), RecordError> {
    file.write_all(bytes).map_err(|source| RecordError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// Microseconds since the window's start, as Chrome trace events count time.
fn micros(unix_ns: u64, start_unix_ns: u64) -> f64 {
    unix_ns.saturating_sub(start_unix_ns) as f64 / 1e3
}

/// The recording as Chrome trace events: pid 0 holds one track (tid) per CPU; every process
/// alive in the window gets a track of its own (pid = its pid).
pub(crate) fn chrome_trace(
    recording: &Recording,
    processes: &ProcessesResponse,
    start: &Clocks,
    end: &Clocks,
) -> Value {
    let start_unix = start.monotonic_to_unix(start.monotonic_ns);
    let end_unix = end.monotonic_to_unix(end.monotonic_ns);
    let names: HashMap<u32, &str> = processes
        .processes
        .iter()
        .map(|p| (p.pid, p.comm.as_str()))
        .collect();
    let mut events =
        vec![json!({"ph": "M", "name": "process_name", "pid": 0, "args": {"name": "CPUs"}})];

    // Per CPU: each switch starts a slice of the task switched in, until the CPU's next switch.
    let mut by_cpu: HashMap<u32, Vec<&taskscope_common::SwitchEvent>> = HashMap::new();
    for switch in &recording.switches {
        by_cpu.entry(switch.header.cpu).or_default().push(switch);
    }
    let mut cpus: Vec<u32> = by_cpu.keys().copied().collect();
    cpus.sort_unstable();
    for cpu in cpus {
        events.push(json!({"ph": "M", "name": "thread_name", "pid": 0, "tid": cpu, "args": {"name": format!("CPU {cpu}")}}));
        let mut switches = by_cpu.remove(&cpu).unwrap_or_default();
        switches.sort_by_key(|s| s.header.ts_ns);
        for pair in switches.windows(2) {
            let (this, next) = (pair[0], pair[1]);
            if this.next_pid == 0 {
                continue; // idle
            }
            let from = start.monotonic_to_unix(this.header.ts_ns);
            let to = start.monotonic_to_unix(next.header.ts_ns);
            let name = names
                .get(&this.next_tgid)
                .map_or_else(|| format!("pid {}", this.next_tgid), |n| n.to_string());
            events.push(json!({
                "ph": "X", "cat": "cpu", "name": name, "pid": 0, "tid": cpu,
                "ts": micros(from, start_unix), "dur": (to.saturating_sub(from)) as f64 / 1e3,
                "args": {"pid": this.next_tgid, "tid": this.next_pid},
            }));
        }
    }

    // Per process: its life within the window.
    for p in &processes.processes {
        let begin = p.start_time_unix_ns.max(start_unix);
        let finish = p.exit_time_unix_ns.unwrap_or(end_unix).min(end_unix);
        if p.start_time_unix_ns > end_unix || finish <= begin {
            continue;
        }
        events.push(json!({"ph": "M", "name": "process_name", "pid": p.pid, "args": {"name": format!("{} ({})", p.comm, p.pid)}}));
        events.push(json!({
            "ph": "X", "cat": "process", "name": p.comm, "pid": p.pid, "tid": p.pid,
            "ts": micros(begin, start_unix), "dur": (finish - begin) as f64 / 1e3,
            "args": {
                "ppid": p.ppid,
                "started_in_window": p.start_time_unix_ns >= start_unix,
                "exit": p.exit,
                "cmdline": p.cmdline,
            },
        }));
    }
    json!({
        "traceEvents": events,
        "displayTimeUnit": "ms",
        "otherData": {
            "window_start_unix_ns": start_unix,
            "window_end_unix_ns": end_unix,
            "switches": recording.switches.len(),
            "switches_dropped": recording.dropped,
        },
    })
}
