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
    counts: [AtomicU64; 6],
}

impl HttpRefusals {
    /// A connection over `--http-max-connections`, closed at once.
    pub(crate) const CONNECTIONS: usize = 0;
    /// A heavy request while its pool was full (503).
    pub(crate) const BUSY: usize = 1;
    /// A request that took longer than the request timeout (408).
    pub(crate) const TIMEOUT: usize = 2;
    /// A dashboard request or live-feed connection over its client's rate (429).
    pub(crate) const RATE_LIMITED: usize = 3;
    /// A dashboard login with a wrong token.
    pub(crate) const LOGIN_FAILED: usize = 4;
    /// A live-feed connection while the most clients were connected (503).
    pub(crate) const LIVE_CLIENTS: usize = 5;
    /// The `reason` label of each count.
    const REASONS: [&'static str; 6] = [
        "connections",
        "busy",
        "timeout",
        "rate_limited",
        "login_failed",
        "live_clients",
    ];

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

/// The live feed's counters (`taskscope_live_*`): the feed counts, /metrics reads.
#[derive(Debug, Default)]
pub(crate) struct LiveFeedStats {
    /// Clients connected now.
    pub(crate) clients: AtomicU64,
    pub(crate) frames_sent: AtomicU64,
    /// Frames a client did not get because it was still busy with an earlier one (it got the
    /// newest instead).
    pub(crate) frames_dropped: AtomicU64,
    pub(crate) bytes_sent: AtomicU64,
}

impl LiveFeedStats {
    /// (clients, frames sent, frames dropped, bytes sent).
    pub(crate) fn totals(&self) -> [u64; 4] {
        [
            &self.clients,
            &self.frames_sent,
            &self.frames_dropped,
            &self.bytes_sent,
        ]
        .map(|c| c.load(Ordering::Relaxed))
    }
}
