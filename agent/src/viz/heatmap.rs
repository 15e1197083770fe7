//! The heatmaps, built from the history on request (`GET /api/v1/viz/heatmap`; the schema is
//! in docs/api.md): CPU x time of busy share, CPU x idle-period length of idle time, and
//! run-queue wait length x time for the node or one workload, with p50 and p99 per interval.

use std::ops::Range;

use serde::Serialize;
use taskscope_common::HIST_BUCKETS;

use super::history::{Frame, History, MAX_FRAMES};
use crate::model::histogram::{self, below_ns, Log2Hist};

/// Which heatmap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum HeatmapKind {
    /// Rows CPUs, columns intervals: the share of each interval each CPU was busy.
    CpuBusy,
    /// Rows CPUs, columns idle-period lengths: idle time in periods of that length.
    IdleGaps,
    /// Rows run-queue wait lengths, columns intervals: waits that ended in each interval.
    Runqueue,
}

impl HeatmapKind {
    const NAMES: [(&'static str, HeatmapKind); 3] = [
        ("cpu_busy", HeatmapKind::CpuBusy),
        ("idle_gaps", HeatmapKind::IdleGaps),
        ("runqueue", HeatmapKind::Runqueue),
    ];
}

/// A heatmap request, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HeatmapRequest {
    pub(crate) kind: HeatmapKind,
    /// The last this many seconds.
    pub(crate) seconds: u64,
    /// One workload's run-queue waits (cgroup path) instead of the node's.
    pub(crate) workload: Option<String>,
}

/// Why a heatmap cannot be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HeatmapError {
    /// The request is wrong (400).
    BadRequest(String),
    /// No such workload (404).
    UnknownWorkload(String),
}

impl HeatmapRequest {
    /// Checks the query parameters `kind`, `seconds` (default: the whole history) and
    /// `workload`.
    pub(crate) fn parse(
        kind: Option<&str>,
        seconds: Option<&str>,
        workload: Option<&str>,
    ) -> Result<Self, HeatmapError> {
        let names = || {
            HeatmapKind::NAMES
                .iter()
                .map(|(name, _)| *name)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let kind = match kind {
            None => return Err(bad(format!("kind is required: one of {}", names()))),
            Some(kind) => HeatmapKind::NAMES
                .iter()
                .find(|(name, _)| *name == kind)
                .map(|&(_, k)| k)
                .ok_or_else(|| bad(format!("unknown kind {kind:?}: one of {}", names())))?,
        };
        let limit = MAX_FRAMES as u64;
        let seconds = super::bounded_number(seconds, "seconds", 1..=limit, limit).map_err(bad)?;
        if workload.is_some() && kind != HeatmapKind::Runqueue {
            return Err(bad("workload is only for kind=runqueue".into()));
        }
        Ok(Self {
            kind,
            seconds,
            workload: workload.map(str::to_string),
        })
    }
}

fn bad(message: String) -> HeatmapError {
    HeatmapError::BadRequest(message)
}

/// One axis: what it is and a value per row or column.
#[derive(Debug, Serialize, PartialEq)]
pub(crate) struct Axis {
    pub(crate) name: &'static str,
    /// Unix ms (end of each interval), a CPU number, or a bucket's exclusive upper bound in ns
    /// (`null` for the open-ended last bucket).
    pub(crate) values: Vec<Option<u64>>,
}

/// A heatmap: `cells[row][column]`, rows along `y`, columns along `x`.
#[derive(Debug, Serialize, PartialEq)]
pub(crate) struct Heatmap {
    pub(crate) kind: HeatmapKind,
    /// What a cell holds.
    pub(crate) unit: &'static str,
    pub(crate) seconds: u64,
    pub(crate) x: Axis,
    pub(crate) y: Axis,
    /// `null` where there is no figure (a CPU not yet seen).
    pub(crate) cells: Vec<Vec<Option<f64>>>,
    /// Run-queue heatmaps: the p50 and p99 wait of each interval (the upper bound of its
    /// bucket, ns; `null` with no wait).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) p50_ns: Option<Vec<Option<u64>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) p99_ns: Option<Vec<Option<u64>>>,
    /// The workload (cgroup path) of a workload's run-queue heatmap.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) workload: Option<String>,
    /// Intervals in which some workloads' waits were not kept (only the 64 with most are): a
    /// workload's heatmap may miss its waits there.
    pub(crate) intervals_with_workloads_left_out: usize,
}

/// Builds the heatmap `request` asks for.
pub(crate) fn heatmap(
    history: &History,
    request: &HeatmapRequest,
) -> Result<Heatmap, HeatmapError> {
    if let Some(cgroup) = &request.workload {
        if !history.knows_workload(cgroup) {
            return Err(HeatmapError::UnknownWorkload(format!(
                "no workload with cgroup {cgroup:?} (see /api/v1/processes for the cgroup paths)"
            )));
        }
    }
    let frames: Vec<&Frame> = history.frames(request.seconds).collect();
    let cpus: Vec<Option<u64>> = (0..history.cpus() as u64).map(Some).collect();
    let times = || Axis {
        name: "time_unix_ms",
        values: frames.iter().map(|f| Some(f.unix_ms)).collect(),
    };
    let mut map = Heatmap {
        kind: request.kind,
        unit: "",
        seconds: request.seconds,
        x: times(),
        y: Axis {
            name: "cpu",
            values: cpus,
        },
        cells: Vec::new(),
        p50_ns: None,
        p99_ns: None,
        workload: request.workload.clone(),
        intervals_with_workloads_left_out: frames
            .iter()
            .filter(|f| f.workloads_left_out > 0)
            .count(),
    };
    match request.kind {
        HeatmapKind::CpuBusy => {
            map.unit = "share of the interval busy";
            map.cells = (0..map.y.values.len())
                .map(|cpu| {
                    frames
                        .iter()
                        .map(|f| f.cpu_busy.get(cpu).copied().flatten().map(round4))
                        .collect()
                })
                .collect();
        }
        HeatmapKind::IdleGaps => idle_gaps(&mut map, &frames),
        HeatmapKind::Runqueue => runqueue(&mut map, &frames, request.workload.as_deref()),
    }
    Ok(map)
}

/// `share` to 4 decimals: a frame stays small, and a finer share means nothing at 1 s.
fn round4(share: f64) -> f64 {
    (share * 10_000.0).round() / 10_000.0
}

/// Idle time of each CPU over the window, by idle-period length.
fn idle_gaps(map: &mut Heatmap, frames: &[&Frame]) {
    map.unit = "ns idle in periods of this length";
    let per_cpu: Vec<Log2Hist> = (0..map.y.values.len())
        .map(|cpu| {
            let mut sum = [0; HIST_BUCKETS];
            for frame in frames {
                if let Some(hist) = frame.cpu_idle_ns_by_bucket.get(cpu) {
                    histogram::add(&mut sum, hist);
                }
            }
            sum
        })
        .collect();
    let buckets = non_empty_buckets(per_cpu.iter());
    map.x = bucket_axis("idle_period_below_ns", &buckets);
    map.cells = per_cpu
        .iter()
        .map(|hist| buckets.clone().map(|b| Some(hist[b] as f64)).collect())
        .collect();
}

/// Run-queue waits by length (rows) and interval (columns), of the node or one workload.
fn runqueue(map: &mut Heatmap, frames: &[&Frame], workload: Option<&str>) {
    map.unit = "run-queue waits that ended in the interval";
    let per_frame: Vec<Log2Hist> = frames
        .iter()
        .map(|f| match workload {
            Some(cgroup) => f.workload_runqueue(cgroup),
            None => f.node_runqueue,
        })
        .collect();
    let buckets = non_empty_buckets(per_frame.iter());
    map.y = bucket_axis("wait_below_ns", &buckets);
    map.cells = buckets
        .map(|b| per_frame.iter().map(|h| Some(h[b] as f64)).collect())
        .collect();
    let quantile = |q| {
        per_frame
            .iter()
            .map(|h| histogram::quantile_ns(h, q))
            .collect()
    };
    map.p50_ns = Some(quantile(0.5));
    map.p99_ns = Some(quantile(0.99));
}

/// The buckets from the first to the last that any of `hists` has a count in (none: empty).
fn non_empty_buckets<'a>(hists: impl Iterator<Item = &'a Log2Hist>) -> Range<usize> {
    let mut any = [false; HIST_BUCKETS];
    for hist in hists {
        for (seen, &count) in any.iter_mut().zip(hist) {
            *seen |= count > 0;
        }
    }
    match (any.iter().position(|&s| s), any.iter().rposition(|&s| s)) {
        (Some(first), Some(last)) => first..last + 1,
        _ => 0..0,
    }
}

fn bucket_axis(name: &'static str, buckets: &Range<usize>) -> Axis {
    Axis {
        name,
        values: buckets.clone().map(below_ns).collect(),
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, sync::Arc};

    use super::*;
    use crate::viz::history::{CpuReading, Reading};

    fn history() -> History {
        let mut history = History::default();
        for second in 1..=3u64 {
            let mut idle_ns_by_bucket = [0; HIST_BUCKETS];
            idle_ns_by_bucket[12] = 100 * second;
            let cpus = vec![CpuReading {
                observed: true,
                busy_ns: 250_000_000 * second,
                idle_ns: 750_000_000 * second,
                idle_ns_by_bucket,
            }];
            let mut hist = [0; HIST_BUCKETS];
            hist[10] = 99 * second;
            hist[20] = second;
            let runqueue_by_workload = HashMap::from([(Arc::from("/w"), hist)]);
            history.push(Reading {
                unix_ms: second * 1000,
                monotonic_ns: second * 1_000_000_000,
                cpus,
                runqueue_by_workload,
            });
        }
        history
    }

    fn request(kind: &str, workload: Option<&str>) -> HeatmapRequest {
        HeatmapRequest::parse(Some(kind), None, workload).expect("valid")
    }

    #[test]
    fn cpu_busy_has_a_cell_per_cpu_and_interval() {
        let map = heatmap(&history(), &request("cpu_busy", None)).expect("heatmap");
        assert_eq!(map.x.values, vec![Some(2000), Some(3000)]);
        assert_eq!(map.y.values, vec![Some(0)]);
        assert_eq!(map.cells, vec![vec![Some(0.25), Some(0.25)]]);
    }

    #[test]
    fn idle_gaps_sum_the_window_by_period_length() {
        let map = heatmap(&history(), &request("idle_gaps", None)).expect("heatmap");
        assert_eq!(map.x.values, vec![Some(1 << 12)]);
        assert_eq!(
            map.cells,
            vec![vec![Some(200.0)]],
            "100 ns a second, two intervals"
        );
    }

    #[test]
    fn runqueue_rows_are_the_buckets_in_use_with_quantiles_per_interval() {
        for workload in [None, Some("/w")] {
            let map = heatmap(&history(), &request("runqueue", workload)).expect("heatmap");
            assert_eq!(map.y.values.first(), Some(&Some(1 << 10)));
            assert_eq!(map.y.values.last(), Some(&Some(1 << 20)));
            assert_eq!(map.cells.len(), 11, "buckets 10 to 20");
            assert_eq!(map.cells[0], vec![Some(99.0), Some(99.0)]);
            assert_eq!(map.cells[10], vec![Some(1.0), Some(1.0)]);
            assert_eq!(map.p50_ns, Some(vec![Some(1 << 10); 2]));
            assert_eq!(map.p99_ns, Some(vec![Some(1 << 10); 2]));
        }
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        let message = |kind, seconds, workload| match HeatmapRequest::parse(kind, seconds, workload)
        {
            Err(HeatmapError::BadRequest(m)) => m,
            other => panic!("{other:?}"),
        };
        assert!(message(None, None, None).contains("kind is required"));
        assert!(message(Some("heat"), None, None).contains("cpu_busy, idle_gaps, runqueue"));
        assert!(message(Some("runqueue"), Some("0"), None).contains("from 1 to 300"));
        assert!(message(Some("runqueue"), Some("x"), None).contains("\"x\""));
        assert!(message(Some("cpu_busy"), None, Some("/w")).contains("only for kind=runqueue"));
        let unknown = heatmap(&history(), &request("runqueue", Some("/nope")));
        assert!(matches!(unknown, Err(HeatmapError::UnknownWorkload(_))));
    }
}
