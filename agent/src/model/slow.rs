//! Slow tasks: live processes worth a log line while they run (`--slow-task`).

use std::time::Duration;

use super::{span::SpanIds, TaskModel};
use crate::procfs::NS_PER_TICK;

/// When a running process is worth a log line (`--slow-task`, `--slow-task-runqueue-share`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct SlowTaskConfig {
    /// Running longer than this.
    pub(crate) wall: Duration,
    /// Or waiting for a CPU more than this share of its life (once it has lived 1 s).
    pub(crate) runqueue_share: f64,
}

impl SlowTaskConfig {
    /// Nothing is slow (`taskscope record`).
    pub(crate) const NEVER: SlowTaskConfig = SlowTaskConfig {
        wall: Duration::MAX,
        runqueue_share: f64::INFINITY,
    };
}

/// A process found slow, with where its time went.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SlowTask {
    pub(crate) pid: u32,
    pub(crate) comm: String,
    pub(crate) cgroup: Option<String>,
    pub(crate) wall_ns: u64,
    pub(crate) on_cpu_ns: u64,
    pub(crate) runqueue_wait_ns: u64,
    /// Wall time neither on a CPU nor waiting for one (for one thread; 0 if threads overlap).
    pub(crate) blocked_ns: u64,
    pub(crate) ids: Option<SpanIds>,
    /// Why: "running longer than 5m" or "waiting for a CPU 62% of the time".
    pub(crate) reason: String,
}

impl TaskModel {
    /// Live processes that just became slow (each reported once in its life).
    pub(crate) fn new_slow_tasks(&mut self, config: SlowTaskConfig) -> Vec<SlowTask> {
        let boottime = self.host.clocks().boottime_ns;
        let mono = self.collected_at_ns;
        let mut slow = Vec::new();
        for p in self.live.values_mut() {
            // Tasks started while the agent runs, not the host's daemons and kernel threads.
            if p.slow_logged || p.exit.is_some() || !p.observed_from_start {
                continue;
            }
            let start = p
                .start_boottime_ns
                .unwrap_or(p.start_ticks.saturating_mul(NS_PER_TICK));
            let wall = boottime.saturating_sub(start);
            let sched = p.sched(mono, &self.running);
            let share = sched.runqueue_wait_ns as f64 / wall.max(1) as f64;
            let reason = if wall >= config.wall.as_nanos() as u64 {
                format!("running longer than {:?}", config.wall)
            } else if wall >= 1_000_000_000 && share > config.runqueue_share {
                format!("waiting for a CPU {:.0}% of its life", share * 100.0)
            } else {
                continue;
            };
            p.slow_logged = true;
            slow.push(SlowTask {
                pid: p.pid,
                comm: p.comm.clone(),
                cgroup: p.cgroup_path.clone(),
                wall_ns: wall,
                on_cpu_ns: sched.on_cpu_ns,
                runqueue_wait_ns: sched.runqueue_wait_ns,
                blocked_ns: wall.saturating_sub(sched.on_cpu_ns + sched.runqueue_wait_ns),
                ids: p.span_ids,
                reason,
            });
        }
        slow
    }
}
