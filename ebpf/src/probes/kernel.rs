//! What the loader tells the programs at load time, and small helpers over kernel memory.
//!
//! No struct offset is compiled in: the agent reads them from the running kernel's BTF and
//! overrides these globals before loading.

use aya_ebpf::{
    bindings::{BPF_LOCAL_STORAGE_GET_F_CREATE, BPF_NOEXIST},
    helpers::{
        bpf_get_current_pid_tgid, bpf_probe_read_kernel,
        generated::{bpf_get_current_task_btf, bpf_task_storage_get},
    },
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
    Global,
};
use taskscope_common::{Loss, Thresholds, LOSS_KINDS};

/// Thread group id of the agent: its own activity is not accounted.
#[unsafe(no_mangle)]
static AGENT_TGID: Global<u32> = Global::new(0);

/// Offsets into kernel structs, from BTF (see agent/src/probes/offsets.rs).
#[unsafe(no_mangle)]
static OFF_TASK_PID: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static OFF_TASK_EXIT_CODE: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static OFF_TASK_SUM_EXEC_RUNTIME: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static OFF_TASK_RUN_DELAY: Global<u32> = Global::new(0);
/// `nvcsw`, with `nivcsw` right after it (checked by the loader).
#[unsafe(no_mangle)]
static OFF_TASK_NVCSW: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static OFF_TASK_START_BOOTTIME: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static OFF_TASK_SIGNAL: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static OFF_SIGNAL_LIVE: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static OFF_TASK_MM: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static OFF_MM_ARG_START: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static OFF_MM_ARG_END: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static OFF_BPRM_FILENAME: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static OFF_RQ_CMD_FLAGS: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static OFF_RQ_DATA_LEN: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static OFF_RQ_START_TIME_NS: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static OFF_RQ_BIO: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static OFF_BIO_BDEV: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static OFF_RQ_Q: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static OFF_Q_DISK: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static OFF_DISK_PART0: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static OFF_BDEV_DEV: Global<u32> = Global::new(0);
/// The chain from a task to its cgroup v2 id: `task->cgroups->dfl_cgrp->kn->id`.
#[unsafe(no_mangle)]
static OFF_TASK_CGROUPS: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static OFF_CSS_SET_DFL_CGRP: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static OFF_CGROUP_KN: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static OFF_KERNFS_NODE_ID: Global<u32> = Global::new(0);
/// The syscall number in `struct pt_regs` (`orig_ax` on x86-64, `syscallno` on arm64): read at
/// `sys_exit` when syscalls are not timed, so that `sys_enter` need not run.
#[unsafe(no_mangle)]
static OFF_PT_REGS_SYSCALL_NR: Global<u32> = Global::new(0);
/// clone, clone3, fork and vfork on this architecture (`u32::MAX`: none).
#[unsafe(no_mangle)]
static FORK_SYSCALLS: Global<[u32; 4]> = Global::new([u32::MAX; 4]);
/// 1 when `sched_process_exit` has the `group_dead` argument (6.16+); else `signal->live` is read.
#[unsafe(no_mangle)]
static EXIT_HAS_GROUP_DEAD: Global<u32> = Global::new(0);

#[inline(always)]
pub fn agent_tgid() -> u32 {
    AGENT_TGID.load()
}

/// Offsets, read once per program run where needed.
#[inline(always)]
pub fn off_task_pid() -> u32 {
    OFF_TASK_PID.load()
}
#[inline(always)]
pub fn off_task_exit_code() -> u32 {
    OFF_TASK_EXIT_CODE.load()
}
#[inline(always)]
pub fn off_task_sum_exec_runtime() -> u32 {
    OFF_TASK_SUM_EXEC_RUNTIME.load()
}
#[inline(always)]
pub fn off_task_run_delay() -> u32 {
    OFF_TASK_RUN_DELAY.load()
}
#[inline(always)]
pub fn off_task_nvcsw() -> u32 {
    OFF_TASK_NVCSW.load()
}
#[inline(always)]
pub fn off_task_start_boottime() -> u32 {
    OFF_TASK_START_BOOTTIME.load()
}
/// Whether `nr` returns a second time in the task it makes.
#[inline(always)]
pub fn is_fork_syscall(nr: u32) -> bool {
    FORK_SYSCALLS.load().contains(&nr)
}
#[inline(always)]
pub fn off_pt_regs_syscall_nr() -> u32 {
    OFF_PT_REGS_SYSCALL_NR.load()
}
#[inline(always)]
pub fn off_task_signal() -> u32 {
    OFF_TASK_SIGNAL.load()
}
#[inline(always)]
pub fn off_signal_live() -> u32 {
    OFF_SIGNAL_LIVE.load()
}
#[inline(always)]
pub fn off_task_mm() -> u32 {
    OFF_TASK_MM.load()
}
#[inline(always)]
pub fn off_mm_arg_start() -> u32 {
    OFF_MM_ARG_START.load()
}
#[inline(always)]
pub fn off_mm_arg_end() -> u32 {
    OFF_MM_ARG_END.load()
}
#[inline(always)]
pub fn off_bprm_filename() -> u32 {
    OFF_BPRM_FILENAME.load()
}
#[inline(always)]
pub fn off_rq_cmd_flags() -> u32 {
    OFF_RQ_CMD_FLAGS.load()
}
#[inline(always)]
pub fn off_rq_data_len() -> u32 {
    OFF_RQ_DATA_LEN.load()
}
#[inline(always)]
pub fn off_rq_start_time_ns() -> u32 {
    OFF_RQ_START_TIME_NS.load()
}
#[inline(always)]
pub fn off_rq_bio() -> u32 {
    OFF_RQ_BIO.load()
}
#[inline(always)]
pub fn off_bio_bdev() -> u32 {
    OFF_BIO_BDEV.load()
}
#[inline(always)]
pub fn off_rq_q() -> u32 {
    OFF_RQ_Q.load()
}
#[inline(always)]
pub fn off_q_disk() -> u32 {
    OFF_Q_DISK.load()
}
#[inline(always)]
pub fn off_disk_part0() -> u32 {
    OFF_DISK_PART0.load()
}
#[inline(always)]
pub fn off_bdev_dev() -> u32 {
    OFF_BDEV_DEV.load()
}

/// The `struct cgroup` of `task` in the cgroup v2 hierarchy.
#[inline(always)]
pub fn task_dfl_cgroup(task: u64) -> Option<u64> {
    let css_set = read::<u64>(task, OFF_TASK_CGROUPS.load())?;
    read::<u64>(css_set, OFF_CSS_SET_DFL_CGRP.load())
}

/// The id of a `struct cgroup` (its kernfs node's: what `bpf_get_current_cgroup_id` gives).
#[inline(always)]
pub fn cgroup_id(cgroup: u64) -> Option<u64> {
    let kernfs_node = read::<u64>(cgroup, OFF_CGROUP_KN.load())?;
    read::<u64>(kernfs_node, OFF_KERNFS_NODE_ID.load())
}

/// The cgroup v2 id of `task`.
#[inline(always)]
pub fn task_cgroup_id(task: u64) -> Option<u64> {
    cgroup_id(task_dfl_cgroup(task)?)
}

#[inline(always)]
pub fn exit_has_group_dead() -> bool {
    EXIT_HAS_GROUP_DEAD.load() != 0
}

/// A task-local storage map (`BPF_MAP_TYPE_TASK_STORAGE`, Linux 5.11), defined through BTF as
/// the kernel requires (aya-ebpf 0.2.1 has the other local storages, not this one). A value
/// lives in the `task_struct` itself: found without hashing, freed with the task.
#[repr(C)]
pub struct TaskStorage<T> {
    r#type: *const [i32; aya_ebpf::bindings::bpf_map_type::BPF_MAP_TYPE_TASK_STORAGE as usize],
    key: *const i32,
    value: *const T,
    max_entries: *const [i32; 0],
    map_flags: *const [i32; aya_ebpf::bindings::BPF_F_NO_PREALLOC as usize],
}

// SAFETY: the fields are placeholders for the loader (their types are the BTF map definition);
// they are never dereferenced.
unsafe impl<T> Sync for TaskStorage<T> {}

impl<T> TaskStorage<T> {
    pub const fn new() -> Self {
        Self {
            r#type: core::ptr::null(),
            key: core::ptr::null(),
            value: core::ptr::null(),
            max_entries: core::ptr::null(),
            map_flags: core::ptr::null(),
        }
    }

    /// The current task's value; with `create`, a zeroed one is made when it has none. None
    /// when it has none (or the kernel cannot allocate one).
    #[inline(always)]
    pub fn current(&self, create: bool) -> Option<*mut T> {
        // SAFETY: helpers of tracing programs; the task pointer is the verifier-typed current
        // task, and `self` is this map's definition, which the loader turns into its fd.
        let value = unsafe {
            let task = bpf_get_current_task_btf();
            bpf_task_storage_get(
                core::ptr::from_ref(self).cast_mut().cast(),
                task,
                core::ptr::null_mut(),
                if create {
                    BPF_LOCAL_STORAGE_GET_F_CREATE as u64
                } else {
                    0
                },
            )
        };
        (!value.is_null()).then_some(value.cast())
    }
}

/// The reporting thresholds (one entry), set by the agent and changed on reload.
#[map]
static THRESHOLDS: Array<Thresholds> = Array::with_max_entries(1, 0);

/// The current thresholds; none reported before the agent has written them.
#[inline(always)]
pub fn thresholds() -> Thresholds {
    THRESHOLDS.get(0).copied().unwrap_or(Thresholds::NEVER)
}

/// Per-CPU counters of lost data, indexed by [`Loss`].
#[map]
static LOSSES: PerCpuArray<u64> = PerCpuArray::with_max_entries(LOSS_KINDS, 0);

/// One zeroed 1 KiB value: the initial value of every new map entry, so that no entry is
/// built on the 512-byte BPF stack.
#[map]
static ZEROES: Array<[u64; 128]> = Array::with_max_entries(1, 0);

#[inline(always)]
pub fn count_loss(loss: Loss) {
    if let Some(counter) = LOSSES.get_ptr_mut(loss as u32) {
        // SAFETY: a per-CPU slot; programs on one CPU do not preempt each other.
        unsafe { *counter += 1 };
    }
}

/// The tracepoint argument `n` (tp_btf and raw_tp contexts are both arrays of u64).
#[inline(always)]
pub fn arg(ctx: *const u64, n: usize) -> u64 {
    // SAFETY: the verifier checks that `n` is within the tracepoint's argument count.
    unsafe { *ctx.add(n) }
}

/// Reads a `T` at `base + offset` of kernel memory.
#[inline(always)]
pub fn read<T>(base: u64, offset: u32) -> Option<T> {
    if base == 0 {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel checks the address and fails cleanly.
    unsafe { bpf_probe_read_kernel((base + offset as u64) as *const T).ok() }
}

/// Reads a `T` at `base + offset` of kernel memory, choosing how: a direct load where `base`
/// is a BTF-typed pointer (tp_btf arguments; the verifier checks the field and the JIT makes
/// the load fault-safe, no helper call), `bpf_probe_read_kernel` otherwise (raw_tp).
#[inline(always)]
pub fn read_field<const DIRECT: bool, T: Copy>(base: u64, offset: u32) -> Option<T> {
    if DIRECT {
        // SAFETY: the verifier only accepts this load at a valid field of the BTF type of
        // `base`, and the JIT turns a faulting address into a zero read.
        Some(unsafe {
            core::ptr::read_volatile((base as *const u8).add(offset as usize) as *const T)
        })
    } else {
        read(base, offset)
    }
}

/// (pid, tgid) of a `task_struct`; `pid` and `tgid` are adjacent (checked by the loader).
#[inline(always)]
pub fn task_ids<const DIRECT: bool>(task: u64) -> Option<(u32, u32)> {
    if DIRECT {
        // Two loads: the verifier accepts a direct load only within one field.
        let pid = read_field::<true, u32>(task, off_task_pid())?;
        let tgid = read_field::<true, u32>(task, off_task_pid() + 4)?;
        return Some((pid, tgid));
    }
    let ids: u64 = read(task, off_task_pid())?;
    Some((ids as u32, (ids >> 32) as u32))
}

/// (pid, tgid) of the current task.
#[inline(always)]
pub fn current_ids() -> (u32, u32) {
    let id = bpf_get_current_pid_tgid();
    (id as u32, (id >> 32) as u32)
}

/// Pointer to `key`'s value in `map`, inserting a zeroed value first when absent. `None` (and a
/// counted loss) when the map is full.
#[inline(always)]
pub fn get_or_init<K, V>(map: &HashMap<K, V>, key: &K, full: Loss) -> Option<*mut V> {
    if let Some(value) = map.get_ptr_mut(key) {
        return Some(value);
    }
    const { assert!(core::mem::size_of::<V>() <= 1024) };
    let zero = ZEROES.get_ptr(0)? as *const V;
    // SAFETY: ZEROES holds 1 KiB of zeroes, at least size_of::<V>() (asserted above); every V
    // stored in a map is plain integers, for which all-zeroes is a valid value.
    let inserted = map.insert(key, unsafe { &*zero }, BPF_NOEXIST as u64);
    // -EEXIST: another CPU inserted it first, which is fine.
    if let Err(err) = inserted {
        if err != -17 {
            count_loss(full);
            return None;
        }
    }
    map.get_ptr_mut(key)
}

/// Atomically adds `value` to a counter shared between CPUs (a map value). Compiles to the BPF
/// atomic add instruction; its result is unused, so it needs no BPF v3 `fetch` form.
#[inline(always)]
pub fn add(counter: &mut u64, value: u64) {
    // SAFETY: `counter` is a live, aligned u64.
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            counter, value,
        )
    };
}
