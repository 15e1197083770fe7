//! Totals per workload (container, else cgroup), for the metrics exporters.
//!
//! A workload's counters must never go down while it exists, although its processes come and
//! go: what a process accumulated is kept in the workload's retired totals when the process is
//! retired, and live processes are added on top at read time. Syscalls are the exception: the
//! kernel keeps them per cgroup, past the processes' lives (`cgroup_syscalls`), and they come to
//! the retired totals only when a cgroup is given up.

use std::collections::{BTreeMap, HashMap};

use taskscope_common::{log2_bucket, ProcessIo, SyscallStats, HIST_BUCKETS};

use super::{histogram, process::PriorSched, workload::Workload, ExitStatus, Process, SchedTotals};

/// Everything exported about one workload.
#[derive(Debug, Clone)]
pub(crate) struct WorkloadTotals {
    pub(crate) sched: SchedTotals,
    /// The part of `sched` from before the agent started (tasks it never saw start): rates
    /// take it off (see [`Self::sched_since_agent`]).
    pub(crate) prior: PriorSched,
    pub(crate) syscalls: BTreeMap<u32, SyscallStats>,
    pub(crate) errnos: BTreeMap<(u32, u32), u64>,
    /// Block IO by (device `dev_t`, operation `REQ_OP_*`).
    pub(crate) io: BTreeMap<(u32, u32), ProcessIo>,
    /// Processes seen starting (fork) while the agent ran.
    pub(crate) started: u64,
    pub(crate) exited_success: u64,
    pub(crate) exited_failure: u64,
    pub(crate) exited_signal: u64,
    /// Live processes (filled in at read time).
    pub(crate) running: u64,
    /// Lifetimes of exited processes seen from their start: log2 buckets of ns, and the sum.
    pub(crate) durations: [u64; HIST_BUCKETS],
    pub(crate) durations_sum_ns: u64,
}

impl Default for WorkloadTotals {
    fn default() -> Self {
        Self {
            sched: SchedTotals::default(),
            prior: PriorSched::default(),
            syscalls: BTreeMap::new(),
            errnos: BTreeMap::new(),
            io: BTreeMap::new(),
            started: 0,
            exited_success: 0,
            exited_failure: 0,
            exited_signal: 0,
            running: 0,
            durations: [0; HIST_BUCKETS],
            durations_sum_ns: 0,
        }
    }
}

/// Adds syscall statistics `from` into `into`.
pub(crate) fn add_syscalls(into: &mut SyscallStats, from: &SyscallStats) {
    into.count += from.count;
    into.errors += from.errors;
    into.total_ns += from.total_ns;
    histogram::add(&mut into.latency_hist, &from.latency_hist);
}

impl WorkloadTotals {
    /// The scheduler figures of what happened while the agent ran: what rates are made of.
    /// (`sched` matches the kernel's lifetime counters of the tasks, as /proc's do: a task
    /// first read long after it started brings its whole past at once.)
    pub(crate) fn sched_since_agent(&self) -> SchedTotals {
        self.sched.without(&self.prior)
    }

    /// Adds scheduler, errno and IO figures (a process's, or another total's).
    fn add_figures(
        &mut self,
        sched: &SchedTotals,
        errnos: &BTreeMap<(u32, u32), u64>,
        io: &BTreeMap<(u32, u32), ProcessIo>,
    ) {
        self.sched.add_totals(sched);
        for (key, count) in errnos {
            *self.errnos.entry(*key).or_default() += count;
        }
        for (op, from) in io {
            let total = self.io.entry(*op).or_default();
            total.bytes += from.bytes;
            total.requests += from.requests;
            total.total_latency_ns += from.total_latency_ns;
            histogram::add(&mut total.latency_hist, &from.latency_hist);
        }
    }

    /// The scheduler, errno and IO figures `process` has accumulated (no counts).
    pub(crate) fn figures_of(
        p: &Process,
        now_ns: u64,
        running: &HashMap<u32, u64>,
    ) -> WorkloadTotals {
        let mut figures = WorkloadTotals::default();
        figures.add_figures(&p.sched(now_ns, running), &p.errnos, &p.io);
        figures
    }

    /// These figures less `base` (what was already credited elsewhere), never below zero.
    pub(crate) fn figures_minus(&self, base: &WorkloadTotals) -> WorkloadTotals {
        let mut out = WorkloadTotals {
            sched: self.sched,
            errnos: self.errnos.clone(),
            io: self.io.clone(),
            ..WorkloadTotals::default()
        };
        out.subtract_figures(base);
        out
    }

    /// Adds what `process` accumulated in its current workload (its running slices included,
    /// via `running`): all of it, or what came after it moved here from another cgroup, less
    /// what its threads in cgroups of their own accumulated there.
    pub(crate) fn add_process(&mut self, p: &Process, now_ns: u64, running: &HashMap<u32, u64>) {
        // In place (no allocation per scrape): the process's figures only grow, so they hold
        // at least the baseline taken from them.
        let mut sched = p.sched(now_ns, running);
        for (_, share) in p.thread_shares(now_ns, running) {
            sched = sched.minus(&share);
        }
        self.add_figures(&sched, &p.errnos, &p.io);
        self.prior.add(&p.prior);
        if let Some(base) = &p.moved_baseline {
            self.subtract_figures(base);
        }
        if p.observed_from_start {
            self.started += 1;
        }
        match p.exit {
            None => self.running += 1,
            Some(ExitStatus::Exited { code: 0 }) => self.exited_success += 1,
            Some(ExitStatus::Exited { .. }) => self.exited_failure += 1,
            Some(ExitStatus::Signaled { .. }) => self.exited_signal += 1,
            // Its exit was lost (counted in the agent's losses): no outcome to report.
            Some(ExitStatus::Unknown) => {}
        }
    }

    /// Takes `base`'s scheduler, errno and IO figures off these, never below zero.
    fn subtract_figures(&mut self, base: &WorkloadTotals) {
        let sub = |a: &mut u64, b: u64| *a = a.saturating_sub(b);
        self.sched = self.sched.minus(&base.sched);
        for (key, b) in &base.errnos {
            if let Some(t) = self.errnos.get_mut(key) {
                sub(t, *b);
            }
        }
        for (key, b) in &base.io {
            if let Some(t) = self.io.get_mut(key) {
                sub(&mut t.bytes, b.bytes);
                sub(&mut t.requests, b.requests);
                sub(&mut t.total_latency_ns, b.total_latency_ns);
                t.latency_hist = histogram::delta(&t.latency_hist, Some(&b.latency_hist));
            }
        }
    }

    /// Adds syscall figures by syscall number.
    fn add_syscall_figures(&mut self, syscalls: &BTreeMap<u32, SyscallStats>) {
        for (nr, stats) in syscalls {
            match self.syscalls.get_mut(nr) {
                Some(total) => add_syscalls(total, stats),
                None => {
                    self.syscalls.insert(*nr, *stats);
                }
            }
        }
    }

    /// Adds another total (retired processes into live ones).
    fn merge(&mut self, from: &WorkloadTotals) {
        self.add_figures(&from.sched, &from.errnos, &from.io);
        self.prior.add(&from.prior);
        self.add_syscall_figures(&from.syscalls);
        self.started += from.started;
        self.exited_success += from.exited_success;
        self.exited_failure += from.exited_failure;
        self.exited_signal += from.exited_signal;
        histogram::add(&mut self.durations, &from.durations);
        self.durations_sum_ns += from.durations_sum_ns;
    }
}

/// Retired totals per workload, with when each last had live processes (CLOCK_MONOTONIC).
#[derive(Debug, Default)]
pub(crate) struct WorkloadLedger {
    retired: HashMap<String, (Workload, WorkloadTotals, u64)>,
}

impl WorkloadLedger {
    /// Keeps what a retired process accumulated. `boot_minus_mono_ns` converts its exit time
    /// (CLOCK_MONOTONIC) to the clock of its start time (CLOCK_BOOTTIME).
    pub(crate) fn retire(&mut self, p: &Process, now_ns: u64, boot_minus_mono_ns: u64) {
        let workload = Workload::from_cgroup(p.cgroup_path.as_deref().unwrap_or("/"));
        let entry = self
            .retired
            .entry(workload.key().to_string())
            .or_insert_with(|| (workload, WorkloadTotals::default(), now_ns));
        entry.1.add_process(p, now_ns, &HashMap::new());
        entry.2 = now_ns;
        if let (true, Some(start), Some(exit)) =
            (p.observed_from_start, p.start_boottime_ns, p.exit_time_ns)
        {
            let lifetime = (exit + boot_minus_mono_ns).saturating_sub(start);
            if let Some(slot) = entry.1.durations.get_mut(log2_bucket(lifetime)) {
                *slot += 1;
            }
            entry.1.durations_sum_ns += lifetime;
        }
    }

    /// Credits a workload with the scheduler figures a thread accumulated there.
    pub(crate) fn credit_thread(&mut self, cgroup_path: &str, sched: &SchedTotals, now_ns: u64) {
        let figures = WorkloadTotals {
            sched: *sched,
            ..WorkloadTotals::default()
        };
        self.credit(cgroup_path, &figures, now_ns);
    }

    /// Credits a workload with figures a process accumulated there before it moved away.
    pub(crate) fn credit(&mut self, cgroup_path: &str, figures: &WorkloadTotals, now_ns: u64) {
        let workload = Workload::from_cgroup(cgroup_path);
        let entry = self
            .retired
            .entry(workload.key().to_string())
            .or_insert_with(|| (workload, WorkloadTotals::default(), now_ns));
        entry
            .1
            .add_figures(&figures.sched, &figures.errnos, &figures.io);
        entry.1.prior.add(&figures.prior);
        entry.2 = now_ns;
    }

    /// Keeps the final syscall figures of a cgroup given up, so that its workload's counters do
    /// not go down when the cgroup's path lives on under a new id. Kept only for a workload
    /// still kept (`live`, or already with retired totals), and without making it younger: a
    /// workload gone for the retention stays gone.
    pub(crate) fn credit_syscalls(
        &mut self,
        cgroup_path: &str,
        syscalls: &BTreeMap<u32, SyscallStats>,
        live: bool,
        now_ns: u64,
    ) {
        let workload = Workload::from_cgroup(cgroup_path);
        let key = workload.key().to_string();
        let entry = match self.retired.get_mut(&key) {
            Some(entry) => entry,
            None if live => {
                self.retired
                    .entry(key)
                    .or_insert((workload, WorkloadTotals::default(), now_ns))
            }
            None => return,
        };
        entry.1.add_syscall_figures(syscalls);
    }

    /// Every workload's totals: retired ones plus the live processes, with the syscall
    /// figures of their cgroups (path, syscall number -> figures). Workloads with no live
    /// process that have not had one for `ttl_ns` are forgotten first.
    pub(crate) fn totals<'a, 'c>(
        &mut self,
        live: impl Iterator<Item = &'a Process>,
        cgroup_syscalls: impl Iterator<Item = (&'c str, &'c BTreeMap<u32, SyscallStats>)>,
        now_ns: u64,
        running: &HashMap<u32, u64>,
        ttl_ns: u64,
    ) -> Vec<(Workload, WorkloadTotals)> {
        let mut out: HashMap<String, (Workload, WorkloadTotals)> = HashMap::new();
        fn entry<'o>(
            out: &'o mut HashMap<String, (Workload, WorkloadTotals)>,
            path: &str,
        ) -> &'o mut WorkloadTotals {
            let workload = Workload::from_cgroup(path);
            &mut out
                .entry(workload.key().to_string())
                .or_insert_with(|| (workload, WorkloadTotals::default()))
                .1
        }
        for p in live {
            entry(&mut out, p.cgroup_path.as_deref().unwrap_or("/"))
                .add_process(p, now_ns, running);
            for (path, share) in p.thread_shares(now_ns, running) {
                entry(&mut out, path).sched.add_totals(&share);
            }
        }
        for (key, (_, _, seen)) in self.retired.iter_mut() {
            if out.contains_key(key) {
                *seen = now_ns;
            }
        }
        self.retired
            .retain(|_, (_, _, seen)| now_ns.saturating_sub(*seen) < ttl_ns);
        for (key, (workload, retired, _)) in &self.retired {
            out.entry(key.clone())
                .or_insert_with(|| (workload.clone(), WorkloadTotals::default()))
                .1
                .merge(retired);
        }
        // Only into workloads still kept: a cgroup's entries are dropped a poll after its
        // workload is, and must not bring it back meanwhile.
        for (path, syscalls) in cgroup_syscalls {
            let Some((_, totals)) = out.get_mut(Workload::from_cgroup(path).key()) else {
                continue;
            };
            totals.add_syscall_figures(syscalls);
        }
        out.into_values().collect()
    }
}
