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
pub struct ProcessView {
    pub pid: u32,
    /// Start time in clock ticks since boot (`/proc/<pid>/stat` field 22); with `pid`, the
    /// process's identity.
    pub start_ticks: u64,
    /// `"<pid>-<start_ticks>"`: unique even when a pid is reused.
    pub key: String,
    pub ppid: u32,
    pub comm: String,
    pub exe: Option<String>,
    pub cmdline: Vec<String>,
    pub cmdline_truncated: bool,
    pub uid: Option<u32>,
    pub cgroup: CgroupView,
    /// Container, pod and systemd unit, as far as the cgroup path tells.
    pub workload: Workload,
    pub start_time_unix_ns: u64,
    pub exit_time_unix_ns: Option<u64>,
    /// `"running"` or `"exited"`.
    pub state: &'static str,
    pub exit: Option<ExitStatus>,
    /// True when the agent saw the process start, so its accumulators cover its whole life;
    /// false for processes that were already running when the agent started.
    pub observed_from_start: bool,
    pub threads: ThreadsView,
    pub sched: SchedView,
    pub syscalls: SyscallsView,
    pub block_io: BlockIoView,
    pub slow_syscalls: Vec<SlowSyscallView>,
    /// Run-queue waits and block requests over their thresholds (the latest 16).
    pub slow_waits: Vec<super::span::SlowWaitView>,
}

#[derive(Debug, Serialize)]
pub struct CgroupView {
    pub id: Option<u64>,
    pub path: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ThreadsView {
    pub live: usize,
    pub started: u64,
    pub exited: u64,
}

#[derive(Debug, Serialize)]
pub struct SchedView {
    pub on_cpu_ns: u64,
    pub runqueue_wait_ns: u64,
    pub voluntary_switches: u64,
    pub involuntary_switches: u64,
    pub runqueue_latency: Vec<Bucket>,
}

#[derive(Debug, Serialize)]
pub struct SyscallsView {
    pub count: u64,
    pub errors: u64,
    pub total_latency_ns: u64,
    pub by_syscall: Vec<SyscallView>,
}

#[derive(Debug, Serialize)]
pub struct SyscallView {
    pub nr: u32,
    pub name: Option<&'static str>,
    pub count: u64,
    pub errors: u64,
    pub total_latency_ns: u64,
    pub errnos: Vec<ErrnoView>,
    pub latency: Vec<Bucket>,
}

#[derive(Debug, Serialize)]
pub struct ErrnoView {
    pub errno: u32,
    pub name: Option<&'static str>,
    pub count: u64,
}

#[derive(Debug, Serialize, Default)]
pub struct BlockIoView {
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub read_requests: u64,
    pub write_requests: u64,
    /// Flushes, discards and other non-data requests.
    pub other_requests: u64,
    pub total_latency_ns: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SlowSyscallView {
    pub tid: u32,
    pub nr: u32,
    pub name: Option<&'static str>,
    pub duration_ns: u64,
    pub ret: i64,
    pub time_unix_ns: u64,
}

impl SlowSyscallView {
    pub fn new(s: &taskscope_common::SlowSyscallEvent, clocks: &Clocks) -> Self {
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
    pub fn new(p: &Process, clocks: &Clocks, running: &HashMap<u32, u64>) -> Self {
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
                latency: buckets(&s.latency_hist),
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
pub struct NodeView {
    pub cpus: Vec<CpuView>,
    pub block_devices: Vec<BlockDeviceView>,
}

#[derive(Debug, Serialize)]
pub struct CpuView {
    pub cpu: usize,
    /// False until the CPU's first context switch after the agent started.
    pub observed: bool,
    /// Busy and idle time since the agent started (the current period closed at the read).
    pub busy_ns: u64,
    pub idle_ns: u64,
    /// Closed idle periods by length: `count` periods, `idle_ns` of idle time in them.
    pub idle_periods: Vec<IdleBucket>,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct IdleBucket {
    pub below_ns: Option<u64>,
    pub count: u64,
    pub idle_ns: u64,
}

#[derive(Debug, Serialize)]
pub struct BlockDeviceView {
    /// `major:minor`.
    pub device: String,
    pub op: String,
    pub requests: u64,
    pub bytes: u64,
    pub total_latency_ns: u64,
    pub latency: Vec<Bucket>,
}

/// `major:minor` of a kernel `dev_t` (`MAJOR << 20 | MINOR`), as in `/proc/diskstats`.
pub fn device_name(dev: u32) -> String {
    format!("{}:{}", dev >> 20, dev & 0xf_ffff)
}

/// Name of a kernel `REQ_OP_*` value.
pub fn block_op_name(op: u32) -> String {
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
    pub fn new(
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
