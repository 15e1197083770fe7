//! JSON views of the task model, as served by `/api/v1/processes` (schema in docs/api.md).

use std::collections::HashMap;

use serde::Serialize;
use taskscope_common::block_op;

use super::{
    errno::errno_name,
    histogram::{below_ns, buckets, Bucket},
    node::CpuTotals,
    workload::Workload,
    ExitStatus, Process,
};
use crate::{clock::Clocks, procfs::NS_PER_TICK, syscall_names::syscall_name};

#[derive(Debug, Serialize)]
pub(crate) struct ProcessView {
    pub(crate) pid: u32,
    /// Start time in clock ticks since boot (`/proc/<pid>/stat` field 22); with `pid`, the
    /// process's identity.
    pub(crate) start_ticks: u64,
    /// `"<pid>-<start_ticks>"`: unique even when a pid is reused.
    pub(crate) key: String,
    pub(crate) ppid: u32,
    pub(crate) comm: String,
    pub(crate) exe: Option<String>,
    pub(crate) cmdline: Vec<String>,
    pub(crate) cmdline_truncated: bool,
    pub(crate) uid: Option<u32>,
    pub(crate) cgroup: CgroupView,
    /// Container, pod and systemd unit, as far as the cgroup path tells.
    pub(crate) workload: Workload,
    pub(crate) start_time_unix_ns: u64,
    pub(crate) exit_time_unix_ns: Option<u64>,
    /// `"running"` or `"exited"`.
    pub(crate) state: &'static str,
    pub(crate) exit: Option<ExitStatus>,
    /// True when the agent saw the process start, so its accumulators cover its whole life;
    /// false for processes that were already running when the agent started.
    pub(crate) observed_from_start: bool,
    pub(crate) threads: ThreadsView,
    pub(crate) sched: SchedView,
    pub(crate) syscalls: SyscallsView,
    pub(crate) block_io: BlockIoView,
    pub(crate) slow_syscalls: Vec<SlowSyscallView>,
    /// Run-queue waits and block requests over their thresholds (the latest 16).
    pub(crate) slow_waits: Vec<super::span::SlowWaitView>,
}

#[derive(Debug, Serialize)]
pub(crate) struct CgroupView {
    pub(crate) id: Option<u64>,
    pub(crate) path: Option<String>,
}

#[derive(Debug, Serialize)]
pub(crate) struct ThreadsView {
    pub(crate) live: usize,
    pub(crate) started: u64,
    pub(crate) exited: u64,
}

#[derive(Debug, Serialize)]
pub(crate) struct SchedView {
    pub(crate) on_cpu_ns: u64,
    pub(crate) runqueue_wait_ns: u64,
    pub(crate) voluntary_switches: u64,
    pub(crate) involuntary_switches: u64,
    pub(crate) runqueue_latency: Vec<Bucket>,
}

#[derive(Debug, Serialize)]
pub(crate) struct SyscallsView {
    pub(crate) count: u64,
    pub(crate) errors: u64,
    pub(crate) total_latency_ns: u64,
    pub(crate) by_syscall: Vec<SyscallView>,
}

#[derive(Debug, Serialize)]
pub(crate) struct SyscallView {
    pub(crate) nr: u32,
    pub(crate) name: Option<&'static str>,
    pub(crate) count: u64,
    pub(crate) errors: u64,
    pub(crate) total_latency_ns: u64,
    pub(crate) errnos: Vec<ErrnoView>,
}

#[derive(Debug, Serialize)]
pub(crate) struct ErrnoView {
    pub(crate) errno: u32,
    pub(crate) name: Option<&'static str>,
    pub(crate) count: u64,
}

#[derive(Debug, Serialize, Default)]
pub(crate) struct BlockIoView {
    pub(crate) read_bytes: u64,
    pub(crate) write_bytes: u64,
    pub(crate) read_requests: u64,
    pub(crate) write_requests: u64,
    /// Flushes, discards and other non-data requests.
    pub(crate) other_requests: u64,
    pub(crate) total_latency_ns: u64,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct SlowSyscallView {
    pub(crate) tid: u32,
    pub(crate) nr: u32,
    pub(crate) name: Option<&'static str>,
    pub(crate) duration_ns: u64,
    pub(crate) ret: i64,
    pub(crate) time_unix_ns: u64,
}

impl SlowSyscallView {
    pub(crate) fn new(s: &taskscope_common::SlowSyscallEvent, clocks: &Clocks) -> Self {
        Self {
            tid: s.header.pid,
            nr: s.nr,
            name: syscall_name(s.nr),
            duration_ns: s.duration_ns,
            ret: s.ret,
            time_unix_ns: clocks.monotonic_to_unix(s.header.ts_ns),
        }
    }
}

impl ProcessView {
    /// `running`: tids on a CPU now, with their switch-in time (see [`Process::sched`]).
    pub(crate) fn new(p: &Process, clocks: &Clocks, running: &HashMap<u32, u64>) -> Self {
        let sched = p.sched(clocks.monotonic_ns, running);
        let mut block_io = BlockIoView::default();
        for (&(_, op), io) in &p.io {
            block_io.total_latency_ns += io.total_latency_ns;
            match op {
                block_op::READ => {
                    block_io.read_bytes += io.bytes;
                    block_io.read_requests += io.requests;
                }
                block_op::WRITE => {
                    block_io.write_bytes += io.bytes;
                    block_io.write_requests += io.requests;
                }
                _ => block_io.other_requests += io.requests,
            }
        }
        let by_syscall: Vec<SyscallView> = p
            .syscalls
            .iter()
            .map(|(&nr, s)| SyscallView {
                nr,
                name: syscall_name(nr),
                count: s.count,
                errors: s.errors,
                total_latency_ns: s.total_ns,
                errnos: p
                    .errnos
                    .range((nr, 0)..=(nr, u32::MAX))
                    .map(|(&(_, errno), &count)| ErrnoView {
                        errno,
                        name: errno_name(errno),
                        count,
                    })
                    .collect(),
            })
            .collect();
        let start_boottime = p.start_boottime_ns.unwrap_or(p.start_ticks * NS_PER_TICK);
        ProcessView {
            pid: p.pid,
            start_ticks: p.start_ticks,
            key: format!("{}-{}", p.pid, p.start_ticks),
            ppid: p.ppid,
            comm: p.comm.clone(),
            exe: p.exe.clone(),
            cmdline: p.cmdline.clone(),
            cmdline_truncated: p.cmdline_truncated,
            uid: p.uid,
            cgroup: CgroupView {
                id: p.cgroup_id,
                path: p.cgroup_path.clone(),
            },
            workload: Workload::from_cgroup(p.cgroup_path.as_deref().unwrap_or("/")),
            start_time_unix_ns: clocks.boottime_to_unix(start_boottime),
            exit_time_unix_ns: p.exit_time_ns.map(|t| clocks.monotonic_to_unix(t)),
            state: if p.is_exited() { "exited" } else { "running" },
            exit: p.exit,
            observed_from_start: p.observed_from_start,
            threads: ThreadsView {
                live: p.live_threads(),
                started: p.threads_started,
                exited: p.threads_exited,
            },
            sched: SchedView {
                on_cpu_ns: sched.on_cpu_ns,
                runqueue_wait_ns: sched.runqueue_wait_ns,
                voluntary_switches: sched.voluntary_switches,
                involuntary_switches: sched.involuntary_switches,
                runqueue_latency: buckets(&sched.runqueue_hist),
            },
            syscalls: SyscallsView {
                count: by_syscall.iter().map(|s| s.count).sum(),
                errors: by_syscall.iter().map(|s| s.errors).sum(),
                total_latency_ns: by_syscall.iter().map(|s| s.total_latency_ns).sum(),
                by_syscall,
            },
            block_io,
            slow_syscalls: p
                .slow_syscalls
                .iter()
                .map(|s| SlowSyscallView::new(s, clocks))
                .collect(),
            slow_waits: p
                .slow_waits
                .iter()
                .map(|w| super::span::SlowWaitView::new(w, clocks))
                .collect(),
        }
    }
}

/// Per-CPU and per-device figures (`/api/v1/node`).
#[derive(Debug, Serialize)]
pub(crate) struct NodeView {
    pub(crate) cpus: Vec<CpuView>,
    pub(crate) block_devices: Vec<BlockDeviceView>,
}

#[derive(Debug, Serialize)]
pub(crate) struct CpuView {
    pub(crate) cpu: usize,
    /// False until the CPU's first context switch after the agent started.
    pub(crate) observed: bool,
    /// Busy and idle time since the agent started (the current period closed at the read).
    pub(crate) busy_ns: u64,
    pub(crate) idle_ns: u64,
    /// Closed idle periods by length: `count` periods, `idle_ns` of idle time in them.
    pub(crate) idle_periods: Vec<IdleBucket>,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub(crate) struct IdleBucket {
    pub(crate) below_ns: Option<u64>,
    pub(crate) count: u64,
    pub(crate) idle_ns: u64,
}

#[derive(Debug, Serialize)]
pub(crate) struct BlockDeviceView {
    /// `major:minor`.
    pub(crate) device: String,
    pub(crate) op: String,
    pub(crate) requests: u64,
    pub(crate) bytes: u64,
    pub(crate) total_latency_ns: u64,
    pub(crate) latency: Vec<Bucket>,
}

/// `major:minor` of a kernel `dev_t` (`MAJOR << 20 | MINOR`), as in `/proc/diskstats`.
pub(crate) fn device_name(dev: u32) -> String {
    format!("{}:{}", dev >> 20, dev & 0xf_ffff)
}

/// Name of a kernel `REQ_OP_*` value.
pub(crate) fn block_op_name(op: u32) -> String {
    match op {
        block_op::READ => "read".into(),
        block_op::WRITE => "write".into(),
        block_op::FLUSH => "flush".into(),
        block_op::DISCARD => "discard".into(),
        5 => "secure_erase".into(),
        9 => "write_zeroes".into(),
        other => format!("op_{other}"),
    }
}

impl NodeView {
    /// `read_at_ns` is the CLOCK_MONOTONIC of the kernel read the figures come from.
    pub(crate) fn new(
        cpus: &[taskscope_common::CpuStats],
        devices: &[(taskscope_common::DeviceIoKey, taskscope_common::DeviceIo)],
        read_at_ns: u64,
    ) -> Self {
        let cpus = cpus
            .iter()
            .enumerate()
            .map(|(cpu, c)| {
                let totals = CpuTotals::of(c, read_at_ns);
                CpuView {
                    cpu,
                    observed: c.busy_since_ns != 0 || c.idle_since_ns != 0,
                    busy_ns: totals.busy_ns,
                    idle_ns: totals.idle_ns,
                    idle_periods: c
                        .idle_periods
                        .iter()
                        .zip(&c.idle_ns_by_bucket)
                        .enumerate()
                        .filter(|(_, (&count, _))| count > 0)
                        .map(|(i, (&count, &idle_ns))| IdleBucket {
                            below_ns: below_ns(i),
                            count,
                            idle_ns,
                        })
                        .collect(),
                }
            })
            .collect();
        let mut block_devices: Vec<BlockDeviceView> = devices
            .iter()
            .map(|(key, io)| BlockDeviceView {
                device: device_name(key.dev),
                op: block_op_name(key.op),
                requests: io.requests,
                bytes: io.bytes,
                total_latency_ns: io.total_latency_ns,
                latency: buckets(&io.latency_hist),
            })
            .collect();
        block_devices.sort_by(|a, b| (&a.device, &a.op).cmp(&(&b.device, &b.op)));
        NodeView {
            cpus,
            block_devices,
        }
    }
}
