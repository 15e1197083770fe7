//! Runtime control: reloading the configuration (SIGHUP, `POST`/`PUT /api/v1/config`) and
//! debug mode (`/api/v1/debug`). One owner of the running configuration.
//!
//! Live on reload: the keys in [`LIVE_KEYS`] (thresholds, sampling, selectors, probe groups,
//! health thresholds, log level) and the custom metrics. Any other key changed in the file is reported as needing a
//! restart and not applied. An invalid file changes nothing.

use std::time::Duration;

use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::{
    cli::RunArgs,
    collector::{sampling::SamplingConfig, CustomRequest, LiveSettings, Query},
    config::{RunConfig, Setting, CUSTOM_METRICS_KEY},
    health::HealthThresholds,
    logging::{LogControl, DEBUG_FILTER},
    model::SlowTaskConfig,
};
use taskscope_common::Thresholds;

/// Keys a reload applies while the agent runs.
pub(crate) const LIVE_KEYS: &[&str] = &[
    "slow_syscall",
    "slow_runqueue_wait",
    "slow_block_io",
    "span_sample_ratio",
    "slow_span",
    "span_rate_limit",
    "process_metrics",
    "disable_probes",
    "health_starved_runqueue_p99",
    "health_failing_syscall_error_ratio",
    "health_failing_exits",
    "health_io_latency_p99",
    "health_churn_starts_per_second",
    "slow_task",
    "slow_task_runqueue_share",
    "log_level",
    "log_rate_limit",
    "debug",
];

/// Spans waiting for a sampling decision at most, and how long they wait.
const SAMPLING_MAX_PENDING: usize = 10_000;
const SAMPLING_MAX_WAIT: Duration = Duration::from_secs(60);

/// What a reload did.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct ReloadReport {
    /// Live keys whose value changed, now in effect.
    pub(crate) applied: Vec<String>,
    /// Keys whose value changed but that only a restart applies (still the old value).
    pub(crate) needs_restart: Vec<String>,
}

/// The running configuration and the handles that apply it.
pub(crate) struct Control {
    config: RunConfig,
    debug: bool,
    queries: mpsc::Sender<Query>,
    log: LogControl,
    health: watch::Sender<HealthThresholds>,
}

fn nanos(d: Duration) -> u64 {
    d.as_nanos().min(u128::from(u64::MAX)) as u64
}

/// The kernel thresholds of `args`.
pub(crate) fn thresholds(args: &RunArgs) -> Thresholds {
    Thresholds {
        slow_syscall_ns: nanos(args.slow_syscall),
        slow_runqueue_wait_ns: nanos(args.slow_runqueue_wait),
        slow_io_ns: nanos(args.slow_block_io),
        // Set by the loader: syscalls are timed exactly while `sys_enter` is attached.
        timed_since_ns: 0,
        // Set by the loader: on while the switch recorder runs.
        record_switches: 0,
    }
}

/// What the collector runs with, debug mode applied.
pub(crate) fn live_settings(args: &RunArgs, debug: bool) -> LiveSettings {
    let mut sampling = SamplingConfig {
        ratio: args.span_sample_ratio,
        slow_span: args.slow_span,
        max_per_second: args.span_rate_limit,
        max_pending: SAMPLING_MAX_PENDING,
        max_wait: SAMPLING_MAX_WAIT,
    };
    let mut slow_task = SlowTaskConfig {
        wall: args.slow_task,
        runqueue_share: args.slow_task_runqueue_share,
    };
    if debug {
        // Every task traced regardless of sampling, and slow tasks found sooner.
        sampling.ratio = 1.0;
        sampling.max_per_second = 0;
        slow_task.wall /= 10;
    }
    LiveSettings {
        thresholds: thresholds(args),
        disabled_groups: args.disable_probes.clone(),
        sampling,
        process_selectors: args.process_metrics.clone(),
        slow_task,
    }
}

/// The workload health thresholds of `args`.
pub(crate) fn health_thresholds(args: &RunArgs) -> HealthThresholds {
    HealthThresholds {
        starved_runqueue_p99: args.health_starved_runqueue_p99,
        failing_syscall_error_ratio: args.health_failing_syscall_error_ratio,
        failing_exits: args.health_failing_exits,
        io_latency_p99: args.health_io_latency_p99,
        churn_starts_per_second: args.health_churn_starts_per_second,
        ..HealthThresholds::default()
    }
}

/// `GET /api/v1/config`.
#[derive(Debug, Serialize)]
pub(crate) struct ConfigView<'a> {
    pub(crate) file: Option<&'a std::path::Path>,
    pub(crate) debug: bool,
    pub(crate) settings: &'a std::collections::BTreeMap<String, Setting>,
    pub(crate) live_keys: &'static [&'static str],
}

impl Control {
    pub(crate) fn new(
        config: RunConfig,
        queries: mpsc::Sender<Query>,
        log: LogControl,
        health: watch::Sender<HealthThresholds>,
    ) -> Self {
        let debug = config.args.debug;
        Self {
            config,
            debug,
            queries,
            log,
            health,
        }
    }

    pub(crate) fn view(&self) -> ConfigView<'_> {
        ConfigView {
            file: self.config.file.as_deref(),
            debug: self.debug,
            settings: &self.config.effective,
            live_keys: LIVE_KEYS,
        }
    }

    pub(crate) fn debug(&self) -> bool {
        self.debug
    }

    /// Reads the config file again (SIGHUP, `POST /api/v1/config`).
    pub(crate) async fn reload_file(&mut self) -> Result<ReloadReport, String> {
        let new = self.config.reload().map_err(|e| e.to_string())?;
        self.apply(new).await
    }

    /// Applies a config file's text (`PUT /api/v1/config`).
    pub(crate) async fn reload_text(&mut self, text: &str) -> Result<ReloadReport, String> {
        let origin = std::path::Path::new("the request body");
        let new = self
            .config
            .with_text(text, origin)
            .map_err(|e| e.to_string())?;
        self.apply(new).await
    }

    /// Switches debug mode.
    pub(crate) async fn set_debug(&mut self, on: bool) -> Result<(), String> {
        let args = self.config.args.clone();
        self.push(&args, on).await?;
        self.debug = on;
        info!(debug = on, "debug mode switched");
        Ok(())
    }

    async fn apply(&mut self, new: RunConfig) -> Result<ReloadReport, String> {
        let mut report = ReloadReport {
            applied: Vec::new(),
            needs_restart: Vec::new(),
        };
        for (key, setting) in &new.effective {
            if self.config.effective.get(key).map(|s| &s.value) == Some(&setting.value) {
                continue;
            }
            if LIVE_KEYS.contains(&key.as_str()) || key == CUSTOM_METRICS_KEY {
                report.applied.push(key.clone());
            } else {
                report.needs_restart.push(key.clone());
            }
        }
        let debug = if report.applied.iter().any(|k| k == "debug") {
            new.args.debug
        } else {
            self.debug
        };
        if report.applied.iter().any(|k| k == CUSTOM_METRICS_KEY) {
            // First: a definition that cannot be attached leaves everything as it was.
            let definitions = new.args.custom_metrics.clone();
            crate::collector::ask(&self.queries, |tx| {
                Query::Custom(CustomRequest::ReplaceFile(definitions, tx))
            })
            .await
            .ok_or("the collector is not running")??;
        }
        self.push(&new.args, debug).await?;
        if !report.needs_restart.is_empty() {
            warn!(keys = ?report.needs_restart, "these settings changed but apply only after a restart; still running with the old values");
        }
        info!(applied = ?report.applied, "configuration reloaded");
        // Only the live part is adopted: what needs a restart keeps its old value, so that
        // the view says what runs.
        let mut adopted = self.config.clone();
        adopt_live(&mut adopted, &new);
        self.config = adopted;
        self.debug = debug;
        Ok(report)
    }

    /// Sends the live settings of `args` everywhere; nothing is changed if the log filter is
    /// invalid.
    async fn push(&self, args: &RunArgs, debug: bool) -> Result<(), String> {
        let filter = if debug {
            DEBUG_FILTER.to_string()
        } else {
            args.log.log_level.clone()
        };
        tracing_subscriber::EnvFilter::try_new(&filter)
            .map_err(|e| format!("key `log_level`: '{filter}' is not a valid log filter: {e}"))?;
        let settings = Box::new(live_settings(args, debug));
        crate::collector::ask(&self.queries, |tx| Query::Reconfigure(settings, tx))
            .await
            .ok_or("the collector is not running")??;
        self.log.set_filter(&filter)?;
        self.log.set_rate_limit(args.log_rate_limit);
        let _ = self.health.send(health_thresholds(args));
        Ok(())
    }
}

/// Copies the live keys' values (and their effective view) from `new` into `running`.
fn adopt_live(running: &mut RunConfig, new: &RunConfig) {
    let (a, n) = (&mut running.args, &new.args);
    a.slow_syscall = n.slow_syscall;
    a.slow_runqueue_wait = n.slow_runqueue_wait;
    a.slow_block_io = n.slow_block_io;
    a.span_sample_ratio = n.span_sample_ratio;
    a.slow_span = n.slow_span;
    a.span_rate_limit = n.span_rate_limit;
    a.process_metrics = n.process_metrics.clone();
    a.disable_probes = n.disable_probes.clone();
    a.health_starved_runqueue_p99 = n.health_starved_runqueue_p99;
    a.health_failing_syscall_error_ratio = n.health_failing_syscall_error_ratio;
    a.health_failing_exits = n.health_failing_exits;
    a.health_io_latency_p99 = n.health_io_latency_p99;
    a.health_churn_starts_per_second = n.health_churn_starts_per_second;
    a.slow_task = n.slow_task;
    a.slow_task_runqueue_share = n.slow_task_runqueue_share;
    a.log.log_level = n.log.log_level.clone();
    a.log_rate_limit = n.log_rate_limit;
    a.debug = n.debug;
    a.custom_metrics = n.custom_metrics.clone();
    for key in LIVE_KEYS.iter().chain(&[CUSTOM_METRICS_KEY]) {
        if let Some(setting) = new.effective.get(*key) {
            running.effective.insert(key.to_string(), setting.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_live_key_is_a_config_key() {
        let keys = crate::config::keys();
        for key in LIVE_KEYS {
            assert!(keys.iter().any(|k| k == key), "{key} is not a key");
        }
    }

    #[test]
    fn debug_mode_exports_every_span_and_finds_slow_tasks_sooner() {
        use clap::Parser;
        let cli = crate::cli::Cli::parse_from(["taskscope", "run", "--span-sample-ratio", "0.1"]);
        let crate::cli::Command::Run(args) = cli.command else {
            panic!("run");
        };
        let normal = live_settings(&args, false);
        let debug = live_settings(&args, true);
        assert_eq!(normal.sampling.ratio, 0.1);
        assert_eq!(debug.sampling.ratio, 1.0);
        assert_eq!(debug.sampling.max_per_second, 0);
        assert_eq!(debug.slow_task.wall, normal.slow_task.wall / 10);
    }
}
