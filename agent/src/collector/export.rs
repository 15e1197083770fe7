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
pub struct SpanExportStats {
    pub exported: AtomicU64,
    /// Spans offered while the queue was full.
    pub dropped_queue_full: AtomicU64,
    /// Spans of batches still failing after the exporter's retry period.
    pub dropped_export_failed: AtomicU64,
    /// Export requests that failed (each retry counts).
    pub failed_requests: AtomicU64,
    /// The last request succeeded.
    pub up: AtomicBool,
}

/// The collector's end of the export queue.
#[derive(Debug, Clone)]
pub struct SpanSink {
    tx: mpsc::Sender<TaskSpan>,
    stats: Arc<SpanExportStats>,
}

impl SpanSink {
    /// A queue of `capacity` spans (at least one): the sink and the exporter's end.
    pub fn new(capacity: usize) -> (Self, mpsc::Receiver<TaskSpan>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let stats = Arc::default();
        (Self { tx, stats }, rx)
    }

    /// What the exporter did so far.
    pub fn stats(&self) -> &SpanExportStats {
        &self.stats
    }

    /// The statistics, for the exporter to write.
    pub fn shared_stats(&self) -> Arc<SpanExportStats> {
        Arc::clone(&self.stats)
    }

    /// Queues a span, or counts it dropped when the queue is full. Never waits.
    pub fn offer(&self, span: TaskSpan) {
        if self.tx.try_send(span).is_err() {
            self.stats
                .dropped_queue_full
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What the OTLP metrics exporter did.
#[derive(Debug, Default, serde::Serialize)]
pub struct MetricsExportStats {
    /// Requests the collector accepted.
    pub exported_requests: AtomicU64,
    /// Requests that failed (their points are lost; the next ones carry the same totals).
    pub failed_requests: AtomicU64,
    pub up: AtomicBool,
}
