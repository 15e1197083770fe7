//! The names both halves must agree on: the hooks and their programs, the maps, and the
//! globals the loader sets. The kernel side declares its programs, maps and globals with these
//! exact identifiers (Rust attributes need literals there); the agent opens them only through
//! these constants, and a unit test of the agent checks the compiled object against them.

/// A family of hooks that is reported and switched on and off together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[cfg_attr(feature = "user", derive(serde::Serialize))]
#[cfg_attr(feature = "user", serde(rename_all = "snake_case"))]
pub enum ProbeGroup {
    Scheduling,
    Lifecycle,
    /// `sys_exit`: syscall counts and errors.
    Syscalls,
    /// `sys_enter`: the start of each syscall, so that it is timed.
    SyscallLatency,
    BlockIo,
}

impl ProbeGroup {
    /// Every group, in report order.
    pub const ALL: [ProbeGroup; 5] = [
        ProbeGroup::Scheduling,
        ProbeGroup::Lifecycle,
        ProbeGroup::Syscalls,
        ProbeGroup::SyscallLatency,
        ProbeGroup::BlockIo,
    ];

    /// Groups the agent can run without (the task model needs scheduling and lifecycle).
    pub fn can_be_disabled(self) -> bool {
        matches!(
            self,
            ProbeGroup::Syscalls | ProbeGroup::SyscallLatency | ProbeGroup::BlockIo
        )
    }

    /// The group this one is of no use without: timing syscalls that are not counted.
    pub fn needs(self) -> Option<ProbeGroup> {
        match self {
            ProbeGroup::SyscallLatency => Some(ProbeGroup::Syscalls),
            _ => None,
        }
    }

    /// Whether the group is attached when `disabled` are switched off: neither it nor the
    /// group it needs is among them.
    pub fn enabled_unless(self, disabled: &[ProbeGroup]) -> bool {
        !disabled.contains(&self)
            && self
                .needs()
                .is_none_or(|needed| !disabled.contains(&needed))
    }

    /// Stable name (flags, health components, the API).
    pub fn name(self) -> &'static str {
        match self {
            ProbeGroup::Scheduling => "scheduling",
            ProbeGroup::Lifecycle => "lifecycle",
            ProbeGroup::Syscalls => "syscalls",
            ProbeGroup::SyscallLatency => "syscall_latency",
            ProbeGroup::BlockIo => "block_io",
        }
    }
}

/// One kernel hook (a tracepoint) and its two programs: `tp_btf` first, `raw_tp` as fallback.
#[derive(Debug, Clone, Copy)]
pub struct Hook {
    pub tracepoint: &'static str,
    pub btf_program: &'static str,
    pub raw_program: &'static str,
    pub group: ProbeGroup,
    /// The agent cannot run without it.
    pub required: bool,
    /// Attached only when the hook named here could not be: an older kernel's way to the same
    /// data.
    pub instead_of: Option<&'static str>,
    /// The release (major, minor) that added this tracepoint, with the arguments the programs
    /// read, when that is later than [`MIN_KERNEL`]; `None`: every supported kernel has it.
    pub since: Option<(u32, u32)>,
}

/// The oldest kernel the programs can load on: `sched_switch` passes `prev_state` from 5.18 on
/// (tp_btf is 5.5, the BPF ring buffer and CAP_BPF 5.8). Tested from 6.1 (docs/install.md).
pub const MIN_KERNEL: (u32, u32) = (5, 18);

const fn hook(
    tracepoint: &'static str,
    btf_program: &'static str,
    raw_program: &'static str,
    group: ProbeGroup,
    required: bool,
) -> Hook {
    Hook {
        tracepoint,
        btf_program,
        raw_program,
        group,
        required,
        instead_of: None,
        since: None,
    }
}

/// A hook attached only where `primary` could not be (see [`Hook::instead_of`]).
const fn fallback(primary: &'static str, hook: Hook) -> Hook {
    Hook {
        instead_of: Some(primary),
        ..hook
    }
}

/// Every hook, in attach order. Lifecycle first, so that no process is born unseen while the
/// rest attach. `ebpf/src/probes/mod.rs` defines each program named here.
pub const HOOKS: &[Hook] = &[
    hook(
        "sched_process_fork",
        "ts_fork_btf",
        "ts_fork_raw",
        ProbeGroup::Lifecycle,
        true,
    ),
    hook(
        "sched_process_exec",
        "ts_exec_btf",
        "ts_exec_raw",
        ProbeGroup::Lifecycle,
        true,
    ),
    hook(
        "sched_process_exit",
        "ts_exit_btf",
        "ts_exit_raw",
        ProbeGroup::Lifecycle,
        true,
    ),
    // Without it a move between cgroups is seen only at the process's next exec.
    hook(
        "cgroup_attach_task",
        "ts_cgroup_move_btf",
        "ts_cgroup_move_raw",
        ProbeGroup::Lifecycle,
        false,
    ),
    hook(
        "sched_switch",
        "ts_switch_btf",
        "ts_switch_raw",
        ProbeGroup::Scheduling,
        true,
    ),
    hook(
        "sched_wakeup",
        "ts_wakeup_btf",
        "ts_wakeup_raw",
        ProbeGroup::Scheduling,
        true,
    ),
    hook(
        "sched_wakeup_new",
        "ts_wakeup_new_btf",
        "ts_wakeup_new_raw",
        ProbeGroup::Scheduling,
        true,
    ),
    hook(
        "sys_enter",
        "ts_sys_enter_btf",
        "ts_sys_enter_raw",
        ProbeGroup::SyscallLatency,
        false,
    ),
    hook(
        "sys_exit",
        "ts_sys_exit_btf",
        "ts_sys_exit_raw",
        ProbeGroup::Syscalls,
        false,
    ),
    Hook {
        since: Some((6, 5)),
        ..hook(
            "block_io_start",
            "ts_io_start_btf",
            "ts_io_start_raw",
            ProbeGroup::BlockIo,
            false,
        )
    },
    // Before 6.5: the first of insert and issue starts a request (ebpf/src/probes/blockio.rs).
    fallback(
        "block_io_start",
        hook(
            "block_rq_insert",
            "ts_io_insert_btf",
            "ts_io_insert_raw",
            ProbeGroup::BlockIo,
            false,
        ),
    ),
    fallback(
        "block_io_start",
        hook(
            "block_rq_issue",
            "ts_io_issue_btf",
            "ts_io_issue_raw",
            ProbeGroup::BlockIo,
            false,
        ),
    ),
    hook(
        "block_rq_complete",
        "ts_io_done_btf",
        "ts_io_done_raw",
        ProbeGroup::BlockIo,
        false,
    ),
];

/// Map names (the kernel side's `#[map]` statics).
pub mod maps {
    /// Lifecycle and over-threshold events (`RingBuf`).
    pub const EVENTS: &str = "EVENTS";
    /// Per task (tid): [`crate::TaskSched`].
    pub const TASKS: &str = "TASKS";
    /// Per CPU: [`crate::CpuStats`].
    pub const CPUS: &str = "CPUS";
    /// Per (process, syscall): [`crate::SyscallCounts`].
    pub const SYSCALLS: &str = "SYSCALLS";
    /// Per (cgroup, syscall): [`crate::SyscallStats`], with the latency histogram.
    pub const WORKLOAD_SYSCALLS: &str = "WORKLOAD_SYSCALLS";
    /// Per (process, syscall, errno): failures.
    pub const SYSCALL_ERRNOS: &str = "SYSCALL_ERRNOS";
    /// Per task: the syscall in progress.
    pub const SYSCALL_STARTS: &str = "SYSCALL_STARTS";
    /// Per process: its entries in `SYSCALLS` and `SYSCALL_ERRNOS` together, held under
    /// `MAX_SYSCALL_ENTRIES_PER_PROCESS`.
    pub const SYSCALL_ENTRY_COUNTS: &str = "SYSCALL_ENTRY_COUNTS";
    /// Per block request in flight: [`crate::IoStart`] (LRU; `--max-io-requests`).
    pub const IO_STARTS: &str = "IO_STARTS";
    /// Per (process, device, operation): [`crate::ProcessIo`].
    pub const PROCESS_IO: &str = "PROCESS_IO";
    /// Per (device, operation): [`crate::DeviceIo`].
    pub const DEVICE_IO: &str = "DEVICE_IO";
    /// Per CPU, per [`crate::Loss`]: data lost in the kernel.
    pub const LOSSES: &str = "LOSSES";
    /// The one [`crate::Thresholds`] entry, rewritten on reload.
    pub const THRESHOLDS: &str = "THRESHOLDS";
    /// Per (process, custom metric): [`crate::CustomStat`].
    pub const CUSTOM_STATS: &str = "CUSTOM_STATS";
    /// Per thread: [`crate::CustomStarts`], the custom latencies in progress.
    pub const CUSTOM_STARTS: &str = "CUSTOM_STARTS";
}

/// The uprobe program of custom metrics: attached by the agent to each probe point (USDT,
/// function entry or return) with a [`crate::custom::cookie`] saying what it means.
pub const CUSTOM_PROGRAM: &str = "ts_custom";

/// Globals the loader sets before loading (besides the struct offsets, named in
/// `agent/src/probes/offsets.rs`).
pub mod globals {
    /// The agent's own tgid: its activity is not accounted.
    pub const AGENT_TGID: &str = "AGENT_TGID";
    /// 1 when `sched_process_exit` has the `group_dead` argument (6.16+).
    pub const EXIT_HAS_GROUP_DEAD: &str = "EXIT_HAS_GROUP_DEAD";
    /// Pending ring-buffer bytes from which a submit wakes the reader.
    pub const WAKEUP_BYTES: &str = "WAKEUP_BYTES";
    /// Entries one process may have in `SYSCALLS` and `SYSCALL_ERRNOS` together; beyond, its
    /// syscalls are counted under [`crate::SYSCALL_NR_OTHER`].
    pub const MAX_SYSCALL_ENTRIES_PER_PROCESS: &str = "MAX_SYSCALL_ENTRIES_PER_PROCESS";
    /// This architecture's numbers of the syscalls that return twice, the second time (0) in
    /// the new task: clone, clone3, fork, vfork (`u32::MAX` for one it lacks). An untimed
    /// `sys_exit` must not count the new task's return as a syscall of its own.
    pub const FORK_SYSCALLS: &str = "FORK_SYSCALLS";
}
