//! Custom metrics' figures: what the kernel counted per (process, metric) in `CUSTOM_STATS`,
//! turned into totals per workload that only grow, and kept per live process for the API.
//!
//! Each read is compared with the previous one; what a process added since goes to the
//! workload its cgroup names now (if the definition's selector picks the process). A process
//! that has exited had its last occurrence counted by the time its exit event came, so its
//! entry is read once more and then deleted from the kernel's map.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use taskscope_common::{CustomKey, CustomStat};

use super::{process::Process, TaskModel};

/// Workloads one metric keeps totals for; occurrences in further workloads are counted lost.
pub(crate) const MAX_WORKLOADS_PER_METRIC: usize = 4096;
/// Reads a (process, metric) entry waits for the model to learn its process before its
/// occurrences are given up (counted lost) and the entry deleted.
const UNKNOWN_PROCESS_READS: u32 = 5;

/// What a custom metric measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum CustomKind {
    /// Occurrences of `start`.
    Count,
    /// Time from `start` to `end` on the same thread.
    Latency,
}

/// One metric's per-workload figures for the exporters.
#[derive(Debug, Clone)]
pub(crate) struct CustomFamily {
    pub(crate) name: String,
    pub(crate) kind: CustomKind,
    /// (cgroup path, figures)
    pub(crate) workloads: Vec<(String, CustomStat)>,
}

/// What one read of `CUSTOM_STATS` changed.
#[derive(Debug, Default)]
pub(crate) struct CustomApplied {
    /// Entries to delete from the kernel map (their processes are gone, and were read).
    pub(crate) forget: Vec<CustomKey>,
}

/// Counts lost in userspace.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct CustomLosses {
    /// Occurrences in a workload past [`MAX_WORKLOADS_PER_METRIC`].
    pub(crate) workload_cap: u64,
    /// Occurrences of a process the model never knew.
    pub(crate) unknown_process: u64,
}

#[derive(Debug)]
struct Seen {
    stat: CustomStat,
    /// Consecutive reads in which the model did not know the process.
    unknown_reads: u32,
}

/// Per-metric figures; one owner (the collector), fed by each kernel read.
#[derive(Debug, Default)]
pub(crate) struct CustomLedger {
    seen: HashMap<CustomKey, Seen>,
    /// Per metric index: cgroup path -> what its selected processes added.
    workloads: BTreeMap<u32, BTreeMap<String, CustomStat>>,
    pub(crate) losses: CustomLosses,
}

/// `into += later - earlier`, field by field (a counter never goes back, but an entry deleted
/// and made again starts over: then `later` is all new).
fn add_difference(into: &mut CustomStat, later: &CustomStat, earlier: &CustomStat) {
    let fresh = later.count < earlier.count;
    let base = |e: u64| if fresh { 0 } else { e };
    into.count += later.count.saturating_sub(base(earlier.count));
    into.total_ns += later.total_ns.saturating_sub(base(earlier.total_ns));
    for (slot, (l, e)) in into
        .hist
        .iter_mut()
        .zip(later.hist.iter().zip(&earlier.hist))
    {
        *slot += l.saturating_sub(base(*e));
    }
}

impl CustomLedger {
    /// Applies one read of the kernel's map; `selected(metric, process)` says whether the
    /// metric counts that process.
    pub(crate) fn apply(
        &mut self,
        read: &[(CustomKey, CustomStat)],
        model: &TaskModel,
        selected: &dyn Fn(u32, &Process) -> bool,
    ) -> CustomApplied {
        let mut applied = CustomApplied::default();
        for (key, stat) in read {
            let seen = self.seen.entry(*key).or_insert_with(|| Seen {
                stat: CustomStat::default(),
                unknown_reads: 0,
            });
            let Some(process) = model.by_pid(key.tgid).into_iter().next() else {
                seen.unknown_reads += 1;
                if seen.unknown_reads >= UNKNOWN_PROCESS_READS {
                    self.losses.unknown_process += stat.count.saturating_sub(seen.stat.count);
                    self.seen.remove(key);
                    applied.forget.push(*key);
                }
                continue;
            };
            seen.unknown_reads = 0;
            if selected(key.metric, process) {
                let cgroup = process.cgroup_path.as_deref().unwrap_or("/");
                let workloads = self.workloads.entry(key.metric).or_default();
                let room = workloads.len() < MAX_WORKLOADS_PER_METRIC;
                match workloads.get_mut(cgroup) {
                    Some(total) => add_difference(total, stat, &seen.stat),
                    None if room => {
                        let mut total = CustomStat::default();
                        add_difference(&mut total, stat, &seen.stat);
                        workloads.insert(cgroup.to_string(), total);
                    }
                    None => self.losses.workload_cap += stat.count.saturating_sub(seen.stat.count),
                }
            }
            seen.stat = *stat;
            if process.exit.is_some() {
                self.seen.remove(key);
                applied.forget.push(*key);
            }
        }
        applied
    }

    /// Drops everything of metric `metric` (its definition is gone); returns its kernel
    /// entries to delete.
    pub(crate) fn forget_metric(&mut self, metric: u32) -> Vec<CustomKey> {
        self.workloads.remove(&metric);
        let keys: Vec<CustomKey> = self
            .seen
            .keys()
            .filter(|k| k.metric == metric)
            .copied()
            .collect();
        for key in &keys {
            self.seen.remove(key);
        }
        keys
    }

    /// Metric `metric`'s totals per workload (cgroup path).
    pub(crate) fn workloads(&self, metric: u32) -> impl Iterator<Item = (&str, &CustomStat)> {
        self.workloads
            .get(&metric)
            .into_iter()
            .flatten()
            .map(|(cgroup, stat)| (cgroup.as_str(), stat))
    }

    /// Metric `metric`'s figures per process still in the kernel's map (pid, figures).
    pub(crate) fn processes(&self, metric: u32) -> impl Iterator<Item = (u32, &CustomStat)> {
        self.seen
            .iter()
            .filter(move |(k, _)| k.metric == metric)
            .map(|(k, seen)| (k.tgid, &seen.stat))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(count: u64, total_ns: u64) -> CustomStat {
        let mut s = CustomStat {
            count,
            total_ns,
            ..CustomStat::default()
        };
        s.hist[3] = count;
        s
    }

    #[test]
    fn a_difference_adds_what_came_since_and_a_new_entry_whole() {
        let mut total = CustomStat::default();
        add_difference(&mut total, &stat(5, 50), &CustomStat::default());
        add_difference(&mut total, &stat(8, 80), &stat(5, 50));
        assert_eq!((total.count, total.total_ns, total.hist[3]), (8, 80, 8));
        // Deleted and made again: the new entry's figures are all new.
        add_difference(&mut total, &stat(2, 20), &stat(8, 80));
        assert_eq!((total.count, total.total_ns, total.hist[3]), (10, 100, 10));
    }
}
