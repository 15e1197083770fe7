//! The task model: every live and recently exited process, with its metadata and the kernel's
//! accumulators rolled up from its threads. One owner (the collector task) mutates it; the API
//! reads views of it.
//!
//! Processes are keyed by (pid, start time) so that a reused pid is a new process. Threads roll
//! up into their process: its totals are the sum of its live threads' current values and the
//! final values of its exited threads.

pub mod aggregate;
pub mod errno;
pub mod exit;
pub mod histogram;
pub mod host;
pub mod intake;
pub mod node;
pub mod redact;
pub mod selector;
pub mod snapshot;
pub mod span;
pub mod view;
pub mod workload;

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    time::{Duration, Instant},
};

use taskscope_common::{
    decode::{c_string, Event, Exec, ExecCounters},
    DeviceIo, DeviceIoKey, ErrnoKey, ProcessIo, ProcessIoKey, SlowSyscallEvent, SyscallKey,
    SyscallStats, TaskSched, HIST_BUCKETS, LOSS_KINDS,
};

use crate::procfs::NS_PER_TICK;

pub use self::exit::ExitStatus;
use self::{
    aggregate::{WorkloadLedger, WorkloadTotals},
    host::Host,
    intake::{Forget, KernelSnapshot},
    node::{cpu_windows, CpuTotals, CpuWindow},
    selector::ProcessSelector,
    snapshot::SelectedProcess,
    span::{SpanIdSource, SpanIds, TaskSpan},
    workload::Workload,
};

/// Limits of the task model.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    /// How long an exited process stays visible.
    pub exited_retention: Duration,
    /// At most this many exited processes are kept (oldest evicted first).
    pub max_exited: usize,
    /// At most this many live processes are tracked; more are counted as dropped.
    pub max_live: usize,
    /// Slow syscalls remembered per process.
    pub max_slow_syscalls: usize,
    /// CPU busy share and idle fragmentation are measured over windows at least this long.
    pub cpu_window: Duration,
    /// Idle periods shorter than this count as fragmented idle time.
    pub idle_fragment_threshold: Duration,
    /// Takes secrets out of command lines before they are stored.
    pub redactor: redact::Redactor,
    /// A process exec'd with `TRACEPARENT` in its environment joins that trace.
    pub join_traceparent: bool,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            exited_retention: Duration::from_secs(300),
            max_exited: 10_000,
            max_live: 65_536,
            max_slow_syscalls: 16,
            cpu_window: Duration::from_secs(1),
            idle_fragment_threshold: Duration::from_millis(1),
            redactor: redact::Redactor::default(),
            join_traceparent: true,
        }
    }
}

/// Scheduler totals (the sum over threads).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedTotals {
    pub on_cpu_ns: u64,
    pub runqueue_wait_ns: u64,
    pub voluntary_switches: u64,
    pub involuntary_switches: u64,
    pub runqueue_hist: [u64; HIST_BUCKETS],
}

impl Default for SchedTotals {
    fn default() -> Self {
        Self {
            on_cpu_ns: 0,
            runqueue_wait_ns: 0,
            voluntary_switches: 0,
            involuntary_switches: 0,
            runqueue_hist: [0; HIST_BUCKETS],
        }
    }
}

impl SchedTotals {
    /// Adds another total.
    pub fn add_totals(&mut self, other: &SchedTotals) {
        self.on_cpu_ns += other.on_cpu_ns;
        self.runqueue_wait_ns += other.runqueue_wait_ns;
        self.voluntary_switches += other.voluntary_switches;
        self.involuntary_switches += other.involuntary_switches;
        histogram::add(&mut self.runqueue_hist, &other.runqueue_hist);
    }

    /// Adds one thread's figures.
    pub fn add(&mut self, task: &TaskSched) {
        let TaskSched {
            tgid: _,
            _pad: _,
            on_cpu_ns,
            runqueue_wait_ns,
            voluntary_switches,
            involuntary_switches,
            queued_since_ns: _,
            last_switch_out_ns: _,
            runqueue_hist,
        } = *task;
        self.add_totals(&SchedTotals {
            on_cpu_ns,
            runqueue_wait_ns,
            voluntary_switches,
            involuntary_switches,
            runqueue_hist,
        });
    }
}

/// A wait over its threshold (`--slow-runqueue-wait`, `--slow-block-io`); times are
/// CLOCK_MONOTONIC of when it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlowWait {
    RunqueueWait {
        tid: u32,
        at_ns: u64,
        wait_ns: u64,
    },
    BlockIo {
        at_ns: u64,
        dev: u32,
        op: u32,
        bytes: u64,
        latency_ns: u64,
    },
}

/// One thread of a process.
#[derive(Debug, Clone, Default)]
struct Thread {
    /// Latest accumulators read from the kernel.
    sched: Option<TaskSched>,
    /// Set when its exit was seen: the number of polls done by then.
    exited_after_poll: Option<u64>,
}

/// A process (thread group) and everything known about it.
#[derive(Debug, Clone)]
pub struct Process {
    pub pid: u32,
    /// Start time in clock ticks since boot, as in `/proc/<pid>/stat`: with `pid`, the key.
    pub start_ticks: u64,
    /// Exact start (ns since boot) when the fork was seen.
    pub start_boottime_ns: Option<u64>,
    pub ppid: u32,
    pub comm: String,
    pub exe: Option<String>,
    pub cmdline: Vec<String>,
    pub cmdline_truncated: bool,
    pub uid: Option<u32>,
    pub cgroup_id: Option<u64>,
    pub cgroup_path: Option<String>,
    /// The agent saw it start, so its accumulators cover its whole life.
    pub observed_from_start: bool,
    pub exit: Option<ExitStatus>,
    /// CLOCK_MONOTONIC of the exit event.
    pub exit_time_ns: Option<u64>,
    exit_seen_after_poll: Option<u64>,
    threads: BTreeMap<u32, Thread>,
    pub threads_started: u64,
    pub threads_exited: u64,
    exited_sched: SchedTotals,
    pub syscalls: BTreeMap<u32, SyscallStats>,
    pub errnos: BTreeMap<(u32, u32), u64>,
    /// Block IO by (device `dev_t`, operation `REQ_OP_*`).
    pub io: BTreeMap<(u32, u32), ProcessIo>,
    pub slow_syscalls: VecDeque<SlowSyscallEvent>,
    /// Run-queue waits and block requests over their thresholds (the latest few).
    pub slow_waits: VecDeque<SlowWait>,
    exited_at: Option<Instant>,
    /// Gone from /proc at the last sweep, with no exit event yet.
    missing_at_sweep: bool,
    /// Its figures when it last moved to another cgroup: they belong to the workloads it
    /// left, its current workload counts only what came after.
    pub moved_baseline: Option<Box<WorkloadTotals>>,
    /// Its place in a trace, when its fork was seen.
    pub span_ids: Option<SpanIds>,
    /// CLOCK_MONOTONIC of its latest exec.
    pub exec_time_ns: Option<u64>,
    /// CLOCK_MONOTONIC of the last time one of its threads left a CPU.
    pub last_switch_out_ns: u64,
    /// Already logged as a slow task.
    slow_logged: bool,
}

/// When a running process is worth a log line (`--slow-task`, `--slow-task-runqueue-share`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SlowTaskConfig {
    /// Running longer than this.
    pub wall: Duration,
    /// Or waiting for a CPU more than this share of its life (once it has lived 1 s).
    pub runqueue_share: f64,
}

impl SlowTaskConfig {
    /// Nothing is slow (`taskscope record`).
    pub const NEVER: SlowTaskConfig = SlowTaskConfig {
        wall: Duration::MAX,
        runqueue_share: f64::INFINITY,
    };
}

/// A process found slow, with where its time went.
#[derive(Debug, Clone, PartialEq)]
pub struct SlowTask {
    pub pid: u32,
    pub comm: String,
    pub cgroup: Option<String>,
    pub wall_ns: u64,
    pub on_cpu_ns: u64,
    pub runqueue_wait_ns: u64,
    /// Wall time neither on a CPU nor waiting for one (for one thread; 0 if threads overlap).
    pub blocked_ns: u64,
    pub ids: Option<SpanIds>,
    /// Why: "running longer than 5m" or "waiting for a CPU 62% of the time".
    pub reason: String,
}

impl Process {
    fn new(pid: u32, start_ticks: u64) -> Self {
        Self {
            pid,
            start_ticks,
            start_boottime_ns: None,
            ppid: 0,
            comm: String::new(),
            exe: None,
            cmdline: Vec::new(),
            cmdline_truncated: false,
            uid: None,
            cgroup_id: None,
            cgroup_path: None,
            observed_from_start: false,
            slow_logged: false,
            exit: None,
            exit_time_ns: None,
            exit_seen_after_poll: None,
            threads: BTreeMap::new(),
            threads_started: 0,
            threads_exited: 0,
            exited_sched: SchedTotals::default(),
            syscalls: BTreeMap::new(),
            errnos: BTreeMap::new(),
            io: BTreeMap::new(),
            slow_syscalls: VecDeque::new(),
            slow_waits: VecDeque::new(),
            exited_at: None,
            missing_at_sweep: false,
            moved_baseline: None,
            span_ids: None,
            exec_time_ns: None,
            last_switch_out_ns: 0,
        }
    }

    /// Scheduler totals over all threads. `running` maps the tids on a CPU right now to when
    /// they were switched in: the slice they are in is added to their on-CPU time (the kernel's
    /// counters were copied at their last switch-out).
    pub fn sched(&self, now_ns: u64, running: &HashMap<u32, u64>) -> SchedTotals {
        let mut totals = self.exited_sched;
        for (tid, thread) in &self.threads {
            if let Some(sched) = &thread.sched {
                totals.add(sched);
            }
            if let Some(since) = running.get(tid) {
                totals.on_cpu_ns += now_ns.saturating_sub(*since);
            }
        }
        totals
    }

    /// Threads not yet exited.
    pub fn live_threads(&self) -> usize {
        self.threads
            .values()
            .filter(|t| t.exited_after_poll.is_none())
            .count()
    }

    pub fn is_exited(&self) -> bool {
        self.exit.is_some()
    }

    /// Moves a thread's final values into the exited totals.
    fn fold_thread(&mut self, tid: u32, forget: &mut Forget) {
        if let Some(thread) = self.threads.remove(&tid) {
            if let Some(sched) = &thread.sched {
                self.exited_sched.add(sched);
            }
            self.threads_exited += 1;
            forget.tids.push((tid, self.pid));
        }
    }
}

/// Counters of the model's own work.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct ModelCounters {
    pub processes_started: u64,
    pub processes_exited: u64,
    pub processes_evicted: u64,
    /// Processes that vanished without an exit event (it was lost).
    pub processes_lost: u64,
    /// Processes not tracked because `max_live` was reached.
    pub processes_dropped: u64,
    pub events: u64,
    pub polls: u64,
    /// Spans of exited processes made.
    pub spans: u64,
    /// Spans not handed to the exporters because nobody took them in time.
    pub spans_dropped: u64,
}

/// The task model.
pub struct TaskModel {
    config: ModelConfig,
    live: HashMap<u32, Process>,
    exited: VecDeque<Process>,
    /// /proc, cgroupfs and the clocks.
    host: Box<dyn Host>,
    polls: u64,
    pub counters: ModelCounters,
    /// Latest per-CPU accounting.
    pub cpus: Vec<taskscope_common::CpuStats>,
    /// Tasks on a CPU at the latest read: tid -> when they were switched in.
    pub running: HashMap<u32, u64>,
    /// Latest per-device IO.
    pub device_io: Vec<(DeviceIoKey, DeviceIo)>,
    /// Kernel-side losses, summed over CPUs.
    pub kernel_losses: [u64; LOSS_KINDS as usize],
    /// Map entries that could not be read, summed over reads.
    pub map_read_errors: u64,
    /// CLOCK_MONOTONIC of the latest kernel read.
    pub collected_at_ns: u64,
    /// What retired processes left to their workloads.
    workloads: WorkloadLedger,
    /// Start of the current CPU window: (CLOCK_MONOTONIC, per-CPU totals).
    cpu_window_start: Option<(u64, Vec<CpuTotals>)>,
    /// Busy share and idle fragmentation per CPU over the latest complete window.
    pub cpu_windows: Vec<CpuWindow>,
    span_ids: SpanIdSource,
    /// Spans of the latest exited processes (at most `max_exited`), for the API.
    spans: VecDeque<TaskSpan>,
    /// Spans not yet taken by the exporters (at most `MAX_NEW_SPANS`).
    new_spans: Vec<TaskSpan>,
}

/// Polls after an exit before a thread's or process's final values are read: one poll may
/// still miss the last slice the task ran after its exit event.
const FINAL_READ_POLLS: u64 = 2;

/// Spans made between two takes by the exporters at most (they take them every poll).
const MAX_NEW_SPANS: usize = 65_536;

/// Every this many polls, live processes are checked against /proc for lost exit events.
const SWEEP_EVERY_POLLS: u64 = 10;

impl TaskModel {
    /// A model reading what the kernel does not carry from `host`.
    pub fn new(config: ModelConfig, host: Box<dyn Host>) -> Self {
        Self {
            config,
            live: HashMap::new(),
            exited: VecDeque::new(),
            host,
            polls: 0,
            counters: ModelCounters::default(),
            cpus: Vec::new(),
            running: HashMap::new(),
            device_io: Vec::new(),
            kernel_losses: [0; LOSS_KINDS as usize],
            map_read_errors: 0,
            collected_at_ns: 0,
            workloads: WorkloadLedger::default(),
            cpu_window_start: None,
            cpu_windows: Vec::new(),
            span_ids: SpanIdSource::default(),
            spans: VecDeque::new(),
            new_spans: Vec::new(),
        }
    }

    /// Spans made since the last call (for the exporters).
    pub fn take_new_spans(&mut self) -> Vec<TaskSpan> {
        std::mem::take(&mut self.new_spans)
    }

    /// Live processes that just became slow (each reported once in its life).
    pub fn new_slow_tasks(&mut self, config: SlowTaskConfig) -> Vec<SlowTask> {
        let boottime = self.host.clocks().boottime_ns;
        let mono = self.collected_at_ns;
        let mut slow = Vec::new();
        for p in self.live.values_mut() {
            // Tasks started while the agent runs, not the host's daemons and kernel threads.
            if p.slow_logged || p.exit.is_some() || !p.observed_from_start {
                continue;
            }
            let start = p
                .start_boottime_ns
                .unwrap_or(p.start_ticks.saturating_mul(NS_PER_TICK));
            let wall = boottime.saturating_sub(start);
            let sched = p.sched(mono, &self.running);
            let share = sched.runqueue_wait_ns as f64 / wall.max(1) as f64;
            let reason = if wall >= config.wall.as_nanos() as u64 {
                format!("running longer than {:?}", config.wall)
            } else if wall >= 1_000_000_000 && share > config.runqueue_share {
                format!("waiting for a CPU {:.0}% of its life", share * 100.0)
            } else {
                continue;
            };
            p.slow_logged = true;
            slow.push(SlowTask {
                pid: p.pid,
                comm: p.comm.clone(),
                cgroup: p.cgroup_path.clone(),
                wall_ns: wall,
                on_cpu_ns: sched.on_cpu_ns,
                runqueue_wait_ns: sched.runqueue_wait_ns,
                blocked_ns: wall.saturating_sub(sched.on_cpu_ns + sched.runqueue_wait_ns),
                ids: p.span_ids,
                reason,
            });
        }
        slow
    }

    /// Recent spans, oldest first.
    pub fn spans(&self) -> impl DoubleEndedIterator<Item = &TaskSpan> {
        self.spans.iter()
    }

    /// Adds every process in /proc (those that started before the agent).
    pub fn scan_proc(&mut self) {
        for pid in self.host.pids() {
            if !self.live.contains_key(&pid) {
                self.insert_from_proc(pid);
            }
        }
    }

    /// Builds a process from /proc; a bare entry when /proc has nothing (it already exited).
    fn insert_from_proc(&mut self, pid: u32) -> Option<&mut Process> {
        let process = match self.host.stat(pid) {
            Some(stat) => {
                let mut p = Process::new(pid, stat.start_ticks);
                p.ppid = stat.ppid;
                p.comm = stat.comm;
                p.exe = self.host.exe(pid);
                p.cmdline = self.config.redactor.redact(self.host.cmdline(pid));
                p.uid = self.host.uid(pid);
                if let Some(path) = self.host.cgroup(pid) {
                    p.cgroup_id = self.host.cgroup_id(&path);
                    p.cgroup_path = Some(path);
                }
                p.threads.insert(pid, Thread::default());
                p.threads_started = 1;
                p
            }
            None => Process::new(pid, 0),
        };
        self.insert_live(process)
    }

    fn insert_live(&mut self, process: Process) -> Option<&mut Process> {
        if self.live.len() >= self.config.max_live && !self.live.contains_key(&process.pid) {
            self.counters.processes_dropped += 1;
            return None;
        }
        let pid = process.pid;
        self.live.insert(pid, process);
        self.live.get_mut(&pid)
    }

    fn live_or_proc(&mut self, pid: u32) -> Option<&mut Process> {
        if self.live.contains_key(&pid) {
            return self.live.get_mut(&pid);
        }
        self.insert_from_proc(pid)
    }

    /// Moves a live process to the exited list.
    fn retire(&mut self, pid: u32, forget: &mut Forget) {
        let Some(mut process) = self.live.remove(&pid) else {
            return;
        };
        let tids: Vec<u32> = process.threads.keys().copied().collect();
        for tid in tids {
            process.fold_thread(tid, forget);
        }
        forget.syscalls.extend(
            process
                .syscalls
                .keys()
                .map(|&nr| SyscallKey { tgid: pid, nr }),
        );
        forget
            .errnos
            .extend(process.errnos.keys().map(|&(nr, errno)| ErrnoKey {
                tgid: pid,
                nr,
                errno,
                _pad: 0,
            }));
        forget
            .process_io
            .extend(process.io.keys().map(|&(dev, op)| ProcessIoKey {
                tgid: pid,
                op,
                dev,
                _pad: 0,
            }));
        if process.exit.is_none() {
            process.exit = Some(ExitStatus::Unknown);
            self.counters.processes_lost += 1;
        }
        self.counters.processes_exited += 1;
        let clocks = self.host.clocks();
        let now = clocks.monotonic_ns;
        let boot_minus_mono = clocks.boottime_ns.saturating_sub(now);
        self.workloads.retire(&process, now, boot_minus_mono);
        if let Some(span) = TaskSpan::of(&process, &clocks) {
            self.counters.spans += 1;
            if self.new_spans.len() < MAX_NEW_SPANS {
                self.new_spans.push(span.clone());
            } else {
                self.counters.spans_dropped += 1;
            }
            self.spans.push_back(span);
            while self.spans.len() > self.config.max_exited {
                self.spans.pop_front();
            }
        }
        process.exited_at = Some(Instant::now());
        self.exited.push_back(process);
        while self.exited.len() > self.config.max_exited {
            self.exited.pop_front();
            self.counters.processes_evicted += 1;
        }
    }

    /// Applies one ring-buffer event. Returns map entries to forget (a pid reused before its
    /// previous owner was retired).
    pub fn apply_event(&mut self, event: Event, forget: &mut Forget) {
        self.counters.events += 1;
        match event {
            Event::Fork(fork) => {
                let pid = fork.header.pid;
                let tgid = fork.header.tgid;
                if fork.is_thread != 0 {
                    if let Some(process) = self.live_or_proc(tgid) {
                        process.threads.entry(pid).or_default();
                        process.threads_started += 1;
                    }
                    return;
                }
                let start_ticks = fork.start_boottime_ns / NS_PER_TICK;
                if let Some(existing) = self.live.get_mut(&pid) {
                    let found_by_scan = existing.exit.is_none() && !existing.observed_from_start;
                    if found_by_scan && existing.start_ticks == start_ticks {
                        // Found by the /proc scan after the fork (the agent was starting):
                        // the same process, seen from its start after all, so it gets a span.
                        existing.observed_from_start = true;
                        existing.start_boottime_ns = Some(fork.start_boottime_ns);
                        let parent_ids = self.live.get(&fork.parent_tgid).and_then(|p| p.span_ids);
                        let ids =
                            self.span_ids
                                .ids(pid, fork.start_boottime_ns, parent_ids.as_ref());
                        if let Some(existing) = self.live.get_mut(&pid) {
                            existing.span_ids = Some(ids);
                        }
                        self.counters.processes_started += 1;
                        return;
                    }
                    // The pid was reused: its previous owner is gone.
                    self.retire(pid, forget);
                }
                let parent = self.live.get(&fork.parent_tgid);
                let mut process = Process::new(pid, start_ticks);
                let parent_ids = parent.and_then(|p| p.span_ids);
                process.span_ids = Some(self.span_ids.ids(
                    pid,
                    fork.start_boottime_ns,
                    parent_ids.as_ref(),
                ));
                process.start_boottime_ns = Some(fork.start_boottime_ns);
                process.ppid = fork.parent_tgid;
                process.comm = c_string(&fork.comm);
                process.exe = parent.and_then(|p| p.exe.clone());
                process.cmdline = parent.map(|p| p.cmdline.clone()).unwrap_or_default();
                process.uid = Some(fork.uid);
                process.cgroup_id = Some(fork.cgroup_id);
                process.cgroup_path = self.host.cgroup_path(fork.cgroup_id, pid);
                process.observed_from_start = true;
                process.threads.insert(pid, Thread::default());
                process.threads_started = 1;
                self.counters.processes_started += 1;
                self.insert_live(process);
            }
            Event::Exec(exec) => self.apply_exec(*exec),
            Event::Exit(exit) => {
                let polls = self.polls;
                let Some(process) = self.live.get_mut(&exit.header.tgid) else {
                    return;
                };
                process
                    .threads
                    .entry(exit.header.pid)
                    .or_default()
                    .exited_after_poll = Some(polls);
                if exit.group_dead != 0 {
                    process.exit = Some(ExitStatus::from_raw(exit.exit_code));
                    process.exit_time_ns = Some(exit.header.ts_ns);
                    process.exit_seen_after_poll = Some(polls);
                }
            }
            Event::SlowSyscall(slow) => {
                let max = self.config.max_slow_syscalls;
                if let Some(process) = self.live.get_mut(&slow.header.tgid) {
                    if process.slow_syscalls.len() >= max {
                        process.slow_syscalls.pop_front();
                    }
                    process.slow_syscalls.push_back(slow);
                }
            }
            Event::SlowRunqueueWait(slow) => self.add_slow_wait(
                slow.header.tgid,
                SlowWait::RunqueueWait {
                    tid: slow.header.pid,
                    at_ns: slow.header.ts_ns,
                    wait_ns: slow.wait_ns,
                },
            ),
            // Context switches (recording only) are the recorder's, not the model's.
            Event::Switch(_) => {}
            Event::SlowIo(slow) => self.add_slow_wait(
                slow.header.tgid,
                SlowWait::BlockIo {
                    at_ns: slow.header.ts_ns,
                    dev: slow.dev,
                    op: slow.op,
                    bytes: slow.bytes,
                    latency_ns: slow.latency_ns,
                },
            ),
        }
    }

    /// Remembers a long wait of a live process (the latest `max_slow_syscalls`).
    fn add_slow_wait(&mut self, tgid: u32, wait: SlowWait) {
        let max = self.config.max_slow_syscalls;
        if let Some(process) = self.live.get_mut(&tgid) {
            if process.slow_waits.len() >= max {
                process.slow_waits.pop_front();
            }
            process.slow_waits.push_back(wait);
        }
    }

    fn apply_exec(&mut self, exec: Exec) {
        let tgid = exec.header.tgid;
        let cgroup_path = self.host.cgroup_path(exec.cgroup_id, tgid);
        let polls = self.polls;
        let cmdline = self.config.redactor.redact(exec.args);
        // Read while the process runs (a very short one may be gone: it keeps its trace).
        let traceparent = if self.config.join_traceparent {
            self.host.traceparent(tgid)
        } else {
            None
        };
        let exe = self.host.exe(tgid);
        let Some(process) = self.live_or_proc(tgid) else {
            return;
        };
        // The exe link is absolute and resolved; the filename passed to execve may be relative.
        process.exe = exe.or(Some(exec.filename));
        process.comm = exec.comm;
        process.cmdline = cmdline;
        process.cmdline_truncated = exec.args_truncated;
        process.uid = Some(exec.uid);
        process.cgroup_id = Some(exec.cgroup_id);
        process.exec_time_ns = Some(exec.header.ts_ns);
        // Children inherit the variable: one whose parent already joined that trace stays its
        // parent's child.
        if let (Some(ids), Some((trace_id, parent))) = (process.span_ids, traceparent) {
            if ids.trace_id != trace_id {
                process.span_ids = Some(ids.joined(trace_id, parent));
            }
        }
        if exec.old_pid != exec.header.pid {
            // A non-leader thread exec'd and took over the leader's pid: its old tid is gone.
            process
                .threads
                .entry(exec.old_pid)
                .or_default()
                .exited_after_poll = Some(polls);
        }
        self.set_cgroup(tgid, cgroup_path, Some((exec.old_pid, exec.sched_at_exec)));
    }

    /// Sets a live process's cgroup. When it moves, what it accumulated so far stays with the
    /// workload it leaves, so that no workload's counter ever goes down. An unresolved path
    /// (`None`) keeps the one known.
    /// `at_exec`: the exec'ing thread and its counters at the exec, when the move is seen at
    /// an exec: the figures left behind are the ones of that moment, not of when the event
    /// was read (the process may have run for a while in its new cgroup by then).
    fn set_cgroup(&mut self, pid: u32, path: Option<String>, at_exec: Option<(u32, ExecCounters)>) {
        let Some(process) = self.live.get(&pid) else {
            return;
        };
        if path.is_none() && process.cgroup_path.is_some() {
            return;
        }
        if let (Some(old), Some(new)) = (&process.cgroup_path, &path) {
            if old != new {
                let now = self.host.clocks().monotonic_ns;
                let mut figures = WorkloadTotals::figures_of(process, now, &self.running);
                if let Some((tid, at)) = at_exec {
                    if let Some(sched) = process.threads.get(&tid).and_then(|t| t.sched) {
                        let running = self
                            .running
                            .get(&tid)
                            .map_or(0, |since| now.saturating_sub(*since));
                        // Swap the thread's figures as read for its figures at the exec.
                        let swap = |total: &mut u64, current: u64, then: u64| {
                            *total = total.saturating_sub(current).saturating_add(then);
                        };
                        let f = &mut figures.sched;
                        swap(&mut f.on_cpu_ns, sched.on_cpu_ns + running, at.on_cpu_ns);
                        swap(
                            &mut f.runqueue_wait_ns,
                            sched.runqueue_wait_ns,
                            at.runqueue_wait_ns,
                        );
                        swap(
                            &mut f.voluntary_switches,
                            sched.voluntary_switches,
                            at.voluntary_switches,
                        );
                        swap(
                            &mut f.involuntary_switches,
                            sched.involuntary_switches,
                            at.involuntary_switches,
                        );
                    }
                }
                let credit = match &process.moved_baseline {
                    Some(base) => figures.figures_minus(base),
                    None => figures.clone(),
                };
                let old = old.clone();
                self.workloads.credit(&old, &credit, now);
                if let Some(process) = self.live.get_mut(&pid) {
                    process.moved_baseline = Some(Box::new(figures));
                }
            }
        }
        if let Some(process) = self.live.get_mut(&pid) {
            process.cgroup_path = path;
        }
    }

    /// Applies a read of the kernel maps; returns the map entries that are no longer needed.
    pub fn apply_kernel(&mut self, snapshot: KernelSnapshot) -> Forget {
        self.polls += 1;
        self.counters.polls = self.polls;
        let polls = self.polls;
        let mut forget = Forget::default();

        for (tid, task) in snapshot.tasks {
            if task.tgid == 0 {
                continue;
            }
            if let Some(process) = self.live_or_proc(task.tgid) {
                process.last_switch_out_ns =
                    process.last_switch_out_ns.max(task.last_switch_out_ns);
                process.threads.entry(tid).or_default().sched = Some(task);
            }
        }
        for (key, stats) in snapshot.syscalls {
            if let Some(process) = self.live.get_mut(&key.tgid) {
                process.syscalls.insert(key.nr, stats);
            }
        }
        for (key, count) in snapshot.errnos {
            if let Some(process) = self.live.get_mut(&key.tgid) {
                process.errnos.insert((key.nr, key.errno), count);
            }
        }
        for (key, io) in snapshot.process_io {
            if let Some(process) = self.live.get_mut(&key.tgid) {
                process.io.insert((key.dev, key.op), io);
            }
        }
        self.running = snapshot
            .cpus
            .iter()
            .filter(|cpu| cpu.current_pid != 0)
            .map(|cpu| (cpu.current_pid, cpu.current_since_ns))
            .collect();
        self.cpus = snapshot.cpus;
        self.advance_cpu_window(snapshot.taken_at_ns);
        self.device_io = snapshot.device_io;
        self.kernel_losses = snapshot.losses;
        self.map_read_errors += snapshot.read_errors;
        self.collected_at_ns = snapshot.taken_at_ns;

        // Fold exited threads and retire exited processes once their final values are in.
        let due = |after: Option<u64>| after.is_some_and(|a| a + FINAL_READ_POLLS <= polls);
        let mut retire = Vec::new();
        for process in self.live.values_mut() {
            let done: Vec<u32> = process
                .threads
                .iter()
                .filter(|(_, t)| due(t.exited_after_poll))
                .map(|(&tid, _)| tid)
                .collect();
            for tid in done {
                process.fold_thread(tid, &mut forget);
            }
            if due(process.exit_seen_after_poll) {
                retire.push(process.pid);
            }
        }
        if polls.is_multiple_of(SWEEP_EVERY_POLLS) {
            retire.extend(self.vanished());
        }
        retire.sort_unstable();
        retire.dedup();
        for pid in retire {
            self.retire(pid, &mut forget);
        }
        self.evict_exited();
        forget
    }

    /// Closes the CPU window when it is long enough, and starts the next one.
    fn advance_cpu_window(&mut self, read_at_ns: u64) {
        let totals: Vec<CpuTotals> = self
            .cpus
            .iter()
            .map(|cpu| CpuTotals::of(cpu, read_at_ns))
            .collect();
        let window_ns = self.config.cpu_window.as_nanos() as u64;
        match &self.cpu_window_start {
            Some((start, before)) if read_at_ns.saturating_sub(*start) >= window_ns => {
                let threshold = self.config.idle_fragment_threshold.as_nanos() as u64;
                self.cpu_windows = cpu_windows(before, &totals, threshold);
                self.cpu_window_start = Some((read_at_ns, totals));
            }
            Some(_) => {}
            None => self.cpu_window_start = Some((read_at_ns, totals)),
        }
    }

    /// Live processes that were already gone from /proc (or whose pid belonged to someone else)
    /// at the previous sweep and whose exit event still has not come: it was lost. A process
    /// missing for the first time is only marked, because its exit event may be in the ring
    /// buffer, not yet read.
    fn vanished(&mut self) -> Vec<u32> {
        let mut lost = Vec::new();
        for p in self.live.values_mut().filter(|p| p.exit.is_none()) {
            let gone = self
                .host
                .stat(p.pid)
                .is_none_or(|stat| stat.start_ticks != p.start_ticks);
            if gone && p.missing_at_sweep {
                lost.push(p.pid);
            }
            p.missing_at_sweep = gone;
        }
        lost
    }

    fn evict_exited(&mut self) {
        let retention = self.config.exited_retention;
        while self
            .exited
            .front()
            .and_then(|p| p.exited_at)
            .is_some_and(|t| t.elapsed() > retention)
        {
            self.exited.pop_front();
            self.counters.processes_evicted += 1;
        }
    }

    /// Live processes, in pid order.
    pub fn live(&self) -> impl Iterator<Item = &Process> {
        self.live.values()
    }

    /// Recently exited processes, oldest first.
    pub fn exited(&self) -> impl Iterator<Item = &Process> {
        self.exited.iter()
    }

    /// Every process with `pid`: the live one first, then exited ones, newest first.
    pub fn by_pid(&self, pid: u32) -> Vec<&Process> {
        self.live
            .get(&pid)
            .into_iter()
            .chain(self.exited.iter().rev().filter(|p| p.pid == pid))
            .collect()
    }

    /// Totals per workload (retired processes and live ones); workloads without live processes
    /// for `ttl` are dropped.
    pub fn workload_totals(&mut self, ttl: Duration) -> Vec<(Workload, WorkloadTotals)> {
        let now = self.host.clocks().monotonic_ns;
        let ttl_ns = ttl.as_nanos().min(u64::MAX as u128) as u64;
        self.workloads
            .totals(self.live.values(), now, &self.running, ttl_ns)
    }

    /// Live processes any of `selectors` matches, each with its own totals.
    pub fn selected_processes(&self, selectors: &[ProcessSelector]) -> Vec<SelectedProcess> {
        if selectors.is_empty() {
            return Vec::new();
        }
        let now = self.host.clocks().monotonic_ns;
        self.live
            .values()
            .filter(|p| selectors.iter().any(|s| s.matches(p)))
            .map(|p| {
                let mut totals = WorkloadTotals::default();
                totals.add_process(p, now, &self.running);
                SelectedProcess {
                    workload: Workload::from_cgroup(p.cgroup_path.as_deref().unwrap_or("/")),
                    pid: p.pid,
                    comm: p.comm.clone(),
                    totals,
                }
            })
            .collect()
    }

    pub fn live_count(&self) -> usize {
        self.live.len()
    }

    pub fn exited_count(&self) -> usize {
        self.exited.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        model::host::SystemHost,
        procfs::{self, CgroupResolver},
    };
    use taskscope_common::{event_kind, EventHeader, ExitEvent, ForkEvent, COMM_LEN};

    fn header(kind: u32, pid: u32, tgid: u32) -> EventHeader {
        EventHeader {
            kind,
            cpu: 0,
            ts_ns: 1,
            pid,
            tgid,
        }
    }

    fn fork(pid: u32, tgid: u32, parent: u32, start_ns: u64) -> Event {
        Event::Fork(ForkEvent {
            header: header(event_kind::FORK, pid, tgid),
            parent_pid: parent,
            parent_tgid: parent,
            is_thread: (pid != tgid) as u32,
            uid: 0,
            start_boottime_ns: start_ns,
            cgroup_id: 0,
            comm: [b'x'; COMM_LEN],
        })
    }

    fn exit(pid: u32, tgid: u32, code: u32, group_dead: bool) -> Event {
        Event::Exit(ExitEvent {
            header: header(event_kind::EXIT, pid, tgid),
            exit_code: code,
            group_dead: group_dead as u32,
            start_boottime_ns: 0,
            comm: [0; COMM_LEN],
        })
    }

    fn sched(tgid: u32, on_cpu: u64) -> TaskSched {
        TaskSched {
            tgid,
            _pad: 0,
            on_cpu_ns: on_cpu,
            runqueue_wait_ns: 1,
            voluntary_switches: 2,
            involuntary_switches: 3,
            queued_since_ns: 0,
            last_switch_out_ns: 0,
            runqueue_hist: [0; HIST_BUCKETS],
        }
    }

    fn model() -> TaskModel {
        TaskModel::new(
            ModelConfig::default(),
            Box::new(SystemHost::new(CgroupResolver::new(None))),
        )
    }

    // Pids far above any real pid so /proc lookups miss.
    const P: u32 = 4_000_001;

    #[test]
    fn threads_roll_up_and_survive_their_exit() {
        let mut m = model();
        let mut forget = Forget::default();
        m.apply_event(fork(P, P, 1, 10 * NS_PER_TICK), &mut forget);
        m.apply_event(fork(P + 1, P, P, 11 * NS_PER_TICK), &mut forget);
        let snap = |a, b| KernelSnapshot {
            tasks: vec![(P, sched(P, a)), (P + 1, sched(P, b))],
            ..Default::default()
        };
        m.apply_kernel(snap(100, 50));
        let p = &m.by_pid(P)[0];
        assert_eq!(p.sched(0, &HashMap::new()).on_cpu_ns, 150);
        assert_eq!(p.sched(0, &HashMap::new()).voluntary_switches, 4);
        assert_eq!(p.live_threads(), 2);
        assert_eq!(p.threads_started, 2);

        // The thread exits (not the process): its final value counts and stays counted.
        m.apply_event(exit(P + 1, P, 0, false), &mut forget);
        assert!(m.apply_kernel(snap(200, 70)).tids.is_empty());
        let forget = m.apply_kernel(snap(300, 70));
        assert_eq!(forget.tids, vec![(P + 1, P)]);
        let p = &m.by_pid(P)[0];
        assert_eq!(p.sched(0, &HashMap::new()).on_cpu_ns, 370);
        assert!(!p.is_exited());
        assert_eq!(p.threads_exited, 1);
        // The next read no longer has the thread's entry.
        m.apply_kernel(KernelSnapshot {
            tasks: vec![(P, sched(P, 400))],
            ..Default::default()
        });
        assert_eq!(m.by_pid(P)[0].sched(0, &HashMap::new()).on_cpu_ns, 470);
    }

    #[test]
    fn process_exit_is_kept_then_retired_with_its_status() {
        let mut m = model();
        let mut forget = Forget::default();
        m.apply_event(fork(P, P, 1, NS_PER_TICK), &mut forget);
        m.apply_kernel(KernelSnapshot {
            tasks: vec![(P, sched(P, 5))],
            syscalls: vec![(SyscallKey { tgid: P, nr: 0 }, zero_syscalls())],
            ..Default::default()
        });
        m.apply_event(exit(P, P, 3 << 8, true), &mut forget);
        assert_eq!(m.by_pid(P)[0].exit, Some(ExitStatus::Exited { code: 3 }));
        m.apply_kernel(KernelSnapshot::default());
        let forget = m.apply_kernel(KernelSnapshot::default());
        assert_eq!(forget.tids, vec![(P, P)]);
        assert_eq!(forget.syscalls, vec![SyscallKey { tgid: P, nr: 0 }]);
        assert_eq!(m.live_count(), 0);
        assert_eq!(m.exited_count(), 1);
        assert_eq!(m.by_pid(P)[0].sched(0, &HashMap::new()).on_cpu_ns, 5);
    }

    #[test]
    fn a_process_found_by_the_scan_before_its_fork_event_still_gets_a_span() {
        // The agent attaches, a process forks, the /proc scan finds it, then the fork
        // event is read: the same process, seen from its start.
        let mut m = model();
        let mut forget = Forget::default();
        let me = std::process::id();
        let start_ticks = procfs::read_stat(me).expect("own stat").start_ticks;
        m.insert_from_proc(me);
        assert!(m.by_pid(me)[0].span_ids.is_none());
        m.apply_event(fork(me, me, 1, start_ticks * NS_PER_TICK), &mut forget);
        let p = &m.by_pid(me)[0];
        assert!(p.observed_from_start);
        assert!(
            p.span_ids.is_some(),
            "no span for a process whose fork was seen"
        );
    }

    #[test]
    fn a_reused_pid_is_a_new_process() {
        let mut m = model();
        let mut forget = Forget::default();
        m.apply_event(fork(P, P, 1, NS_PER_TICK), &mut forget);
        m.apply_event(exit(P, P, 0, true), &mut forget);
        m.apply_event(fork(P, P, 1, 500 * NS_PER_TICK), &mut forget);
        let all = m.by_pid(P);
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].start_ticks, 500);
        assert!(!all[0].is_exited());
        assert_eq!(all[1].start_ticks, 1);
        assert_eq!(all[1].exit, Some(ExitStatus::Exited { code: 0 }));
        assert_eq!(forget.tids, vec![(P, P)]);
    }

    #[test]
    fn exited_processes_are_capped() {
        let mut m = TaskModel::new(
            ModelConfig {
                max_exited: 3,
                ..ModelConfig::default()
            },
            Box::new(SystemHost::new(CgroupResolver::new(None))),
        );
        let mut forget = Forget::default();
        for i in 0..10 {
            m.apply_event(fork(P + i, P + i, 1, NS_PER_TICK), &mut forget);
            m.apply_event(exit(P + i, P + i, 0, true), &mut forget);
        }
        m.apply_kernel(KernelSnapshot::default());
        m.apply_kernel(KernelSnapshot::default());
        assert_eq!(m.exited_count(), 3);
        assert_eq!(m.counters.processes_evicted, 7);
    }

    #[test]
    fn live_processes_are_capped() {
        let mut m = TaskModel::new(
            ModelConfig {
                max_live: 2,
                ..ModelConfig::default()
            },
            Box::new(SystemHost::new(CgroupResolver::new(None))),
        );
        let mut forget = Forget::default();
        for i in 0..5 {
            m.apply_event(fork(P + i, P + i, 1, NS_PER_TICK), &mut forget);
        }
        assert_eq!(m.live_count(), 2);
        assert_eq!(m.counters.processes_dropped, 3);
    }

    #[test]
    fn a_process_gone_from_proc_is_lost_only_if_its_exit_never_comes() {
        let mut m = model();
        let mut forget = Forget::default();
        // Two processes /proc does not know (pids above pid_max).
        m.apply_event(fork(P, P, 1, NS_PER_TICK), &mut forget);
        m.apply_event(fork(P + 1, P + 1, 1, NS_PER_TICK), &mut forget);
        for _ in 0..SWEEP_EVERY_POLLS {
            m.apply_kernel(KernelSnapshot::default());
        }
        // First sweep: both only marked.
        assert_eq!(m.live_count(), 2);
        // Its exit event was late, not lost.
        m.apply_event(exit(P, P, 0, true), &mut forget);
        for _ in 0..SWEEP_EVERY_POLLS {
            m.apply_kernel(KernelSnapshot::default());
        }
        assert_eq!(m.by_pid(P)[0].exit, Some(ExitStatus::Exited { code: 0 }));
        assert_eq!(m.by_pid(P + 1)[0].exit, Some(ExitStatus::Unknown));
        assert_eq!(m.counters.processes_lost, 1);
    }

    #[test]
    fn a_process_moving_cgroup_leaves_its_past_behind() {
        let mut m = model();
        let mut forget = Forget::default();
        m.apply_event(fork(P, P, 1, NS_PER_TICK), &mut forget);
        m.set_cgroup(P, Some("/a".into()), None);
        let snap = |on_cpu| KernelSnapshot {
            tasks: vec![(P, sched(P, on_cpu))],
            ..Default::default()
        };
        m.apply_kernel(snap(100));
        let cpu_of = |m: &mut TaskModel, cgroup: &str| -> u64 {
            m.workload_totals(Duration::from_secs(60))
                .iter()
                .find(|(w, _)| w.cgroup == cgroup)
                .map_or(0, |(_, t)| t.sched.on_cpu_ns)
        };
        assert_eq!(cpu_of(&mut m, "/a"), 100);
        m.set_cgroup(P, Some("/b".into()), None);
        m.apply_kernel(snap(150));
        assert_eq!(cpu_of(&mut m, "/a"), 100, "what it used in /a stays there");
        assert_eq!(cpu_of(&mut m, "/b"), 50, "/b counts only what came after");
        m.set_cgroup(P, Some("/a".into()), None);
        m.apply_kernel(snap(170));
        assert_eq!(cpu_of(&mut m, "/b"), 50);
        assert_eq!(cpu_of(&mut m, "/a"), 120);
        // And after it exits and is retired.
        m.apply_event(exit(P, P, 0, true), &mut forget);
        m.apply_kernel(snap(170));
        m.apply_kernel(KernelSnapshot::default());
        assert_eq!(m.live_count(), 0);
        assert_eq!(cpu_of(&mut m, "/a"), 120);
        assert_eq!(cpu_of(&mut m, "/b"), 50);
    }

    fn zero_syscalls() -> SyscallStats {
        SyscallStats {
            count: 1,
            errors: 0,
            total_ns: 1,
            latency_hist: [0; HIST_BUCKETS],
        }
    }
}
