//! The collector's side of the exporters: the queue it offers spans to, and the counters the
//! exporters keep of what they did, which the status, health and /metrics read (declared here,
//! below all of them, so that none of them imports another).
//!
//! The collector offers each finished (and sampled) span without waiting; the span exporter
//! drains the queue and records what it did in the shared [`SpanExportStats`].

use std::sync::{
    atomic::{AtomicBool, AtomicU64, Ordering},
    Arc,
};

use tokio::sync::mpsc;

use crate::model::span::TaskSpan;

/// What the span exporter did, for /metrics and /api/v1/status.
#[derive(Debug, Default, serde::Serialize)]
pub(crate) struct SpanExportStats {
    pub(crate) exported: AtomicU64,
    /// Spans offered while the queue was full.
    pub(crate) dropped_queue_full: AtomicU64,
    /// Spans of batches still failing after the exporter's retry period.
    pub(crate) dropped_export_failed: AtomicU64,
    /// Export requests that failed (each retry counts).
    pub(crate) failed_requests: AtomicU64,
    /// The last request succeeded.
    pub(crate) up: AtomicBool,
}

/// The collector's end of the export queue.
#[derive(Debug, Clone)]
pub(crate) struct SpanSink {
    tx: mpsc::Sender<TaskSpan>,
    stats: Arc<SpanExportStats>,
}

impl SpanSink {
    /// A queue of `capacity` spans (at least one): the sink and the exporter's end.
    pub(crate) fn new(capacity: usize) -> (Self, mpsc::Receiver<TaskSpan>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let stats = Arc::default();
        (Self { tx, stats }, rx)
    }

    /// What the exporter did so far.
    pub(crate) fn stats(&self) -> &SpanExportStats {
        &self.stats
    }

    /// The statistics, for the exporter to write.
    pub(crate) fn shared_stats(&self) -> Arc<SpanExportStats> {
        Arc::clone(&self.stats)
    }

    /// Queues a span, or counts it dropped when the queue is full. Never waits.
    pub(crate) fn offer(&self, span: TaskSpan) {
        if self.tx.try_send(span).is_err() {
            self.stats
                .dropped_queue_full
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What the OTLP metrics exporter did.
#[derive(Debug, Default, serde::Serialize)]
pub(crate) struct MetricsExportStats {
    /// Requests the collector accepted.
    pub(crate) exported_requests: AtomicU64,
    /// Requests that failed (their points are lost; the next ones carry the same totals).
    pub(crate) failed_requests: AtomicU64,
    pub(crate) up: AtomicBool,
}
