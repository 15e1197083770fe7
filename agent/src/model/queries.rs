//! What the collector asks the model: processes, spans, workload totals, selected processes.

use taskscope_common::{SyscallStats, HIST_BUCKETS};

use super::{
    aggregate::WorkloadTotals,
    process::{Process, SchedTotals},
    selector::ProcessSelector,
    snapshot::SelectedProcess,
    span::TaskSpan,
    workload::Workload,
    TaskModel,
};

/// A live process's cumulative counters, small enough to take for every process once a
/// second (the live feed's process table makes rates of them).
#[derive(Debug, Clone)]
pub(crate) struct ProcessCounters {
    pub(crate) pid: u32,
    pub(crate) start_ticks: u64,
    pub(crate) ppid: u32,
    pub(crate) comm: String,
    pub(crate) cgroup: Option<String>,
    pub(crate) threads: usize,
    pub(crate) sched: SchedTotals,
    pub(crate) syscalls: u64,
    pub(crate) syscall_errors: u64,
    pub(crate) io_bytes: u64,
}

impl TaskModel {
    /// Spans made since the last call (for the exporters).
    pub(crate) fn take_new_spans(&mut self) -> Vec<TaskSpan> {
        std::mem::take(&mut self.new_spans)
    }

    /// Recent spans, oldest first.
    pub(crate) fn spans(&self) -> impl DoubleEndedIterator<Item = &TaskSpan> {
        self.spans.iter()
    }

    /// The path of cgroup `id` (process `pid` was in it), if the hierarchy has it.
    pub(crate) fn resolve_cgroup(&mut self, id: u64, pid: u32) -> Option<String> {
        self.host.cgroup_path(id, pid)
    }

    /// Live processes, in no particular order.
    pub(crate) fn live(&self) -> impl Iterator<Item = &Process> {
        self.live.values()
    }

    /// Recently exited processes, oldest first.
    pub(crate) fn exited(&self) -> impl Iterator<Item = &Process> {
        self.exited.iter()
    }

    /// Every process with `pid`: the live one first, then exited ones, newest first.
    pub(crate) fn by_pid(&self, pid: u32) -> Vec<&Process> {
        self.live
            .get(&pid)
            .into_iter()
            .chain(self.exited.iter().rev().filter(|p| p.pid == pid))
            .collect()
    }

    /// Totals per workload (retired processes and live ones), with the running threads' time
    /// up to now; workloads without live processes for `--series-ttl` are dropped.
    pub(crate) fn workload_totals(&mut self) -> Vec<(Workload, WorkloadTotals)> {
        let now = self.host.clocks().monotonic_ns;
        self.workload_totals_at(now)
    }

    /// [`Self::workload_totals`] with the running threads' time up to `now` only.
    pub(crate) fn workload_totals_at(&mut self, now: u64) -> Vec<(Workload, WorkloadTotals)> {
        let ttl_ns = self.config.series_ttl_ns();
        self.workloads.totals(
            self.live.values(),
            self.cgroup_syscalls.by_path(),
            now,
            &self.running,
            ttl_ns,
        )
    }

    /// Live processes any of `selectors` matches, each with its own totals.
    pub(crate) fn selected_processes(&self, selectors: &[ProcessSelector]) -> Vec<SelectedProcess> {
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
                // Its own counts (the latency histograms are kept per workload only).
                totals.syscalls = p
                    .syscalls
                    .iter()
                    .map(|(&nr, c)| {
                        let stats = SyscallStats {
                            count: c.count,
                            errors: c.errors,
                            total_ns: c.total_ns,
                            latency_hist: [0; HIST_BUCKETS],
                        };
                        (nr, stats)
                    })
                    .collect();
                SelectedProcess {
                    workload: Workload::from_cgroup(p.cgroup_path.as_deref().unwrap_or("/")),
                    pid: p.pid,
                    comm: p.comm.clone(),
                    totals,
                }
            })
            .collect()
    }

    /// Every live process's counters, with the running threads' time up to `now`.
    pub(crate) fn process_counters_at(&self, now: u64) -> Vec<ProcessCounters> {
        self.live
            .values()
            .map(|p| ProcessCounters {
                pid: p.pid,
                start_ticks: p.start_ticks,
                ppid: p.ppid,
                comm: p.comm.clone(),
                cgroup: p.cgroup_path.clone(),
                threads: p.live_threads(),
                // For rates: without what its threads did before the agent started.
                sched: p.sched(now, &self.running).without(&p.prior),
                syscalls: p.syscalls.values().map(|c| c.count).sum(),
                syscall_errors: p.syscalls.values().map(|c| c.errors).sum(),
                io_bytes: p.io.values().map(|io| io.bytes).sum(),
            })
            .collect()
    }

    pub(crate) fn live_count(&self) -> usize {
        self.live.len()
    }

    pub(crate) fn exited_count(&self) -> usize {
        self.exited.len()
    }
}
