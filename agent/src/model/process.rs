//! A process (thread group) as the model keeps it: its threads' kernel counters rolled up,
//! what /proc and the events said about it, and the scheduler totals type.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    time::Instant,
};

use taskscope_common::{ProcessIo, SlowSyscallEvent, SyscallCounts, TaskSched, HIST_BUCKETS};

use super::{aggregate::WorkloadTotals, histogram, intake::Forget, span::SpanIds, ExitStatus};

/// Scheduler totals (the sum over threads).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SchedTotals {
    pub(crate) on_cpu_ns: u64,
    pub(crate) runqueue_wait_ns: u64,
    pub(crate) voluntary_switches: u64,
    pub(crate) involuntary_switches: u64,
    pub(crate) runqueue_hist: [u64; HIST_BUCKETS],
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

/// The kernel's lifetime counters of tasks that ran before the agent started, as the agent
/// first read them: in a process's figures (which match /proc's) but not in what happened
/// while the agent ran, which is what rates are made of. A task the agent never saw start
/// would otherwise bring its whole past to the interval in which it is first read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct PriorSched {
    pub(crate) on_cpu_ns: u64,
    pub(crate) runqueue_wait_ns: u64,
    pub(crate) voluntary_switches: u64,
    pub(crate) involuntary_switches: u64,
}

impl PriorSched {
    /// A task's counters as first read.
    pub(crate) fn of(task: &TaskSched) -> Self {
        Self {
            on_cpu_ns: task.on_cpu_ns,
            runqueue_wait_ns: task.runqueue_wait_ns,
            voluntary_switches: task.voluntary_switches,
            involuntary_switches: task.involuntary_switches,
        }
    }

    /// Adds another.
    pub(crate) fn add(&mut self, other: &PriorSched) {
        self.on_cpu_ns += other.on_cpu_ns;
        self.runqueue_wait_ns += other.runqueue_wait_ns;
        self.voluntary_switches += other.voluntary_switches;
        self.involuntary_switches += other.involuntary_switches;
    }
}

impl SchedTotals {
    /// These totals without `prior`, never below zero (the run-queue histogram is the agent's
    /// own: no part of it is from before).
    pub(crate) fn without(&self, prior: &PriorSched) -> SchedTotals {
        self.minus(&SchedTotals {
            on_cpu_ns: prior.on_cpu_ns,
            runqueue_wait_ns: prior.runqueue_wait_ns,
            voluntary_switches: prior.voluntary_switches,
            involuntary_switches: prior.involuntary_switches,
            ..SchedTotals::default()
        })
    }

    /// Adds another total.
    pub(crate) fn add_totals(&mut self, other: &SchedTotals) {
        self.on_cpu_ns += other.on_cpu_ns;
        self.runqueue_wait_ns += other.runqueue_wait_ns;
        self.voluntary_switches += other.voluntary_switches;
        self.involuntary_switches += other.involuntary_switches;
        histogram::add(&mut self.runqueue_hist, &other.runqueue_hist);
    }

    /// These totals less `base`, never below zero.
    pub(crate) fn minus(&self, base: &SchedTotals) -> SchedTotals {
        SchedTotals {
            on_cpu_ns: self.on_cpu_ns.saturating_sub(base.on_cpu_ns),
            runqueue_wait_ns: self.runqueue_wait_ns.saturating_sub(base.runqueue_wait_ns),
            voluntary_switches: self
                .voluntary_switches
                .saturating_sub(base.voluntary_switches),
            involuntary_switches: self
                .involuntary_switches
                .saturating_sub(base.involuntary_switches),
            runqueue_hist: histogram::delta(&self.runqueue_hist, Some(&base.runqueue_hist)),
        }
    }

    /// Adds one thread's figures.
    pub(crate) fn add(&mut self, task: &TaskSched) {
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
pub(crate) enum SlowWait {
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
pub(super) struct Thread {
    /// Latest accumulators read from the kernel.
    pub(super) sched: Option<TaskSched>,
    /// Set when its exit was seen: the number of polls done by then.
    pub(super) exited_after_poll: Option<u64>,
    /// Set while it is in a cgroup other than its process's (a threaded cgroup it was moved
    /// to by `cgroup.threads`, or created in).
    pub(super) cgroup: Option<Box<ThreadCgroup>>,
    /// The agent saw it start (a fork or clone event): nothing it did is from before.
    pub(super) born_seen: bool,
}

impl Thread {
    /// A thread whose start the agent saw.
    pub(super) fn born() -> Self {
        Self {
            born_seen: true,
            ..Self::default()
        }
    }
}

/// A thread's own cgroup, and its figures when it went there: that workload counts what came
/// after; its process's workload counts the rest.
#[derive(Debug, Clone)]
pub(super) struct ThreadCgroup {
    pub(super) path: String,
    pub(super) base: SchedTotals,
}

/// A process (thread group) and everything known about it.
#[derive(Debug, Clone)]
pub(crate) struct Process {
    pub(crate) pid: u32,
    /// Start time in clock ticks since boot, as in `/proc/<pid>/stat`: with `pid`, the key.
    pub(crate) start_ticks: u64,
    /// Exact start (ns since boot) when the fork was seen.
    pub(crate) start_boottime_ns: Option<u64>,
    pub(crate) ppid: u32,
    pub(crate) comm: String,
    pub(crate) exe: Option<String>,
    pub(crate) cmdline: Vec<String>,
    pub(crate) cmdline_truncated: bool,
    pub(crate) uid: Option<u32>,
    pub(crate) cgroup_id: Option<u64>,
    pub(crate) cgroup_path: Option<String>,
    /// The agent saw it start, so its accumulators cover its whole life.
    pub(crate) observed_from_start: bool,
    pub(crate) exit: Option<ExitStatus>,
    /// CLOCK_MONOTONIC of the exit event.
    pub(crate) exit_time_ns: Option<u64>,
    pub(super) exit_seen_after_poll: Option<u64>,
    pub(super) threads: BTreeMap<u32, Thread>,
    pub(crate) threads_started: u64,
    pub(crate) threads_exited: u64,
    pub(super) exited_sched: SchedTotals,
    /// Per syscall number: its own counts (the latency histograms are kept per workload).
    pub(crate) syscalls: BTreeMap<u32, SyscallCounts>,
    pub(crate) errnos: BTreeMap<(u32, u32), u64>,
    /// Block IO by (device `dev_t`, operation `REQ_OP_*`).
    pub(crate) io: BTreeMap<(u32, u32), ProcessIo>,
    pub(crate) slow_syscalls: VecDeque<SlowSyscallEvent>,
    /// Run-queue waits and block requests over their thresholds (the latest few).
    pub(crate) slow_waits: VecDeque<SlowWait>,
    pub(super) exited_at: Option<Instant>,
    /// Gone from /proc at the last sweep, with no exit event yet.
    pub(super) missing_at_sweep: bool,
    /// Its figures when it last moved to another cgroup: they belong to the workloads it
    /// left, its current workload counts only what came after.
    pub(crate) moved_baseline: Option<Box<WorkloadTotals>>,
    /// Its threads' counters from before the agent started (since its last move: the moved
    /// baseline holds what came before).
    pub(crate) prior: PriorSched,
    /// Its place in a trace, when its fork was seen.
    pub(crate) span_ids: Option<SpanIds>,
    /// CLOCK_MONOTONIC of its latest exec.
    pub(crate) exec_time_ns: Option<u64>,
    /// CLOCK_MONOTONIC of the last time one of its threads left a CPU.
    pub(crate) last_switch_out_ns: u64,
    /// Already logged as a slow task.
    pub(super) slow_logged: bool,
}

impl Process {
    pub(super) fn new(pid: u32, start_ticks: u64) -> Self {
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
            prior: PriorSched::default(),
            moved_baseline: None,
            span_ids: None,
            exec_time_ns: None,
            last_switch_out_ns: 0,
        }
    }

    /// Scheduler totals over all threads. `running` maps the tids on a CPU right now to when
    /// they were switched in: the slice they are in is added to their on-CPU time (the kernel's
    /// counters were copied at their last switch-out).
    pub(crate) fn sched(&self, now_ns: u64, running: &HashMap<u32, u64>) -> SchedTotals {
        let mut totals = self.exited_sched;
        for (&tid, thread) in &self.threads {
            totals.add_totals(&Self::thread_sched(tid, thread, now_ns, running));
        }
        totals
    }

    /// One thread's scheduler figures, with the slice it is running in (see [`Self::sched`]).
    pub(super) fn thread_sched(
        tid: u32,
        thread: &Thread,
        now_ns: u64,
        running: &HashMap<u32, u64>,
    ) -> SchedTotals {
        let mut totals = SchedTotals::default();
        if let Some(sched) = &thread.sched {
            totals.add(sched);
        }
        if let Some(since) = running.get(&tid) {
            totals.on_cpu_ns += now_ns.saturating_sub(*since);
        }
        totals
    }

    /// What each thread in a cgroup other than the process's accumulated there: (its cgroup
    /// path, figures). The process's own workload counts the rest.
    pub(crate) fn thread_shares(
        &self,
        now_ns: u64,
        running: &HashMap<u32, u64>,
    ) -> Vec<(&str, SchedTotals)> {
        self.threads
            .iter()
            .filter_map(|(&tid, thread)| {
                let own = thread.cgroup.as_ref()?;
                let now = Self::thread_sched(tid, thread, now_ns, running);
                Some((own.path.as_str(), now.minus(&own.base)))
            })
            .collect()
    }

    /// Ends a thread's stay in a cgroup of its own: what it accumulated there (up to `at`, its
    /// figures at the move; else as last read) is from now on credited elsewhere, so it joins
    /// the process's moved baseline. Returns (that cgroup, those figures) for its workload.
    pub(super) fn leave_thread_cgroup(
        &mut self,
        tid: u32,
        at: Option<SchedTotals>,
    ) -> Option<(String, SchedTotals)> {
        let thread = self.threads.get_mut(&tid)?;
        let own = thread.cgroup.take()?;
        let at = at.unwrap_or_else(|| Self::thread_sched(tid, thread, 0, &HashMap::new()));
        let share = at.minus(&own.base);
        self.moved_baseline
            .get_or_insert_with(Box::default)
            .sched
            .add_totals(&share);
        Some((own.path, share))
    }

    /// Threads not yet exited.
    pub(crate) fn live_threads(&self) -> usize {
        self.threads
            .values()
            .filter(|t| t.exited_after_poll.is_none())
            .count()
    }

    pub(crate) fn is_exited(&self) -> bool {
        self.exit.is_some()
    }

    /// Moves a thread's final values into the exited totals. A thread that was in a cgroup of
    /// its own leaves it first: (that cgroup, what it accumulated there) to credit.
    pub(super) fn fold_thread(
        &mut self,
        tid: u32,
        forget: &mut Forget,
    ) -> Option<(String, SchedTotals)> {
        let left = self.leave_thread_cgroup(tid, None);
        if let Some(thread) = self.threads.remove(&tid) {
            if let Some(sched) = &thread.sched {
                self.exited_sched.add(sched);
            }
            self.threads_exited += 1;
            forget.tids.push((tid, self.pid));
        }
        left
    }
}
