//! Health: of the agent (each part that can fail: probe groups, the ring buffer, the task
//! model, metadata, exporters) and of the node's workloads (starved, failing, IO-bound,
//! churning), judged from the kernel's figures over the last evaluation window.
//!
//! One task evaluates every `--health-interval` and keeps the latest [`HealthReport`]; the
//! probes (`/livez`, `/readyz`, `/health`), `/metrics` and the logs read it. A change of state
//! is logged once, when it happens.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, RwLock},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde::Serialize;
use taskscope_common::{Loss, HIST_BUCKETS};

use crate::{
    collector::StatusResponse,
    metadata::{
        runtimes::{RuntimeSource, RuntimeState},
        SourceState,
    },
    model::{
        aggregate::WorkloadTotals,
        histogram,
        snapshot::{loss_source, LossView},
        workload::Workload,
    },
    probes::{coverage::Degradation, HookStatus, ProbeGroup},
};

/// A component's or the agent's state, worst last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Status {
    Healthy,
    /// Switched off on purpose.
    Disabled,
    /// Working, with something lost or missing.
    Degraded,
    Unhealthy,
}

impl Status {
    /// The value of `taskscope_health_status`: 1 healthy, 0.5 degraded, 0 unhealthy; -1 off.
    pub(crate) fn gauge(self) -> f64 {
        match self {
            Status::Healthy => 1.0,
            Status::Degraded => 0.5,
            Status::Unhealthy => 0.0,
            Status::Disabled => -1.0,
        }
    }
}

/// One component's state and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Component {
    pub(crate) status: Status,
    pub(crate) message: String,
    /// Unix seconds of the evaluation that first saw it in this status.
    pub(crate) since: f64,
}

fn component(status: Status, message: impl Into<String>) -> Component {
    Component {
        status,
        message: message.into(),
        since: 0.0,
    }
}

/// Thresholds of workload health (`--health-*` flags; live on reload).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct HealthThresholds {
    /// Starved: run-queue latency p99 over this.
    pub(crate) starved_runqueue_p99: Duration,
    /// Failing: this share of syscalls failed (with at least `min_syscalls` in the window).
    pub(crate) failing_syscall_error_ratio: f64,
    /// Failing: at least this many processes exited with failure in the window.
    pub(crate) failing_exits: u64,
    /// IO-bound: block IO completion latency p99 over this.
    pub(crate) io_latency_p99: Duration,
    /// Churning: more than this many processes started per second.
    pub(crate) churn_starts_per_second: f64,
    /// Fewer events than these in a window say nothing (a workload that did 3 syscalls, 2
    /// failing, is not failing).
    pub(crate) min_syscalls: u64,
    pub(crate) min_samples: u64,
}

impl Default for HealthThresholds {
    fn default() -> Self {
        Self {
            starved_runqueue_p99: Duration::from_millis(50),
            failing_syscall_error_ratio: 0.5,
            failing_exits: 5,
            io_latency_p99: Duration::from_millis(200),
            churn_starts_per_second: 50.0,
            min_syscalls: 100,
            min_samples: 20,
        }
    }
}

/// A workload's health state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum WorkloadState {
    Starved,
    Failing,
    IoBound,
    Churning,
}

impl WorkloadState {
    pub(crate) fn name(self) -> &'static str {
        match self {
            WorkloadState::Starved => "starved",
            WorkloadState::Failing => "failing",
            WorkloadState::IoBound => "io_bound",
            WorkloadState::Churning => "churning",
        }
    }
}

/// One workload that is not healthy, with the reason for each state.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct WorkloadHealth {
    pub(crate) workload: Workload,
    /// State -> why, with the figures and the threshold.
    pub(crate) states: BTreeMap<WorkloadState, String>,
    /// Unix seconds of the evaluation that first saw it in these states.
    pub(crate) since: f64,
}

/// The latest evaluation.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct HealthReport {
    pub(crate) status: Status,
    /// Unix seconds of the evaluation.
    pub(crate) timestamp: f64,
    pub(crate) version: &'static str,
    pub(crate) uptime_seconds: f64,
    pub(crate) components: BTreeMap<String, Component>,
    pub(crate) message: String,
    /// Only for `/health/detailed`.
    #[serde(skip)]
    pub(crate) workloads: Vec<WorkloadHealth>,
    /// Window of the workload figures (seconds).
    #[serde(skip)]
    pub(crate) window_seconds: f64,
    /// The programs are attached, events are flowing, metadata is ready.
    #[serde(skip)]
    pub(crate) ready: Result<(), String>,
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The report as shared with readers.
pub(crate) type SharedHealth = Arc<RwLock<Option<HealthReport>>>;

/// What the agent's other parts say about themselves, gathered for one evaluation.
pub(crate) struct Inputs<'a> {
    pub(crate) status: &'a StatusResponse,
    pub(crate) kubernetes: &'a SourceState,
    pub(crate) kubernetes_synced_once: bool,
    /// Docker's and Podman's APIs, as configured.
    pub(crate) container_runtimes: &'a [RuntimeSource],
    /// (up, configured) of the span exporter and of the metrics exporter.
    pub(crate) otlp_traces: Option<bool>,
    pub(crate) otlp_metrics: Option<bool>,
    /// A cgroup v2 hierarchy was found (workload attribution).
    pub(crate) cgroup_v2: bool,
    pub(crate) workloads: &'a [(Workload, WorkloadTotals)],
}

/// Keeps what the last evaluation saw, to judge the window since.
#[derive(Default)]
pub(crate) struct Evaluator {
    previous: Option<Previous>,
    started: Option<Instant>,
    /// Last state of each component and workload, to log changes once.
    last_components: BTreeMap<String, (Status, f64)>,
    last_workloads: HashMap<String, (Vec<WorkloadState>, f64)>,
}

struct Previous {
    at: Instant,
    lost: HashMap<(&'static str, &'static str), u64>,
    events: u64,
    processes_dropped: u64,
    workloads: HashMap<String, WorkloadTotals>,
}

/// Workloads judged at most (the rest is skipped, the busiest first is not needed: health is
/// about any workload, so the cap is high; it bounds memory).
const MAX_WORKLOADS: usize = 20_000;

impl Evaluator {
    /// Judges the agent and the workloads from `inputs`.
    pub(crate) fn evaluate(
        &mut self,
        inputs: &Inputs<'_>,
        thresholds: &HealthThresholds,
    ) -> HealthReport {
        let now = Instant::now();
        let started = *self.started.get_or_insert(now);
        let window = self
            .previous
            .as_ref()
            .map(|p| now.duration_since(p.at))
            .unwrap_or_default();
        let lost: HashMap<(&'static str, &'static str), u64> = inputs
            .status
            .lost
            .iter()
            .map(|l: &LossView| ((l.source, l.reason), l.count))
            .collect();
        let events: u64 = inputs.status.events.values().sum();
        let mut components = BTreeMap::new();
        {
            let since = Since {
                window,
                lost: &lost,
                previous: self.previous.as_ref(),
            };
            data_path_components(&mut components, inputs, &since, events);
            metadata_components(&mut components, inputs);
            exporter_components(&mut components, inputs, &since);
            custom_metric_components(&mut components, inputs);
        }
        let (status, message) = overall(&components);
        let ready = readiness(inputs, events);
        let mut workloads = match &self.previous {
            Some(previous) if !window.is_zero() => {
                judge_workloads(inputs.workloads, &previous.workloads, window, thresholds)
            }
            _ => Vec::new(),
        };
        self.log_changes(&mut components, &mut workloads);
        self.previous = Some(Previous {
            at: now,
            lost,
            events,
            processes_dropped: inputs.status.model.processes_dropped,
            workloads: inputs
                .workloads
                .iter()
                .take(MAX_WORKLOADS)
                .map(|(w, t)| (w.cgroup.clone(), t.clone()))
                .collect(),
        });
        HealthReport {
            status,
            timestamp: unix_now(),
            version: env!("CARGO_PKG_VERSION"),
            uptime_seconds: now.duration_since(started).as_secs_f64(),
            components,
            message,
            workloads,
            window_seconds: window.as_secs_f64(),
            ready,
        }
    }

    /// Logs what changed since the previous evaluation and dates each component's and
    /// workload's state from when it began.
    fn log_changes(
        &mut self,
        components: &mut BTreeMap<String, Component>,
        workloads: &mut [WorkloadHealth],
    ) {
        let now_unix = unix_now();
        for (name, c) in components.iter_mut() {
            let before = self.last_components.get(name).copied();
            c.since = match before {
                Some((status, since)) if status == c.status => since,
                _ => now_unix,
            };
            self.last_components
                .insert(name.clone(), (c.status, c.since));
            let before = before.map(|(status, _)| status);
            if before.is_some_and(|b| b != c.status)
                || (before.is_none() && c.status > Status::Degraded)
            {
                match c.status {
                    Status::Healthy | Status::Disabled => {
                        tracing::info!(component = %name, status = ?c.status, message = %c.message, "health changed")
                    }
                    _ => {
                        tracing::warn!(component = %name, status = ?c.status, message = %c.message, "health changed")
                    }
                }
            }
        }
        let mut now: HashMap<String, (Vec<WorkloadState>, f64)> = HashMap::new();
        for w in workloads.iter_mut() {
            let states: Vec<WorkloadState> = w.states.keys().copied().collect();
            let before = self.last_workloads.get(&w.workload.cgroup);
            w.since = match before {
                Some((was, since)) if *was == states => *since,
                _ => now_unix,
            };
            if before.map(|(was, _)| was) != Some(&states) {
                tracing::warn!(
                    workload = %w.workload.cgroup,
                    states = ?states.iter().map(|s| s.name()).collect::<Vec<_>>(),
                    reasons = ?w.states.values().collect::<Vec<_>>(),
                    "workload health changed"
                );
            }
            now.insert(w.workload.cgroup.clone(), (states, w.since));
        }
        for cgroup in self.last_workloads.keys() {
            if !now.contains_key(cgroup) {
                tracing::info!(workload = %cgroup, "workload healthy again");
            }
        }
        self.last_workloads = now;
    }
}

/// What changed since the previous evaluation.
struct Since<'a> {
    window: Duration,
    lost: &'a HashMap<(&'static str, &'static str), u64>,
    previous: Option<&'a Previous>,
}

impl Since<'_> {
    /// Data lost at `source` (for `reason`, or any) since the previous evaluation.
    fn lost(&self, source: &str, reason: Option<&str>) -> u64 {
        self.lost
            .iter()
            .filter(|((s, r), _)| *s == source && reason.is_none_or(|reason| *r == reason))
            .map(|(key, count)| {
                let before = self
                    .previous
                    .and_then(|p| p.lost.get(key))
                    .copied()
                    .unwrap_or(0);
                count.saturating_sub(before)
            })
            .sum()
    }
}

/// The kernel programs, the ring buffer and the task model.
fn data_path_components(
    components: &mut BTreeMap<String, Component>,
    inputs: &Inputs<'_>,
    since: &Since<'_>,
    events: u64,
) {
    let window = since.window;
    let events_since = events - since.previous.map_or(0, |p| p.events.min(events));
    for group in ProbeGroup::ALL {
        components.insert(
            format!("probes_{}", group.name()),
            probe_group(group, &inputs.status.hooks, &inputs.status.degradations),
        );
    }
    let ring_lost = since.lost(Loss::RingBufFull.name().0, None);
    let ring = if ring_lost == 0 {
        component(
            Status::Healthy,
            format!(
                "{events_since} events in the last {:.0} s, none lost",
                window.as_secs_f64()
            ),
        )
    } else {
        let share = ring_lost as f64 / (ring_lost + events_since).max(1) as f64;
        component(
            if share > 0.5 { Status::Unhealthy } else { Status::Degraded },
            format!(
                "{ring_lost} events lost in the last {:.0} s ({:.1}% of {}): the agent reads the ring buffer too slowly; raise --ring-buffer-kib",
                window.as_secs_f64(),
                share * 100.0,
                ring_lost + events_since
            ),
        )
    };
    components.insert("ring_buffer".into(), ring);
    components.insert("task_model".into(), task_model(inputs, since));
}

/// The task model: processes not tracked, kernel maps full, and the model's own losses.
fn task_model(inputs: &Inputs<'_>, since: &Since<'_>) -> Component {
    let window = since.window;
    // Every kernel map that can be full (the ring buffer is judged above), with what to raise.
    let maps_lost: Vec<String> = Loss::ALL
        .iter()
        .map(|loss| loss.name())
        .filter(|(_, reason)| *reason == "map_full")
        .filter_map(|(source, reason)| {
            let count = since.lost(source, Some(reason));
            let remedy = match source {
                "tasks_map" => "raise --max-tasks",
                "syscalls_map" | "syscall_errnos_map" => "raise --max-syscall-entries",
                "io_starts_map" => "raise --max-io-requests",
                "workload_syscalls_map" => "raise --max-workload-syscall-entries",
                _ => "fixed size",
            };
            (count > 0).then(|| format!("{count} lost in {source} (full: {remedy})"))
        })
        .collect();
    let dropped = inputs
        .status
        .model
        .processes_dropped
        .saturating_sub(since.previous.map_or(0, |p| p.processes_dropped));
    // The model's own losses, each with what to do about it.
    let model_losses: Vec<String> = [
        (
            loss_source::TASK_MODEL,
            "exit_not_seen",
            "processes ended without an exit event (ring buffer full?)",
        ),
        (
            loss_source::TASK_MODEL,
            "untracked_process",
            "exit or slow events of processes not tracked",
        ),
        (
            loss_source::TASK_MODEL,
            "spans_dropped",
            "spans not taken by the exporters in time",
        ),
        (
            loss_source::TASK_MODEL,
            "pid_reused",
            "pids reused before their previous owner was forgotten (counts may be merged)",
        ),
        (
            loss_source::PROCFS,
            "cmdline_unreadable",
            "command lines unreadable in /proc",
        ),
        (
            loss_source::CGROUP_RESOLVER,
            "unresolved",
            "cgroups not resolved (charged to no cgroup)",
        ),
        (
            "syscalls_map",
            "process_cap",
            "syscalls of processes at their cap of entries (--max-syscall-entries-per-process)",
        ),
    ]
    .into_iter()
    .filter_map(|(source, reason, what)| {
        let count = since.lost(source, Some(reason));
        (count > 0).then(|| format!("{count} {what}"))
    })
    .collect();
    if dropped == 0 && maps_lost.is_empty() && model_losses.is_empty() {
        component(
            Status::Healthy,
            format!(
                "{} live and {} exited processes",
                inputs.status.live_processes, inputs.status.exited_processes
            ),
        )
    } else {
        let mut text = format!(
            "in the last {:.0} s: {dropped} processes not tracked (task table full: raise --max-tasks)",
            window.as_secs_f64()
        );
        for loss in maps_lost.iter().chain(&model_losses) {
            text.push_str(", ");
            text.push_str(loss);
        }
        component(Status::Degraded, text)
    }
}

/// Where workload identity comes from: cgroupfs and the Kubernetes API.
fn metadata_components(components: &mut BTreeMap<String, Component>, inputs: &Inputs<'_>) {
    components.insert(
        "metadata_cgroup".into(),
        if inputs.cgroup_v2 {
            component(Status::Healthy, "cgroup v2 hierarchy found")
        } else {
            component(
                Status::Degraded,
                "no cgroup v2 hierarchy: workloads are not attributed",
            )
        },
    );
    components.insert(
        "metadata_kubernetes".into(),
        match inputs.kubernetes {
            SourceState::Disabled => component(Status::Disabled, "--kubernetes not set"),
            SourceState::Connecting => component(
                Status::Degraded,
                "listing this node's pods for the first time",
            ),
            SourceState::Synced => component(Status::Healthy, "pods listed and watched"),
            SourceState::Failing(why) => component(
                Status::Degraded,
                format!("the Kubernetes API fails: {why}; pod labels fall back to the cgroup's"),
            ),
        },
    );
    for source in inputs.container_runtimes {
        let socket = source.socket.display();
        components.insert(
            format!("metadata_{}", source.runtime),
            match &source.state {
                RuntimeState::Absent => component(
                    Status::Disabled,
                    format!("no API socket at {socket} (looked for every 30 s)"),
                ),
                RuntimeState::Synced => component(
                    Status::Healthy,
                    format!("containers listed from {socket} ({}), events followed", source.containers),
                ),
                RuntimeState::Failing(why) => component(
                    Status::Degraded,
                    format!("the {} API at {socket} fails: {why}; container names and images fall back to the cgroup's", source.runtime),
                ),
            },
        );
    }
}

/// The exporters: Prometheus, OTLP traces and metrics.
/// One component per custom metric (`custom_metric:<name>`): degraded while a copy of its
/// binary could not be probed.
fn custom_metric_components(components: &mut BTreeMap<String, Component>, inputs: &Inputs<'_>) {
    for metric in &inputs.status.custom_metrics {
        let (status, message) = if metric.problems.is_empty() {
            (
                Status::Healthy,
                format!("{} probes in {} files", metric.probes, metric.files),
            )
        } else {
            (
                Status::Degraded,
                format!(
                    "{} probes in {} files; not probed: {}",
                    metric.probes,
                    metric.files,
                    metric.problems.join("; ")
                ),
            )
        };
        components.insert(
            format!("custom_metric:{}", metric.name),
            component(status, message),
        );
    }
}

fn exporter_components(
    components: &mut BTreeMap<String, Component>,
    inputs: &Inputs<'_>,
    since: &Since<'_>,
) {
    let window = since.window;
    components.insert(
        "exporter_prometheus".into(),
        component(Status::Healthy, "serving /metrics"),
    );
    let otlp_traces_lost = since.lost(loss_source::OTLP_SPANS, Some("queue_full"))
        + since.lost(loss_source::OTLP_SPANS, Some("export_failed"));
    components.insert(
        "exporter_otlp_traces".into(),
        match inputs.otlp_traces {
            None => component(Status::Disabled, "no OTLP endpoint configured"),
            Some(true) if otlp_traces_lost == 0 => {
                component(Status::Healthy, "the collector accepts spans")
            }
            Some(true) => component(
                Status::Degraded,
                format!("{otlp_traces_lost} spans dropped in the last {:.0} s (queue full or export failed)", window.as_secs_f64()),
            ),
            Some(false) => component(
                Status::Degraded,
                "the collector is down or refusing spans: retrying with backoff, dropped spans are counted",
            ),
        },
    );
    components.insert(
        "exporter_otlp_metrics".into(),
        match inputs.otlp_metrics {
            None => component(Status::Disabled, "no OTLP metrics export configured"),
            Some(true) => component(Status::Healthy, "the collector accepts metrics"),
            Some(false) => component(
                Status::Degraded,
                "the collector is down or refusing metrics (values are cumulative: nothing is lost but resolution)",
            ),
        },
    );
}

/// The worst status of the enabled components, and what the components in it say.
fn overall(components: &BTreeMap<String, Component>) -> (Status, String) {
    let status = components
        .values()
        .map(|c| c.status)
        .filter(|s| *s != Status::Disabled)
        .max()
        .unwrap_or(Status::Healthy);
    let message = match status {
        Status::Healthy | Status::Disabled => "all components healthy".to_string(),
        _ => components
            .iter()
            .filter(|(_, c)| c.status == status)
            .map(|(name, c)| format!("{name}: {}", c.message))
            .collect::<Vec<_>>()
            .join("; "),
    };
    (status, message)
}

/// A probe group: degraded (in the words of `taskscope check`) when this kernel leaves some of
/// it out.
fn probe_group(group: ProbeGroup, hooks: &[HookStatus], degraded: &[Degradation]) -> Component {
    let hooks: Vec<&HookStatus> = hooks.iter().filter(|h| h.group == group).collect();
    if !hooks.is_empty() && hooks.iter().all(|h| !h.enabled) {
        return component(Status::Disabled, "switched off (--disable-probes)");
    }
    if let Some(degradation) = degraded.iter().find(|d| d.group == group) {
        return component(Status::Degraded, degradation.to_string());
    }
    let attached: Vec<&str> = hooks
        .iter()
        .filter(|h| h.attach_type.is_some())
        .map(|h| h.tracepoint)
        .collect();
    component(
        Status::Healthy,
        format!("attached: {}", attached.join(", ")),
    )
}

fn readiness(inputs: &Inputs<'_>, events: u64) -> Result<(), String> {
    // A required hook that does not attach stops the agent before it serves; a missing optional
    // one is a degraded probe group, not a reason to take the agent out of service.
    if events == 0 && inputs.status.kernel_tasks == 0 {
        return Err("nothing received from the kernel programs yet".into());
    }
    if *inputs.kubernetes != SourceState::Disabled && !inputs.kubernetes_synced_once {
        return Err("the Kubernetes pod list has not been read yet".into());
    }
    Ok(())
}

/// Where the monitor gets its inputs.
pub(crate) struct MonitorSources {
    pub(crate) queries: tokio::sync::mpsc::Sender<crate::collector::Query>,
    pub(crate) names: crate::metadata::Directories,
    pub(crate) otlp_traces: Option<crate::collector::export::SpanSink>,
    pub(crate) otlp_metrics: Option<Arc<crate::collector::export::MetricsExportStats>>,
    pub(crate) cgroup_v2: bool,
}

/// Evaluates health every `interval` until `shutdown`, keeping the latest report in `shared`.
pub(crate) async fn monitor(
    sources: MonitorSources,
    interval: Duration,
    mut thresholds: tokio::sync::watch::Receiver<HealthThresholds>,
    shared: SharedHealth,
    log: crate::logging::LogControl,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let mut evaluator = Evaluator::default();
    let mut synced_once = false;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return,
            _ = tick.tick() => {}
        }
        use crate::collector::{ask, Query};
        let Some(status) = ask(&sources.queries, Query::Status).await else {
            return;
        };
        let Some(workloads) = ask(&sources.queries, Query::Workloads).await else {
            return;
        };
        let (kubernetes, container_runtimes) = {
            let names = sources.names.read();
            (names.pods.state.clone(), names.containers.sources.clone())
        };
        synced_once |= kubernetes == SourceState::Synced;
        let inputs = Inputs {
            status: &status,
            kubernetes: &kubernetes,
            kubernetes_synced_once: synced_once,
            container_runtimes: &container_runtimes,
            otlp_traces: sources.otlp_traces.as_ref().map(|s| {
                // Up, or nothing sent yet (not known to be down).
                s.stats().up.load(Relaxed) || s.stats().failed_requests.load(Relaxed) == 0
            }),
            otlp_metrics: sources
                .otlp_metrics
                .as_ref()
                .map(|s| s.up.load(Relaxed) || s.failed_requests.load(Relaxed) == 0),
            cgroup_v2: sources.cgroup_v2,
            workloads: &workloads,
        };
        let current = *thresholds.borrow_and_update();
        let report = evaluator.evaluate(&inputs, &current);
        tracing::debug!(
            status = ?report.status,
            ready = report.ready.is_ok(),
            unhealthy_workloads = report.workloads.len(),
            window_seconds = report.window_seconds,
            "health evaluated"
        );
        *shared.write().unwrap_or_else(|p| p.into_inner()) = Some(report);
        log.report_suppressed();
    }
}

fn ms(ns: u64) -> String {
    format!("{:.1} ms", ns as f64 / 1e6)
}

/// Judges each workload on what happened since `previous`.
fn judge_workloads(
    now: &[(Workload, WorkloadTotals)],
    previous: &HashMap<String, WorkloadTotals>,
    window: Duration,
    t: &HealthThresholds,
) -> Vec<WorkloadHealth> {
    let mut out = Vec::new();
    for (workload, totals) in now.iter().take(MAX_WORKLOADS) {
        let before = previous.get(&workload.cgroup);
        let states: BTreeMap<WorkloadState, String> = [
            (WorkloadState::Starved, starved(totals, before, t)),
            (WorkloadState::Failing, failing(totals, before, t)),
            (WorkloadState::IoBound, io_bound(totals, before, t)),
            (WorkloadState::Churning, churning(totals, before, window, t)),
        ]
        .into_iter()
        .filter_map(|(state, why)| Some((state, why?)))
        .collect();
        if !states.is_empty() {
            out.push(WorkloadHealth {
                workload: workload.clone(),
                states,
                // Dated by the evaluator.
                since: 0.0,
            });
        }
    }
    out
}

/// Why the workload is starved for CPU since `before`: its run-queue latency p99 over the limit.
fn starved(
    totals: &WorkloadTotals,
    before: Option<&WorkloadTotals>,
    t: &HealthThresholds,
) -> Option<String> {
    let runqueue = histogram::delta(
        &totals.sched.runqueue_hist,
        before.map(|b| &b.sched.runqueue_hist),
    );
    p99_over(
        &runqueue,
        t.starved_runqueue_p99,
        t.min_samples,
        ("run-queue latency", "waits"),
    )
}

/// Why `hist`'s p99 is over `limit` ("<what> p99 < X over N <samples> (limit Y)"), when it
/// holds at least `min_samples`.
fn p99_over(
    hist: &histogram::Log2Hist,
    limit: Duration,
    min_samples: u64,
    (what, samples_of): (&str, &str),
) -> Option<String> {
    let samples: u64 = hist.iter().sum();
    if samples < min_samples {
        return None;
    }
    let p99 = histogram::quantile_ns(hist, 0.99)?;
    let limit_ns = limit.as_nanos() as u64;
    (p99 > limit_ns).then(|| {
        format!(
            "{what} p99 < {} over {samples} {samples_of} (limit {})",
            ms(p99),
            ms(limit_ns)
        )
    })
}

/// Why the workload is failing since `before`: too many failed syscalls or failed processes.
fn failing(
    totals: &WorkloadTotals,
    before: Option<&WorkloadTotals>,
    t: &HealthThresholds,
) -> Option<String> {
    let (calls, errors) = totals
        .syscalls
        .iter()
        .fold((0u64, 0u64), |(c, e), (nr, s)| {
            let b = before.and_then(|b| b.syscalls.get(nr));
            (
                c + s.count.saturating_sub(b.map_or(0, |b| b.count)),
                e + s.errors.saturating_sub(b.map_or(0, |b| b.errors)),
            )
        });
    let failed_exits = (totals.exited_failure + totals.exited_signal)
        .saturating_sub(before.map_or(0, |b| b.exited_failure + b.exited_signal));
    let mut failing = Vec::new();
    if calls >= t.min_syscalls && errors as f64 / calls as f64 >= t.failing_syscall_error_ratio {
        failing.push(format!(
            "{errors} of {calls} syscalls failed ({:.0}%, limit {:.0}%)",
            errors as f64 * 100.0 / calls as f64,
            t.failing_syscall_error_ratio * 100.0
        ));
    }
    if failed_exits >= t.failing_exits {
        failing.push(format!(
            "{failed_exits} processes exited with failure (limit {})",
            t.failing_exits
        ));
    }
    (!failing.is_empty()).then(|| failing.join("; "))
}

/// Why the workload is IO-bound since `before`: its block IO latency p99 over the limit.
fn io_bound(
    totals: &WorkloadTotals,
    before: Option<&WorkloadTotals>,
    t: &HealthThresholds,
) -> Option<String> {
    let mut io = [0u64; HIST_BUCKETS];
    for (key, now_io) in &totals.io {
        let d = histogram::delta(
            &now_io.latency_hist,
            before.and_then(|b| b.io.get(key)).map(|b| &b.latency_hist),
        );
        histogram::add(&mut io, &d);
    }
    p99_over(
        &io,
        t.io_latency_p99,
        t.min_samples,
        ("block IO latency", "requests"),
    )
}

/// Why the workload is churning since `before`: more processes started per second than the limit.
fn churning(
    totals: &WorkloadTotals,
    before: Option<&WorkloadTotals>,
    window: Duration,
    t: &HealthThresholds,
) -> Option<String> {
    let started = totals
        .started
        .saturating_sub(before.map_or(0, |b| b.started));
    let rate = started as f64 / window.as_secs_f64().max(1e-3);
    (rate > t.churn_starts_per_second).then(|| {
        format!(
            "{rate:.0} processes started per second (limit {})",
            t.churn_starts_per_second
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(cgroup: &str) -> Workload {
        crate::model::workload::Workload::from_cgroup(cgroup)
    }

    #[test]
    fn workloads_are_judged_on_the_window_only() {
        let t = HealthThresholds {
            failing_exits: 2,
            churn_starts_per_second: 5.0,
            ..HealthThresholds::default()
        };
        let before = WorkloadTotals {
            exited_failure: 100,
            started: 1000,
            ..WorkloadTotals::default()
        };
        let mut now = before.clone();
        // Old failures do not count; two new ones do.
        now.exited_failure = 101;
        now.exited_signal = 1;
        now.started = 1000 + 60;
        let mut runq = [0u64; HIST_BUCKETS];
        runq[27] = 50; // ~134 ms
        now.sched.runqueue_hist = runq;
        let w = workload("/job.slice");
        let previous = HashMap::from([(w.cgroup.clone(), before)]);
        let judged = judge_workloads(&[(w, now)], &previous, Duration::from_secs(10), &t);
        let states: Vec<_> = judged[0].states.keys().copied().collect();
        assert_eq!(
            states,
            vec![
                WorkloadState::Starved,
                WorkloadState::Failing,
                WorkloadState::Churning
            ]
        );
        assert!(judged[0].states[&WorkloadState::Churning]
            .starts_with("6 processes started per second"));
    }
}
