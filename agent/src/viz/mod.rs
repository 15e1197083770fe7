//! Visualisation data (the dashboard's, also served as plain JSON): a bounded history of the
//! node recorded once a second from the collector's answers, on the consumers' side, and the
//! heatmaps built from it on request.
//!
//! The recorder asks the collector for its latest read like any consumer does (never for a
//! fresh one, which would add a kernel read a second); it never holds it up, and the
//! history's size is fixed ([`history::MAX_FRAMES`] frames, each with at most
//! [`history::MAX_WORKLOADS_PER_FRAME`] workloads).

pub(crate) mod heatmap;
pub(crate) mod history;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::{mpsc, watch};

use self::history::{CpuReading, History, Reading};
use crate::{
    clock,
    collector::{ask, NodeResponse, Query},
    model::{aggregate::WorkloadTotals, histogram::Log2Hist, workload::Workload},
};

/// How often the history takes a reading.
pub(crate) const INTERVAL: Duration = Duration::from_secs(1);

/// The history, shared by the recorder (writer) and the API (readers).
pub(crate) type SharedHistory = Arc<Mutex<History>>;

/// Takes a reading every [`INTERVAL`] until `shutdown` says stop (or the collector stops).
pub(crate) async fn record(
    queries: mpsc::Sender<Query>,
    history: SharedHistory,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return,
            _ = tick.tick() => {}
        }
        // The latest poll's figures: asking for fresh ones would add a kernel read a second.
        let Some(latest) = ask(&queries, Query::Latest).await else {
            return;
        };
        let reading = reading(&latest.node, &latest.workloads);
        history
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(reading);
    }
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
