//! The task model: every live and recently exited process, with its metadata and the kernel's
//! accumulators rolled up from its threads. One owner (the collector task) mutates it; the API
//! reads views of it.
//!
//! Processes are keyed by (pid, start time) so that a reused pid is a new process. Threads roll
//! up into their process: its totals are the sum of its live threads' current values and the
//! final values of its exited threads.

pub(crate) mod aggregate;
pub(crate) mod cgroup_syscalls;
pub(crate) mod custom;
pub(crate) mod errno;
pub(crate) mod exit;
pub(crate) mod histogram;
pub(crate) mod host;
pub(crate) mod intake;
mod lifecycle;
pub(crate) mod node;
pub(crate) mod process;
pub(crate) mod queries;
pub(crate) mod redact;
mod retire;
pub(crate) mod selector;
pub(crate) mod slow;
pub(crate) mod snapshot;
pub(crate) mod span;
pub(crate) mod view;
pub(crate) mod workload;

use std::{
    collections::{HashMap, HashSet, VecDeque},
    time::Duration,
};

use taskscope_common::{DeviceIo, DeviceIoKey, LOSS_KINDS};

use self::{
    aggregate::WorkloadLedger,
    cgroup_syscalls::CgroupSyscalls,
    host::Host,
    node::{CpuTotals, CpuWindow},
    span::{SpanIdSource, TaskSpan},
};
pub(crate) use self::{
    exit::ExitStatus,
    process::{Process, SchedTotals, SlowWait},
    slow::{SlowTask, SlowTaskConfig},
};

/// Limits of the task model.
#[derive(Debug, Clone)]
pub(crate) struct ModelConfig {
    /// How long an exited process stays visible.
    pub(crate) exited_retention: Duration,
    /// At most this many exited processes are kept (oldest evicted first).
    pub(crate) max_exited: usize,
    /// At most this many live processes are tracked; more are counted as dropped.
    pub(crate) max_live: usize,
    /// Slow syscalls remembered per process.
    pub(crate) max_slow_syscalls: usize,
    /// CPU busy share and idle fragmentation are measured over windows at least this long.
    pub(crate) cpu_window: Duration,
    /// Idle periods shorter than this count as fragmented idle time.
    pub(crate) idle_fragment_threshold: Duration,
    /// Takes secrets out of command lines before they are stored.
    pub(crate) redactor: redact::Redactor,
    /// A process exec'd with `TRACEPARENT` in its environment joins that trace.
    pub(crate) join_traceparent: bool,
    /// Workloads without live processes stay in /metrics this long, with their cgroups'
    /// syscall figures (`--series-ttl`).
    pub(crate) series_ttl: Duration,
}

impl ModelConfig {
    fn series_ttl_ns(&self) -> u64 {
        self.series_ttl.as_nanos().min(u64::MAX as u128) as u64
    }
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
            series_ttl: Duration::from_secs(300),
        }
    }
}

/// Counters of the model's own work.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub(crate) struct ModelCounters {
    pub(crate) processes_started: u64,
    pub(crate) processes_exited: u64,
    pub(crate) processes_evicted: u64,
    /// Processes that vanished without an exit event (it was lost).
    pub(crate) processes_lost: u64,
    /// Processes not tracked because `max_live` was reached.
    pub(crate) processes_dropped: u64,
    pub(crate) events: u64,
    pub(crate) polls: u64,
    /// Spans of exited processes made.
    pub(crate) spans: u64,
    /// Spans not handed to the exporters because nobody took them in time.
    pub(crate) spans_dropped: u64,
    /// Exit and over-threshold events of processes the model does not hold (not tracked, or
    /// already retired): their exit status or slow event is lost.
    pub(crate) events_of_untracked: u64,
    /// Processes found in /proc whose argument vector could not be read.
    pub(crate) cmdline_unreadable: u64,
    /// Times a task's cgroup path could not be resolved (the cgroup vanished, or the
    /// resolver's cache was full): the task is charged to no cgroup.
    pub(crate) cgroup_unresolved: u64,
    /// Pids reused while the previous owner's kernel entries were still there: the new
    /// process's first counts may be merged with its predecessor's.
    pub(crate) pids_reused: u64,
}

/// The task model.
pub(crate) struct TaskModel {
    config: ModelConfig,
    live: HashMap<u32, Process>,
    exited: VecDeque<Process>,
    /// /proc, cgroupfs and the clocks.
    host: Box<dyn Host>,
    polls: u64,
    pub(crate) counters: ModelCounters,
    /// Latest per-CPU accounting.
    pub(crate) cpus: Vec<taskscope_common::CpuStats>,
    /// Tasks on a CPU at the latest read: tid -> when they were switched in.
    pub(crate) running: HashMap<u32, u64>,
    /// Latest per-device IO.
    pub(crate) device_io: Vec<(DeviceIoKey, DeviceIo)>,
    /// Kernel-side losses, summed over CPUs.
    pub(crate) kernel_losses: [u64; LOSS_KINDS as usize],
    /// Map entries that could not be read, summed over reads.
    pub(crate) map_read_errors: u64,
    /// CLOCK_MONOTONIC of the latest kernel read.
    pub(crate) collected_at_ns: u64,
    /// What retired processes left to their workloads.
    workloads: WorkloadLedger,
    /// The workloads' syscall figures, per cgroup as the kernel keeps them.
    cgroup_syscalls: CgroupSyscalls,
    /// Start of the current CPU window: (CLOCK_MONOTONIC, per-CPU totals).
    cpu_window_start: Option<(u64, Vec<CpuTotals>)>,
    /// Busy share and idle fragmentation per CPU over the latest complete window.
    pub(crate) cpu_windows: Vec<CpuWindow>,
    span_ids: SpanIdSource,
    /// Spans of the latest exited processes (at most `max_exited`), for the API.
    spans: VecDeque<TaskSpan>,
    /// Spans not yet taken by the exporters (at most `MAX_NEW_SPANS`).
    new_spans: Vec<TaskSpan>,
    /// Tids whose kernel entry named a process the model did not know at the latest read
    /// (at most one per `TASKS` entry).
    unknown_tasks: HashSet<u32>,
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
    pub(crate) fn new(config: ModelConfig, host: Box<dyn Host>) -> Self {
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
            cgroup_syscalls: CgroupSyscalls::default(),
            cpu_window_start: None,
            cpu_windows: Vec::new(),
            span_ids: SpanIdSource::default(),
            spans: VecDeque::new(),
            new_spans: Vec::new(),
            unknown_tasks: HashSet::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procfs::NS_PER_TICK;
    use crate::{
        model::host::SystemHost,
        procfs::{self, CgroupResolver},
    };
    use intake::{Forget, KernelSnapshot};
    use std::collections::BTreeMap;
    use taskscope_common::{decode::Event, SyscallCounts, SyscallKey, TaskSched, HIST_BUCKETS};
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
    fn a_task_from_before_the_agent_brings_its_past_to_its_figures_not_to_rates() {
        let mut m = model();
        let mut forget = Forget::default();
        // Found by the /proc scan (it started before the agent), with a thread born since.
        m.insert_from_proc(P);
        m.apply_event(fork(P + 1, P, P, NS_PER_TICK), &mut forget);
        let snap = |a, b| KernelSnapshot {
            tasks: vec![(P, sched(P, a)), (P + 1, sched(P, b))],
            ..Default::default()
        };
        m.apply_kernel(snap(5_000, 10));
        m.apply_kernel(snap(5_300, 40));
        let root = |m: &mut TaskModel| {
            let totals = m.workload_totals();
            let (_, t) = totals
                .into_iter()
                .find(|(w, _)| w.cgroup == "/")
                .expect("/");
            (t.sched.on_cpu_ns, t.sched_since_agent().on_cpu_ns)
        };
        // Its figures are the kernel's lifetime ones, as /proc's; rates see what came after.
        assert_eq!(m.by_pid(P)[0].sched(0, &HashMap::new()).on_cpu_ns, 5_340);
        assert_eq!(root(&mut m), (5_340, 340));
        let counters = m.process_counters_at(0);
        assert_eq!(counters[0].sched.on_cpu_ns, 340);
        assert_eq!(
            counters[0].sched.involuntary_switches, 3,
            "the born thread's"
        );
        // Retired, the workload keeps the same split.
        m.apply_event(exit(P + 1, P, 0, false), &mut forget);
        m.apply_event(exit(P, P, 0, true), &mut forget);
        m.apply_kernel(snap(5_400, 50));
        m.apply_kernel(KernelSnapshot::default());
        m.apply_kernel(KernelSnapshot::default());
        assert_eq!(m.live_count(), 0);
        assert_eq!(root(&mut m), (5_450, 450));
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
        // The old owner's entry was reset by the kernel at the new fork: the tid is not
        // forgotten, or the new process's entry would be deleted.
        assert!(forget.tids.is_empty(), "{:?}", forget.tids);
        // Its tgid-keyed entries are forgotten now, after the new process may have counted
        // into them: that is counted.
        assert_eq!(m.counters.pids_reused, 1);
        assert!(forget.processes.contains(&P));
    }

    #[test]
    fn a_task_read_before_its_fork_event_is_not_a_reused_pid() {
        // A short process forks and exits while the maps are read: the read has its entry,
        // the ring buffer its fork and exit, /proc nothing any more.
        let mut m = model();
        let mut forget = Forget::default();
        let snap = || KernelSnapshot {
            tasks: vec![(P, sched(P, 40))],
            ..Default::default()
        };
        m.apply_kernel(snap());
        m.apply_event(fork(P, P, 1, NS_PER_TICK), &mut forget);
        m.apply_event(exit(P, P, 0, true), &mut forget);
        m.apply_kernel(snap());
        m.apply_kernel(snap());
        assert_eq!((m.counters.pids_reused, m.counters.processes_lost), (0, 0));
        let p = &m.by_pid(P)[0];
        assert_eq!(p.exit, Some(ExitStatus::Exited { code: 0 }));
        assert_eq!(p.sched(0, &HashMap::new()).on_cpu_ns, 40);
    }

    #[test]
    fn a_task_whose_fork_event_never_comes_is_taken_from_proc_at_the_next_read() {
        let host = FakeHost::default();
        host.set(100, "sshd", 5);
        let mut m = TaskModel::new(ModelConfig::default(), Box::new(host));
        let snap = || KernelSnapshot {
            tasks: vec![(100, sched(100, 40))],
            ..Default::default()
        };
        m.apply_kernel(snap());
        assert!(m.by_pid(100).is_empty());
        m.apply_kernel(snap());
        let p = &m.by_pid(100)[0];
        assert_eq!((p.comm.as_str(), p.start_ticks), ("sshd", 5));
        assert_eq!(p.sched(0, &HashMap::new()).on_cpu_ns, 40);
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

    /// A host of the test's own: a /proc of a few processes it can change, fixed clocks.
    #[derive(Clone, Default)]
    struct FakeHost {
        procs: std::sync::Arc<std::sync::Mutex<BTreeMap<u32, procfs::Stat>>>,
    }

    impl FakeHost {
        fn set(&self, pid: u32, comm: &str, start_ticks: u64) {
            let stat = procfs::Stat {
                pid,
                comm: comm.to_string(),
                state: 'S',
                ppid: 1,
                start_ticks,
                num_threads: 1,
                exit_code: 0,
            };
            self.procs.lock().expect("procs").insert(pid, stat);
        }

        /// A process that exited with `exit_code` and waits for its parent.
        fn set_zombie(&self, pid: u32, start_ticks: u64, exit_code: u32) {
            self.set(pid, "zombie", start_ticks);
            if let Some(stat) = self.procs.lock().expect("procs").get_mut(&pid) {
                stat.state = 'Z';
                stat.exit_code = exit_code;
            }
        }
    }

    impl Host for FakeHost {
        fn clocks(&self) -> crate::clock::Clocks {
            crate::clock::Clocks {
                monotonic_ns: 5_000_000_000,
                realtime_ns: 1_800_000_000_000_000_000,
                boottime_ns: 6_000_000_000,
            }
        }
        fn pids(&self) -> Vec<u32> {
            self.procs.lock().expect("procs").keys().copied().collect()
        }
        fn stat(&self, pid: u32) -> Option<procfs::Stat> {
            self.procs.lock().expect("procs").get(&pid).cloned()
        }
        fn exe(&self, _pid: u32) -> Option<String> {
            Some("/usr/sbin/sshd".into())
        }
        fn cmdline(&self, pid: u32) -> Option<(Vec<String>, bool)> {
            // Pid 101's is unreadable (hidepid, or it vanished between two reads).
            (pid != 101).then(|| (vec!["sshd".into(), "-D".into()], false))
        }
        fn uid(&self, _pid: u32) -> Option<u32> {
            Some(0)
        }
        fn cgroup(&self, _pid: u32) -> Option<String> {
            Some("/system.slice/ssh.service".into())
        }
        fn traceparent(&self, _pid: u32) -> Option<(u128, u64)> {
            None
        }
        fn cgroup_id(&mut self, path: &str) -> Option<u64> {
            (path == "/system.slice/ssh.service").then_some(42)
        }
        fn cgroup_path(&mut self, id: u64, _pid: u32) -> Option<String> {
            match id {
                42 => Some("/system.slice/ssh.service".into()),
                43 => Some("/moved".into()),
                _ => None,
            }
        }
    }

    #[test]
    fn processes_running_before_the_agent_come_from_the_host_and_a_reused_pid_is_gone() {
        let host = FakeHost::default();
        host.set(100, "sshd", 5);
        host.set(101, "hidden", 6);
        let mut m = TaskModel::new(ModelConfig::default(), Box::new(host.clone()));
        m.scan_proc();
        assert!(m.by_pid(101)[0].cmdline.is_empty());
        assert_eq!(m.counters.cmdline_unreadable, 1);
        let p = m.by_pid(100)[0];
        assert_eq!(
            (
                p.comm.as_str(),
                p.start_ticks,
                p.cgroup_id,
                p.cgroup_path.as_deref()
            ),
            ("sshd", 5, Some(42), Some("/system.slice/ssh.service"))
        );
        assert_eq!(p.cmdline, ["sshd", "-D"]);
        assert!(!p.observed_from_start);
        // The pid now belongs to another process: the one the model knows is gone, and with
        // no exit event by the second sweep, lost.
        host.set(100, "other", 77);
        for _ in 0..2 * SWEEP_EVERY_POLLS {
            m.apply_kernel(KernelSnapshot::default());
        }
        assert_eq!(m.by_pid(100)[0].exit, Some(ExitStatus::Unknown));
        assert_eq!(m.counters.processes_lost, 1);
    }

    #[test]
    fn a_zombie_found_at_start_has_exited_and_is_not_lost_when_reaped() {
        let host = FakeHost::default();
        host.set_zombie(100, 5, 2 << 8);
        let mut m = TaskModel::new(ModelConfig::default(), Box::new(host.clone()));
        m.scan_proc();
        assert_eq!(m.by_pid(100)[0].exit, Some(ExitStatus::Exited { code: 2 }));
        // Reaped, its pid not yet reused.
        host.procs.lock().expect("procs").remove(&100);
        for _ in 0..2 * SWEEP_EVERY_POLLS {
            m.apply_kernel(KernelSnapshot::default());
        }
        assert_eq!((m.live_count(), m.exited_count()), (0, 1));
        assert_eq!(m.counters.processes_lost, 0);
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

    #[test]
    fn a_move_event_charges_the_new_cgroup_from_the_moment_of_the_move() {
        let mut m = TaskModel::new(ModelConfig::default(), Box::new(FakeHost::default()));
        let mut forget = Forget::default();
        m.apply_event(fork(P, P, 1, NS_PER_TICK), &mut forget);
        m.set_cgroup(P, Some("/a".into()), None);
        let snap = |on_cpu| KernelSnapshot {
            tasks: vec![(P, sched(P, on_cpu))],
            ..Default::default()
        };
        m.apply_kernel(snap(100));
        let moved = |cgroup_id, on_cpu_ns| cgroup_move(P, P, true, cgroup_id, on_cpu_ns);
        // Read after it ran on in /moved: what it had at the move (120) stays in /a.
        m.apply_event(moved(43, 120), &mut forget);
        m.apply_kernel(snap(150));
        assert_eq!((cpu_of(&mut m, "/a"), cpu_of(&mut m, "/moved")), (120, 30));
        // Written to the cgroup it is already in: nothing changes.
        m.apply_event(moved(43, 140), &mut forget);
        m.apply_kernel(snap(160));
        assert_eq!((cpu_of(&mut m, "/a"), cpu_of(&mut m, "/moved")), (120, 40));
    }

    #[test]
    fn a_move_before_the_first_read_leaves_what_came_before_it_behind() {
        let mut m = TaskModel::new(ModelConfig::default(), Box::new(FakeHost::default()));
        let mut forget = Forget::default();
        // Forked, moved itself after 7 units of startup, all before the agent read its
        // counters (one poll's events).
        m.apply_event(fork(P, P, 1, NS_PER_TICK), &mut forget);
        m.set_cgroup(P, Some("/a".into()), None);
        m.apply_event(cgroup_move(P, P, true, 43, 7), &mut forget);
        m.apply_kernel(KernelSnapshot {
            tasks: vec![(P, sched(P, 107))],
            ..Default::default()
        });
        assert_eq!((cpu_of(&mut m, "/a"), cpu_of(&mut m, "/moved")), (7, 100));
    }

    #[test]
    fn a_thread_moved_alone_is_charged_to_its_own_cgroup_until_it_leaves() {
        const T: u32 = P + 1;
        let mut m = TaskModel::new(ModelConfig::default(), Box::new(FakeHost::default()));
        let mut forget = Forget::default();
        m.apply_event(fork(P, P, 1, NS_PER_TICK), &mut forget);
        m.set_cgroup(P, Some("/a".into()), None);
        m.apply_event(fork(T, P, P, NS_PER_TICK), &mut forget);
        let snap = |leader, thread| KernelSnapshot {
            tasks: vec![(P, sched(P, leader)), (T, sched(P, thread))],
            ..Default::default()
        };
        m.apply_kernel(snap(100, 50));
        // T had 60 at its move: the rest of what it does counts in /moved.
        m.apply_event(cgroup_move(T, P, false, 43, 60), &mut forget);
        m.apply_kernel(snap(120, 90));
        assert_eq!((cpu_of(&mut m, "/a"), cpu_of(&mut m, "/moved")), (180, 30));
        // T exits: /moved keeps its 30 (then 35), /a does not get them back.
        m.apply_event(exit(T, P, 0, false), &mut forget);
        m.apply_kernel(snap(130, 95));
        for _ in 0..3 {
            m.apply_kernel(KernelSnapshot {
                tasks: vec![(P, sched(P, 130))],
                ..Default::default()
            });
        }
        assert_eq!((cpu_of(&mut m, "/a"), cpu_of(&mut m, "/moved")), (190, 35));
        assert_eq!(m.by_pid(P)[0].live_threads(), 1);
    }

    /// The CPU time of a workload, by cgroup path (0 when it has none).
    fn cpu_of(m: &mut TaskModel, cgroup: &str) -> u64 {
        m.workload_totals()
            .iter()
            .find(|(w, _)| w.cgroup == cgroup)
            .map_or(0, |(_, t)| t.sched.on_cpu_ns)
    }

    /// A `cgroup_attach_task` report: task `tid` of `tgid` (or its whole process) now in cgroup
    /// `cgroup_id`, having used `on_cpu_ns` by then.
    fn cgroup_move(
        tid: u32,
        tgid: u32,
        whole_process: bool,
        cgroup_id: u64,
        on_cpu_ns: u64,
    ) -> Event {
        Event::CgroupMove(taskscope_common::CgroupMoveEvent {
            header: header(event_kind::CGROUP_MOVE, tid, tgid),
            whole_process: u32::from(whole_process),
            _pad: 0,
            cgroup_id,
            counters: taskscope_common::TaskCounters {
                on_cpu_ns,
                ..Default::default()
            },
        })
    }

    fn zero_syscalls() -> SyscallCounts {
        SyscallCounts {
            count: 1,
            errors: 0,
            total_ns: 1,
        }
    }
}
