//! Visualisation data (the dashboard's, also served as plain JSON): a bounded history of the
//! node recorded once a second from the collector's answers, on the consumers' side, and the
//! heatmaps built from it on request.
//!
//! The recorder asks the collector for its latest read like any consumer does (never for a
//! fresh one, which would add a kernel read a second); it never holds it up, and the
//! history's size is fixed ([`history::MAX_FRAMES`] frames, each with at most
//! [`history::MAX_WORKLOADS_PER_FRAME`] workloads).

pub(crate) mod binpacking;
pub(crate) mod heatmap;
pub(crate) mod history;
pub(crate) mod live;
pub(crate) mod timeline;
pub(crate) mod workload;

use std::{
    sync::{atomic::Ordering, Arc, Mutex},
    time::Duration,
};

use tokio::sync::{mpsc, watch};

use self::{
    history::{CpuReading, History, Reading},
    live::{LiveBuilder, LiveFrame, ProcReadings},
};
use crate::{
    clock,
    collector::{ask, LatestRead, NodeResponse, Query},
    health::SharedHealth,
    metadata::Directories,
    model::{aggregate::WorkloadTotals, histogram::Log2Hist, workload::Workload},
};

/// How often the history takes a reading.
pub(crate) const INTERVAL: Duration = Duration::from_secs(1);

/// The history, shared by the recorder (writer) and the API (readers).
pub(crate) type SharedHistory = Arc<Mutex<History>>;

/// The workloads' recent on-CPU times, shared by the recorder (writer) and the API (readers).
pub(crate) type SharedUsage = Arc<Mutex<binpacking::UsageWindow>>;

/// The live feed's newest frame; clients subscribe to it (a client that is slow sees only the
/// newest). Frames are built only while someone subscribes.
pub(crate) type LiveFrames = Arc<watch::Sender<Arc<LiveFrame>>>;

/// Clients subscribed to the live feed's process table, which is built only while there are
/// some (it reads every process).
pub(crate) type ProcessSubscribers = Arc<std::sync::atomic::AtomicUsize>;

/// What the live frames take besides the collector's answers.
pub(crate) struct LiveSources {
    pub(crate) frames: LiveFrames,
    pub(crate) process_subscribers: ProcessSubscribers,
    pub(crate) health: SharedHealth,
    pub(crate) names: Directories,
    pub(crate) limits: live::CgroupLimits,
}

/// Takes a reading every [`INTERVAL`] until `shutdown` says stop (or the collector stops),
/// keeps the workloads' on-CPU times for the bin-packing view, and publishes a live frame of
/// it while a client listens.
pub(crate) async fn record(
    queries: mpsc::Sender<Query>,
    history: SharedHistory,
    usage: SharedUsage,
    live: LiveSources,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut builder = LiveBuilder::default();
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return,
            _ = tick.tick() => {}
        }
        // The latest poll's figures: asking for fresh ones would add a kernel read a second.
        let with_processes = live.process_subscribers.load(Ordering::Relaxed) > 0;
        let Some(latest) = ask(&queries, |reply| Query::Latest(with_processes, reply)).await else {
            return;
        };
        let reading = reading(&latest.node, &latest.workloads);
        usage
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(latest.sampled_at_ns, &latest.workloads);
        let added = history
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(reading);
        if live.frames.receiver_count() == 0 {
            builder.pause();
        } else if added {
            let Some(status) = ask(&queries, Query::Status).await else {
                return;
            };
            let frame = live_frame(&mut builder, &history, &latest, &status, &live);
            if let Some(frame) = frame {
                live.frames.send_replace(Arc::new(frame));
            }
        }
    }
}

/// The live frame of the history's newest interval.
fn live_frame(
    builder: &mut LiveBuilder,
    history: &SharedHistory,
    latest: &LatestRead,
    status: &crate::collector::StatusResponse,
    live: &LiveSources,
) -> Option<LiveFrame> {
    let proc = ProcReadings::read();
    // A copy (a few KiB): the API's heatmaps are not held up while the frame is built.
    let frame = history
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .newest()?
        .clone();
    let health = live
        .health
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let names = live.names.read();
    Some(builder.build(live::Inputs {
        frame: &frame,
        sampled_at_ns: latest.sampled_at_ns,
        workloads: &latest.workloads,
        processes: latest.processes.as_deref(),
        status,
        health: health.as_ref(),
        names: &names,
        limits: &live.limits,
        proc,
    }))
}

/// A whole-number request parameter named `name` within `range` (`default` when absent), or
/// an error saying what was expected.
pub(crate) fn bounded_number(
    text: Option<&str>,
    name: &str,
    range: std::ops::RangeInclusive<u64>,
    default: u64,
) -> Result<u64, String> {
    let Some(text) = text else {
        return Ok(default);
    };
    text.parse::<u64>()
        .ok()
        .filter(|n| range.contains(n))
        .ok_or_else(|| {
            format!(
                "{name} must be a whole number from {} to {}, not {text:?}",
                range.start(),
                range.end()
            )
        })
}

/// A reading from the collector's answers.
fn reading(node: &NodeResponse, workloads: &[(Workload, WorkloadTotals)]) -> Reading {
    let cpus = node
        .node
        .cpus
        .iter()
        .map(|cpu| {
            let mut idle_ns_by_bucket: Log2Hist = [0; taskscope_common::HIST_BUCKETS];
            for period in &cpu.idle_periods {
                idle_ns_by_bucket[bucket_of(period.below_ns)] = period.idle_ns;
            }
            CpuReading {
                observed: cpu.observed,
                busy_ns: cpu.busy_ns,
                idle_ns: cpu.idle_ns,
                idle_ns_by_bucket,
            }
        })
        .collect();
    let runqueue_by_workload = workloads
        .iter()
        .map(|(workload, totals)| {
            (
                Arc::from(workload.cgroup.as_str()),
                totals.sched.runqueue_hist,
            )
        })
        .collect();
    Reading {
        unix_ms: clock::Clocks::now().monotonic_to_unix(node.collected_at_monotonic_ns) / 1_000_000,
        monotonic_ns: node.collected_at_monotonic_ns,
        cpus,
        runqueue_by_workload,
    }
}

/// The index of the log2 bucket whose exclusive upper bound is `below_ns` (`None`: the last).
fn bucket_of(below_ns: Option<u64>) -> usize {
    let last = taskscope_common::HIST_BUCKETS - 1;
    below_ns.map_or(last, |b| (b.trailing_zeros() as usize).min(last))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::histogram::below_ns;

    #[test]
    fn bucket_of_inverts_below_ns() {
        for index in 0..taskscope_common::HIST_BUCKETS {
            assert_eq!(bucket_of(below_ns(index)), index);
        }
    }
}
