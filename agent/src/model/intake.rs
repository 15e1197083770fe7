//! What the task model takes in from the kernel maps, and what it gives back to forget.
//!
//! The poller (collector layer) fills a [`KernelSnapshot`] from the maps and removes what a
//! [`Forget`] lists; the model only sees these plain values.

use super::{
    node::{cpu_windows, CpuTotals},
    process::PriorSched,
    workload::Workload,
    TaskModel, FINAL_READ_POLLS, SWEEP_EVERY_POLLS,
};
use taskscope_common::{
    CpuStats, DeviceIo, DeviceIoKey, ErrnoKey, ProcessIo, ProcessIoKey, SyscallCounts, SyscallKey,
    SyscallStats, TaskSched, WorkloadSyscallKey, LOSS_KINDS,
};

/// Everything the kernel has accumulated, read in one pass.
#[derive(Debug, Clone, Default)]
pub(crate) struct KernelSnapshot {
    /// CLOCK_MONOTONIC when the read started (the kernel programs' clock).
    pub(crate) taken_at_ns: u64,
    pub(crate) tasks: Vec<(u32, TaskSched)>,
    pub(crate) syscalls: Vec<(SyscallKey, SyscallCounts)>,
    /// Per (cgroup, syscall), with latency histograms: the workloads' syscall figures.
    pub(crate) workload_syscalls: Vec<(WorkloadSyscallKey, SyscallStats)>,
    pub(crate) errnos: Vec<(ErrnoKey, u64)>,
    pub(crate) process_io: Vec<(ProcessIoKey, ProcessIo)>,
    pub(crate) device_io: Vec<(DeviceIoKey, DeviceIo)>,
    /// One entry per possible CPU.
    pub(crate) cpus: Vec<CpuStats>,
    /// Lost data per [`taskscope_common::Loss`], summed over CPUs.
    pub(crate) losses: [u64; LOSS_KINDS as usize],
    /// Entries that could not be read (they vanished mid-iteration, usually).
    pub(crate) read_errors: u64,
}

/// Map entries the task model no longer needs.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Forget {
    /// Exited threads (tid, tgid): their `TASKS` entries.
    pub(crate) tids: Vec<(u32, u32)>,
    /// Entries of exited processes.
    pub(crate) syscalls: Vec<SyscallKey>,
    /// Entries of cgroups without a live process for `--series-ttl`.
    pub(crate) workload_syscalls: Vec<WorkloadSyscallKey>,
    pub(crate) errnos: Vec<ErrnoKey>,
    pub(crate) process_io: Vec<ProcessIoKey>,
    /// Exited processes (tgid): their count of syscall-table entries.
    pub(crate) processes: Vec<u32>,
}

impl TaskModel {
    /// Applies a read of the kernel maps; returns the map entries that are no longer needed.
    pub(crate) fn apply_kernel(&mut self, snapshot: KernelSnapshot) -> Forget {
        self.polls += 1;
        self.counters.polls = self.polls;
        let polls = self.polls;
        let mut forget = Forget::default();

        self.apply_tasks(snapshot.tasks);
        // In process order: the kernel hands the entries over in hash order, and a node of
        // 10,000 processes has 300,000 of them; taken one process at a time, each process's
        // table is looked up once and filled while it is in the cache.
        let mut syscalls = snapshot.syscalls;
        syscalls.sort_unstable_by_key(|(key, _)| (key.tgid, key.nr));
        for entries in syscalls.chunk_by(|a, b| a.0.tgid == b.0.tgid) {
            let Some(process) = entries
                .first()
                .and_then(|(key, _)| self.live.get_mut(&key.tgid))
            else {
                continue;
            };
            for (key, stats) in entries {
                process.syscalls.insert(key.nr, *stats);
            }
        }
        forget.workload_syscalls = self.apply_cgroup_syscalls(snapshot.workload_syscalls);
        for (key, count) in snapshot.errnos {
            if let Some(process) = self.live.get_mut(&key.tgid) {
                process.errnos.insert((key.nr, key.errno), count);
            }
        }
        for (key, io) in snapshot.process_io {
            if let Some(process) = self.live.get_mut(&key.tgid) {
                process.io.insert((key.dev, key.op), io);
            }
        }
        self.running = snapshot
            .cpus
            .iter()
            .filter(|cpu| cpu.current_pid != 0)
            .map(|cpu| (cpu.current_pid, cpu.current_since_ns))
            .collect();
        self.cpus = snapshot.cpus;
        self.advance_cpu_window(snapshot.taken_at_ns);
        self.device_io = snapshot.device_io;
        self.kernel_losses = snapshot.losses;
        self.map_read_errors += snapshot.read_errors;
        self.collected_at_ns = snapshot.taken_at_ns;

        // Fold exited threads and retire exited processes once their final values are in.
        let due = |after: Option<u64>| after.is_some_and(|a| a + FINAL_READ_POLLS <= polls);
        let mut retire = Vec::new();
        let now = self.host.clocks().monotonic_ns;
        for process in self.live.values_mut() {
            let done: Vec<u32> = process
                .threads
                .iter()
                .filter(|(_, t)| due(t.exited_after_poll))
                .map(|(&tid, _)| tid)
                .collect();
            for tid in done {
                if let Some((path, share)) = process.fold_thread(tid, &mut forget) {
                    self.workloads.credit_thread(&path, &share, now);
                }
            }
            if due(process.exit_seen_after_poll) {
                retire.push(process.pid);
            }
        }
        if polls.is_multiple_of(SWEEP_EVERY_POLLS) {
            retire.extend(self.vanished());
        }
        retire.sort_unstable();
        retire.dedup();
        for pid in retire {
            self.retire(pid, &mut forget);
        }
        self.evict_exited();
        forget
    }

    /// Takes the kernel's per-task scheduler figures into the processes they belong to.
    fn apply_tasks(&mut self, tasks: Vec<(u32, TaskSched)>) {
        let mut unknown = std::collections::HashSet::new();
        for (tid, task) in tasks {
            if task.tgid == 0 {
                continue;
            }
            // A task of a process the model does not know yet forked while the maps were
            // read: its fork event is still in the ring buffer. Taken from /proc now, a
            // process already gone would be a bare entry that its fork event then took for a
            // reused pid, and counted lost. Only a task still unknown at the next read (its
            // fork event was lost) is looked up in /proc.
            if !self.live.contains_key(&task.tgid) && !self.unknown_tasks.contains(&tid) {
                unknown.insert(tid);
                continue;
            }
            match self.live_or_proc(task.tgid) {
                Some(process) => {
                    process.last_switch_out_ns =
                        process.last_switch_out_ns.max(task.last_switch_out_ns);
                    let thread = process.threads.entry(tid).or_default();
                    if thread.sched.is_none() && !thread.born_seen {
                        process.prior.add(&PriorSched::of(&task));
                    }
                    thread.sched = Some(task);
                }
                None => {
                    unknown.insert(tid);
                }
            }
        }
        self.unknown_tasks = unknown;
    }

    /// Takes the kernel's per-cgroup syscall figures; a cgroup given up leaves its final
    /// figures to its workload's retired totals. Returns the entries the kernel may free.
    fn apply_cgroup_syscalls(
        &mut self,
        entries: Vec<(WorkloadSyscallKey, SyscallStats)>,
    ) -> Vec<WorkloadSyscallKey> {
        let live_cgroups: std::collections::HashSet<u64> =
            self.live.values().filter_map(|p| p.cgroup_id).collect();
        let host = &mut self.host;
        let applied = self.cgroup_syscalls.apply(
            entries,
            &live_cgroups,
            host.clocks().monotonic_ns,
            self.config.series_ttl_ns(),
            |id| host.cgroup_path(id, 0),
        );
        self.counters.cgroup_unresolved += applied.unresolved;
        if !applied.given_up.is_empty() {
            let live_workloads: std::collections::HashSet<String> = self
                .live
                .values()
                .map(|p| {
                    let path = p.cgroup_path.as_deref().unwrap_or("/");
                    Workload::from_cgroup(path).key().to_string()
                })
                .collect();
            let now = self.host.clocks().monotonic_ns;
            for (path, syscalls) in &applied.given_up {
                let live = live_workloads.contains(Workload::from_cgroup(path).key());
                self.workloads.credit_syscalls(path, syscalls, live, now);
            }
        }
        applied.forget
    }

    /// Closes the CPU window when it is long enough, and starts the next one.
    pub(super) fn advance_cpu_window(&mut self, read_at_ns: u64) {
        let totals: Vec<CpuTotals> = self
            .cpus
            .iter()
            .map(|cpu| CpuTotals::of(cpu, read_at_ns))
            .collect();
        let window_ns = self.config.cpu_window.as_nanos() as u64;
        match &self.cpu_window_start {
            Some((start, before)) if read_at_ns.saturating_sub(*start) >= window_ns => {
                let threshold = self.config.idle_fragment_threshold.as_nanos() as u64;
                self.cpu_windows = cpu_windows(before, &totals, threshold);
                self.cpu_window_start = Some((read_at_ns, totals));
            }
            Some(_) => {}
            None => self.cpu_window_start = Some((read_at_ns, totals)),
        }
    }
}
