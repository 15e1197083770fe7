//! Syscalls: per (process, syscall) count, errors (and per errno), total latency and a log2
//! latency histogram; a syscall slower than the threshold goes to the ring buffer.
//!
//! Threads of one process share a `SYSCALLS` entry, so its counters are updated atomically.

use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::map, maps::HashMap};
use taskscope_common::{
    event_kind, log2_bucket, ErrnoKey, Loss, SlowSyscallEvent, SyscallKey, SyscallStart,
    SyscallStats,
};

use super::kernel::{add, agent_tgid, arg, current_ids, get_or_init, thresholds};
use super::ringbuf::{header, send};

/// Syscall in progress per task (tid).
#[map]
pub static SYSCALL_STARTS: HashMap<u32, SyscallStart> = HashMap::with_max_entries(65536, 0);

#[map]
pub static SYSCALLS: HashMap<SyscallKey, SyscallStats> = HashMap::with_max_entries(16384, 0);

#[map]
pub static SYSCALL_ERRNOS: HashMap<ErrnoKey, u64> = HashMap::with_max_entries(8192, 0);

/// Largest errno the kernel returns (`MAX_ERRNO`).
const MAX_ERRNO: i64 = 4095;

/// `sys_enter(pt_regs *regs, long id)`.
#[inline(always)]
pub fn on_enter(ctx: *const u64) {
    let (pid, tgid) = current_ids();
    if tgid == agent_tgid() {
        return;
    }
    let nr = arg(ctx, 1);
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(start) = get_or_init(&SYSCALL_STARTS, &pid, Loss::SyscallStartsMapFull) {
        // SAFETY: this task's own entry.
        let start = unsafe { &mut *start };
        start.ts_ns = now;
        start.nr = nr;
    }
}

/// `sys_exit(pt_regs *regs, long ret)`.
#[inline(always)]
pub fn on_exit(ctx: *const u64) {
    let (pid, tgid) = current_ids();
    if tgid == agent_tgid() {
        return;
    }
    let ret = arg(ctx, 1) as i64;
    let Some(start) = SYSCALL_STARTS.get_ptr_mut(pid) else {
        return;
    };
    // SAFETY: this task's own entry.
    let start = unsafe { &mut *start };
    if start.ts_ns == 0 {
        return;
    }
    let duration = unsafe { bpf_ktime_get_ns() }.saturating_sub(start.ts_ns);
    let nr = start.nr as u32;
    start.ts_ns = 0;

    let key = SyscallKey { tgid, nr };
    let failed = (-MAX_ERRNO..0).contains(&ret);
    if let Some(stats) = get_or_init(&SYSCALLS, &key, Loss::SyscallsMapFull) {
        let stats = unsafe { &mut *stats };
        add(&mut stats.count, 1);
        add(&mut stats.total_ns, duration);
        if let Some(slot) = stats.latency_hist.get_mut(log2_bucket(duration)) {
            add(slot, 1);
        }
        if failed {
            add(&mut stats.errors, 1);
        }
    }
    if failed {
        let key = ErrnoKey {
            tgid,
            nr,
            errno: (-ret) as u32,
            _pad: 0,
        };
        if let Some(count) = get_or_init(&SYSCALL_ERRNOS, &key, Loss::ErrnosMapFull) {
            add(unsafe { &mut *count }, 1);
        }
    }
    // Syscalls at least this long are sent to userspace one by one.
    if duration >= thresholds().slow_syscall_ns {
        send(SlowSyscallEvent {
            header: header(event_kind::SLOW_SYSCALL, pid, tgid),
            nr,
            _pad: 0,
            ret,
            duration_ns: duration,
        });
    }
}
