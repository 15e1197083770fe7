//! Types shared by the kernel programs (`taskscope-ebpf`) and the userspace agent.
//!
//! Everything here is `#[repr(C)]` plain data: the kernel writes it into maps and the ring buffer,
//! the agent reads the same bytes back. Field order is chosen so that no implicit padding exists
//! (explicit `_pad` fields instead), which keeps the layouts identical on both sides and lets the
//! verifier see fully initialised ring-buffer entries.
#![no_std]

// The userspace halves (decoders, map adapters) need the standard library; the kernel side
// never enables `user`.
#[cfg(feature = "user")]
extern crate std;

pub mod contract;

/// Ring-buffer records decoded into typed events (userspace only).
#[cfg(feature = "user")]
pub mod decode;

/// Number of log2 buckets in every latency histogram.
///
/// Bucket `i` counts values `v` (nanoseconds) whose bit length is `i`, i.e. `2^(i-1) <= v < 2^i`
/// (bucket 0 holds `v == 0`). The last bucket also holds everything larger: 2^35 ns is ~34 s.
pub const HIST_BUCKETS: usize = 36;

/// Length of the kernel's `task_struct.comm`.
pub const COMM_LEN: usize = 16;
/// Bytes of the exec'd file name carried in an [`ExecEvent`].
pub const FILENAME_LEN: usize = 256;
/// Bytes of the argument vector (NUL-separated, as in `/proc/<pid>/cmdline`) in an [`ExecEvent`].
pub const ARGS_LEN: usize = 512;

/// Index of the log2 bucket for `value` (see [`HIST_BUCKETS`]). Branch-free enough for BPF.
#[inline(always)]
pub fn log2_bucket(value: u64) -> usize {
    let bits = (64 - value.leading_zeros()) as usize;
    if bits >= HIST_BUCKETS {
        HIST_BUCKETS - 1
    } else {
        bits
    }
}

/// Upper bound (exclusive, nanoseconds) of histogram bucket `index`; `u64::MAX` for the last.
pub fn bucket_upper_bound_ns(index: usize) -> u64 {
    if index + 1 >= HIST_BUCKETS {
        u64::MAX
    } else {
        1u64 << index
    }
}

/// Scheduler figures of one task (thread), keyed by tid in the `TASKS` map.
///
/// The totals are the kernel's own counters (the ones `/proc/<pid>/schedstat` and `status`
/// print), copied from the `task_struct` at each switch-out of the task and at its exit. Copying
/// them rather than adding up intervals between events means a context switch the programs do
/// not see cannot make them drift.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskSched {
    /// Thread group (process) id of the task.
    pub tgid: u32,
    pub _pad: u32,
    /// `se.sum_exec_runtime`: time on a CPU, as of the last switch-out.
    pub on_cpu_ns: u64,
    /// `sched_info.run_delay`: time runnable but waiting for a CPU, completed waits.
    pub runqueue_wait_ns: u64,
    /// `nvcsw`: switches away while blocking.
    pub voluntary_switches: u64,
    /// `nivcsw`: switches away while still runnable (preempted).
    pub involuntary_switches: u64,
    /// When the task became runnable (woken or preempted); 0 when it is not waiting.
    pub queued_since_ns: u64,
    /// When it last left a CPU (`bpf_ktime_get_ns`): after its exit, when it really ended.
    pub last_switch_out_ns: u64,
    /// log2 histogram of run-queue waits (nanoseconds), measured from wakeup or preemption
    /// to switch-in.
    pub runqueue_hist: [u64; HIST_BUCKETS],
}

/// Per-CPU busy/idle accounting, one entry of the per-CPU array `CPUS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuStats {
    /// Busy time in closed busy periods.
    pub busy_ns: u64,
    /// Idle time in closed idle periods.
    pub idle_ns: u64,
    /// Start of the current busy period, 0 when idle or not yet seen.
    pub busy_since_ns: u64,
    /// Start of the current idle period, 0 when busy or not yet seen.
    pub idle_since_ns: u64,
    /// Number of closed idle periods per log2 length bucket.
    pub idle_periods: [u64; HIST_BUCKETS],
    /// Idle time (ns) spent in closed idle periods per log2 length bucket: what CPU idle
    /// fragmentation is computed from.
    pub idle_ns_by_bucket: [u64; HIST_BUCKETS],
    /// The task running on this CPU since the last switch (0: idle, or the agent itself).
    pub current_pid: u32,
    pub _pad: u32,
    /// When it was switched in.
    pub current_since_ns: u64,
}

/// Syscall numbers from this one on are not syscalls (x86_64 and arm64 number theirs below
/// 512): they are all counted under [`SYSCALL_NR_INVALID`], so calling made-up numbers costs
/// one entry, not one per number.
pub const SYSCALL_NR_LIMIT: u32 = 512;

/// The `SYSCALLS` entry of a process's calls with a number that is no syscall (ENOSYS).
pub const SYSCALL_NR_INVALID: u32 = u32::MAX - 1;

/// The `SYSCALLS` entry of a process's calls whose own entry would pass the per-process cap
/// (`MAX_SYSCALL_ENTRIES_PER_PROCESS`).
pub const SYSCALL_NR_OTHER: u32 = u32::MAX;

/// Key of the `SYSCALLS` map: one process and one syscall number.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SyscallKey {
    pub tgid: u32,
    pub nr: u32,
}

/// Counts of one (process, syscall): small, so that every process of a busy node has its own.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyscallCounts {
    pub count: u64,
    pub errors: u64,
    pub total_ns: u64,
}

/// Key of the `WORKLOAD_SYSCALLS` map: one cgroup (v2 id, the caller's at the syscall) and one
/// syscall number.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkloadSyscallKey {
    pub cgroup_id: u64,
    pub nr: u32,
    pub _pad: u32,
}

/// Accumulators for one (cgroup, syscall), with the latency histogram.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyscallStats {
    pub count: u64,
    pub errors: u64,
    pub total_ns: u64,
    pub latency_hist: [u64; HIST_BUCKETS],
}

/// Key of the `SYSCALL_ERRNOS` map: failures of one syscall of one process with one errno.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ErrnoKey {
    pub tgid: u32,
    pub nr: u32,
    pub errno: u32,
    pub _pad: u32,
}

/// Syscall entry state of one task (`SYSCALL_STARTS`, task-local storage).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyscallStart {
    pub ts_ns: u64,
    pub nr: u64,
}

/// Block request operation, as the kernel's `REQ_OP_*` (low 8 bits of `cmd_flags`).
pub mod block_op {
    pub const READ: u32 = 0;
    pub const WRITE: u32 = 1;
    pub const FLUSH: u32 = 2;
    pub const DISCARD: u32 = 3;
    /// `REQ_OP_DRV_IN`; with `REQ_OP_DRV_OUT` (35) the driver-private (passthrough) commands.
    pub const DRV_IN: u32 = 34;
}

/// An in-flight block request (`IO_STARTS`, keyed by the `struct request` address).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoStart {
    pub ts_ns: u64,
    pub tgid: u32,
    pub dev: u32,
    pub op: u32,
    /// The request's size when it started (a driver may complete it in parts).
    pub bytes: u32,
}

/// Key of `PROCESS_IO`: block IO issued by one process, per device and operation.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProcessIoKey {
    pub tgid: u32,
    pub op: u32,
    /// Kernel `dev_t` (`MAJOR << 20 | MINOR`) of the device or partition.
    pub dev: u32,
    pub _pad: u32,
}

/// Block IO accumulators of one process and operation: bytes and requests counted when the
/// request is issued, latency (issue to completion) when it completes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessIo {
    pub bytes: u64,
    pub requests: u64,
    /// Sum of completion latencies of this process's requests.
    pub total_latency_ns: u64,
    /// Completion latencies, log2 buckets of ns (see [`log2_bucket`]).
    pub latency_hist: [u64; HIST_BUCKETS],
}

impl Default for ProcessIo {
    fn default() -> Self {
        Self {
            bytes: 0,
            requests: 0,
            total_latency_ns: 0,
            latency_hist: [0; HIST_BUCKETS],
        }
    }
}

/// Key of `DEVICE_IO`: one device (kernel `dev_t`, `MAJOR << 20 | MINOR`) and operation.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceIoKey {
    pub dev: u32,
    pub op: u32,
}

/// Latency histogram of one device and operation.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceIo {
    pub requests: u64,
    pub bytes: u64,
    pub total_latency_ns: u64,
    pub latency_hist: [u64; HIST_BUCKETS],
}

/// Custom metrics (`[[custom_metrics]]`): application points the operator names, counted or
/// timed by one uprobe program. Each attachment carries its meaning in the BPF cookie.
pub mod custom {
    /// Definitions at most: the width of a thread's start table entry ([`CustomStarts`]).
    pub const MAX_METRICS: u32 = 16;
    /// Cookie bit: the probe ends a latency (else it starts one, or counts).
    pub const COOKIE_END: u64 = 1;
    /// Cookie bit: the metric is a latency (its start records a time, its end measures).
    pub const COOKIE_LATENCY: u64 = 2;
    /// The metric's index sits above the flag bits.
    pub const COOKIE_METRIC_SHIFT: u32 = 8;

    /// The cookie of an attachment of metric `index` (below [`MAX_METRICS`]).
    pub const fn cookie(index: u32, latency: bool, end: bool) -> u64 {
        ((index as u64) << COOKIE_METRIC_SHIFT)
            | if latency { COOKIE_LATENCY } else { 0 }
            | if end { COOKIE_END } else { 0 }
    }
}

/// Key of `CUSTOM_STATS`: one custom metric in one process, in the cgroup it was in at the
/// hit (cgroup v2 id: the workload is the kernel's answer, not a later lookup).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CustomKey {
    pub tgid: u32,
    /// Index of the definition (the cookie's metric).
    pub metric: u32,
    pub cgroup_id: u64,
}

/// One custom metric's occurrences in one process: a count, and for a latency the sum and
/// log2 histogram of the start-to-end times.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CustomStat {
    pub count: u64,
    pub total_ns: u64,
    pub hist: [u64; HIST_BUCKETS],
}

impl Default for CustomStat {
    fn default() -> Self {
        Self {
            count: 0,
            total_ns: 0,
            hist: [0; HIST_BUCKETS],
        }
    }
}

/// `CUSTOM_STARTS`, per thread: when each latency metric last started on it (0: not
/// started). Deleted when the thread exits, or when its last start ends.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CustomStarts {
    pub ts_ns: [u64; custom::MAX_METRICS as usize],
}

/// Where data can be lost in the kernel; index into the per-CPU `LOSSES` array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loss {
    /// A ring-buffer reservation failed (buffer full).
    RingBufFull = 0,
    /// `TASKS` was full: a task's scheduling was not accounted.
    TasksMapFull = 1,
    /// `SYSCALLS` was full.
    SyscallsMapFull = 2,
    /// `SYSCALL_ERRNOS` was full.
    ErrnosMapFull = 3,
    /// A task's syscall start could not be stored (`SYSCALL_STARTS`, task-local storage: the
    /// kernel could not allocate it): that syscall is counted untimed.
    SyscallStartsMapFull = 4,
    /// A block request completed whose start `IO_STARTS` did not keep (evicted when the map
    /// was full, or not inserted): its latency was not measured. Counted at completion.
    IoStartsMapFull = 5,
    /// `PROCESS_IO` was full.
    ProcessIoMapFull = 6,
    /// `DEVICE_IO` was full.
    DeviceIoMapFull = 7,
    /// A syscall (or a failure's errno) of a process at its cap of entries: counted under
    /// [`SYSCALL_NR_OTHER`] (the errno is not kept).
    SyscallsProcessCap = 8,
    /// `WORKLOAD_SYSCALLS` was full: a syscall is missing from its workload's figures.
    WorkloadSyscallsMapFull = 9,
    /// `CUSTOM_STATS` was full: a custom metric's occurrence was not counted.
    CustomStatsMapFull = 10,
    /// `CUSTOM_STARTS` was full: a custom latency's start was not kept (its end is then not
    /// measured).
    CustomStartsMapFull = 11,
    /// A custom latency ended on a thread where it had not started (the start came before
    /// the probe was attached, or was not kept): not measured.
    CustomEndWithoutStart = 12,
}

/// Number of [`Loss`] variants (size of the `LOSSES` array).
pub const LOSS_KINDS: u32 = 13;

impl Loss {
    /// Every variant, in index order.
    pub const ALL: [Loss; LOSS_KINDS as usize] = [
        Loss::RingBufFull,
        Loss::TasksMapFull,
        Loss::SyscallsMapFull,
        Loss::ErrnosMapFull,
        Loss::SyscallStartsMapFull,
        Loss::IoStartsMapFull,
        Loss::ProcessIoMapFull,
        Loss::DeviceIoMapFull,
        Loss::SyscallsProcessCap,
        Loss::WorkloadSyscallsMapFull,
        Loss::CustomStatsMapFull,
        Loss::CustomStartsMapFull,
        Loss::CustomEndWithoutStart,
    ];

    /// Stable name used in logs, the API and metrics (`source`, `reason`).
    pub fn name(self) -> (&'static str, &'static str) {
        match self {
            Loss::RingBufFull => ("ringbuf", "buffer_full"),
            Loss::TasksMapFull => ("tasks_map", "map_full"),
            Loss::SyscallsMapFull => ("syscalls_map", "map_full"),
            Loss::ErrnosMapFull => ("syscall_errnos_map", "map_full"),
            Loss::SyscallStartsMapFull => ("syscall_starts_map", "map_full"),
            Loss::IoStartsMapFull => ("io_starts_map", "map_full"),
            Loss::ProcessIoMapFull => ("process_io_map", "map_full"),
            Loss::DeviceIoMapFull => ("device_io_map", "map_full"),
            Loss::SyscallsProcessCap => ("syscalls_map", "process_cap"),
            Loss::WorkloadSyscallsMapFull => ("workload_syscalls_map", "map_full"),
            Loss::CustomStatsMapFull => ("custom_stats_map", "map_full"),
            Loss::CustomStartsMapFull => ("custom_starts_map", "map_full"),
            Loss::CustomEndWithoutStart => ("custom_starts_map", "end_without_start"),
        }
    }
}

/// Stable numeric type of a ring-buffer event (first field of [`EventHeader`]).
pub mod event_kind {
    pub const FORK: u32 = 1;
    pub const EXEC: u32 = 2;
    pub const EXIT: u32 = 3;
    pub const SLOW_SYSCALL: u32 = 4;
    pub const SLOW_RUNQUEUE_WAIT: u32 = 5;
    pub const SLOW_IO: u32 = 6;
    pub const SWITCH: u32 = 7;
    pub const CGROUP_MOVE: u32 = 8;

    /// Every kind, in numeric order.
    pub const ALL: [u32; 8] = [
        FORK,
        EXEC,
        EXIT,
        SLOW_SYSCALL,
        SLOW_RUNQUEUE_WAIT,
        SLOW_IO,
        SWITCH,
        CGROUP_MOVE,
    ];

    /// Stable name of a kind, as the agent labels it (`kind` of
    /// `taskscope_events_received_total`); `None` for a kind this version does not know.
    pub fn name(kind: u32) -> Option<&'static str> {
        Some(match kind {
            FORK => "fork",
            EXEC => "exec",
            EXIT => "exit",
            SLOW_SYSCALL => "slow_syscall",
            SLOW_RUNQUEUE_WAIT => "slow_runqueue_wait",
            SLOW_IO => "slow_block_io",
            SWITCH => "switch",
            CGROUP_MOVE => "cgroup_move",
            _ => return None,
        })
    }
}

/// Common header of every ring-buffer event.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    /// One of [`event_kind`].
    pub kind: u32,
    /// CPU the event was seen on.
    pub cpu: u32,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) of the event.
    pub ts_ns: u64,
    /// Task (tid) the event is about.
    pub pid: u32,
    /// Its process (tgid).
    pub tgid: u32,
}

/// A task was created (`sched_process_fork`): a new process, or a thread when `is_thread`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ForkEvent {
    /// `pid`/`tgid` are the child's.
    pub header: EventHeader,
    pub parent_pid: u32,
    pub parent_tgid: u32,
    /// 1 when the child shares its parent's thread group.
    pub is_thread: u32,
    pub uid: u32,
    /// Child's `task_struct.start_boottime` (ns since boot, counting suspend).
    pub start_boottime_ns: u64,
    /// The child's cgroup v2 id: its parent's, or the one `clone3(CLONE_INTO_CGROUP)` named.
    pub cgroup_id: u64,
    pub comm: [u8; COMM_LEN],
}

/// A process replaced its program (`sched_process_exec`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExecEvent {
    pub header: EventHeader,
    /// Tid that called exec (differs from `pid` when a non-leader thread exec'd).
    pub old_pid: u32,
    pub uid: u32,
    pub cgroup_id: u64,
    /// Bytes of `filename` used (without the NUL).
    pub filename_len: u32,
    /// Bytes of `args` used; the arguments are NUL-separated.
    pub args_len: u32,
    /// 1 when the argument vector was longer than [`ARGS_LEN`].
    pub args_truncated: u32,
    pub _pad: u32,
    /// The exec'ing task's counters at the exec: what it had accumulated before (a process
    /// that moved cgroup and execs leaves that behind).
    pub counters: TaskCounters,
    pub comm: [u8; COMM_LEN],
    pub filename: [u8; FILENAME_LEN],
    pub args: [u8; ARGS_LEN],
}

/// A task's scheduler counters at one moment: `se.sum_exec_runtime`, `sched_info.run_delay`,
/// `nvcsw` and `nivcsw` (the figures of `/proc/<tid>/schedstat` and `status`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskCounters {
    pub on_cpu_ns: u64,
    pub runqueue_wait_ns: u64,
    pub voluntary_switches: u64,
    pub involuntary_switches: u64,
}

/// A task was moved to another cgroup v2 (`cgroup_attach_task`): a whole process (a write to
/// `cgroup.procs`, reported once, for its leader) or one thread (a write to `cgroup.threads`),
/// by the process itself or by another. Moves in v1 hierarchies are not reported. The header's ids are the moved
/// task's.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CgroupMoveEvent {
    pub header: EventHeader,
    /// 1 when the whole process moved; 0 when only this thread did.
    pub whole_process: u32,
    pub _pad: u32,
    /// The task's cgroup v2 id after the move.
    pub cgroup_id: u64,
    /// The moved task's counters at the move: what it leaves behind in its old cgroup.
    pub counters: TaskCounters,
}

/// A task exited (`sched_process_exit`). The process exited when `group_dead` is 1.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitEvent {
    pub header: EventHeader,
    /// `task_struct.exit_code`, in `wait(2)` status form: `code << 8`, or the signal number in
    /// the low 7 bits (with 0x80 when a core was dumped).
    pub exit_code: u32,
    /// 1 when this was the last live thread of its process.
    pub group_dead: u32,
    pub start_boottime_ns: u64,
    pub comm: [u8; COMM_LEN],
}

/// A syscall that took longer than the configured threshold.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlowSyscallEvent {
    pub header: EventHeader,
    pub nr: u32,
    pub _pad: u32,
    /// Return value (negative errno on failure).
    pub ret: i64,
    pub duration_ns: u64,
}

/// A wait for a CPU longer than the configured threshold, seen when the task got the CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlowRunqueueWaitEvent {
    pub header: EventHeader,
    pub wait_ns: u64,
}

/// A block request that took longer than the configured threshold, seen at completion; the
/// header's tgid is the process that issued it (its pid field is 0: not known).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlowIoEvent {
    pub header: EventHeader,
    /// Kernel `dev_t`.
    pub dev: u32,
    /// `REQ_OP_*`.
    pub op: u32,
    /// Bytes completed.
    pub bytes: u64,
    pub latency_ns: u64,
}

/// A context switch, sent only while recording (`taskscope record`): the header's pid/tgid
/// are the task leaving the CPU (0 for idle).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SwitchEvent {
    pub header: EventHeader,
    pub next_pid: u32,
    pub next_tgid: u32,
}

/// Thresholds over which one occurrence is sent to userspace (ns; `u64::MAX`: never). The
/// single entry of the `THRESHOLDS` array map: written by the agent at start and on every
/// reload, read by the programs on each event, so they change without reloading anything.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Thresholds {
    pub slow_syscall_ns: u64,
    pub slow_runqueue_wait_ns: u64,
    pub slow_io_ns: u64,
    /// While `sys_enter` is attached, when it was (CLOCK_MONOTONIC ns, after the attach): a
    /// start older than this is stale (its syscall began before a detach) and is not used.
    /// 0 when `sys_exit` counts syscalls alone (the `syscall_latency` probe group switched
    /// off), taking the number from the registers. The loader sets it, whatever it is given.
    pub timed_since_ns: u64,
    /// Non-zero while every context switch goes to userspace (`taskscope record`, and the
    /// dashboard's timeline while someone watches it). The loader sets it, whatever it is given.
    pub record_switches: u64,
}

impl Thresholds {
    /// Nothing is slow enough to report; syscalls are timed.
    pub const NEVER: Thresholds = Thresholds {
        slow_syscall_ns: u64::MAX,
        slow_runqueue_wait_ns: u64::MAX,
        slow_io_ns: u64::MAX,
        timed_since_ns: 1,
        record_switches: 0,
    };
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are repr(C) plain integers and arrays without implicit padding.
    unsafe impl aya::Pod for TaskSched {}
    unsafe impl aya::Pod for CpuStats {}
    unsafe impl aya::Pod for SyscallKey {}
    unsafe impl aya::Pod for SyscallStats {}
    unsafe impl aya::Pod for SyscallCounts {}
    unsafe impl aya::Pod for WorkloadSyscallKey {}
    unsafe impl aya::Pod for ErrnoKey {}
    unsafe impl aya::Pod for SyscallStart {}
    unsafe impl aya::Pod for IoStart {}
    unsafe impl aya::Pod for ProcessIoKey {}
    unsafe impl aya::Pod for ProcessIo {}
    unsafe impl aya::Pod for DeviceIoKey {}
    unsafe impl aya::Pod for Thresholds {}
    unsafe impl aya::Pod for DeviceIo {}
    unsafe impl aya::Pod for CustomKey {}
    unsafe impl aya::Pod for CustomStat {}
    unsafe impl aya::Pod for CustomStarts {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log2_bucket_edges() {
        assert_eq!(log2_bucket(0), 0);
        assert_eq!(log2_bucket(1), 1);
        assert_eq!(log2_bucket(2), 2);
        assert_eq!(log2_bucket(3), 2);
        assert_eq!(log2_bucket(1023), 10);
        assert_eq!(log2_bucket(1024), 11);
        assert_eq!(log2_bucket(u64::MAX), HIST_BUCKETS - 1);
        // Every value lies below its bucket's upper bound.
        for v in [0u64, 1, 5, 1000, 1 << 20, 1 << 34] {
            assert!(v < bucket_upper_bound_ns(log2_bucket(v)), "{v}");
        }
    }

    #[test]
    fn layouts_have_no_implicit_padding() {
        use core::mem::size_of;
        assert_eq!(size_of::<EventHeader>(), 24);
        assert_eq!(size_of::<TaskSched>(), 8 * 7 + 8 * HIST_BUCKETS);
        assert_eq!(size_of::<ProcessIo>(), 8 * 3 + 8 * HIST_BUCKETS);
        assert_eq!(size_of::<CpuStats>(), 8 * 4 + 16 * HIST_BUCKETS + 16);
        assert_eq!(size_of::<ForkEvent>(), 24 + 16 + 16 + COMM_LEN);
        assert_eq!(
            size_of::<ExecEvent>(),
            24 + 8 + 8 + 16 + 32 + COMM_LEN + FILENAME_LEN + ARGS_LEN
        );
        assert_eq!(size_of::<ExitEvent>(), 24 + 8 + 8 + COMM_LEN);
        assert_eq!(size_of::<SlowSyscallEvent>(), 24 + 8 + 16);
        assert_eq!(size_of::<SlowRunqueueWaitEvent>(), 24 + 8);
        assert_eq!(size_of::<SlowIoEvent>(), 24 + 8 + 16);
        assert_eq!(size_of::<SwitchEvent>(), 24 + 8);
        assert_eq!(size_of::<Thresholds>(), 40);
        assert_eq!(size_of::<SyscallCounts>(), 24);
        assert_eq!(size_of::<WorkloadSyscallKey>(), 16);
    }
}
