//! Scheduling: per-task on-CPU time, run-queue wait (and its histogram), voluntary and
//! involuntary switches; per-CPU busy time and idle periods.
//!
//! Run-queue wait follows the kernel's own `sched_info` (`/proc/<pid>/schedstat` field 2): a
//! task starts waiting when it is woken or preempted, the first such time counts, and the wait
//! ends when it is switched in.

use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::map, maps::HashMap, maps::PerCpuArray};
use taskscope_common::{log2_bucket, CpuStats, Loss, TaskSched};

use super::kernel::{agent_tgid, arg, current_ids, get_or_init, task_ids};

/// Scheduler accumulators per task (tid). Entries of exited tasks are removed by the agent
/// once it has read them.
#[map]
pub static TASKS: HashMap<u32, TaskSched> = HashMap::with_max_entries(32768, 0);

/// Busy/idle accounting of each CPU.
#[map]
static CPUS: PerCpuArray<CpuStats> = PerCpuArray::with_max_entries(1, 0);

/// `sched_switch(bool preempt, task_struct *prev, task_struct *next, unsigned int prev_state)`.
#[inline(always)]
pub fn on_switch(ctx: *const u64) {
    let preempt = arg(ctx, 0) & 0xff != 0;
    let next = arg(ctx, 2);
    let prev_state = arg(ctx, 3) as u32;
    let now = unsafe { bpf_ktime_get_ns() };
    // The tracepoint runs in prev's context, so prev's ids cost nothing.
    let (prev_pid, prev_tgid) = current_ids();
    let Some((next_pid, next_tgid)) = task_ids(next) else {
        return;
    };
    account_cpu(now, prev_pid, next_pid);

    let agent = agent_tgid();
    if prev_pid != 0 && prev_tgid != agent {
        if let Some(task) = get_or_init(&TASKS, &prev_pid, Loss::TasksMapFull) {
            // SAFETY: a map value of this task; only this task's switches write these fields.
            let task = unsafe { &mut *task };
            task.tgid = prev_tgid;
            if task.running_since_ns != 0 {
                task.on_cpu_ns += now.saturating_sub(task.running_since_ns);
                task.running_since_ns = 0;
            }
            // The kernel counts a switch as voluntary when the task blocks: not preempted and
            // not left in TASK_RUNNING. Otherwise it stays on the run queue: it waits from now.
            if !preempt && prev_state != 0 {
                task.voluntary_switches += 1;
            } else {
                task.involuntary_switches += 1;
                if task.queued_since_ns == 0 {
                    task.queued_since_ns = now;
                }
            }
        }
    }
    if next_pid != 0 && next_tgid != agent {
        if let Some(task) = get_or_init(&TASKS, &next_pid, Loss::TasksMapFull) {
            let task = unsafe { &mut *task };
            task.tgid = next_tgid;
            task.running_since_ns = now;
            if task.queued_since_ns != 0 {
                let wait = now.saturating_sub(task.queued_since_ns);
                task.queued_since_ns = 0;
                task.runq_wait_ns += wait;
                if let Some(slot) = task.runq_hist.get_mut(log2_bucket(wait)) {
                    *slot += 1;
                }
            }
        }
    }
}

/// `sched_wakeup(task_struct *p)` and `sched_wakeup_new(task_struct *p)`: p becomes runnable.
#[inline(always)]
pub fn on_wakeup(ctx: *const u64) {
    let Some((pid, tgid)) = task_ids(arg(ctx, 0)) else {
        return;
    };
    if pid == 0 || tgid == agent_tgid() {
        return;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(task) = get_or_init(&TASKS, &pid, Loss::TasksMapFull) {
        let task = unsafe { &mut *task };
        task.tgid = tgid;
        if task.queued_since_ns == 0 {
            task.queued_since_ns = now;
        }
    }
}

/// Idle is pid 0 on every CPU: a switch from or to it closes a busy or an idle period.
#[inline(always)]
fn account_cpu(now: u64, prev_pid: u32, next_pid: u32) {
    let Some(cpu) = CPUS.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's own slot.
    let cpu = unsafe { &mut *cpu };
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
