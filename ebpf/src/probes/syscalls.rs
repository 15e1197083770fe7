//! Syscalls: per (process, syscall) count, errors (and per errno) and total latency; per
//! (cgroup, syscall) the same with a log2 latency histogram, at the grain /metrics exports, so
//! that a process's entry stays small (24 bytes, not 312) and a busy node's processes all fit.
//! A syscall slower than the threshold goes to the ring buffer.
//!
//! With the `syscall_latency` group switched off, `sys_enter` is detached and `sys_exit` counts
//! alone (the number from the registers): counts and errors exact, no latency, at about a third
//! of the cost.
//!
//! Threads of one process share a `SYSCALLS` entry, so its counters are updated atomically.
//!
//! One process cannot fill the tables for everyone: numbers that are no syscall share one
//! entry, and a process at its cap of entries has the rest of its syscalls counted under one
//! "other" entry (and that loss of detail counted).

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_NOEXIST},
    helpers::{bpf_get_current_cgroup_id, bpf_ktime_get_ns},
    macros::{btf_map, map},
    maps::HashMap,
    Global,
};
use taskscope_common::{
    event_kind, log2_bucket, ErrnoKey, Loss, SlowSyscallEvent, SyscallCounts, SyscallKey,
    SyscallStart, SyscallStats, WorkloadSyscallKey, SYSCALL_NR_INVALID, SYSCALL_NR_LIMIT,
    SYSCALL_NR_OTHER,
};

use super::kernel::{
    add, agent_tgid, arg, count_loss, current_ids, get_or_init, is_fork_syscall,
    off_pt_regs_syscall_nr, read, thresholds, TaskStorage,
};
use super::ringbuf::{header, send};

/// The syscall in progress, per task: in the task itself (no hash to compute, nothing to
/// clean up when it exits): about 20 ns cheaper at each of `sys_enter` and `sys_exit` than a
/// hash keyed by tid (docs/benchmarks.md).
#[btf_map]
static SYSCALL_STARTS: TaskStorage<SyscallStart> = TaskStorage::new();

/// Per (process, syscall): counts only, allocated as entries are made (`BPF_F_NO_PREALLOC`),
/// so that the capacity for a busy node's processes costs a quiet node nothing.
#[map]
pub static SYSCALLS: HashMap<SyscallKey, SyscallCounts> =
    HashMap::with_max_entries(16384, BPF_F_NO_PREALLOC);

/// Per (cgroup, syscall), with the latency histogram (sized by the agent). A cgroup has at
/// most one entry per syscall number, plus `invalid`. Allocated as entries are made: a node
/// whose containers come and go keeps those of removed cgroups for `--series-ttl`.
#[map]
static WORKLOAD_SYSCALLS: HashMap<WorkloadSyscallKey, SyscallStats> =
    HashMap::with_max_entries(16384, BPF_F_NO_PREALLOC);

#[map]
pub static SYSCALL_ERRNOS: HashMap<ErrnoKey, u64> =
    HashMap::with_max_entries(8192, BPF_F_NO_PREALLOC);

/// Per process (tgid): its entries in `SYSCALLS` and `SYSCALL_ERRNOS` (sized like `TASKS`).
#[map]
pub static SYSCALL_ENTRY_COUNTS: HashMap<u32, u64> = HashMap::with_max_entries(32768, 0);

/// Most entries one process may have in `SYSCALLS` and `SYSCALL_ERRNOS` together.
#[unsafe(no_mangle)]
static MAX_SYSCALL_ENTRIES_PER_PROCESS: Global<u64> = Global::new(128);

/// What a process may do about a new entry.
enum EntryBudget {
    /// Take it; if it cannot be made after all, give it back through the pointer.
    Granted(Option<*mut u64>),
    /// The process is at its cap.
    Refused,
}

/// Whether `tgid` may have one more entry; if so, it is counted as taken. A process whose
/// count cannot be kept (the count map is full) is not held back: the tables' own size still
/// bounds it.
#[inline(always)]
fn take_entry(tgid: u32) -> EntryBudget {
    if SYSCALL_ENTRY_COUNTS.get_ptr_mut(tgid).is_none() {
        // -EEXIST (another CPU was first) and -E2BIG (full) both leave it to the lookup.
        let _ = SYSCALL_ENTRY_COUNTS.insert(tgid, 0, BPF_NOEXIST as u64);
    }
    let Some(count) = SYSCALL_ENTRY_COUNTS.get_ptr_mut(tgid) else {
        return EntryBudget::Granted(None);
    };
    // SAFETY: a live map value. Two CPUs may both pass the check for one process: the cap is
    // then passed by one entry per CPU at most.
    let counter = unsafe { &mut *count };
    if *counter >= MAX_SYSCALL_ENTRIES_PER_PROCESS.load() {
        return EntryBudget::Refused;
    }
    add(counter, 1);
    EntryBudget::Granted(Some(count))
}

/// Gives back an entry taken for one that could not be made (its table was full, which is
/// counted as that): a full table must not also count against the process.
#[inline(always)]
fn give_back(budget: EntryBudget) {
    if let EntryBudget::Granted(Some(count)) = budget {
        // SAFETY: a map value, never freed while a program runs. Adding 2^64 - 1 subtracts 1.
        add(unsafe { &mut *count }, u64::MAX);
    }
}

/// Largest errno the kernel returns (`MAX_ERRNO`).
const MAX_ERRNO: i64 = 4095;

/// `sys_enter(pt_regs *regs, long id)`.
#[inline(always)]
pub fn on_enter(ctx: *const u64) {
    let (_, tgid) = current_ids();
    if tgid == agent_tgid() {
        return;
    }
    let nr = arg(ctx, 1);
    let now = unsafe { bpf_ktime_get_ns() };
    let Some(start) = SYSCALL_STARTS.current(true) else {
        count_loss(Loss::SyscallStartsMapFull);
        return;
    };
    // SAFETY: this task's own value.
    let start = unsafe { &mut *start };
    start.ts_ns = now;
    start.nr = nr;
}

/// A syscall that ended. Plain fields, not an `Option` for the latency: LLVM may copy an
/// `Option`'s unset payload, and the verifier refuses to read an unset register.
struct Ended {
    nr: u64,
    /// Whether `duration_ns` was measured (else it is 0).
    timed: bool,
    duration_ns: u64,
}

/// Counts a syscall (whether it failed, and its latency when timed) for the caller's cgroup.
#[inline(always)]
fn count_for_workload(nr: u32, ended: &Ended, failed: bool) {
    let key = WorkloadSyscallKey {
        // SAFETY: no arguments; the caller's cgroup v2 id.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        nr,
        _pad: 0,
    };
    if let Some(stats) = get_or_init(&WORKLOAD_SYSCALLS, &key, Loss::WorkloadSyscallsMapFull) {
        // SAFETY: a live map value.
        let stats = unsafe { &mut *stats };
        add(&mut stats.count, 1);
        if ended.timed {
            add(&mut stats.total_ns, ended.duration_ns);
            if let Some(slot) = stats.latency_hist.get_mut(log2_bucket(ended.duration_ns)) {
                add(slot, 1);
            }
        }
        if failed {
            add(&mut stats.errors, 1);
        }
    }
}

/// The syscall ending now and how long it took: from its start when syscalls are timed (a start
/// from before `timed_since_ns` is stale: it began before `sys_enter` was last attached), else
/// its number from the registers, untimed. None for a new task's return from the syscall that
/// made it: its parent's.
#[inline(always)]
fn ending_syscall(ctx: *const u64, ret: i64, timed_since_ns: u64) -> Option<Ended> {
    if timed_since_ns != 0 {
        if let Some(start) = SYSCALL_STARTS.current(false) {
            // SAFETY: this task's own value.
            let start = unsafe { &mut *start };
            if start.ts_ns >= timed_since_ns {
                let duration_ns = unsafe { bpf_ktime_get_ns() }.saturating_sub(start.ts_ns);
                start.ts_ns = 0;
                return Some(Ended {
                    nr: start.nr,
                    timed: true,
                    duration_ns,
                });
            }
        }
    }
    // -1 (no syscall) reads as u32::MAX, as does a failed read: counted as no syscall.
    let nr = read::<u32>(arg(ctx, 0), off_pt_regs_syscall_nr()).unwrap_or(u32::MAX);
    if ret == 0 && is_fork_syscall(nr) {
        return None;
    }
    Some(Ended {
        nr: u64::from(nr),
        timed: false,
        duration_ns: 0,
    })
}

/// `sys_exit(pt_regs *regs, long ret)`.
#[inline(always)]
pub fn on_exit(ctx: *const u64) {
    let (pid, tgid) = current_ids();
    if tgid == agent_tgid() {
        return;
    }
    let ret = arg(ctx, 1) as i64;
    let settings = thresholds();
    let Some(ended) = ending_syscall(ctx, ret, settings.timed_since_ns) else {
        return;
    };
    // `nr` is a long: -1 (a syscall skipped by seccomp or ptrace) and made-up numbers are no
    // syscall.
    let nr = if ended.nr < u64::from(SYSCALL_NR_LIMIT) {
        ended.nr as u32
    } else {
        SYSCALL_NR_INVALID
    };

    let failed = (-MAX_ERRNO..0).contains(&ret);
    count_for_workload(nr, &ended, failed);
    let mut key = SyscallKey { tgid, nr };
    let mut stats = SYSCALLS.get_ptr_mut(key);
    if stats.is_none() {
        let budget = take_entry(tgid);
        if matches!(budget, EntryBudget::Refused) {
            count_loss(Loss::SyscallsProcessCap);
            key.nr = SYSCALL_NR_OTHER;
        }
        stats = get_or_init(&SYSCALLS, &key, Loss::SyscallsMapFull);
        if stats.is_none() {
            give_back(budget);
        }
    }
    if let Some(stats) = stats {
        let stats = unsafe { &mut *stats };
        add(&mut stats.count, 1);
        if ended.timed {
            add(&mut stats.total_ns, ended.duration_ns);
        }
        if failed {
            add(&mut stats.errors, 1);
        }
    }
    if failed && key.nr != SYSCALL_NR_OTHER {
        let key = ErrnoKey {
            tgid,
            nr,
            errno: (-ret) as u32,
            _pad: 0,
        };
        let count = match SYSCALL_ERRNOS.get_ptr_mut(key) {
            Some(count) => Some(count),
            None => match take_entry(tgid) {
                EntryBudget::Refused => {
                    count_loss(Loss::SyscallsProcessCap);
                    None
                }
                budget => {
                    let count = get_or_init(&SYSCALL_ERRNOS, &key, Loss::ErrnosMapFull);
                    if count.is_none() {
                        give_back(budget);
                    }
                    count
                }
            },
        };
        if let Some(count) = count {
            add(unsafe { &mut *count }, 1);
        }
    }
    // Syscalls at least this long are sent to userspace one by one.
    if ended.timed && ended.duration_ns >= settings.slow_syscall_ns {
        send(SlowSyscallEvent {
            header: header(event_kind::SLOW_SYSCALL, pid, tgid),
            nr,
            _pad: 0,
            ret,
            duration_ns: ended.duration_ns,
        });
    }
}
