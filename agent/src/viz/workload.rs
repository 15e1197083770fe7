//! A workload's page (`/api/v1/workloads/detail`): its run-queue histogram, top syscalls,
//! errors by errno, block IO, and its processes: the live ones and the latest exits, each with
//! its exit status and slow events.

use serde::Serialize;

use crate::{
    collector::WorkloadRead,
    model::{
        errno::errno_name,
        histogram::{self, Bucket},
        view::{block_op_name, device_name, ProcessView},
        workload::Workload,
    },
    syscall_names::syscall_name,
};

/// Syscalls and errnos one page lists: the most frequent.
pub(crate) const TOP: usize = 20;

#[derive(Debug, Serialize)]
pub(crate) struct WorkloadDetail {
    pub(crate) workload: Workload,
    pub(crate) collected_at_unix_ns: u64,
    pub(crate) sched: SchedDetail,
    /// The [`TOP`] syscalls by count (since the agent started).
    pub(crate) syscalls: Vec<SyscallRow>,
    pub(crate) syscalls_total: usize,
    /// The [`TOP`] (syscall, errno) pairs by count.
    pub(crate) errors: Vec<ErrnoRow>,
    pub(crate) block_io: Vec<IoRow>,
    pub(crate) started: u64,
    pub(crate) exited_success: u64,
    pub(crate) exited_failure: u64,
    pub(crate) exited_signal: u64,
    pub(crate) running: u64,
    /// Live processes, busiest first, and the latest exited ones (each with `exit`,
    /// `exit_time_unix_ns`, `slow_syscalls` and `slow_waits`).
    pub(crate) live: Vec<ProcessView>,
    pub(crate) exited: Vec<ProcessView>,
    pub(crate) live_total: usize,
    pub(crate) exited_total: usize,
}

#[derive(Debug, Serialize)]
pub(crate) struct SchedDetail {
    pub(crate) on_cpu_ns: u64,
    pub(crate) runqueue_wait_ns: u64,
    pub(crate) voluntary_switches: u64,
    pub(crate) involuntary_switches: u64,
    /// Run-queue waits by log2 bucket (the non-empty range).
    pub(crate) runqueue: Vec<Bucket>,
    pub(crate) runqueue_p50_ns: Option<u64>,
    pub(crate) runqueue_p99_ns: Option<u64>,
}

#[derive(Debug, Serialize)]
pub(crate) struct SyscallRow {
    pub(crate) nr: u32,
    pub(crate) name: Option<&'static str>,
    pub(crate) count: u64,
    pub(crate) errors: u64,
    pub(crate) total_latency_ns: u64,
    /// Upper bound of the bucket holding the 99th percentile latency (timed syscalls only).
    pub(crate) p99_ns: Option<u64>,
}

#[derive(Debug, Serialize)]
pub(crate) struct ErrnoRow {
    pub(crate) syscall: Option<&'static str>,
    pub(crate) nr: u32,
    pub(crate) errno: u32,
    pub(crate) errno_name: Option<&'static str>,
    pub(crate) count: u64,
}

#[derive(Debug, Serialize)]
pub(crate) struct IoRow {
    pub(crate) device: String,
    pub(crate) op: String,
    pub(crate) bytes: u64,
    pub(crate) requests: u64,
}

impl WorkloadDetail {
    /// The page of `read`.
    pub(crate) fn new(read: WorkloadRead) -> Self {
        let totals = &read.totals;
        let mut syscalls: Vec<SyscallRow> = totals
            .syscalls
            .iter()
            .map(|(&nr, s)| SyscallRow {
                nr,
                name: syscall_name(nr),
                count: s.count,
                errors: s.errors,
                total_latency_ns: s.total_ns,
                p99_ns: histogram::quantile_ns(&s.latency_hist, 0.99),
            })
            .collect();
        let syscalls_total = syscalls.len();
        syscalls.sort_unstable_by(|a, b| b.count.cmp(&a.count).then(a.nr.cmp(&b.nr)));
        syscalls.truncate(TOP);
        let mut errors: Vec<ErrnoRow> = totals
            .errnos
            .iter()
            .map(|(&(nr, errno), &count)| ErrnoRow {
                syscall: syscall_name(nr),
                nr,
                errno,
                errno_name: errno_name(errno),
                count,
            })
            .collect();
        errors.sort_unstable_by(|a, b| {
            b.count
                .cmp(&a.count)
                .then((a.nr, a.errno).cmp(&(b.nr, b.errno)))
        });
        errors.truncate(TOP);
        let block_io = totals
            .io
            .iter()
            .map(|(&(dev, op), io)| IoRow {
                device: device_name(dev),
                op: block_op_name(op),
                bytes: io.bytes,
                requests: io.requests,
            })
            .collect();
        let hist = &totals.sched.runqueue_hist;
        WorkloadDetail {
            sched: SchedDetail {
                on_cpu_ns: totals.sched.on_cpu_ns,
                runqueue_wait_ns: totals.sched.runqueue_wait_ns,
                voluntary_switches: totals.sched.voluntary_switches,
                involuntary_switches: totals.sched.involuntary_switches,
                runqueue: histogram::buckets(hist),
                runqueue_p50_ns: histogram::quantile_ns(hist, 0.5),
                runqueue_p99_ns: histogram::quantile_ns(hist, 0.99),
            },
            syscalls,
            syscalls_total,
            errors,
            block_io,
            started: totals.started,
            exited_success: totals.exited_success,
            exited_failure: totals.exited_failure,
            exited_signal: totals.exited_signal,
            running: totals.running,
            collected_at_unix_ns: read.collected_at_unix_ns,
            live_total: read.live_total,
            exited_total: read.exited_total,
            workload: read.workload,
            live: read.live,
            exited: read.exited,
        }
    }
}
