//! Retirement and eviction: a process that exited (or vanished without an exit event) leaves
//! its figures to its workload, its span to the exporters, and its map entries to forget; the
//! exited list is kept bounded.

use std::time::Instant;

use taskscope_common::{ErrnoKey, ProcessIoKey, SyscallKey};

use super::{intake::Forget, span::TaskSpan, ExitStatus, TaskModel, MAX_NEW_SPANS};

impl TaskModel {
    /// Moves a live process to the exited list.
    pub(super) fn retire(&mut self, pid: u32, forget: &mut Forget) {
        let Some(mut process) = self.live.remove(&pid) else {
            return;
        };
        let clocks = self.host.clocks();
        let now = clocks.monotonic_ns;
        let tids: Vec<u32> = process.threads.keys().copied().collect();
        for tid in tids {
            if let Some((path, share)) = process.fold_thread(tid, forget) {
                self.workloads.credit_thread(&path, &share, now);
            }
        }
        forget.processes.push(pid);
        forget.syscalls.extend(
            process
                .syscalls
                .keys()
                .map(|&nr| SyscallKey { tgid: pid, nr }),
        );
        forget
            .errnos
            .extend(process.errnos.keys().map(|&(nr, errno)| ErrnoKey {
                tgid: pid,
                nr,
                errno,
                _pad: 0,
            }));
        forget
            .process_io
            .extend(process.io.keys().map(|&(dev, op)| ProcessIoKey {
                tgid: pid,
                op,
                dev,
                _pad: 0,
            }));
        if process.exit.is_none() {
            process.exit = Some(ExitStatus::Unknown);
            self.counters.processes_lost += 1;
        }
        self.counters.processes_exited += 1;
        let boot_minus_mono = clocks.boottime_ns.saturating_sub(now);
        self.workloads.retire(&process, now, boot_minus_mono);
        if let Some(span) = TaskSpan::of(&process, &clocks) {
            self.counters.spans += 1;
            if self.new_spans.len() < MAX_NEW_SPANS {
                self.new_spans.push(span.clone());
            } else {
                self.counters.spans_dropped += 1;
            }
            self.spans.push_back(span);
            while self.spans.len() > self.config.max_exited {
                self.spans.pop_front();
            }
        }
        process.exited_at = Some(Instant::now());
        self.exited.push_back(process);
        while self.exited.len() > self.config.max_exited {
            self.exited.pop_front();
            self.counters.processes_evicted += 1;
        }
    }

    /// Live processes that were already gone from /proc (or whose pid belonged to someone else)
    /// at the previous sweep and whose exit event still has not come: it was lost. A process
    /// missing for the first time is only marked, because its exit event may be in the ring
    /// buffer, not yet read.
    pub(super) fn vanished(&mut self) -> Vec<u32> {
        let mut lost = Vec::new();
        for p in self.live.values_mut().filter(|p| p.exit.is_none()) {
            let gone = self
                .host
                .stat(p.pid)
                .is_none_or(|stat| stat.start_ticks != p.start_ticks);
            if gone && p.missing_at_sweep {
                lost.push(p.pid);
            }
            p.missing_at_sweep = gone;
        }
        lost
    }

    pub(super) fn evict_exited(&mut self) {
        let retention = self.config.exited_retention;
        while self
            .exited
            .front()
            .and_then(|p| p.exited_at)
            .is_some_and(|t| t.elapsed() > retention)
        {
            self.exited.pop_front();
            self.counters.processes_evicted += 1;
        }
    }
}
