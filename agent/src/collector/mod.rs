//! The collector: one task that owns the kernel maps, the ring buffer and the task model.
//!
//! It drains the ring buffer as soon as it is readable, reads the accumulator maps on a timer
//! (and when a query finds the last read too old), and answers queries from the API with views
//! built from the model. Nothing else touches the model or the maps.

pub(crate) mod custom;
pub(crate) mod export;
pub(crate) mod poller;
pub(crate) mod sampling;
pub(crate) mod timeline;

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use serde::Serialize;
use taskscope_common::{
    decode::{decode, Event},
    Loss, SwitchEvent, Thresholds,
};
use tokio::{
    io::{unix::AsyncFd, Interest},
    sync::{mpsc, oneshot, watch},
};
use tracing::{debug, info, warn};

use self::{
    export::SpanSink,
    poller::KernelMaps,
    sampling::{Sampler, SamplingConfig},
};
use crate::{
    clock::{monotonic_ns, Clocks},
    model::span::TaskSpan,
    model::{
        aggregate::WorkloadTotals,
        intake::Forget,
        selector::ProcessSelector,
        snapshot::{loss_source, LossView, MetricsSnapshot},
        view::{NodeView, ProcessView},
        workload::Workload,
        ModelCounters, Process, SlowTask, SlowTaskConfig, TaskModel,
    },
    probes::{HookStatus, ProbeGroup, Probes},
    procfs,
};

/// A question from the API, answered by the collector.
pub(crate) enum Query {
    /// A page of the live processes (by pid) followed by the recently exited ones (oldest
    /// first).
    Processes(Page, oneshot::Sender<ProcessesResponse>),
    /// Every process with this pid (the live one first, then exited ones, newest first).
    Process(u32, oneshot::Sender<ProcessesResponse>),
    /// Per-CPU busy/idle and per-device block IO.
    Node(oneshot::Sender<NodeResponse>),
    /// Attach state, losses and counters.
    Status(oneshot::Sender<StatusResponse>),
    /// Everything /metrics exposes.
    Metrics(oneshot::Sender<MetricsSnapshot>),
    /// Recent spans of one trace (by trace id, or the trace of a pid's latest span).
    Spans(SpanFilter, oneshot::Sender<SpansResponse>),
    /// The context switches recorded so far (taken: the recording starts over).
    TakeRecording(oneshot::Sender<Recording>),
    /// Every workload's totals (health evaluation).
    Workloads(oneshot::Sender<Vec<(Workload, WorkloadTotals)>>),
    /// The node and every workload's totals (and, when asked, every live process's counters:
    /// the live feed's process table) from the latest kernel read, without a fresh one (the
    /// visualisation history, which reads once a second and must not double the polls).
    Latest(bool, oneshot::Sender<LatestRead>),
    /// The context switches of the last `seconds` (at most [`timeline::MAX_SECONDS`]),
    /// starting the switch recorder if it is off; it stays on while such queries come.
    Timeline(u64, oneshot::Sender<timeline::TimelineRead>),
    /// One workload (by cgroup path): its totals and its processes; `None` when unknown.
    Workload(String, oneshot::Sender<Option<WorkloadRead>>),
    /// Applies new live settings (a reload); the answer says what failed, if anything.
    Reconfigure(Box<LiveSettings>, oneshot::Sender<Result<(), String>>),
    /// Lists, adds or removes custom metrics.
    Custom(CustomRequest),
}

/// What is asked of the custom metrics (see [`custom::CustomMetrics`]).
#[derive(Debug)]
pub(crate) enum CustomRequest {
    /// Every definition with its state and figures.
    List(oneshot::Sender<Vec<custom::CustomMetricView>>),
    /// A new definition (the admin API): its view, or why it could not be attached.
    Add(
        Box<custom::CustomDefinition>,
        oneshot::Sender<Result<custom::CustomMetricView, String>>,
    ),
    /// Removes the definition of this name; false when there is none.
    Remove(String, oneshot::Sender<bool>),
    /// The config file's definitions (a reload): all applied, or none.
    ReplaceFile(
        Vec<custom::CustomDefinition>,
        oneshot::Sender<Result<(), String>>,
    ),
}

/// Sends the query `make` builds around a reply channel and waits for the answer; `None`
/// when the collector has stopped.
pub(crate) async fn ask<T>(
    queries: &mpsc::Sender<Query>,
    make: impl FnOnce(oneshot::Sender<T>) -> Query,
) -> Option<T> {
    let (tx, rx) = oneshot::channel();
    queries.send(make(tx)).await.ok()?;
    rx.await.ok()
}

/// What a reload changes in the collector while it runs (nothing is reloaded or re-attached
/// but the probe groups switched).
#[derive(Debug, Clone)]
pub(crate) struct LiveSettings {
    pub(crate) thresholds: Thresholds,
    pub(crate) disabled_groups: Vec<ProbeGroup>,
    pub(crate) sampling: SamplingConfig,
    pub(crate) process_selectors: Vec<ProcessSelector>,
    pub(crate) slow_task: SlowTaskConfig,
}

/// Which spans `/api/v1/spans` returns.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SpanFilter {
    pub(crate) trace_id: Option<u128>,
    /// The trace of this process's latest span.
    pub(crate) pid: Option<u32>,
    /// At most this many, the latest.
    pub(crate) limit: usize,
}

/// Answer to a spans query.
#[derive(Debug, Serialize)]
pub(crate) struct SpansResponse {
    pub(crate) spans: Vec<TaskSpan>,
}

/// Answer to a node query.
#[derive(Debug, Serialize)]
pub(crate) struct NodeResponse {
    pub(crate) collected_at_monotonic_ns: u64,
    #[serde(flatten)]
    pub(crate) node: NodeView,
}

/// The node and the workloads as of the latest kernel read.
#[derive(Debug)]
pub(crate) struct LatestRead {
    pub(crate) node: NodeResponse,
    pub(crate) workloads: Vec<(Workload, WorkloadTotals)>,
    pub(crate) processes: Option<Vec<crate::model::queries::ProcessCounters>>,
    /// CLOCK_MONOTONIC of the kernel read the totals are of (the running threads' time is
    /// carried up to it), so that figures of two reads make exact rates.
    pub(crate) sampled_at_ns: u64,
}

/// One workload's totals and processes.
#[derive(Debug)]
pub(crate) struct WorkloadRead {
    pub(crate) workload: Workload,
    pub(crate) totals: WorkloadTotals,
    /// Its live processes, the busiest (on CPU) first, at most [`MAX_WORKLOAD_PROCESSES`].
    pub(crate) live: Vec<ProcessView>,
    /// Its exited processes, the latest first, at most [`MAX_WORKLOAD_PROCESSES`].
    pub(crate) exited: Vec<ProcessView>,
    /// How many it has of each (beyond the lists' bound).
    pub(crate) live_total: usize,
    pub(crate) exited_total: usize,
    pub(crate) collected_at_unix_ns: u64,
}

/// Processes of each kind one workload answer lists.
pub(crate) const MAX_WORKLOAD_PROCESSES: usize = 200;

/// Which part of a listing to answer: `limit` entries from `offset` on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Page {
    pub(crate) offset: usize,
    pub(crate) limit: usize,
}

impl Page {
    /// Everything (for `record`, which lists the processes of its own short window).
    pub(crate) const ALL: Page = Page {
        offset: 0,
        limit: usize::MAX,
    };
}

/// Answer to a process query.
#[derive(Debug, Serialize)]
pub(crate) struct ProcessesResponse {
    /// CLOCK_MONOTONIC of the kernel read these numbers come from.
    pub(crate) collected_at_monotonic_ns: u64,
    pub(crate) collected_at_unix_ns: u64,
    pub(crate) live: usize,
    pub(crate) exited: usize,
    /// Where the next page starts; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) next_offset: Option<usize>,
    pub(crate) processes: Vec<ProcessView>,
}

/// Answer to a status query.
#[derive(Debug, Serialize)]
pub(crate) struct StatusResponse {
    pub(crate) agent_pid: u32,
    pub(crate) hooks: Vec<HookStatus>,
    /// "runs, degraded: ..." when optional hooks are missing (the words of `taskscope check`),
    /// else absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) degraded: Option<String>,
    /// The same, one entry per probe group (health reads it).
    #[serde(skip)]
    pub(crate) degradations: Vec<crate::probes::coverage::Degradation>,
    /// Data lost, by source and reason: kernel map or ring buffer full, undecodable records.
    pub(crate) lost: Vec<LossView>,
    /// Ring-buffer events received, by kind.
    pub(crate) events: BTreeMap<&'static str, u64>,
    pub(crate) model: ModelCounters,
    pub(crate) live_processes: usize,
    pub(crate) exited_processes: usize,
    /// The OTLP span exporter, when configured.
    pub(crate) otlp: Option<OtlpStatus>,
    /// How long ago the kernel maps were last read.
    pub(crate) last_poll_seconds_ago: Option<f64>,
    /// Tasks in the kernel's task table at the last read (the scheduling probes at work).
    pub(crate) kernel_tasks: usize,
    /// The kernel maps: capacity and the memory the kernel charges for each, largest first.
    pub(crate) kernel_maps: Vec<crate::probes::MapMemory>,
    /// Time the kernel programs ran since they were loaded (counted only while the kernel's
    /// BPF statistics are on: `--bpf-stats` or `kernel.bpf_stats_enabled`).
    pub(crate) bpf_run_time_ns: u64,
    /// Every context switch goes to userspace now (`taskscope record`, or someone watches
    /// the dashboard's timeline).
    pub(crate) switch_recorder: bool,
    /// Each custom metric's state (health has a component per definition).
    pub(crate) custom_metrics: Vec<custom::CustomMetricState>,
}

/// The OTLP exporter's counters (its losses are in `lost`).
#[derive(Debug, Serialize)]
pub(crate) struct OtlpStatus {
    /// Spans the collector accepted.
    pub(crate) exported: u64,
    /// Export requests that failed (each retry counts).
    pub(crate) failed_requests: u64,
    /// The latest request succeeded.
    pub(crate) up: bool,
}

/// When the collector last read the kernel maps, for /livez to read without a round trip
/// through the collector's queue (which a flood of API requests may fill).
#[derive(Debug, Default)]
pub(crate) struct Heartbeat(std::sync::atomic::AtomicU64);

impl Heartbeat {
    fn beat(&self) {
        self.0
            .store(monotonic_ns(), std::sync::atomic::Ordering::Relaxed);
    }

    /// How long ago the maps were last read; `None` before the first read.
    pub(crate) fn since_last_read(&self) -> Option<Duration> {
        let last = self.0.load(std::sync::atomic::Ordering::Relaxed);
        (last != 0).then(|| Duration::from_nanos(monotonic_ns().saturating_sub(last)))
    }
}

/// How often the collector reads the kernel maps.
#[derive(Debug, Clone)]
pub(crate) struct CollectorConfig {
    pub(crate) poll_interval: Duration,
    /// A query is answered from a kernel read at most this old (else the maps are read again).
    pub(crate) max_staleness: Duration,
    /// How often the ring buffer is drained when the kernel has not woken the reader (it
    /// wakes it only when an eighth of the ring is pending).
    pub(crate) drain_interval: Duration,
    /// Processes that get their own series on /metrics.
    pub(crate) process_selectors: Vec<ProcessSelector>,
    /// Where finished spans go for OTLP export (none: they stay in the API only).
    pub(crate) span_sink: Option<SpanSink>,
    /// Which spans go to the exporter.
    pub(crate) sampling: SamplingConfig,
    /// Keep the context switches the kernel programs send (`taskscope record`).
    pub(crate) record_switches: bool,
    /// Which running processes are logged as slow.
    pub(crate) slow_task: SlowTaskConfig,
}

/// Switches a recording keeps at most (about 32 bytes each).
const MAX_RECORDED_SWITCHES: usize = 4 << 20;

/// Owner of the maps, the ring buffer and the model.
pub(crate) struct Collector {
    /// Kept so that dropping the collector detaches and unloads the programs.
    probes: Probes,
    maps: KernelMaps,
    ring: AsyncFd<RingBuf<MapData>>,
    model: TaskModel,
    config: CollectorConfig,
    /// When the maps were last read (shared with /livez).
    heartbeat: Arc<Heartbeat>,
    events: BTreeMap<&'static str, u64>,
    decode_errors: BTreeMap<&'static str, u64>,
    agent_pid: u32,
    sampler: Sampler,
    /// Context switches, while recording (`taskscope record`).
    recording: Option<Recording>,
    /// The latest context switches, while someone watches the dashboard's timeline.
    timeline: Option<timeline::SwitchWindow>,
    /// Entries in the kernel's task table at the last read.
    kernel_tasks: usize,
    /// Custom metrics: definitions, their uprobes and figures.
    custom: custom::CustomMetrics,
}

/// Context switches collected for `taskscope record`, bounded.
#[derive(Debug, Default)]
pub(crate) struct Recording {
    pub(crate) switches: Vec<SwitchEvent>,
    /// Switches not kept because `max` was reached.
    pub(crate) dropped: u64,
    max: usize,
}

impl Recording {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            switches: Vec::new(),
            dropped: 0,
            max,
        }
    }

    /// A recording of `switches` already taken (`dropped` more were not kept).
    pub(crate) fn of(switches: Vec<SwitchEvent>, dropped: u64) -> Self {
        Self {
            max: switches.len(),
            switches,
            dropped,
        }
    }

    fn push(&mut self, switch: SwitchEvent) {
        if self.switches.len() < self.max {
            self.switches.push(switch);
        } else {
            self.dropped += 1;
        }
    }
}

/// Why the collector could not start.
#[derive(Debug, thiserror::Error)]
pub enum CollectorError {
    #[error(transparent)]
    Maps(#[from] poller::MapsError),
    #[error("ring buffer EVENTS: {0}")]
    RingBuf(String),
}

impl Collector {
    /// When the maps were last read, readable from anywhere.
    pub(crate) fn heartbeat(&self) -> Arc<Heartbeat> {
        Arc::clone(&self.heartbeat)
    }

    pub(crate) fn new(
        mut probes: Probes,
        model: TaskModel,
        config: CollectorConfig,
    ) -> Result<Self, CollectorError> {
        let maps = KernelMaps::take(&mut probes)?;
        let custom = custom::CustomMetrics::new(&mut probes);
        let ring_map = probes
            .ebpf
            .take_map(taskscope_common::contract::maps::EVENTS)
            .ok_or_else(|| CollectorError::RingBuf("missing from the kernel object".into()))?;
        let ring =
            RingBuf::try_from(ring_map).map_err(|e| CollectorError::RingBuf(e.to_string()))?;
        // SAFETY: the ring buffer's fd is owned by `ring`, which the AsyncFd owns until drop.
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(|e| CollectorError::RingBuf(e.to_string()))?;
        Ok(Self {
            probes,
            maps,
            ring,
            model,
            heartbeat: Arc::default(),
            events: BTreeMap::new(),
            decode_errors: BTreeMap::new(),
            agent_pid: std::process::id(),
            sampler: Sampler::new(config.sampling),
            kernel_tasks: 0,
            recording: config
                .record_switches
                .then(|| Recording::new(MAX_RECORDED_SWITCHES)),
            timeline: None,
            custom,
            config,
        })
    }

    /// Runs until `shutdown` turns true (or its sender is dropped), then drops the programs.
    pub(crate) async fn run(
        mut self,
        mut queries: mpsc::Receiver<Query>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        self.model.scan_proc();
        self.poll();
        let mut tick = tokio::time::interval(self.config.poll_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Draining happens at the top of every loop turn: this timer only makes a turn.
        let mut drain_tick = tokio::time::interval(self.config.drain_interval);
        drain_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.drain();
            tokio::select! {
                readable = self.ring.readable_mut() => match readable {
                    // Edge-triggered: clear first, then drain everything that is there.
                    Ok(mut guard) => guard.clear_ready(),
                    Err(err) => {
                        warn!(%err, "ring buffer poll failed; stopping the collector");
                        break;
                    }
                },
                _ = tick.tick() => self.poll(),
                _ = drain_tick.tick() => {}
                query = queries.recv() => match query {
                    Some(query) => self.answer(query),
                    None => break,
                },
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        break;
                    }
                }
            }
        }
        debug!(
            hooks = self.probes.hooks.len(),
            "collector stopping; detaching programs"
        );
    }

    /// Drains pending events, then reads the maps into the model.
    fn poll(&mut self) {
        self.drain();
        self.stop_timeline_if_unwatched();
        let started = Instant::now();
        let snapshot = self.maps.read();
        let read = started.elapsed();
        self.kernel_tasks = snapshot.tasks.len();
        let syscall_entries = snapshot.syscalls.len();
        let forget = self.model.apply_kernel(snapshot);
        self.maps.forget(&forget);
        self.custom.read(&mut self.model);
        self.custom.rescan_if_due(&mut self.probes);
        debug!(
            live_processes = self.model.live_count(),
            syscall_entries,
            read_ms = read.as_secs_f64() * 1e3,
            total_ms = started.elapsed().as_secs_f64() * 1e3,
            "kernel maps read and applied"
        );
        self.heartbeat.beat();
        for slow in self.model.new_slow_tasks(self.config.slow_task) {
            log_slow_task(&slow);
        }
        let spans = self.model.take_new_spans();
        if let Some(sink) = &self.config.span_sink {
            for span in self.sampler.offer_batch(spans, Instant::now()) {
                sink.offer(span);
            }
        }
    }

    /// Applies every event already in the ring buffer.
    fn drain(&mut self) {
        let mut forget = Forget::default();
        let ring = self.ring.get_mut();
        while let Some(record) = ring.next() {
            match decode(&record) {
                Ok(event) => {
                    *self.events.entry(event.name()).or_default() += 1;
                    if let Event::Switch(switch) = &event {
                        if let Some(recording) = &mut self.recording {
                            recording.push(*switch);
                        }
                        if let Some(window) = &mut self.timeline {
                            window.push(*switch);
                        }
                    }
                    self.model.apply_event(event, &mut forget);
                }
                Err(err) => {
                    debug!(%err, "undecodable ring buffer record");
                    *self.decode_errors.entry(err.reason()).or_default() += 1;
                }
            }
        }
        self.maps.forget(&forget);
    }

    /// Applies pending events (always: they are cheap and the answer must not lag the ring),
    /// and reads the maps again if the last read is too old.
    fn refresh_if_stale(&mut self) {
        self.drain();
        let stale = self
            .heartbeat
            .since_last_read()
            .is_none_or(|ago| ago >= self.config.max_staleness);
        if stale {
            self.poll();
        }
    }

    /// The node as of the latest kernel read.
    fn node(&self) -> NodeResponse {
        let read_at = self.model.collected_at_ns;
        NodeResponse {
            collected_at_monotonic_ns: read_at,
            node: NodeView::new(&self.model.cpus, &self.model.device_io, read_at),
        }
    }

    fn answer(&mut self, query: Query) {
        match query {
            Query::Processes(page, reply) => {
                self.refresh_if_stale();
                let _ = reply.send(self.processes(None, page));
            }
            Query::Process(pid, reply) => {
                self.refresh_if_stale();
                let _ = reply.send(self.processes(Some(pid), Page::ALL));
            }
            Query::Node(reply) => {
                self.refresh_if_stale();
                let _ = reply.send(self.node());
            }
            Query::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Query::TakeRecording(reply) => {
                self.drain();
                let max = self.recording.as_ref().map_or(0, |r| r.max);
                let recording = self
                    .recording
                    .replace(Recording::new(max))
                    .unwrap_or_default();
                let _ = reply.send(recording);
            }
            Query::Workloads(reply) => {
                self.refresh_if_stale();
                let _ = reply.send(self.model.workload_totals());
            }
            Query::Latest(with_processes, reply) => {
                // As of the read: a thread running then is carried to it and not past it (it
                // may have left its CPU since, unseen until the next read).
                let read_at = self.model.collected_at_ns;
                let _ = reply.send(LatestRead {
                    node: self.node(),
                    workloads: self.model.workload_totals_at(read_at),
                    processes: with_processes.then(|| self.model.process_counters_at(read_at)),
                    sampled_at_ns: read_at,
                });
            }
            Query::Workload(cgroup, reply) => {
                self.refresh_if_stale();
                let _ = reply.send(self.workload(&cgroup));
            }
            Query::Timeline(seconds, reply) => {
                let _ = reply.send(self.timeline(seconds));
            }
            Query::Reconfigure(settings, reply) => {
                let _ = reply.send(self.reconfigure(*settings));
            }
            Query::Spans(filter, reply) => {
                self.refresh_if_stale();
                let _ = reply.send(self.spans(filter));
            }
            Query::Metrics(reply) => {
                self.refresh_if_stale();
                let status = self.status();
                let _ = reply.send(MetricsSnapshot {
                    workloads: self.model.workload_totals(),
                    processes: self
                        .model
                        .selected_processes(&self.config.process_selectors),
                    cpu_windows: self.model.cpu_windows.clone(),
                    memory_zones: procfs::read_buddyinfo(),
                    pressure: procfs::read_pressure(),
                    events: status.events,
                    lost: status.lost,
                    programs: self.probes.program_stats(),
                    kernel_maps: self.probes.map_memory(),
                    custom: self.custom.families(),
                });
            }
            Query::Custom(request) => self.answer_custom(request),
        }
    }

    fn answer_custom(&mut self, request: CustomRequest) {
        match request {
            CustomRequest::List(reply) => {
                self.refresh_if_stale();
                let _ = reply.send(self.custom.views());
            }
            CustomRequest::Add(definition, reply) => {
                let added = self
                    .custom
                    .add(&mut self.probes, *definition, custom::Origin::Api);
                let _ = reply.send(added);
            }
            CustomRequest::Remove(name, reply) => {
                // What the kernel counted so far is read first; then it is gone with the probes.
                self.poll();
                let _ = reply.send(self.custom.remove(&name));
            }
            CustomRequest::ReplaceFile(definitions, reply) => {
                let _ = reply.send(
                    self.custom
                        .replace_file_definitions(&mut self.probes, definitions),
                );
            }
        }
    }

    /// Puts the config file's custom metrics into effect at start-up; the first that cannot be
    /// attached is the error (the agent exits 2).
    pub(crate) fn define_custom_metrics(
        &mut self,
        definitions: Vec<custom::CustomDefinition>,
    ) -> Result<(), String> {
        self.custom
            .replace_file_definitions(&mut self.probes, definitions)
    }

    fn reconfigure(&mut self, settings: LiveSettings) -> Result<(), String> {
        self.probes
            .set_thresholds(settings.thresholds)
            .map_err(|e| format!("cannot write the thresholds: {e}"))?;
        for group in ProbeGroup::ALL.into_iter().filter(|g| g.can_be_disabled()) {
            let enabled = group.enabled_unless(&settings.disabled_groups);
            if self.probes.set_group_enabled(group, enabled)? {
                info!(?group, enabled, "probe group switched");
            }
        }
        self.sampler.set_config(settings.sampling);
        self.config.sampling = settings.sampling;
        self.config.process_selectors = settings.process_selectors;
        self.config.slow_task = settings.slow_task;
        Ok(())
    }

    /// Views are built for the page only: they copy strings, and a node has thousands.
    fn processes(&self, pid: Option<u32>, page: Page) -> ProcessesResponse {
        let clocks = Clocks::now();
        let listed = match pid {
            Some(pid) => self.model.by_pid(pid),
            None => {
                let mut live: Vec<&Process> = self.model.live().collect();
                live.sort_unstable_by_key(|p| p.pid);
                live.extend(self.model.exited());
                live
            }
        };
        let end = page.offset.saturating_add(page.limit).min(listed.len());
        let processes = listed
            .get(page.offset..end)
            .unwrap_or_default()
            .iter()
            .map(|p| ProcessView::new(p, &clocks, &self.model.running))
            .collect();
        ProcessesResponse {
            next_offset: (end < listed.len()).then_some(end),
            collected_at_monotonic_ns: self.model.collected_at_ns,
            collected_at_unix_ns: clocks.monotonic_to_unix(self.model.collected_at_ns),
            live: self.model.live_count(),
            exited: self.model.exited_count(),
            processes,
        }
    }

    fn spans(&self, filter: SpanFilter) -> SpansResponse {
        let trace_id = filter.trace_id.or_else(|| {
            let pid = filter.pid?;
            self.model
                .spans()
                .rev()
                .find(|s| s.pid == pid)
                .map(|s| s.trace_id)
        });
        let mut spans: Vec<TaskSpan> = match trace_id {
            Some(trace_id) => self
                .model
                .spans()
                .rev()
                .filter(|s| s.trace_id == trace_id)
                .take(filter.limit)
                .cloned()
                .collect(),
            None if filter.pid.is_some() => Vec::new(),
            None => self
                .model
                .spans()
                .rev()
                .take(filter.limit)
                .cloned()
                .collect(),
        };
        spans.reverse();
        SpansResponse { spans }
    }

    fn status(&self) -> StatusResponse {
        let lost = self.losses();
        StatusResponse {
            otlp: self.config.span_sink.as_ref().map(|s| OtlpStatus {
                exported: s
                    .stats()
                    .exported
                    .load(std::sync::atomic::Ordering::Relaxed),
                failed_requests: s
                    .stats()
                    .failed_requests
                    .load(std::sync::atomic::Ordering::Relaxed),
                up: s.stats().up.load(std::sync::atomic::Ordering::Relaxed),
            }),
            agent_pid: self.agent_pid,
            hooks: self.probes.hooks.clone(),
            degraded: crate::probes::coverage::degraded_summary(&self.probes.degraded),
            degradations: self.probes.degraded.clone(),
            lost,
            events: self.events.clone(),
            model: self.model.counters,
            live_processes: self.model.live_count(),
            exited_processes: self.model.exited_count(),
            last_poll_seconds_ago: self
                .heartbeat
                .since_last_read()
                .map(|ago| ago.as_secs_f64()),
            kernel_tasks: self.kernel_tasks,
            custom_metrics: self.custom.states(),
            kernel_maps: self.probes.map_memory(),
            bpf_run_time_ns: self
                .probes
                .program_stats()
                .iter()
                .map(|(_, stats)| stats.run_time_ns)
                .sum(),
            switch_recorder: self.probes.switch_recording(),
        }
    }

    /// The workload of cgroup `path`, with its processes.
    fn workload(&mut self, path: &str) -> Option<WorkloadRead> {
        let (workload, totals) = self
            .model
            .workload_totals()
            .into_iter()
            .find(|(w, _)| w.cgroup == path)?;
        let clocks = Clocks::now();
        let here = |p: &&Process| p.cgroup_path.as_deref().unwrap_or("/") == path;
        let view = |p: &Process| ProcessView::new(p, &clocks, &self.model.running);
        let mut live: Vec<ProcessView> = self.model.live().filter(here).map(view).collect();
        let live_total = live.len();
        live.sort_unstable_by(|a, b| {
            b.sched
                .on_cpu_ns
                .cmp(&a.sched.on_cpu_ns)
                .then(a.pid.cmp(&b.pid))
        });
        live.truncate(MAX_WORKLOAD_PROCESSES);
        // The exited ones are kept oldest first: the latest are at the end.
        let exited: Vec<&Process> = self.model.exited().filter(here).collect();
        let exited_total = exited.len();
        let exited = exited
            .iter()
            .rev()
            .take(MAX_WORKLOAD_PROCESSES)
            .map(|p| view(p))
            .collect();
        Some(WorkloadRead {
            workload,
            totals,
            live,
            exited,
            live_total,
            exited_total,
            collected_at_unix_ns: clocks.monotonic_to_unix(self.model.collected_at_ns),
        })
    }

    /// The switches of the last `seconds`, starting the recorder if it is off.
    fn timeline(&mut self, seconds: u64) -> timeline::TimelineRead {
        let now = Instant::now();
        match &mut self.timeline {
            Some(window) => window.watched(now),
            None => {
                if let Err(err) = self.probes.set_switch_recording(true) {
                    warn!(%err, "cannot start the switch recorder");
                }
                self.timeline = Some(timeline::SwitchWindow::new(now));
            }
        }
        self.drain();
        let to_ns = monotonic_ns();
        let from_ns = to_ns.saturating_sub(seconds.min(timeline::MAX_SECONDS) * 1_000_000_000);
        let Some(window) = &self.timeline else {
            return timeline::TimelineRead::default();
        };
        let switches = window.since(from_ns);
        let mut names = std::collections::HashMap::new();
        for switch in &switches {
            names.entry(switch.next_tgid).or_insert_with(|| {
                self.model
                    .by_pid(switch.next_tgid)
                    .first()
                    .map_or_else(String::new, |p| p.comm.clone())
            });
        }
        timeline::TimelineRead {
            from_ns,
            to_ns,
            switches,
            names,
            recording_since_ns: window.since_ns,
            evicted: window.evicted,
            ring_lost: self.model.kernel_losses[Loss::RingBufFull as usize],
        }
    }

    /// Turns the switch recorder off when nobody has asked for the timeline for a while
    /// (`taskscope record` keeps it on).
    fn stop_timeline_if_unwatched(&mut self) {
        if !self
            .timeline
            .as_ref()
            .is_some_and(|w| w.unwatched(Instant::now()))
        {
            return;
        }
        self.timeline = None;
        if !self.config.record_switches {
            if let Err(err) = self.probes.set_switch_recording(false) {
                warn!(%err, "cannot stop the switch recorder");
            }
        }
    }

    /// Every place data can be lost, with its count so far.
    fn losses(&self) -> Vec<LossView> {
        let mut lost: Vec<LossView> = Loss::ALL
            .iter()
            .map(|&loss| {
                let (source, reason) = loss.name();
                LossView {
                    source,
                    reason,
                    count: self.model.kernel_losses[loss as usize],
                }
            })
            .collect();
        lost.extend(self.decode_errors.iter().map(|(&reason, &count)| LossView {
            source: loss_source::RINGBUF_DECODER,
            reason,
            count,
        }));
        lost.push(LossView {
            source: loss_source::KERNEL_MAPS,
            reason: "read_error",
            count: self.model.map_read_errors,
        });
        let counters = &self.model.counters;
        for (source, reason, count) in [
            (
                loss_source::TASK_MODEL,
                "max_live_reached",
                counters.processes_dropped,
            ),
            (
                loss_source::TASK_MODEL,
                "exit_not_seen",
                counters.processes_lost,
            ),
            (
                loss_source::TASK_MODEL,
                "untracked_process",
                counters.events_of_untracked,
            ),
            (
                loss_source::TASK_MODEL,
                "spans_dropped",
                counters.spans_dropped,
            ),
            (loss_source::TASK_MODEL, "pid_reused", counters.pids_reused),
            (
                loss_source::PROCFS,
                "cmdline_unreadable",
                counters.cmdline_unreadable,
            ),
            (
                loss_source::CGROUP_RESOLVER,
                "unresolved",
                counters.cgroup_unresolved,
            ),
        ] {
            lost.push(LossView {
                source,
                reason,
                count,
            });
        }
        lost.extend(self.custom.losses());
        lost.extend(
            self.probes
                .program_stats()
                .into_iter()
                .map(|(program, stats)| LossView {
                    source: program,
                    reason: "recursion_miss",
                    count: stats.recursion_misses,
                }),
        );
        if let Some(sink) = &self.config.span_sink {
            let stats = sink.stats();
            for (reason, count) in [
                ("sampled_out", self.sampler.counts.sampled_out),
                ("rate_limited", self.sampler.counts.rate_limited),
                (
                    "queue_full",
                    stats
                        .dropped_queue_full
                        .load(std::sync::atomic::Ordering::Relaxed),
                ),
                (
                    "export_failed",
                    stats
                        .dropped_export_failed
                        .load(std::sync::atomic::Ordering::Relaxed),
                ),
            ] {
                lost.push(LossView {
                    source: loss_source::OTLP_SPANS,
                    reason,
                    count,
                });
            }
        }
        lost
    }
}

/// One line per slow task, with its trace and span ids so that the log and the trace meet.
fn log_slow_task(slow: &SlowTask) {
    let secs = |ns: u64| ns as f64 / 1e9;
    let (trace_id, span_id) = slow.ids.map_or((String::new(), String::new()), |ids| {
        (
            format!("{:032x}", ids.trace_id),
            format!("{:016x}", ids.span_id),
        )
    });
    warn!(
        pid = slow.pid,
        comm = %slow.comm,
        cgroup = slow.cgroup.as_deref().unwrap_or(""),
        trace_id = %trace_id,
        span_id = %span_id,
        wall_seconds = secs(slow.wall_ns),
        on_cpu_seconds = secs(slow.on_cpu_ns),
        runqueue_wait_seconds = secs(slow.runqueue_wait_ns),
        blocked_seconds = secs(slow.blocked_ns),
        reason = %slow.reason,
        "slow task"
    );
}
