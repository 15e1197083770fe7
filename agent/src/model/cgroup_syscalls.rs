//! Syscall figures per workload, as the kernel keeps them per cgroup (`WORKLOAD_SYSCALLS`, with
//! the latency histograms), and which cgroups' entries the kernel no longer needs to keep.
//!
//! The kernel charges a syscall to the caller's cgroup at the time of the call, so a process
//! that moves, or a thread in a cgroup of its own, is counted where it was; the entries outlive
//! the processes, so the figures never go down while the cgroup is kept. A cgroup given up
//! hands its final figures over (to the workload's retired totals), because its path may live
//! on under a new id: a systemd unit that restarts makes its cgroup again.

use std::collections::{BTreeMap, HashMap, HashSet};

use taskscope_common::{SyscallStats, WorkloadSyscallKey};

/// What is known of one cgroup with entries.
#[derive(Debug)]
struct Seen {
    /// Its cgroup v2 path; `None` until it is resolved.
    path: Option<String>,
    /// CLOCK_MONOTONIC when it was first seen.
    first_seen_ns: u64,
    /// CLOCK_MONOTONIC when it last had a live process (or was first seen).
    live_at_ns: u64,
    /// Counted as unresolved already.
    counted: bool,
}

/// A cgroup still unresolved this long after it was first seen is counted as unresolved: the
/// resolver rescans the hierarchy at most every second, so a new cgroup may wait a little.
const RESOLVE_GRACE_NS: u64 = 10_000_000_000;

/// The latest per-cgroup syscall figures.
#[derive(Debug, Default)]
pub(crate) struct CgroupSyscalls {
    latest: HashMap<u64, BTreeMap<u32, SyscallStats>>,
    seen: HashMap<u64, Seen>,
}

/// The figures of one read, and the cgroups given up.
pub(crate) struct Applied {
    /// Entries of cgroups without a live process for the retention: the kernel may drop them.
    pub(crate) forget: Vec<WorkloadSyscallKey>,
    /// The final figures of the cgroups given up whose path is known: (path, syscall number
    /// -> figures), to be kept by whoever keeps the workload's totals.
    pub(crate) given_up: Vec<(String, BTreeMap<u32, SyscallStats>)>,
    /// Cgroups no path was found for within [`RESOLVE_GRACE_NS`] (their syscalls are in no
    /// workload meanwhile), each counted once.
    pub(crate) unresolved: u64,
}

impl CgroupSyscalls {
    /// Takes a read of the kernel's entries. `live` holds the cgroup ids of live processes;
    /// a cgroup none of them has been in for `retention_ns` is given up. `resolve` finds the
    /// path of a cgroup id (asked again at each read until it does).
    pub(crate) fn apply(
        &mut self,
        entries: Vec<(WorkloadSyscallKey, SyscallStats)>,
        live: &HashSet<u64>,
        now_ns: u64,
        retention_ns: u64,
        mut resolve: impl FnMut(u64) -> Option<String>,
    ) -> Applied {
        let mut applied = Applied {
            forget: Vec::new(),
            given_up: Vec::new(),
            unresolved: 0,
        };
        let mut given_up: HashMap<u64, BTreeMap<u32, SyscallStats>> = HashMap::new();
        self.latest.clear();
        for (key, stats) in entries {
            let seen = self.seen.entry(key.cgroup_id).or_insert_with(|| Seen {
                path: None,
                first_seen_ns: now_ns,
                live_at_ns: now_ns,
                counted: false,
            });
            if seen.path.is_none() {
                seen.path = resolve(key.cgroup_id);
                let late = now_ns.saturating_sub(seen.first_seen_ns) >= RESOLVE_GRACE_NS;
                if seen.path.is_none() && late && !seen.counted {
                    seen.counted = true;
                    applied.unresolved += 1;
                }
            }
            if live.contains(&key.cgroup_id) {
                seen.live_at_ns = now_ns;
            }
            if now_ns.saturating_sub(seen.live_at_ns) >= retention_ns {
                applied.forget.push(key);
                if seen.path.is_some() {
                    given_up
                        .entry(key.cgroup_id)
                        .or_default()
                        .insert(key.nr, stats);
                }
                continue;
            }
            self.latest
                .entry(key.cgroup_id)
                .or_default()
                .insert(key.nr, stats);
        }
        for (id, syscalls) in given_up {
            if let Some(path) = self.seen.get(&id).and_then(|seen| seen.path.clone()) {
                applied.given_up.push((path, syscalls));
            }
        }
        // Only cgroups with entries are remembered.
        let latest = &self.latest;
        self.seen.retain(|id, _| latest.contains_key(id));
        applied
    }

    /// The figures of each cgroup whose path is known: (path, syscall number -> figures).
    pub(crate) fn by_path(&self) -> impl Iterator<Item = (&str, &BTreeMap<u32, SyscallStats>)> {
        self.latest.iter().filter_map(|(id, syscalls)| {
            let path = self.seen.get(id)?.path.as_deref()?;
            Some((path, syscalls))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use taskscope_common::HIST_BUCKETS;

    fn entry(cgroup_id: u64, nr: u32, count: u64) -> (WorkloadSyscallKey, SyscallStats) {
        let key = WorkloadSyscallKey {
            cgroup_id,
            nr,
            _pad: 0,
        };
        let stats = SyscallStats {
            count,
            errors: 0,
            total_ns: count * 100,
            latency_hist: [0; HIST_BUCKETS],
        };
        (key, stats)
    }

    #[test]
    fn a_cgroup_is_kept_while_live_then_for_the_retention_then_given_up() {
        let mut figures = CgroupSyscalls::default();
        let resolve = |id: u64| (id != 9).then(|| format!("/cg{id}"));
        let live: HashSet<u64> = [1].into();
        let read = || vec![entry(1, 0, 5), entry(2, 0, 7), entry(9, 1, 1)];
        let applied = figures.apply(read(), &live, 0, 100, resolve);
        assert!(applied.forget.is_empty());
        assert_eq!(applied.unresolved, 0, "not before the grace period");
        let mut paths: Vec<&str> = figures.by_path().map(|(p, _)| p).collect();
        paths.sort();
        assert_eq!(paths, ["/cg1", "/cg2"]);
        // Cgroup 9 is still unresolved after the grace period: counted, once.
        let late = RESOLVE_GRACE_NS;
        let all_live: HashSet<u64> = [1, 2, 9].into();
        let applied = figures.apply(read(), &all_live, late, u64::MAX, resolve);
        assert_eq!(applied.unresolved, 1);
        let applied = figures.apply(read(), &all_live, late + 1, u64::MAX, resolve);
        assert_eq!(
            applied.unresolved, 0,
            "an unresolved cgroup is counted once"
        );
        // Then cgroups 2 and 9 have no live process for the retention; 1 is live.
        let applied = figures.apply(read(), &live, late + 101, 100, resolve);
        let forgotten: Vec<u64> = applied.forget.iter().map(|k| k.cgroup_id).collect();
        assert_eq!(forgotten, [2, 9]);
        // Their final figures are handed over, where the path is known.
        assert_eq!(applied.given_up.len(), 1);
        assert_eq!(applied.given_up[0].0, "/cg2");
        assert_eq!(applied.given_up[0].1[&0].count, 7);
        let paths: Vec<&str> = figures.by_path().map(|(p, _)| p).collect();
        assert_eq!(paths, ["/cg1"]);
        assert_eq!(figures.by_path().next().map(|(_, s)| s[&0].count), Some(5));
    }
}
