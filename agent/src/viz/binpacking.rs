//! The bin-packing view's data (`/api/v1/viz/binpacking`): the node's capacity (its CPUs, its
//! memory) against every workload's use, request and limit, so that an operator sees what
//! fits and who is squeezed.
//!
//! CPU use is each workload's on-CPU time over the last few seconds: the recorder keeps the
//! workloads' on-CPU times at its latest readings ([`UsageWindow`]) and an answer compares the
//! collector's latest figures with the oldest of them. Memory use, requests and limits come
//! from the cgroups' own files, read when asked.

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
};

use serde::Serialize;

use super::live::{CgroupFigures, CgroupLimits, CPU_WINDOW_FRAMES};
use crate::{
    clock,
    collector::LatestRead,
    model::{aggregate::WorkloadTotals, workload::Workload},
    procfs,
};

/// Workloads drawn as their own segment of a resource's bar; the rest are one "others" segment.
pub(crate) const SEGMENTS: usize = 8;

/// A workload using at least this share of its limit is squeezed.
pub(crate) const SQUEEZED_SHARE: f64 = 0.9;

/// Workloads one resource lists (the squeezed first, then the biggest users); the rest are
/// counted in [`Resource::rows_left_out`] and still in the sums.
pub(crate) const MAX_ROWS: usize = 500;

/// Readings kept: the CPU figures are over the last [`CPU_WINDOW_FRAMES`] intervals between
/// them, as the live feed's are.
const SAMPLES: usize = CPU_WINDOW_FRAMES + 1;

/// The workloads' on-CPU time at the recorder's latest readings, oldest first.
#[derive(Debug, Default)]
pub(crate) struct UsageWindow {
    samples: VecDeque<UsageSample>,
}

#[derive(Debug)]
struct UsageSample {
    /// CLOCK_MONOTONIC the on-CPU times are at.
    at_ns: u64,
    on_cpu_ns: HashMap<Arc<str>, u64>,
}

impl UsageWindow {
    /// Keeps the on-CPU times of `workloads` at `at_ns` (a time not newer than the newest
    /// kept is ignored); the oldest goes beyond [`SAMPLES`] samples.
    pub(crate) fn push(&mut self, at_ns: u64, workloads: &[(Workload, WorkloadTotals)]) {
        if self.samples.back().is_some_and(|s| s.at_ns >= at_ns) {
            return;
        }
        if self.samples.len() == SAMPLES {
            self.samples.pop_front();
        }
        let on_cpu_ns = workloads
            .iter()
            .map(|(w, totals)| {
                let on_cpu_ns = totals.sched_since_agent().on_cpu_ns;
                (Arc::from(w.cgroup.as_str()), on_cpu_ns)
            })
            .collect();
        self.samples.push_back(UsageSample { at_ns, on_cpu_ns });
    }

    /// CPUs' worth of time `cgroup` used from the oldest sample that has it to `at_ns`, when
    /// its on-CPU time was `on_cpu_ns` (`None`: no sample has it, or none is older).
    pub(crate) fn cpu(&self, cgroup: &str, on_cpu_ns: u64, at_ns: u64) -> Option<f64> {
        let (since_ns, before) = self
            .samples
            .iter()
            .find_map(|s| s.on_cpu_ns.get(cgroup).map(|&ns| (s.at_ns, ns)))?;
        let span_ns = at_ns.checked_sub(since_ns).filter(|&span| span > 0)?;
        Some(on_cpu_ns.saturating_sub(before) as f64 / span_ns as f64)
    }

    /// Seconds from the oldest sample to `at_ns` (the CPU figures' window).
    pub(crate) fn window_s(&self, at_ns: u64) -> Option<f64> {
        let oldest = self.samples.front()?;
        Some(at_ns.saturating_sub(oldest.at_ns) as f64 / 1e9)
    }

    /// The CPU of each of `latest`'s workloads, in its order, and the window they are over.
    pub(crate) fn cpus_of(&self, latest: &LatestRead) -> (Vec<Option<f64>>, Option<f64>) {
        let at = latest.sampled_at_ns;
        let cpus = latest
            .workloads
            .iter()
            .map(|(w, totals)| self.cpu(&w.cgroup, totals.sched_since_agent().on_cpu_ns, at))
            .collect();
        (cpus, self.window_s(at))
    }
}

/// The view of the collector's `latest` figures, with each workload's CPU (`cpus`, in its
/// order, over `cpu_window_s`) and its cgroup's files read now through `limits`.
pub(crate) fn of_latest<'a>(
    latest: &'a LatestRead,
    cpus: Vec<Option<f64>>,
    cpu_window_s: Option<f64>,
    limits: &CgroupLimits,
) -> BinPacking<'a> {
    let uses: Vec<WorkloadUse> = latest
        .workloads
        .iter()
        .zip(cpus)
        .map(|((workload, _), cpu)| WorkloadUse {
            workload,
            cpu,
            cgroup: limits.of(&workload.cgroup, workload.pod_uid.is_some()),
        })
        .collect();
    // The CPUs the scheduler probes have seen (the node's possible CPUs may be more).
    let cpus_seen = latest.node.node.cpus.iter().filter(|c| c.observed).count();
    let memory_bytes = procfs::read_meminfo().map_or(0, |(total, _)| total);
    let unix_ms = clock::Clocks::now().monotonic_to_unix(latest.sampled_at_ns) / 1_000_000;
    build(
        &uses,
        cpus_seen as f64,
        memory_bytes as f64,
        unix_ms,
        cpu_window_s,
    )
}

/// One workload's figures, as read for an answer.
#[derive(Debug)]
pub(crate) struct WorkloadUse<'a> {
    pub(crate) workload: &'a Workload,
    /// CPUs' worth of time over the window (`None`: new since the oldest sample).
    pub(crate) cpu: Option<f64>,
    pub(crate) cgroup: CgroupFigures,
}

/// The answer of `/api/v1/viz/binpacking`.
#[derive(Debug, Serialize)]
pub(crate) struct BinPacking<'a> {
    /// When the figures were taken (Unix ms).
    pub(crate) unix_ms: u64,
    /// Seconds the CPU figures are over (`None`: no earlier reading yet).
    pub(crate) cpu_window_s: Option<f64>,
    /// Workloads the agent knows (with or without a use, request or limit).
    pub(crate) workloads: usize,
    pub(crate) cpu: Resource<'a>,
    pub(crate) memory: Resource<'a>,
}

/// One resource: the node's capacity, what the workloads use, request and may use.
#[derive(Debug, Serialize, PartialEq)]
pub(crate) struct Resource<'a> {
    /// `cpus` (CPUs' worth of time) or `bytes`.
    pub(crate) unit: &'static str,
    pub(crate) capacity: f64,
    /// Summed over every workload.
    pub(crate) used: f64,
    pub(crate) requested: f64,
    pub(crate) limited: f64,
    /// What nobody uses (the capacity less the use, not below 0).
    pub(crate) free: f64,
    /// The [`SEGMENTS`] biggest users, the biggest first.
    pub(crate) segments: Vec<Packed<'a>>,
    /// What every other workload uses.
    pub(crate) others: f64,
    /// Every workload with a use, a request or a limit: the squeezed first, then by use.
    pub(crate) rows: Vec<Packed<'a>>,
    pub(crate) rows_left_out: usize,
}

/// A workload's share of one resource.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct Packed<'a> {
    #[serde(flatten)]
    pub(crate) workload: &'a Workload,
    pub(crate) used: f64,
    pub(crate) request: Option<f64>,
    pub(crate) limit: Option<f64>,
    /// The use as a share of the limit.
    pub(crate) of_limit: Option<f64>,
    pub(crate) squeezed: bool,
}

/// The view of `workloads` on a node of `cpus` CPUs and `memory_bytes` of memory.
pub(crate) fn build<'a>(
    workloads: &[WorkloadUse<'a>],
    cpus: f64,
    memory_bytes: f64,
    unix_ms: u64,
    cpu_window_s: Option<f64>,
) -> BinPacking<'a> {
    let as_f64 = |bytes: Option<u64>| bytes.map(|b| b as f64);
    BinPacking {
        unix_ms,
        cpu_window_s,
        workloads: workloads.len(),
        cpu: pack(
            "cpus",
            cpus,
            workloads.iter().map(|w| {
                let used = w.cpu.unwrap_or(0.0);
                (w.workload, used, w.cgroup.cpu_request, w.cgroup.cpu_limit)
            }),
        ),
        memory: pack(
            "bytes",
            memory_bytes,
            workloads.iter().map(|w| {
                let used = as_f64(w.cgroup.memory_bytes).unwrap_or(0.0);
                (w.workload, used, None, as_f64(w.cgroup.memory_limit_bytes))
            }),
        ),
    }
}

/// One resource from each workload's (use, request, limit).
fn pack<'a>(
    unit: &'static str,
    capacity: f64,
    figures: impl Iterator<Item = (&'a Workload, f64, Option<f64>, Option<f64>)>,
) -> Resource<'a> {
    let mut rows: Vec<Packed<'a>> = figures
        .filter(|(_, used, request, limit)| *used > 0.0 || request.is_some() || limit.is_some())
        .map(|(workload, used, request, limit)| {
            let of_limit = limit.filter(|&l| l > 0.0).map(|l| used / l);
            Packed {
                workload,
                used,
                request,
                limit,
                of_limit,
                squeezed: of_limit.is_some_and(|share| share >= SQUEEZED_SHARE),
            }
        })
        .collect();
    let used: f64 = rows.iter().map(|r| r.used).sum();
    let requested = rows.iter().filter_map(|r| r.request).sum();
    let limited = rows.iter().filter_map(|r| r.limit).sum();
    // The biggest first; ties by cgroup, so that the same figures give the same answer.
    let by_use = |a: &Packed, b: &Packed| {
        b.used
            .total_cmp(&a.used)
            .then_with(|| a.workload.cgroup.cmp(&b.workload.cgroup))
    };
    rows.sort_by(by_use);
    let segments: Vec<Packed> = rows
        .iter()
        .take(SEGMENTS)
        .filter(|r| r.used > 0.0)
        .cloned()
        .collect();
    let others = rows.iter().skip(SEGMENTS).map(|r| r.used).sum();
    rows.sort_by(|a, b| b.squeezed.cmp(&a.squeezed).then_with(|| by_use(a, b)));
    let rows_left_out = rows.len().saturating_sub(MAX_ROWS);
    rows.truncate(MAX_ROWS);
    Resource {
        unit,
        capacity,
        used,
        requested,
        limited,
        free: (capacity - used).max(0.0),
        segments,
        others,
        rows,
        rows_left_out,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::process::SchedTotals;

    fn workload(cgroup: &str) -> Workload {
        Workload {
            cgroup: cgroup.to_string(),
            ..Workload::default()
        }
    }

    fn using<'a>(workload: &'a Workload, cpu: f64, cpu_limit: Option<f64>) -> WorkloadUse<'a> {
        WorkloadUse {
            workload,
            cpu: Some(cpu),
            cgroup: CgroupFigures {
                cpu_limit,
                ..CgroupFigures::default()
            },
        }
    }

    #[test]
    fn segments_others_free_and_the_squeezed_first() {
        let capped = workload("/capped");
        let big = workload("/big");
        let idle = workload("/idle-with-limit");
        let small: Vec<Workload> = (0..SEGMENTS)
            .map(|i| workload(&format!("/small{i}")))
            .collect();
        let mut uses = vec![
            using(&capped, 0.49, Some(0.5)),
            using(&big, 1.2, None),
            using(&idle, 0.0, Some(2.0)),
        ];
        uses.extend(small.iter().map(|w| using(w, 0.01, None)));
        let p = build(&uses, 4.0, 0.0, 0, Some(3.0)).cpu;
        assert_eq!(p.segments.len(), SEGMENTS);
        assert_eq!(p.segments[0].workload.cgroup, "/big");
        assert!((p.others - 0.02).abs() < 1e-9, "{}", p.others);
        assert!((p.used - (1.2 + 0.49 + 0.08)).abs() < 1e-9);
        assert!((p.free - (4.0 - p.used)).abs() < 1e-9);
        assert_eq!(p.limited, 2.5);
        assert_eq!(p.rows[0].workload.cgroup, "/capped");
        assert!(p.rows[0].squeezed);
        assert!((p.rows[0].of_limit.unwrap() - 0.98).abs() < 1e-9);
        let idle_row = p
            .rows
            .iter()
            .find(|r| r.workload.cgroup == "/idle-with-limit");
        assert!(
            idle_row.is_some_and(|r| !r.squeezed),
            "listed for its limit"
        );
    }

    #[test]
    fn memory_rows_come_from_the_cgroup_and_rows_are_bounded() {
        let named: Vec<Workload> = (0..MAX_ROWS + 5)
            .map(|i| workload(&format!("/w{i}")))
            .collect();
        let uses: Vec<WorkloadUse> = named
            .iter()
            .enumerate()
            .map(|(i, w)| WorkloadUse {
                workload: w,
                cpu: None,
                cgroup: CgroupFigures {
                    memory_bytes: Some(i as u64 + 1),
                    memory_limit_bytes: (i == 0).then_some(1),
                    ..CgroupFigures::default()
                },
            })
            .collect();
        let view = build(&uses, 2.0, 1e6, 7, None);
        assert_eq!(view.workloads, MAX_ROWS + 5);
        assert_eq!(view.cpu.rows.len(), 0, "no CPU use, request or limit");
        let memory = view.memory;
        assert_eq!(memory.rows.len(), MAX_ROWS);
        assert_eq!(memory.rows_left_out, 5);
        assert_eq!(
            memory.rows[0].workload.cgroup, "/w0",
            "squeezed at its limit"
        );
        let n = (MAX_ROWS + 5) as f64;
        assert_eq!(
            memory.used,
            n * (n + 1.0) / 2.0,
            "the sum has every workload"
        );
    }

    fn totals(on_cpu_ns: u64) -> WorkloadTotals {
        WorkloadTotals {
            sched: SchedTotals {
                on_cpu_ns,
                ..SchedTotals::default()
            },
            ..WorkloadTotals::default()
        }
    }

    #[test]
    fn cpu_is_over_the_oldest_sample_that_has_the_workload() {
        let (a, b) = (workload("/a"), workload("/b"));
        let mut window = UsageWindow::default();
        window.push(1_000_000_000, &[(a.clone(), totals(0))]);
        window.push(
            2_000_000_000,
            &[(a.clone(), totals(500_000_000)), (b.clone(), totals(0))],
        );
        window.push(2_000_000_000, &[(a.clone(), totals(9))]); // not newer: ignored
        for second in 3..=6 {
            window.push(
                second * 1_000_000_000,
                &[(a.clone(), totals(second * 500_000_000))],
            );
        }
        // Four samples kept: seconds 3 to 6.
        assert_eq!(window.window_s(6_000_000_000), Some(3.0));
        assert_eq!(window.cpu("/a", 3_000_000_000, 6_000_000_000), Some(0.5));
        assert_eq!(
            window.cpu("/b", 7, 6_000_000_000),
            None,
            "gone from every sample"
        );
        assert_eq!(window.cpu("/a", 0, 3_000_000_000), None, "no time passed");
    }
}
