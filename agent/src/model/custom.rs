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

/// Workloads (cgroups) one metric keeps totals for; a new one past it takes the place of the
/// one that counted nothing for longest (counted, `workload_evicted`).
pub(crate) const MAX_WORKLOADS_PER_METRIC: usize = 4096;
/// Reads a (process, metric) entry waits for the model to learn its process (for the
/// selector) before its occurrences are given up (counted lost) and the entry deleted.
const UNKNOWN_PROCESS_READS: u32 = 5;

/// What one read of `CUSTOM_STATS` changed.
#[derive(Debug, Default)]
pub(crate) struct CustomApplied {
    /// Entries to delete from the kernel map (their processes are gone, and were read).
    pub(crate) forget: Vec<CustomKey>,
}

/// Counts lost in userspace.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct CustomLosses {
    /// Workloads whose totals were dropped to make room for a new one (past
    /// [`MAX_WORKLOADS_PER_METRIC`]): their series end.
    pub(crate) workloads_evicted: u64,
    /// Occurrences of a process the model never knew (its selector could not be applied).
    pub(crate) unknown_process: u64,
}

#[derive(Debug)]
struct Seen {
    stat: CustomStat,
    /// Consecutive reads in which the model did not know the process.
    unknown_reads: u32,
}

/// One cgroup's totals of one metric.
#[derive(Debug)]
struct CgroupTotals {
    /// Its path, once resolved (asked again at each read until then).
    path: Option<String>,
    /// A process seen in it (to ask the kernel which cgroup it is in).
    pid: u32,
    stat: CustomStat,
    /// The read that last added to it.
    updated: u64,
}

/// Per-metric figures; one owner (the collector), fed by each kernel read.
#[derive(Debug, Default)]
pub(crate) struct CustomLedger {
    seen: HashMap<CustomKey, Seen>,
    /// Per metric index: cgroup id -> what its selected processes added there.
    workloads: BTreeMap<u32, BTreeMap<u64, CgroupTotals>>,
    pub(crate) losses: CustomLosses,
    /// Reads applied so far.
    reads: u64,
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

fn add_stat(into: &mut CustomStat, more: &CustomStat) {
    add_difference(into, more, &CustomStat::default());
}

impl CustomLedger {
    /// Applies one read of the kernel's map; `selected(metric, process)` says whether the
    /// metric counts that process (for `None`, a process never known: whether the metric
    /// counts every process).
    ///
    /// A metric `from_model` says yes to is made of the model's own per-process counters
    /// (`syscall:` sources), whose entries are not the kernel's: they are kept while the
    /// model has the process (its counters may still grow after the exit) and dropped when
    /// it no longer does.
    pub(crate) fn apply(
        &mut self,
        read: &[(CustomKey, CustomStat)],
        model: &mut TaskModel,
        selected: &dyn Fn(u32, Option<&Process>) -> bool,
        from_model: &dyn Fn(u32) -> bool,
    ) -> CustomApplied {
        let mut applied = CustomApplied::default();
        self.reads += 1;
        let present: std::collections::HashSet<CustomKey> = read
            .iter()
            .filter(|(k, _)| from_model(k.metric))
            .map(|(k, _)| *k)
            .collect();
        self.seen
            .retain(|k, _| !from_model(k.metric) || present.contains(k));
        for (key, stat) in read {
            let seen = self.seen.entry(*key).or_insert_with(|| Seen {
                stat: CustomStat::default(),
                unknown_reads: 0,
            });
            let process = model.by_pid(key.tgid).into_iter().next();
            let (counts, exited) = match process {
                Some(process) => (selected(key.metric, Some(process)), process.exit.is_some()),
                None if seen.unknown_reads < UNKNOWN_PROCESS_READS => {
                    seen.unknown_reads += 1;
                    continue;
                }
                // Never known: counted where the kernel saw it, unless a selector had to pick.
                None => {
                    let counts = selected(key.metric, None);
                    if !counts {
                        self.losses.unknown_process += stat.count.saturating_sub(seen.stat.count);
                    }
                    (counts, true)
                }
            };
            if counts && stat.count != seen.stat.count {
                let workloads = self.workloads.entry(key.metric).or_default();
                if !workloads.contains_key(&key.cgroup_id)
                    && workloads.len() >= MAX_WORKLOADS_PER_METRIC
                {
                    // Room for a new workload: the one that counted nothing for longest goes.
                    let stalest = workloads
                        .iter()
                        .min_by_key(|(_, t)| t.updated)
                        .map(|(id, _)| *id);
                    if let Some(id) = stalest {
                        workloads.remove(&id);
                        self.losses.workloads_evicted += 1;
                    }
                }
                let total = workloads
                    .entry(key.cgroup_id)
                    .or_insert_with(|| CgroupTotals {
                        path: None,
                        pid: key.tgid,
                        stat: CustomStat::default(),
                        updated: 0,
                    });
                add_difference(&mut total.stat, stat, &seen.stat);
                total.updated = self.reads;
            }
            seen.stat = *stat;
            if exited && !from_model(key.metric) {
                self.seen.remove(key);
                applied.forget.push(*key);
            }
        }
        for totals in self.workloads.values_mut() {
            for (&id, total) in totals.iter_mut().filter(|(_, t)| t.path.is_none()) {
                total.path = model.resolve_cgroup(id, total.pid);
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

    /// Metric `metric`'s totals per workload (cgroup path; several ids of one path, a cgroup
    /// made again, together). Cgroups not resolved yet are left out until they are.
    pub(crate) fn workloads(&self, metric: u32) -> BTreeMap<&str, CustomStat> {
        let mut out: BTreeMap<&str, CustomStat> = BTreeMap::new();
        for total in self
            .workloads
            .get(&metric)
            .into_iter()
            .flat_map(|w| w.values())
        {
            if let Some(path) = &total.path {
                add_stat(out.entry(path.as_str()).or_default(), &total.stat);
            }
        }
        out
    }

    /// Metric `metric`'s figures per process still in the kernel's map (pid, figures).
    pub(crate) fn processes(&self, metric: u32) -> BTreeMap<u32, CustomStat> {
        let mut out: BTreeMap<u32, CustomStat> = BTreeMap::new();
        for (key, seen) in self.seen.iter().filter(|(k, _)| k.metric == metric) {
            add_stat(out.entry(key.tgid).or_default(), &seen.stat);
        }
        out
    }

    /// Whether any figures are kept.
    pub(crate) fn is_empty(&self) -> bool {
        self.seen.is_empty() && self.workloads.is_empty()
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
