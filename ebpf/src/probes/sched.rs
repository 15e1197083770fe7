//! Scheduling: per task, the kernel's own on-CPU time, run-queue wait and switch counts (copied
//! from the `task_struct` at each switch-out), and a histogram of run-queue waits measured here;
//! per CPU, busy time, idle periods and the task running now.
//!
//! A run-queue wait starts when a task is woken or preempted (the first of these counts, as in
//! the kernel's `sched_info`) and ends when it is switched in.

use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::map, maps::HashMap, maps::PerCpuArray};
use taskscope_common::{
    event_kind, log2_bucket, CpuStats, Loss, SlowRunqueueWaitEvent, SwitchEvent, TaskSched,
};

use super::{
    kernel::{
        agent_tgid, arg, current_ids, get_or_init, off_task_nvcsw, off_task_run_delay,
        off_task_sum_exec_runtime, read_field, task_ids, thresholds,
    },
    ringbuf::{header, send},
};

/// Sends one context switch to userspace (recording only).
#[inline(always)]
fn report_switch(prev_pid: u32, prev_tgid: u32, next_pid: u32, next_tgid: u32) {
    send(SwitchEvent {
        header: header(event_kind::SWITCH, prev_pid, prev_tgid),
        next_pid,
        next_tgid,
    });
}

/// Sends one long run-queue wait of task `pid` to userspace.
#[inline(always)]
fn report_slow_runqueue_wait(pid: u32, tgid: u32, wait_ns: u64) {
    send(SlowRunqueueWaitEvent {
        header: header(event_kind::SLOW_RUNQUEUE_WAIT, pid, tgid),
        wait_ns,
    });
}

/// Scheduler figures per task (tid). Entries of exited tasks are removed by the agent once it
/// has read them.
#[map]
pub static TASKS: HashMap<u32, TaskSched> = HashMap::with_max_entries(32768, 0);

/// Busy/idle accounting of each CPU.
#[map]
static CPUS: PerCpuArray<CpuStats> = PerCpuArray::with_max_entries(1, 0);

/// Copies the kernel's scheduler counters of `task` (a `task_struct *`) into its entry.
#[inline(always)]
pub fn copy_counters<const DIRECT: bool>(entry: &mut TaskSched, task: u64) {
    if let Some(ns) = read_field::<DIRECT, u64>(task, off_task_sum_exec_runtime()) {
        entry.on_cpu_ns = ns;
    }
    if let Some(ns) = read_field::<DIRECT, u64>(task, off_task_run_delay()) {
        entry.runqueue_wait_ns = ns;
    }
    if let Some(voluntary) = read_field::<DIRECT, u64>(task, off_task_nvcsw()) {
        entry.voluntary_switches = voluntary;
    }
    if let Some(involuntary) = read_field::<DIRECT, u64>(task, off_task_nvcsw() + 8) {
        entry.involuntary_switches = involuntary;
    }
}

/// `sched_switch(bool preempt, task_struct *prev, task_struct *next, unsigned int prev_state)`.
#[inline(always)]
pub fn on_switch<const DIRECT: bool>(ctx: *const u64) {
    let preempt = arg(ctx, 0) & 0xff != 0;
    let prev = arg(ctx, 1);
    let next = arg(ctx, 2);
    let prev_state = arg(ctx, 3) as u32;
    let now = unsafe { bpf_ktime_get_ns() };
    // The tracepoint runs in prev's context, so prev's ids cost nothing.
    let (prev_pid, prev_tgid) = current_ids();
    let Some((next_pid, next_tgid)) = task_ids::<DIRECT>(next) else {
        return;
    };
    let agent = agent_tgid();
    // Switched on and off at run time (the dashboard's timeline): read from the thresholds
    // map, an array lookup the verifier inlines.
    if thresholds().record_switches != 0 {
        report_switch(prev_pid, prev_tgid, next_pid, next_tgid);
    }
    let tracked_next = if next_tgid == agent { 0 } else { next_pid };
    account_cpu(now, prev_pid, next_pid, tracked_next);

    if prev_pid != 0 && prev_tgid != agent {
        if let Some(entry) = get_or_init(&TASKS, &prev_pid, Loss::TasksMapFull) {
            // SAFETY: a map value of this task; only this task's switches write these fields.
            let entry = unsafe { &mut *entry };
            entry.tgid = prev_tgid;
            // update_curr() and the switch count ran before the tracepoint: these are current.
            copy_counters::<DIRECT>(entry, prev);
            entry.last_switch_out_ns = now;
            // Not blocking (preempted, or yielded): it waits on the run queue from now.
            let runnable = preempt || prev_state == 0;
            if runnable && entry.queued_since_ns == 0 {
                entry.queued_since_ns = now;
            }
        }
    }
    if tracked_next != 0 {
        // A task never seen waiting has no wait to close: no entry is needed for it yet.
        if let Some(entry) = TASKS.get_ptr_mut(next_pid) {
            let entry = unsafe { &mut *entry };
            if entry.queued_since_ns != 0 {
                let wait = now.saturating_sub(entry.queued_since_ns);
                entry.queued_since_ns = 0;
                if let Some(slot) = entry.runqueue_hist.get_mut(log2_bucket(wait)) {
                    *slot += 1;
                }
                // Run-queue waits at least this long go to userspace one by one.
                if wait >= thresholds().slow_runqueue_wait_ns {
                    report_slow_runqueue_wait(next_pid, next_tgid, wait);
                }
            }
        }
    }
}

/// `sched_wakeup(task_struct *p)` and `sched_wakeup_new(task_struct *p)`: p becomes runnable.
#[inline(always)]
pub fn on_wakeup<const DIRECT: bool>(ctx: *const u64) {
    let Some((pid, tgid)) = task_ids::<DIRECT>(arg(ctx, 0)) else {
        return;
    };
    if pid == 0 || tgid == agent_tgid() {
        return;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(entry) = get_or_init(&TASKS, &pid, Loss::TasksMapFull) {
        let entry = unsafe { &mut *entry };
        entry.tgid = tgid;
        if entry.queued_since_ns == 0 {
            entry.queued_since_ns = now;
        }
    }
}

/// Idle is pid 0 on every CPU: a switch from or to it closes a busy or an idle period.
/// `tracked_next` is the task switched in, or 0 when it is not accounted (idle, the agent).
#[inline(always)]
fn account_cpu(now: u64, prev_pid: u32, next_pid: u32, tracked_next: u32) {
    let Some(cpu) = CPUS.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's own slot.
    let cpu = unsafe { &mut *cpu };
    cpu.current_pid = tracked_next;
    cpu.current_since_ns = now;
    let prev_idle = prev_pid == 0;
    let next_idle = next_pid == 0;
    if prev_idle && !next_idle {
        if cpu.idle_since_ns != 0 {
            let idle = now.saturating_sub(cpu.idle_since_ns);
            cpu.idle_ns += idle;
            let bucket = log2_bucket(idle);
            if let Some(slot) = cpu.idle_periods.get_mut(bucket) {
                *slot += 1;
            }
            if let Some(slot) = cpu.idle_ns_by_bucket.get_mut(bucket) {
                *slot += idle;
            }
        }
        cpu.idle_since_ns = 0;
        cpu.busy_since_ns = now;
    } else if !prev_idle && next_idle {
        if cpu.busy_since_ns != 0 {
            cpu.busy_ns += now.saturating_sub(cpu.busy_since_ns);
        }
        cpu.busy_since_ns = 0;
        cpu.idle_since_ns = now;
    } else if cpu.busy_since_ns == 0 && cpu.idle_since_ns == 0 {
        // First switch seen on this CPU, busy to busy.
        cpu.busy_since_ns = now;
    }
}
