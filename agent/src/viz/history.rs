//! A bounded history of the node: the collector's cumulative counters read once an interval,
//! kept as what changed in each interval (a [`Frame`]), the newest [`MAX_FRAMES`].
//!
//! Pure: the recorder (`viz::record`) feeds it readings; the heatmaps read its frames.

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
};

use taskscope_common::HIST_BUCKETS;

use crate::model::histogram::{self, Log2Hist};

/// Frames kept: five minutes at one a second.
pub(crate) const MAX_FRAMES: usize = 300;

/// Workloads whose run-queue waits one frame keeps: those with the most waits in it. The waits
/// of the rest are in the node's histogram and counted in [`Frame::workloads_left_out`].
pub(crate) const MAX_WORKLOADS_PER_FRAME: usize = 64;

/// The non-zero buckets of a log2 histogram, as (bucket, count).
pub(crate) type SparseHist = Vec<(u8, u64)>;

/// One CPU's cumulative busy and idle time (ns, since the agent started).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CpuReading {
    /// False until the CPU's first context switch was seen.
    pub(crate) observed: bool,
    pub(crate) busy_ns: u64,
    pub(crate) idle_ns: u64,
    /// Idle time in closed idle periods, by log2 length bucket.
    pub(crate) idle_ns_by_bucket: Log2Hist,
}

/// The collector's cumulative counters at one read.
#[derive(Debug, Clone, Default)]
pub(crate) struct Reading {
    /// Unix time of the kernel read (ms).
    pub(crate) unix_ms: u64,
    /// CLOCK_MONOTONIC of the kernel read the figures come from.
    pub(crate) monotonic_ns: u64,
    pub(crate) cpus: Vec<CpuReading>,
    /// Run-queue waits by cgroup path.
    pub(crate) runqueue_by_workload: HashMap<Arc<str>, Log2Hist>,
}

/// What changed in one interval.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Frame {
    /// Unix time of the interval's end (ms).
    pub(crate) unix_ms: u64,
    /// Length of the interval, from the kernel reads' clock.
    pub(crate) interval_ns: u64,
    /// Share of the interval each CPU was busy; `None` for a CPU not yet seen.
    pub(crate) cpu_busy: Vec<Option<f64>>,
    /// Idle time of each CPU in idle periods that closed in the interval, by length.
    pub(crate) cpu_idle_ns_by_bucket: Vec<Log2Hist>,
    /// Run-queue waits of the whole node (every workload's).
    pub(crate) node_runqueue: Log2Hist,
    /// Run-queue waits of the workloads with the most (cgroup path, waits).
    pub(crate) workload_runqueue: Vec<(Arc<str>, SparseHist)>,
    /// Workloads with waits in the interval that [`MAX_WORKLOADS_PER_FRAME`] left out.
    pub(crate) workloads_left_out: u64,
}

impl Frame {
    /// What changed from `before` to `now`.
    fn between(before: &Reading, now: &Reading) -> Self {
        let interval_ns = now.monotonic_ns.saturating_sub(before.monotonic_ns);
        let cpu = |i: usize| (before.cpus.get(i), &now.cpus[i]);
        let cpu_busy = (0..now.cpus.len())
            .map(|i| match cpu(i) {
                (Some(b), n) if b.observed && n.observed => {
                    let busy = n.busy_ns.saturating_sub(b.busy_ns);
                    let idle = n.idle_ns.saturating_sub(b.idle_ns);
                    (busy + idle > 0).then(|| busy as f64 / (busy + idle) as f64)
                }
                _ => None,
            })
            .collect();
        let cpu_idle_ns_by_bucket = (0..now.cpus.len())
            .map(|i| {
                let (b, n) = cpu(i);
                histogram::delta(&n.idle_ns_by_bucket, b.map(|b| &b.idle_ns_by_bucket))
            })
            .collect();
        let mut node_runqueue = [0; HIST_BUCKETS];
        let mut waits: Vec<(Arc<str>, Log2Hist, u64)> = now
            .runqueue_by_workload
            .iter()
            .filter_map(|(cgroup, hist)| {
                let added = histogram::delta(hist, before.runqueue_by_workload.get(cgroup));
                let total: u64 = added.iter().sum();
                (total > 0).then(|| (Arc::clone(cgroup), added, total))
            })
            .collect();
        for (_, added, _) in &waits {
            histogram::add(&mut node_runqueue, added);
        }
        // Most waits first; ties by name, so that the same frame is kept the same way.
        waits.sort_unstable_by(|a, b| b.2.cmp(&a.2).then_with(|| a.0.cmp(&b.0)));
        let workloads_left_out = waits.len().saturating_sub(MAX_WORKLOADS_PER_FRAME) as u64;
        waits.truncate(MAX_WORKLOADS_PER_FRAME);
        let workload_runqueue = waits
            .into_iter()
            .map(|(cgroup, added, _)| (cgroup, sparse(&added)))
            .collect();
        Frame {
            unix_ms: now.unix_ms,
            interval_ns,
            cpu_busy,
            cpu_idle_ns_by_bucket,
            node_runqueue,
            workload_runqueue,
            workloads_left_out,
        }
    }

    /// Run-queue waits of `cgroup` in this interval (none when it had none, or was left out).
    pub(crate) fn workload_runqueue(&self, cgroup: &str) -> Log2Hist {
        let mut hist = [0; HIST_BUCKETS];
        if let Some((_, buckets)) = self.workload_runqueue.iter().find(|(c, _)| &**c == cgroup) {
            for &(bucket, count) in buckets {
                hist[usize::from(bucket)] = count;
            }
        }
        hist
    }
}

/// The non-zero buckets of `hist`.
fn sparse(hist: &Log2Hist) -> SparseHist {
    hist.iter()
        .enumerate()
        .filter(|(_, &count)| count > 0)
        .map(|(bucket, &count)| (bucket as u8, count))
        .collect()
}

/// The newest frames and the reading the next one starts from.
#[derive(Debug, Default)]
pub(crate) struct History {
    last: Option<Reading>,
    frames: VecDeque<Frame>,
}

impl History {
    /// Adds the interval from the previous reading to `reading` (the first makes no frame).
    /// A reading not newer than the previous one (the collector had not read the kernel
    /// again) is skipped. Whether a frame was added.
    pub(crate) fn push(&mut self, reading: Reading) -> bool {
        let mut added = false;
        if let Some(before) = &self.last {
            if reading.monotonic_ns <= before.monotonic_ns {
                return false;
            }
            if self.frames.len() == MAX_FRAMES {
                self.frames.pop_front();
            }
            self.frames.push_back(Frame::between(before, &reading));
            added = true;
        }
        self.last = Some(reading);
        added
    }

    /// The newest frame.
    pub(crate) fn newest(&self) -> Option<&Frame> {
        self.frames.back()
    }

    /// The frames of the last `seconds`, oldest first.
    pub(crate) fn frames(&self, seconds: u64) -> impl Iterator<Item = &Frame> {
        let newest = self.frames.back().map_or(0, |f| f.unix_ms);
        let from = newest.saturating_sub(seconds.saturating_mul(1000));
        self.frames.iter().filter(move |f| f.unix_ms > from)
    }

    /// Whether the latest reading has `cgroup` (a workload that exists, waits or not).
    pub(crate) fn knows_workload(&self, cgroup: &str) -> bool {
        self.last
            .as_ref()
            .is_some_and(|r| r.runqueue_by_workload.contains_key(cgroup))
    }

    /// CPUs in the latest reading.
    pub(crate) fn cpus(&self) -> usize {
        self.last.as_ref().map_or(0, |r| r.cpus.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpu(busy_ns: u64, idle_ns: u64, short_idle_ns: u64) -> CpuReading {
        let mut idle_ns_by_bucket = [0; HIST_BUCKETS];
        idle_ns_by_bucket[10] = short_idle_ns;
        CpuReading {
            observed: true,
            busy_ns,
            idle_ns,
            idle_ns_by_bucket,
        }
    }

    fn reading(second: u64, cpus: Vec<CpuReading>, workloads: &[(&str, usize, u64)]) -> Reading {
        let mut runqueue_by_workload = HashMap::new();
        for &(cgroup, bucket, count) in workloads {
            let hist: &mut Log2Hist = runqueue_by_workload
                .entry(Arc::from(cgroup))
                .or_insert([0; HIST_BUCKETS]);
            hist[bucket] = count;
        }
        Reading {
            unix_ms: second * 1000,
            monotonic_ns: second * 1_000_000_000,
            cpus,
            runqueue_by_workload,
        }
    }

    #[test]
    fn a_frame_is_what_changed_between_two_readings() {
        let mut history = History::default();
        history.push(reading(1, vec![cpu(100, 900, 0)], &[("/a", 12, 5)]));
        assert_eq!(history.frames(300).count(), 0, "one reading makes no frame");
        history.push(reading(
            2,
            vec![cpu(850, 1150, 200)],
            &[("/a", 12, 8), ("/b", 20, 2)],
        ));
        let frame = history.frames(300).next().expect("a frame").clone();
        assert_eq!(frame.interval_ns, 1_000_000_000);
        assert_eq!(frame.cpu_busy, vec![Some(0.75)], "750 busy of 1000");
        assert_eq!(frame.cpu_idle_ns_by_bucket[0][10], 200);
        assert_eq!(frame.node_runqueue[12], 3);
        assert_eq!(frame.node_runqueue[20], 2);
        assert_eq!(frame.workload_runqueue("/a")[12], 3);
        assert_eq!(frame.workload_runqueue("/b")[20], 2);
        assert!(history.knows_workload("/b") && !history.knows_workload("/c"));
    }

    #[test]
    fn a_frame_keeps_the_workloads_with_most_waits_and_counts_the_rest() {
        let names: Vec<String> = (0..MAX_WORKLOADS_PER_FRAME + 3)
            .map(|i| format!("/w{i:03}"))
            .collect();
        let before: Vec<(&str, usize, u64)> = names.iter().map(|n| (n.as_str(), 5, 0)).collect();
        // Workload i waits i + 1 times: the three with the fewest are left out.
        let after: Vec<(&str, usize, u64)> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.as_str(), 5, i as u64 + 1))
            .collect();
        let mut history = History::default();
        history.push(reading(1, vec![], &before));
        history.push(reading(2, vec![], &after));
        let frame = history.frames(300).next().expect("a frame");
        assert_eq!(frame.workload_runqueue.len(), MAX_WORKLOADS_PER_FRAME);
        assert_eq!(frame.workloads_left_out, 3);
        assert_eq!(frame.workload_runqueue("/w000")[5], 0, "left out");
        let all: u64 = (1..=names.len() as u64).sum();
        assert_eq!(frame.node_runqueue[5], all, "the node has every wait");
    }

    #[test]
    fn history_is_bounded_and_skips_stale_readings() {
        let mut history = History::default();
        for second in 0..(MAX_FRAMES as u64 + 10) {
            history.push(reading(second, vec![cpu(second, second, 0)], &[]));
        }
        // A reading of the same kernel read (the collector had not polled again).
        history.push(reading(MAX_FRAMES as u64 + 9, vec![], &[]));
        assert_eq!(history.frames(u64::MAX).count(), MAX_FRAMES);
        assert_eq!(history.frames(10).count(), 10);
        assert_eq!(history.cpus(), 1);
    }

    #[test]
    fn a_cpu_not_seen_yet_has_no_busy_share() {
        let unseen = CpuReading {
            observed: false,
            ..cpu(0, 0, 0)
        };
        let mut history = History::default();
        history.push(reading(1, vec![unseen, cpu(0, 0, 0)], &[]));
        history.push(reading(2, vec![unseen, cpu(0, 1000, 0)], &[]));
        let frame = history.frames(300).next().expect("a frame");
        assert_eq!(frame.cpu_busy, vec![None, Some(0.0)]);
    }
}
