//! Logs: JSON lines by default (timestamp, level, target, message, fields), human text on
//! request; a level that changes at runtime (reload, debug mode); and a rate limit per place
//! in the code, so that a storm (a collector down, a flood of slow tasks) costs one summary
//! line, not thousands.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU32, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use tracing::{callsite::Identifier, Subscriber};
use tracing_subscriber::{
    filter::EnvFilter,
    layer::{Context, SubscriberExt},
    reload,
    util::SubscriberInitExt,
    Layer, Registry,
};

use crate::cli::{LogArgs, LogFormat};

/// Log lines suppressed by the rate limit since start (`taskscope_log_lines_suppressed_total`).
pub(crate) static SUPPRESSED_TOTAL: AtomicU64 = AtomicU64::new(0);

/// Filter used when `--log-level` does not parse.
const FALLBACK_FILTER: &str = "info";

/// Filter of debug mode: the agent's own debug lines, not its libraries'.
pub(crate) const DEBUG_FILTER: &str = "info,taskscope=debug";

/// Changes the log filter while the agent runs.
#[derive(Clone)]
pub struct LogControl {
    handle: Option<reload::Handle<EnvFilter, Registry>>,
    limiter: Arc<RateLimiter>,
}

impl LogControl {
    /// Sets the filter (tracing EnvFilter syntax); an invalid one is an error, nothing changes.
    pub(crate) fn set_filter(&self, filter: &str) -> Result<(), String> {
        let parsed = EnvFilter::try_new(filter)
            .map_err(|e| format!("log filter '{filter}' is not valid: {e}"))?;
        match &self.handle {
            Some(handle) => handle
                .reload(parsed)
                .map_err(|e| format!("cannot change the log filter: {e}")),
            None => Err("logging was set up elsewhere; the filter cannot change".into()),
        }
    }

    /// Sets the rate limit (lines per second per call site).
    pub(crate) fn set_rate_limit(&self, per_second: u32) {
        self.limiter.per_second.store(per_second, Ordering::Relaxed);
    }

    /// Logs one summary line per call site that was rate limited since the last call.
    pub(crate) fn report_suppressed(&self) {
        for (target, file_line, count) in self.limiter.take_suppressed() {
            tracing::warn!(
                suppressed = count,
                source_target = target,
                source = %file_line,
                "log lines suppressed by the rate limit (--log-rate-limit)"
            );
        }
    }
}

/// Sets up the process's logging.
pub fn init(args: &LogArgs, rate_limit: u32) -> LogControl {
    let filter = EnvFilter::try_new(&args.log_level).unwrap_or_else(|_| {
        eprintln!(
            "taskscope: log filter '{}' is not valid; using '{FALLBACK_FILTER}'",
            args.log_level
        );
        EnvFilter::new(FALLBACK_FILTER)
    });
    let (filter, handle) = reload::Layer::new(filter);
    let limiter = Arc::new(RateLimiter::new(rate_limit));
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(RateLimitLayer(Arc::clone(&limiter)));
    let result = match args.log_format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        LogFormat::Text => registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .try_init(),
    };
    LogControl {
        handle: result.is_ok().then_some(handle),
        limiter,
    }
}

/// Per call site: lines in the current one-second window and lines suppressed.
struct RateLimiter {
    per_second: AtomicU32,
    sites: Mutex<HashMap<Identifier, Site>>,
}

struct Site {
    target: &'static str,
    file_line: String,
    window_start: Instant,
    in_window: u32,
    suppressed: u64,
}

impl RateLimiter {
    fn new(per_second: u32) -> Self {
        Self {
            per_second: AtomicU32::new(per_second),
            sites: Mutex::new(HashMap::new()),
        }
    }

    /// Whether a line from this call site may go out now.
    fn admit(&self, metadata: &'static tracing::Metadata<'static>) -> bool {
        let limit = self.per_second.load(Ordering::Relaxed);
        let mut sites = self.sites.lock().unwrap_or_else(|p| p.into_inner());
        // Call sites are static and finitely many: the map is bounded by the code.
        let site = sites.entry(metadata.callsite()).or_insert_with(|| Site {
            target: metadata.target(),
            file_line: format!(
                "{}:{}",
                metadata.file().unwrap_or("?"),
                metadata.line().unwrap_or(0)
            ),
            window_start: Instant::now(),
            in_window: 0,
            suppressed: 0,
        });
        if site.window_start.elapsed() >= Duration::from_secs(1) {
            site.window_start = Instant::now();
            site.in_window = 0;
        }
        site.in_window += 1;
        if site.in_window > limit {
            site.suppressed += 1;
            SUPPRESSED_TOTAL.fetch_add(1, Ordering::Relaxed);
            false
        } else {
            true
        }
    }

    fn take_suppressed(&self) -> Vec<(&'static str, String, u64)> {
        let mut sites = self.sites.lock().unwrap_or_else(|p| p.into_inner());
        sites
            .values_mut()
            .filter(|s| s.suppressed > 0)
            .map(|s| {
                (
                    s.target,
                    s.file_line.clone(),
                    std::mem::take(&mut s.suppressed),
                )
            })
            .collect()
    }
}

/// Drops events over the rate limit before any output layer sees them.
struct RateLimitLayer(Arc<RateLimiter>);

impl<S: Subscriber> Layer<S> for RateLimitLayer {
    fn event_enabled(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) -> bool {
        self.0.admit(event.metadata())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_storm_from_one_place_is_cut_and_counted() {
        let limiter = RateLimiter::new(3);
        struct Cs;
        static CS: Cs = Cs;
        static META: tracing::Metadata<'static> = tracing::metadata! {
            name: "storm",
            target: "taskscope::test",
            level: tracing::Level::WARN,
            fields: &[],
            callsite: &CS,
            kind: tracing::metadata::Kind::EVENT,
        };
        impl tracing::callsite::Callsite for Cs {
            fn set_interest(&self, _: tracing::subscriber::Interest) {}
            fn metadata(&self) -> &tracing::Metadata<'_> {
                &META
            }
        }
        let admitted = (0..100).filter(|_| limiter.admit(&META)).count();
        assert_eq!(admitted, 3);
        let suppressed = limiter.take_suppressed();
        assert_eq!(suppressed.len(), 1);
        assert_eq!(suppressed[0].2, 97);
        assert!(limiter.take_suppressed().is_empty(), "reported once");
    }
}
