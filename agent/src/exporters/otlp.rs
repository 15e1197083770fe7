//! Task spans to an OpenTelemetry collector over OTLP (HTTP/protobuf), with the official
//! exporter (`opentelemetry-otlp`). Spans are built by the model with their own ids and times,
//! so they go to the exporter as span data directly, not through a tracer.
//!
//! Nothing here blocks collection: the collector offers spans to a bounded queue and counts
//! what does not fit; the export task retries a failed batch with backoff for a while, then
//! drops it (counted), and carries on when the collector is back.

use std::{
    borrow::Cow,
    sync::{atomic::Ordering, Arc},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use opentelemetry::{
    trace::{Event, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState},
    InstrumentationScope, KeyValue,
};
use opentelemetry_sdk::{
    trace::{SpanData, SpanEvents, SpanExporter as _, SpanLinks},
    Resource,
};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use super::otlp_target::{grpc_channel, grpc_metadata, http_client, SignalTarget, REQUEST_TIMEOUT};
use crate::{
    cli::OtlpProtocol,
    collector::export::{SpanExportStats, SpanSink},
    metadata::{users::UserNames, Directories, DirectoryView},
    model::{
        exit::ExitStatus,
        span::{SlowWaitView, TaskSpan},
        workload::Workload,
    },
};

/// Where and how to export.
#[derive(Debug, Clone)]
pub(crate) struct OtlpConfig {
    /// The collector, resolved from flags and environment (`otlp_target::resolve`).
    pub(crate) target: SignalTarget,
    /// Spans waiting for export; more are dropped (counted).
    pub(crate) queue: usize,
    /// Spans per export request.
    pub(crate) batch: usize,
    /// A failed batch is retried (backoff from 1 s, doubling, at most 8 s) for this long, then
    /// dropped (counted).
    pub(crate) retry_for: Duration,
    /// Where `process.owner` names come from.
    pub(crate) passwd_file: std::path::PathBuf,
}

/// Why the exporter could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("OTLP exporter: {0}; set --otlp-endpoint to the collector's OTLP address (e.g. http://otel-collector:4318, or :4317 with --otlp-protocol grpc)")]
pub(crate) struct OtlpError(String);

/// Builds the exporter and starts the export task.
pub(crate) fn start(
    config: OtlpConfig,
    names: Directories,
    shutdown: watch::Receiver<bool>,
) -> Result<SpanSink, OtlpError> {
    use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
    let target = &config.target;
    // Endpoint, headers and TLS are given explicitly (resolved once with the metrics
    // exporter's), so the exporter's own reading of the environment changes nothing.
    let built = match target.protocol {
        OtlpProtocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(HeadersWin::new(
                http_client(&target.tls).map_err(OtlpError)?,
                &target.headers,
            )?)
            .with_endpoint(target.url.clone())
            .with_timeout(REQUEST_TIMEOUT)
            .build(),
        OtlpProtocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_channel(grpc_channel(target).map_err(OtlpError)?)
            .with_interceptor(MetadataWins(
                grpc_metadata(&target.headers).map_err(OtlpError)?,
            ))
            .with_timeout(REQUEST_TIMEOUT)
            .build(),
    };
    let mut exporter = built.map_err(|e| OtlpError(e.to_string()))?;
    exporter.set_resource(
        &Resource::builder()
            .with_service_name("taskscope")
            .with_attributes([KeyValue::new("host.name", host_name())])
            .build(),
    );
    let (sink, rx) = SpanSink::new(config.queue);
    tokio::spawn(export_loop(
        exporter,
        rx,
        config,
        names,
        sink.shared_stats(),
        shutdown,
    ));
    Ok(sink)
}

/// The exporter adds the OTEL_EXPORTER_OTLP_*HEADERS values on top of the headers it is
/// given; ours already include them, merged with the flags' in the documented order, so this
/// client sets ours last.
#[derive(Debug)]
struct HeadersWin {
    client: reqwest::Client,
    headers: Vec<(http::HeaderName, http::HeaderValue)>,
}

impl HeadersWin {
    fn new(client: reqwest::Client, headers: &[(String, String)]) -> Result<Self, OtlpError> {
        let headers = headers
            .iter()
            .map(|(name, value)| {
                Ok((
                    http::HeaderName::from_bytes(name.as_bytes())
                        .map_err(|_| OtlpError(format!("{name} is not a valid header name")))?,
                    http::HeaderValue::from_str(value).map_err(|_| {
                        OtlpError(format!("the value of header {name} is not valid"))
                    })?,
                ))
            })
            .collect::<Result<_, OtlpError>>()?;
        Ok(Self { client, headers })
    }
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for HeadersWin {
    async fn send_bytes(
        &self,
        mut request: http::Request<opentelemetry_http::Bytes>,
    ) -> Result<http::Response<opentelemetry_http::Bytes>, opentelemetry_http::HttpError> {
        for (name, value) in &self.headers {
            request.headers_mut().insert(name.clone(), value.clone());
        }
        self.client.send_bytes(request).await
    }
}

/// The gRPC twin of [`HeadersWin`]: runs after the exporter's own metadata.
#[derive(Clone)]
struct MetadataWins(tonic::metadata::MetadataMap);

impl tonic::service::Interceptor for MetadataWins {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        for entry in self.0.iter() {
            if let tonic::metadata::KeyAndValueRef::Ascii(name, value) = entry {
                request.metadata_mut().insert(name.clone(), value.clone());
            }
        }
        Ok(request)
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

async fn export_loop(
    exporter: opentelemetry_otlp::SpanExporter,
    mut rx: mpsc::Receiver<TaskSpan>,
    config: OtlpConfig,
    names: Directories,
    stats: Arc<SpanExportStats>,
    mut shutdown: watch::Receiver<bool>,
) {
    let scope = InstrumentationScope::builder("taskscope")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build();
    let mut users = UserNames::new(&config.passwd_file);
    loop {
        let first = tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return,
            span = rx.recv() => match span {
                Some(span) => span,
                None => return,
            },
        };
        let mut spans = vec![first];
        while spans.len() < config.batch {
            match rx.try_recv() {
                Ok(span) => spans.push(span),
                Err(_) => break,
            }
        }
        let batch: Vec<SpanData> = {
            let names = names.read();
            spans
                .iter()
                .map(|s| {
                    let owner = s.uid.and_then(|uid| users.name(uid)).map(str::to_string);
                    span_data(s, &names, owner, scope.clone())
                })
                .collect()
        };
        let count = batch.len() as u64;
        let mut backoff = Duration::from_secs(1);
        let give_up = tokio::time::Instant::now() + config.retry_for;
        loop {
            match exporter.export(batch.clone()).await {
                Ok(()) => {
                    stats.exported.fetch_add(count, Ordering::Relaxed);
                    if !stats.up.swap(true, Ordering::Relaxed) {
                        info!("OTLP export working");
                    }
                    break;
                }
                Err(err) => {
                    stats.failed_requests.fetch_add(1, Ordering::Relaxed);
                    if stats.up.swap(false, Ordering::Relaxed)
                        || stats.failed_requests.load(Ordering::Relaxed) == 1
                    {
                        warn!(error = %err, "OTLP export failing; retrying with backoff, spans that do not fit the queue are dropped and counted");
                    }
                    if tokio::time::Instant::now() + backoff > give_up {
                        stats
                            .dropped_export_failed
                            .fetch_add(count, Ordering::Relaxed);
                        break;
                    }
                    tokio::select! {
                        _ = shutdown.wait_for(|stop| *stop) => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(8));
                }
            }
        }
    }
}

fn unix(ns: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(ns)
}

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// A task span as OTLP span data, with OpenTelemetry semantic-convention attributes.
pub(crate) fn span_data(
    s: &TaskSpan,
    names: &DirectoryView,
    owner: Option<String>,
    scope: InstrumentationScope,
) -> SpanData {
    let mut attributes = process_attributes(s, owner);
    if let Some(w) = &s.workload {
        attributes.extend(workload_attributes(w, names));
    }
    let events = span_events(s);
    // Non-exhaustive: built from the default, then filled.
    let mut span_events = SpanEvents::default();
    span_events.events = events;
    SpanData {
        span_context: SpanContext::new(
            TraceId::from_bytes(s.trace_id.to_be_bytes()),
            SpanId::from_bytes(s.span_id.to_be_bytes()),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        ),
        parent_span_id: s
            .parent_span_id
            .map_or(SpanId::INVALID, |p| SpanId::from_bytes(p.to_be_bytes())),
        parent_span_is_remote: s.parent_is_remote,
        span_kind: SpanKind::Internal,
        name: Cow::Owned(s.name.clone()),
        start_time: unix(s.start_unix_ns),
        end_time: unix(s.end_unix_ns),
        attributes,
        dropped_attributes_count: 0,
        events: span_events,
        links: SpanLinks::default(),
        status: if s.error {
            Status::error(s.status_message.clone())
        } else {
            Status::Unset
        },
        instrumentation_scope: scope,
    }
}

/// The process's own attributes: identity, where its time went, how it ended.
fn process_attributes(s: &TaskSpan, owner: Option<String>) -> Vec<KeyValue> {
    let mut attributes = vec![
        KeyValue::new("process.pid", i64::from(s.pid)),
        KeyValue::new("process.parent_pid", i64::from(s.ppid)),
        KeyValue::new("process.executable.name", s.name.clone()),
        KeyValue::new("process.command_line", s.command_line.join(" ")),
        KeyValue::new("taskscope.on_cpu_seconds", secs(s.time.on_cpu_ns)),
        KeyValue::new(
            "taskscope.runqueue_wait_seconds",
            secs(s.time.runqueue_wait_ns),
        ),
        KeyValue::new("taskscope.blocked_seconds", secs(s.time.blocked_ns)),
        KeyValue::new("taskscope.block_io_seconds", secs(s.time.block_io_ns)),
        KeyValue::new("taskscope.syscalls", s.time.syscalls as i64),
        KeyValue::new("taskscope.syscall_seconds", secs(s.time.syscall_ns)),
        KeyValue::new("taskscope.io.read_bytes", s.time.read_bytes as i64),
        KeyValue::new("taskscope.io.write_bytes", s.time.write_bytes as i64),
        KeyValue::new(
            "taskscope.context_switches.voluntary",
            s.time.voluntary_switches as i64,
        ),
        KeyValue::new(
            "taskscope.context_switches.involuntary",
            s.time.involuntary_switches as i64,
        ),
    ];
    if s.parent_is_remote {
        // The trace and parent came from the process's own environment, which anyone who
        // starts a process can set: a reader of the trace should know it was not our choice.
        attributes.push(KeyValue::new("taskscope.trace.joined_from", "TRACEPARENT"));
    }
    if let Some(exe) = &s.exe {
        attributes.push(KeyValue::new("process.executable.path", exe.clone()));
    }
    if let Some(uid) = s.uid {
        attributes.push(KeyValue::new("process.user.id", i64::from(uid)));
    }
    if let Some(owner) = owner {
        attributes.push(KeyValue::new("process.owner", owner));
    }
    match s.exit {
        ExitStatus::Exited { code } => {
            attributes.push(KeyValue::new("process.exit.code", i64::from(code)));
        }
        ExitStatus::Signaled {
            signal,
            signal_name,
            ..
        } => {
            attributes.push(KeyValue::new("process.exit.signal", i64::from(signal)));
            attributes.push(KeyValue::new("process.exit.signal_name", signal_name));
        }
        ExitStatus::Unknown => {}
    }
    attributes
}

/// The workload's attributes: cgroup, container, pod (names from the pod directory).
fn workload_attributes(w: &Workload, names: &DirectoryView) -> Vec<KeyValue> {
    let mut attributes = Vec::new();
    attributes.push(KeyValue::new("taskscope.cgroup", w.cgroup.clone()));
    if let Some(id) = &w.container_id {
        attributes.push(KeyValue::new("container.id", id.clone()));
    }
    if let Some(uid) = &w.pod_uid {
        attributes.push(KeyValue::new("k8s.pod.uid", uid.clone()));
    }
    let names = names.names(w.pod_uid.as_deref(), w.container_id.as_deref());
    if let Some(name) = names.pod {
        attributes.push(KeyValue::new("k8s.pod.name", name.to_string()));
    }
    if let Some(namespace) = names.namespace {
        attributes.push(KeyValue::new("k8s.namespace.name", namespace.to_string()));
    }
    if let Some(container) = names.container {
        attributes.push(KeyValue::new("k8s.container.name", container.to_string()));
        attributes.push(KeyValue::new("container.name", container.to_string()));
    }
    if let Some(image) = names.image {
        attributes.push(KeyValue::new("container.image.name", image.to_string()));
    }
    if let Some(runtime) = w.runtime {
        attributes.push(KeyValue::new("container.runtime", runtime));
    }
    attributes
}

/// The span's events: the exec, slow syscalls, slow run-queue waits and block IO.
fn span_events(s: &TaskSpan) -> Vec<Event> {
    let mut events = Vec::new();
    if let Some(at) = s.exec_unix_ns {
        let mut exec_attributes = Vec::new();
        if let Some(exe) = &s.exe {
            exec_attributes.push(KeyValue::new("process.executable.path", exe.clone()));
        }
        events.push(Event::new("exec", unix(at), exec_attributes, 0));
    }
    for slow in &s.slow_syscalls {
        let mut slow_attributes = vec![
            KeyValue::new(
                "syscall.name",
                slow.name
                    .map_or_else(|| slow.nr.to_string(), str::to_string),
            ),
            KeyValue::new("syscall.duration_seconds", secs(slow.duration_ns)),
            KeyValue::new("thread.id", i64::from(slow.tid)),
        ];
        if slow.ret < 0 {
            let errno = (-slow.ret) as u32;
            slow_attributes.push(KeyValue::new(
                "syscall.errno",
                crate::model::errno::errno_name(errno)
                    .map_or_else(|| errno.to_string(), str::to_string),
            ));
        }
        events.push(Event::new(
            "slow_syscall",
            unix(slow.time_unix_ns.saturating_sub(slow.duration_ns)),
            slow_attributes,
            0,
        ));
    }
    for wait in &s.slow_waits {
        match wait {
            SlowWaitView::RunqueueWait {
                tid,
                duration_ns,
                end_unix_ns,
            } => events.push(Event::new(
                "slow_runqueue_wait",
                unix(end_unix_ns.saturating_sub(*duration_ns)),
                vec![
                    KeyValue::new("taskscope.wait_seconds", secs(*duration_ns)),
                    KeyValue::new("thread.id", i64::from(*tid)),
                ],
                0,
            )),
            SlowWaitView::BlockIo {
                device,
                op,
                bytes,
                duration_ns,
                end_unix_ns,
            } => events.push(Event::new(
                "slow_block_io",
                unix(end_unix_ns.saturating_sub(*duration_ns)),
                vec![
                    KeyValue::new("taskscope.io.device", device.clone()),
                    KeyValue::new("taskscope.io.op", op.clone()),
                    KeyValue::new("taskscope.io.bytes", *bytes as i64),
                    KeyValue::new("taskscope.io.latency_seconds", secs(*duration_ns)),
                ],
                0,
            )),
        }
    }
    events
}
