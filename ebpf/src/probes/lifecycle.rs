//! Process lifecycle through the ring buffer: fork (process or thread), exec, exit.

use core::mem::MaybeUninit;

use aya_ebpf::helpers::{
    bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_uid_gid,
    bpf_probe_read_kernel_str_bytes, bpf_probe_read_user_buf,
};
use taskscope_common::{
    event_kind, CgroupMoveEvent, ExecEvent, ExitEvent, ForkEvent, TaskCounters, ARGS_LEN, COMM_LEN,
};

use super::kernel::{
    agent_tgid, arg, cgroup_id, current_ids, exit_has_group_dead, off_bprm_filename,
    off_mm_arg_end, off_mm_arg_start, off_signal_live, off_task_exit_code, off_task_mm,
    off_task_nvcsw, off_task_run_delay, off_task_signal, off_task_start_boottime,
    off_task_sum_exec_runtime, read, task_cgroup_id, task_dfl_cgroup, task_ids,
};
use super::ringbuf::{header, send, send_with};
use super::sched::{copy_counters, TASKS};
use super::syscalls::SYSCALL_ENTRY_COUNTS;

#[inline(always)]
fn current_comm() -> [u8; COMM_LEN] {
    bpf_get_current_comm().unwrap_or([0; COMM_LEN])
}

/// `sched_process_fork(task_struct *parent, task_struct *child)`, in the parent's context.
#[inline(always)]
pub fn on_fork(ctx: *const u64) {
    let (parent_pid, parent_tgid) = current_ids();
    if parent_tgid == agent_tgid() {
        return;
    }
    let child = arg(ctx, 1);
    let Some((pid, tgid)) = task_ids::<false>(child) else {
        return;
    };
    // A reused tid starts from zero, whatever the agent has not cleaned up yet.
    let _ = TASKS.remove(pid);
    if tgid != parent_tgid {
        // A new process starts with none of the syscall-table entries a previous owner of its
        // pid may have left (one the agent never tracked is never cleaned up).
        let _ = SYSCALL_ENTRY_COUNTS.remove(tgid);
    }
    send(ForkEvent {
        header: header(event_kind::FORK, pid, tgid),
        parent_pid,
        parent_tgid,
        is_thread: (tgid == parent_tgid) as u32,
        uid: bpf_get_current_uid_gid() as u32,
        start_boottime_ns: read(child, off_task_start_boottime()).unwrap_or(0),
        // The child's own: clone3(CLONE_INTO_CGROUP) places it elsewhere than its parent.
        cgroup_id: task_cgroup_id(child).unwrap_or_else(|| unsafe { bpf_get_current_cgroup_id() }),
        comm: current_comm(),
    });
}

/// A task's counters now (the scheduler updates `sum_exec_runtime` at ticks and switches: for
/// a task running on another CPU, at most a tick behind).
#[inline(always)]
fn task_counters(task: u64) -> TaskCounters {
    TaskCounters {
        on_cpu_ns: read::<u64>(task, off_task_sum_exec_runtime()).unwrap_or(0),
        runqueue_wait_ns: read::<u64>(task, off_task_run_delay()).unwrap_or(0),
        voluntary_switches: read::<u64>(task, off_task_nvcsw()).unwrap_or(0),
        involuntary_switches: read::<u64>(task, off_task_nvcsw() + 8).unwrap_or(0),
    }
}

/// `cgroup_attach_task(cgroup *dst_cgrp, const char *path, task_struct *task, bool
/// threadgroup)`, in the context of whoever wrote `cgroup.procs` or `cgroup.threads` (often the
/// task itself), once per moved thread, after the move. A whole process's move is reported
/// once, for its leader; a single thread's (`threadgroup` false) for that thread. Moves in
/// the v1 hierarchies (hybrid hosts) are not reported: the task's v2 cgroup is then not
/// `dst_cgrp`.
#[inline(always)]
pub fn on_cgroup_move(ctx: *const u64) {
    let dst_cgrp = arg(ctx, 0);
    let task = arg(ctx, 2);
    let whole_process = arg(ctx, 3) & 0xff != 0;
    let Some((pid, tgid)) = task_ids::<false>(task) else {
        return;
    };
    if (whole_process && pid != tgid) || tgid == agent_tgid() {
        return;
    }
    let Some(cgroup) = task_dfl_cgroup(task).filter(|&c| c == dst_cgrp) else {
        return;
    };
    let Some(cgroup_id) = cgroup_id(cgroup) else {
        return;
    };
    send(CgroupMoveEvent {
        header: header(event_kind::CGROUP_MOVE, pid, tgid),
        whole_process: u32::from(whole_process),
        _pad: 0,
        cgroup_id,
        counters: task_counters(task),
    });
}

/// `sched_process_exec(task_struct *p, pid_t old_pid, linux_binprm *bprm)`, in p's context
/// after the new program is mapped (so its argument vector is in user memory).
#[inline(always)]
pub fn on_exec(ctx: *const u64) {
    let (pid, tgid) = current_ids();
    if tgid == agent_tgid() {
        return;
    }
    let task = arg(ctx, 0);
    let old_pid = arg(ctx, 1) as u32;
    let bprm = arg(ctx, 2);
    // Filled in place: the event is larger than the BPF stack.
    send_with(|entry: &mut MaybeUninit<ExecEvent>| {
        // SAFETY: the entry is reserved for an ExecEvent, which is plain integers and byte arrays
        // (any bit pattern is valid). Every field is written below; of `filename` and `args`
        // only the first `filename_len` and `args_len` bytes are, and the reader reads no more.
        let event = unsafe { &mut *entry.as_mut_ptr() };
        event.header = header(event_kind::EXEC, pid, tgid);
        event.old_pid = old_pid;
        event.uid = bpf_get_current_uid_gid() as u32;
        event.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
        event._pad = 0;
        event.comm = current_comm();
        event.counters = task_counters(task);

        event.filename_len = 0;
        if let Some(filename) = read::<u64>(bprm, off_bprm_filename()) {
            if let Ok(bytes) = unsafe {
                bpf_probe_read_kernel_str_bytes(filename as *const u8, &mut event.filename)
            } {
                event.filename_len = bytes.len() as u32;
            }
        }

        event.args_len = 0;
        event.args_truncated = 0;
        let mm = read::<u64>(task, off_task_mm()).unwrap_or(0);
        let start = read::<u64>(mm, off_mm_arg_start()).unwrap_or(0);
        let end = read::<u64>(mm, off_mm_arg_end()).unwrap_or(0);
        if start != 0 && end > start {
            let mut len = (end - start) as usize;
            if len > ARGS_LEN {
                len = ARGS_LEN;
                event.args_truncated = 1;
            }
            if let Some(dst) = event.args.get_mut(..len) {
                if unsafe { bpf_probe_read_user_buf(start as *const u8, dst) }.is_ok() {
                    event.args_len = len as u32;
                }
            }
        }
    });
}

/// `sched_process_exit(task_struct *p[, bool group_dead])`, in p's context.
#[inline(always)]
pub fn on_exit(ctx: *const u64) {
    let (pid, tgid) = current_ids();
    if tgid == agent_tgid() {
        return;
    }
    let task = arg(ctx, 0);
    let group_dead = if exit_has_group_dead() {
        arg(ctx, 1) & 0xff != 0
    } else {
        // do_exit() has already decremented signal->live: 0 means this was the last thread.
        let signal = read::<u64>(task, off_task_signal()).unwrap_or(0);
        read::<i32>(signal, off_signal_live()) == Some(0)
    };
    super::custom::forget_thread(pid);
    // The counters as of the exit; the task's last switch-out refreshes them once more.
    if let Some(sched) = TASKS.get_ptr_mut(pid) {
        copy_counters::<false>(unsafe { &mut *sched }, task);
    }
    send(ExitEvent {
        header: header(event_kind::EXIT, pid, tgid),
        exit_code: read::<u32>(task, off_task_exit_code()).unwrap_or(0),
        group_dead: group_dead as u32,
        start_boottime_ns: read(task, off_task_start_boottime()).unwrap_or(0),
        comm: current_comm(),
    });
}
