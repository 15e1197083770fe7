//! Exporters: they read snapshots the collector builds and never touch the kernel or the model.

pub(crate) mod families;
pub(crate) mod otlp;
pub(crate) mod otlp_metrics;
pub(crate) mod otlp_target;
pub(crate) mod prometheus;

use std::sync::atomic::{AtomicU64, Ordering};

/// Requests the HTTP server refused, by reason (`taskscope_http_refused_total`); the server
/// counts, /metrics reads.
#[derive(Debug, Default)]
pub(crate) struct HttpRefusals {
    counts: [AtomicU64; 3],
}

impl HttpRefusals {
    /// A connection over `--http-max-connections`, closed at once.
    pub(crate) const CONNECTIONS: usize = 0;
    /// A heavy request while its pool was full (503).
    pub(crate) const BUSY: usize = 1;
    /// A request that took longer than the request timeout (408).
    pub(crate) const TIMEOUT: usize = 2;
    /// The `reason` label of each count.
    const REASONS: [&'static str; 3] = ["connections", "busy", "timeout"];

    /// One more refusal for `reason` (one of the constants above).
    pub(crate) fn count(&self, reason: usize) {
        if let Some(count) = self.counts.get(reason) {
            count.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// (reason, count) of every reason.
    pub(crate) fn totals(&self) -> Vec<(&'static str, u64)> {
        Self::REASONS
            .iter()
            .zip(&self.counts)
            .map(|(reason, count)| (*reason, count.load(Ordering::Relaxed)))
            .collect()
    }
}
