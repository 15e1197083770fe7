//! The process lifecycle: processes found in /proc at start, then fork, exec and exit events,
//! slow-wait reports, and the cgroup a process is in.

use taskscope_common::{
    decode::{c_string, Event, Exec},
    CgroupMoveEvent, ExitEvent, ForkEvent, TaskCounters, HIST_BUCKETS,
};

use super::{
    aggregate::WorkloadTotals,
    intake::Forget,
    process::{PriorSched, Process, SchedTotals, SlowWait, Thread, ThreadCgroup},
    ExitStatus, TaskModel,
};
use crate::procfs::NS_PER_TICK;

impl TaskModel {
    /// Adds every process in /proc (those that started before the agent).
    pub(crate) fn scan_proc(&mut self) {
        for pid in self.host.pids() {
            if !self.live.contains_key(&pid) {
                self.insert_from_proc(pid);
            }
        }
    }

    /// Builds a process from /proc; a bare entry when /proc has nothing (it already exited).
    pub(super) fn insert_from_proc(&mut self, pid: u32) -> Option<&mut Process> {
        let process = match self.host.stat(pid) {
            Some(stat) => {
                let exit = stat.exited().then(|| ExitStatus::from_raw(stat.exit_code));
                let mut p = Process::new(pid, stat.start_ticks);
                p.ppid = stat.ppid;
                p.comm = stat.comm;
                p.exe = self.host.exe(pid);
                let (cmdline, truncated) = self.host.cmdline(pid).unwrap_or_else(|| {
                    self.counters.cmdline_unreadable += 1;
                    Default::default()
                });
                p.cmdline = self.config.redactor.redact(cmdline);
                p.cmdline_truncated = truncated;
                p.uid = self.host.uid(pid);
                if let Some(path) = self.host.cgroup(pid) {
                    p.cgroup_id = self.host.cgroup_id(&path);
                    p.cgroup_path = Some(path);
                }
                p.threads.insert(pid, Thread::default());
                p.threads_started = 1;
                // Exited before the agent was there to see it (or its exit event is still
                // in the ring buffer): not live, and not a lost exit when it is reaped.
                p.exit_seen_after_poll = exit.is_some().then_some(self.polls);
                p.exit = exit;
                p
            }
            None => Process::new(pid, 0),
        };
        self.insert_live(process)
    }

    pub(super) fn insert_live(&mut self, process: Process) -> Option<&mut Process> {
        if self.live.len() >= self.config.max_live && !self.live.contains_key(&process.pid) {
            self.counters.processes_dropped += 1;
            return None;
        }
        let pid = process.pid;
        self.live.insert(pid, process);
        self.live.get_mut(&pid)
    }

    pub(super) fn live_or_proc(&mut self, pid: u32) -> Option<&mut Process> {
        if self.live.contains_key(&pid) {
            return self.live.get_mut(&pid);
        }
        self.insert_from_proc(pid)
    }

    /// Applies one ring-buffer event. Returns map entries to forget (a pid reused before its
    /// previous owner was retired).
    pub(crate) fn apply_event(&mut self, event: Event, forget: &mut Forget) {
        self.counters.events += 1;
        match event {
            Event::Fork(fork) => self.apply_fork(fork, forget),
            Event::Exec(exec) => self.apply_exec(*exec),
            Event::Exit(exit) => self.apply_exit(exit),
            Event::SlowSyscall(slow) => {
                let max = self.config.max_slow_syscalls;
                if let Some(process) = self.live.get_mut(&slow.header.tgid) {
                    if process.slow_syscalls.len() >= max {
                        process.slow_syscalls.pop_front();
                    }
                    process.slow_syscalls.push_back(slow);
                } else {
                    self.counters.events_of_untracked += 1;
                }
            }
            Event::SlowRunqueueWait(slow) => self.add_slow_wait(
                slow.header.tgid,
                SlowWait::RunqueueWait {
                    tid: slow.header.pid,
                    at_ns: slow.header.ts_ns,
                    wait_ns: slow.wait_ns,
                },
            ),
            // Context switches (recording only) are the recorder's, not the model's.
            Event::Switch(_) => {}
            Event::CgroupMove(moved) => self.apply_cgroup_move(moved),
            Event::SlowIo(slow) => self.add_slow_wait(
                slow.header.tgid,
                SlowWait::BlockIo {
                    at_ns: slow.header.ts_ns,
                    dev: slow.dev,
                    op: slow.op,
                    bytes: slow.bytes,
                    latency_ns: slow.latency_ns,
                },
            ),
        }
    }

    /// A new process (or a new thread of a known one); a reused pid retires its previous owner.
    fn apply_fork(&mut self, fork: ForkEvent, forget: &mut Forget) {
        self.add_forked(fork, forget);
        // The kernel program reset the tid's `TASKS` entry at this fork: what is there now is
        // the new task's. A pending forget of that tid (its previous owner retired in this
        // cycle, or just above because the pid was reused) would delete the new task's run-queue
        // histogram and waiting state; its counters come back at the next switch, its
        // histogram would not.
        let tid = fork.header.pid;
        forget.tids.retain(|&(pending, _)| pending != tid);
    }

    /// The forked task in the model: a thread of its process, or a new process.
    fn add_forked(&mut self, fork: ForkEvent, forget: &mut Forget) {
        let pid = fork.header.pid;
        let tgid = fork.header.tgid;
        if fork.is_thread != 0 {
            // A thread made in a threaded cgroup of its creator's starts there, not in its
            // process's.
            let elsewhere = self
                .live
                .get(&tgid)
                .is_some_and(|p| p.cgroup_id.is_some_and(|id| id != fork.cgroup_id));
            let path = elsewhere
                .then(|| self.cgroup_path(fork.cgroup_id, pid))
                .flatten();
            if let Some(process) = self.live_or_proc(tgid) {
                let thread = process.threads.entry(pid).or_insert_with(Thread::born);
                thread.cgroup = path
                    .filter(|p| process.cgroup_path.as_ref() != Some(p))
                    .map(|path| {
                        Box::new(ThreadCgroup {
                            path,
                            base: SchedTotals::default(),
                        })
                    });
                process.threads_started += 1;
            }
            return;
        }
        let start_ticks = fork.start_boottime_ns / NS_PER_TICK;
        if let Some(existing) = self.live.get_mut(&pid) {
            let found_by_scan = existing.exit.is_none() && !existing.observed_from_start;
            if found_by_scan && existing.start_ticks == start_ticks {
                // Found by the /proc scan after the fork (the agent was starting):
                // the same process, seen from its start after all, so it gets a span.
                existing.observed_from_start = true;
                existing.start_boottime_ns = Some(fork.start_boottime_ns);
                // Nothing it did is from before the agent (unless already read: a few ms).
                if let Some(leader) = existing.threads.get_mut(&pid) {
                    leader.born_seen = true;
                }
                let parent_ids = self.live.get(&fork.parent_tgid).and_then(|p| p.span_ids);
                let ids = self
                    .span_ids
                    .ids(pid, fork.start_boottime_ns, parent_ids.as_ref());
                if let Some(existing) = self.live.get_mut(&pid) {
                    existing.span_ids = Some(ids);
                }
                self.counters.processes_started += 1;
                return;
            }
            // The pid was reused: its previous owner is gone. Its kernel entries (keyed by
            // the pid) go with this cycle's forget; what the new process counted before that
            // is merged with them.
            self.counters.pids_reused += 1;
            self.retire(pid, forget);
        }
        let parent = self.live.get(&fork.parent_tgid);
        let mut process = Process::new(pid, start_ticks);
        let parent_ids = parent.and_then(|p| p.span_ids);
        process.span_ids = Some(self.span_ids.ids(
            pid,
            fork.start_boottime_ns,
            parent_ids.as_ref(),
        ));
        process.start_boottime_ns = Some(fork.start_boottime_ns);
        process.ppid = fork.parent_tgid;
        process.comm = c_string(&fork.comm);
        process.exe = parent.and_then(|p| p.exe.clone());
        process.cmdline = parent.map(|p| p.cmdline.clone()).unwrap_or_default();
        process.uid = Some(fork.uid);
        process.cgroup_id = Some(fork.cgroup_id);
        process.cgroup_path = self.cgroup_path(fork.cgroup_id, pid);
        process.observed_from_start = true;
        process.threads.insert(pid, Thread::born());
        process.threads_started = 1;
        self.counters.processes_started += 1;
        self.insert_live(process);
    }

    /// A thread exited; the process too when it was the last one.
    fn apply_exit(&mut self, exit: ExitEvent) {
        let polls = self.polls;
        let Some(process) = self.live.get_mut(&exit.header.tgid) else {
            self.counters.events_of_untracked += 1;
            return;
        };
        process
            .threads
            .entry(exit.header.pid)
            .or_default()
            .exited_after_poll = Some(polls);
        if exit.group_dead != 0 {
            process.exit = Some(ExitStatus::from_raw(exit.exit_code));
            process.exit_time_ns = Some(exit.header.ts_ns);
            process.exit_seen_after_poll = Some(polls);
        }
    }

    /// Remembers a long wait of a live process (the latest `max_slow_syscalls`).
    pub(super) fn add_slow_wait(&mut self, tgid: u32, wait: SlowWait) {
        let max = self.config.max_slow_syscalls;
        if let Some(process) = self.live.get_mut(&tgid) {
            if process.slow_waits.len() >= max {
                process.slow_waits.pop_front();
            }
            process.slow_waits.push_back(wait);
        } else {
            self.counters.events_of_untracked += 1;
        }
    }

    /// The path of cgroup `id` that task `pid` was seen in; a cgroup that cannot be resolved
    /// is counted (its tasks are charged to no cgroup).
    fn cgroup_path(&mut self, id: u64, pid: u32) -> Option<String> {
        let path = self.host.cgroup_path(id, pid);
        if path.is_none() && id != 0 {
            self.counters.cgroup_unresolved += 1;
        }
        path
    }

    pub(super) fn apply_exec(&mut self, exec: Exec) {
        let tgid = exec.header.tgid;
        let cgroup_path = self.cgroup_path(exec.cgroup_id, tgid);
        let polls = self.polls;
        let cmdline = self.config.redactor.redact(exec.args);
        // Read while the process runs (a very short one may be gone: it keeps its trace), and
        // only for a process with a place in a trace to change.
        let joins = self.live.get(&tgid).is_some_and(|p| p.span_ids.is_some());
        let traceparent = if self.config.join_traceparent && joins {
            self.host.traceparent(tgid)
        } else {
            None
        };
        let exe = self.host.exe(tgid);
        let Some(process) = self.live_or_proc(tgid) else {
            return;
        };
        // The exe link is absolute and resolved; the filename passed to execve may be relative.
        process.exe = exe.or(Some(exec.filename));
        process.comm = exec.comm;
        process.cmdline = cmdline;
        process.cmdline_truncated = exec.args_truncated;
        process.uid = Some(exec.uid);
        process.cgroup_id = Some(exec.cgroup_id);
        process.exec_time_ns = Some(exec.header.ts_ns);
        // Children inherit the variable: one whose parent already joined that trace stays its
        // parent's child.
        if let (Some(ids), Some((trace_id, parent))) = (process.span_ids, traceparent) {
            if ids.trace_id != trace_id {
                process.span_ids = Some(ids.joined(trace_id, parent));
            }
        }
        if exec.old_pid != exec.header.pid {
            // A non-leader thread exec'd and took over the leader's pid: its old tid is gone.
            process
                .threads
                .entry(exec.old_pid)
                .or_default()
                .exited_after_poll = Some(polls);
        }
        self.set_cgroup(tgid, cgroup_path, Some((exec.old_pid, exec.sched_at_exec)));
    }

    /// A process moved to another cgroup without exec (a write to `cgroup.procs`): charged to
    /// the new one from the moment of the move. Written to the cgroup it is already in, it
    /// only brings its threads back from cgroups of their own.
    fn apply_cgroup_move(&mut self, moved: CgroupMoveEvent) {
        if moved.whole_process == 0 {
            return self.apply_thread_move(moved);
        }
        let tgid = moved.header.tgid;
        // Every thread went with it, those in cgroups of their own included.
        self.end_thread_cgroups(tgid);
        let known = self.live.get(&tgid).and_then(|p| p.cgroup_id);
        if known == Some(moved.cgroup_id) {
            return;
        }
        let path = self.cgroup_path(moved.cgroup_id, tgid);
        if path.is_some() {
            if let Some(process) = self.live.get_mut(&tgid) {
                process.cgroup_id = Some(moved.cgroup_id);
            }
        }
        self.set_cgroup(tgid, path, Some((moved.header.pid, moved.counters)));
    }

    /// One thread moved alone (a write to `cgroup.threads`): its CPU time, run-queue waits and
    /// switches count in its new cgroup from the moment of the move. Its syscalls and block IO
    /// stay with its process's workload: the kernel counts those per process.
    fn apply_thread_move(&mut self, moved: CgroupMoveEvent) {
        let (tid, tgid) = (moved.header.pid, moved.header.tgid);
        let path = self.cgroup_path(moved.cgroup_id, tid);
        let now = self.host.clocks().monotonic_ns;
        let Some(process) = self.live.get_mut(&tgid) else {
            return;
        };
        let (Some(path), Some(home)) = (path, process.cgroup_path.clone()) else {
            return;
        };
        let c = moved.counters;
        let at = SchedTotals {
            on_cpu_ns: c.on_cpu_ns,
            runqueue_wait_ns: c.runqueue_wait_ns,
            voluntary_switches: c.voluntary_switches,
            involuntary_switches: c.involuntary_switches,
            // Waits are binned at the agent's reads: those since the last one go with the move.
            runqueue_hist: process
                .threads
                .get(&tid)
                .and_then(|t| t.sched)
                .map_or([0; HIST_BUCKETS], |s| s.runqueue_hist),
        };
        if let Some((left, share)) = process.leave_thread_cgroup(tid, Some(at)) {
            self.workloads.credit_thread(&left, &share, now);
        }
        if path != home {
            process.threads.entry(tid).or_default().cgroup =
                Some(Box::new(ThreadCgroup { path, base: at }));
        }
    }

    /// Brings every thread of a process that is in a cgroup of its own back to the process's
    /// cgroup: what each accumulated there is credited there.
    fn end_thread_cgroups(&mut self, pid: u32) {
        let now = self.host.clocks().monotonic_ns;
        let Some(process) = self.live.get_mut(&pid) else {
            return;
        };
        let away: Vec<u32> = process
            .threads
            .iter()
            .filter(|(_, t)| t.cgroup.is_some())
            .map(|(&tid, _)| tid)
            .collect();
        for tid in away {
            if let Some((path, share)) = process.leave_thread_cgroup(tid, None) {
                self.workloads.credit_thread(&path, &share, now);
            }
        }
    }

    /// Sets a live process's cgroup. When it moves, what it accumulated so far stays with the
    /// workload it leaves, so that no workload's counter ever goes down. An unresolved path
    /// (`None`) keeps the one known.
    /// `at_move`: the thread whose event showed the move (an exec, or a cgroup move) and its
    /// counters at that moment: the figures left behind are the ones of that moment, not of
    /// when the event was read (the process may have run for a while in its new cgroup by then).
    pub(super) fn set_cgroup(
        &mut self,
        pid: u32,
        path: Option<String>,
        at_move: Option<(u32, TaskCounters)>,
    ) {
        let Some(process) = self.live.get(&pid) else {
            return;
        };
        if path.is_none() && process.cgroup_path.is_some() {
            return;
        }
        if matches!((&process.cgroup_path, &path), (Some(old), Some(new)) if old != new) {
            // All its threads move with it (an exec leaves one; cgroup.procs moves them all).
            self.end_thread_cgroups(pid);
        }
        let Some(process) = self.live.get(&pid) else {
            return;
        };
        if let (Some(old), Some(new)) = (&process.cgroup_path, &path) {
            if old != new {
                let now = self.host.clocks().monotonic_ns;
                let mut figures = WorkloadTotals::figures_of(process, now, &self.running);
                if let Some((tid, at)) = at_move {
                    // Swap the thread's figures as counted for its figures at the move. A
                    // thread not read from the kernel yet (a process that moved itself right
                    // after it started, in the same poll) counts for nothing in them but the
                    // time it has been running, and its figures at the move are all it did
                    // before: without the swap its new workload would be charged for them.
                    let thread = process.threads.get(&tid);
                    let counted = thread.map_or_else(SchedTotals::default, |t| {
                        Process::thread_sched(tid, t, now, &self.running)
                    });
                    let swap = |total: &mut u64, counted: u64, then: u64| {
                        *total = total.saturating_sub(counted).saturating_add(then);
                    };
                    let f = &mut figures.sched;
                    swap(&mut f.on_cpu_ns, counted.on_cpu_ns, at.on_cpu_ns);
                    swap(
                        &mut f.runqueue_wait_ns,
                        counted.runqueue_wait_ns,
                        at.runqueue_wait_ns,
                    );
                    swap(
                        &mut f.voluntary_switches,
                        counted.voluntary_switches,
                        at.voluntary_switches,
                    );
                    swap(
                        &mut f.involuntary_switches,
                        counted.involuntary_switches,
                        at.involuntary_switches,
                    );
                }
                let mut credit = match &process.moved_baseline {
                    Some(base) => figures.figures_minus(base),
                    None => figures.clone(),
                };
                // What was from before the agent goes with the credit; the new baseline
                // holds it for the new workload.
                credit.prior = process.prior;
                let old = old.clone();
                self.workloads.credit(&old, &credit, now);
                if let Some(process) = self.live.get_mut(&pid) {
                    process.moved_baseline = Some(Box::new(figures));
                    process.prior = PriorSched::default();
                }
            }
        }
        if let Some(process) = self.live.get_mut(&pid) {
            process.cgroup_path = path;
        }
    }
}
