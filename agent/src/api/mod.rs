//! The HTTP JSON API (schema in docs/api.md).
//!
//! Handlers never touch the model: they send a [`Query`] to the collector and serve its answer.
//! Health probes read the latest health evaluation; admin endpoints go through [`Control`].
//!
//! Every request has [`REQUEST_TIMEOUT`]; the heavy endpoints (process and span listings, and
//! /metrics on its own) take a slot of a small pool and get 503 when it is full, so a flood of
//! them cannot hold up the collector or the probes, which have no limit.

mod custom;
pub(crate) mod server;
pub(crate) mod session;
pub(crate) mod ui;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    error_handling::HandleErrorLayer,
    extract::{DefaultBodyLimit, Path, Query as UrlQuery, Request, State},
    http::{header, HeaderMap, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use serde::Serialize;
use subtle::ConstantTimeEq;
use tokio::sync::{mpsc, oneshot};
use tower::{BoxError, ServiceBuilder};

use crate::{
    collector::export::MetricsExportStats,
    collector::{Heartbeat, Page, ProcessesResponse, Query, SpanFilter, StatusResponse},
    control::Control,
    exporters::{
        families::{Exposition, ExpositionConfig},
        prometheus::{
            to_classic, wants_openmetrics, CLASSIC_CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE,
        },
        HttpRefusals,
    },
    health::{HealthReport, SharedHealth, Status},
    metadata::{runtimes::RuntimeSource, Directories, DirectoryStatus, DirectoryView},
    model::workload::Workload,
    viz::heatmap::{heatmap, HeatmapError, HeatmapRequest},
};

/// Handle on the collector for request handlers.
#[derive(Clone)]
pub(crate) struct ApiState {
    pub(crate) queries: mpsc::Sender<Query>,
    /// Prometheus exposition state (kept across scrapes) and settings.
    pub(crate) exposition: Arc<Mutex<Exposition>>,
    pub(crate) exposition_config: ExpositionConfig,
    /// Pod names from the Kubernetes API, container names and images from the runtimes'
    /// (their states are part of /api/v1/status).
    pub(crate) names: Directories,
    /// The OTLP metrics exporter, when on (part of /api/v1/status).
    pub(crate) otlp_metrics: Option<Arc<MetricsExportStats>>,
    /// The latest health evaluation.
    pub(crate) health: SharedHealth,
    /// Reload and debug mode.
    pub(crate) control: Arc<tokio::sync::Mutex<Control>>,
    /// Bearer token of the admin endpoints; `None`: they are off.
    pub(crate) admin_token: Option<Arc<str>>,
    /// The read-only JSON API needs the token too.
    pub(crate) api_auth: bool,
    /// For /livez: when the collector last read the maps, how often it does, and how often
    /// health is evaluated.
    pub(crate) heartbeat: Arc<Heartbeat>,
    pub(crate) poll_interval: Duration,
    pub(crate) health_interval: Duration,
    /// Requests refused for being too many or too slow (exported on /metrics).
    pub(crate) refusals: Arc<HttpRefusals>,
    /// Heavy API requests served at once (the rest get 503).
    pub(crate) max_concurrent: usize,
    /// The node's recent history, the live feed, sessions and rate limits.
    pub(crate) dashboard: ui::Dashboard,
}

/// Largest request body accepted (a config file); larger ones get 413.
pub(crate) const MAX_BODY_BYTES: usize = 64 * 1024;

/// Longest a request may take, its body included (408 beyond).
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Processes one `/api/v1/processes` answer lists without `?limit=`: a page costs the agent
/// about 4 KiB a process while it is built and sent, times `--api-max-concurrent`.
pub(crate) const DEFAULT_PROCESSES_PAGE: usize = 1_000;

/// Most processes one `/api/v1/processes` answer lists (`?limit=` up to it).
pub(crate) const MAX_PROCESSES_PAGE: usize = 10_000;

/// Scrapes served at once: Prometheus sends one at a time; more come from something else.
const MAX_CONCURRENT_SCRAPES: usize = 2;

/// The answer to a request refused by a limit, counted by reason.
async fn refused(refusals: Arc<HttpRefusals>, err: BoxError) -> Response {
    if err.is::<tower::timeout::error::Elapsed>() {
        refusals.count(HttpRefusals::TIMEOUT);
        error(
            StatusCode::REQUEST_TIMEOUT,
            format!("the request took longer than {REQUEST_TIMEOUT:?}"),
        )
    } else if err.is::<tower::load_shed::error::Overloaded>() {
        refusals.count(HttpRefusals::BUSY);
        let mut response = error(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many requests of this kind at once: retry in a second",
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        response
    } else {
        error(StatusCode::INTERNAL_SERVER_ERROR, err.to_string())
    }
}

/// Builds the router.
pub(crate) fn router(state: ApiState) -> Router {
    let refusals = Arc::clone(&state.refusals);
    let on_refusal = move |err: BoxError| refused(Arc::clone(&refusals), err);
    // One pool shared by every route under it (not one per route).
    let limited = |max: usize| {
        ServiceBuilder::new()
            .layer(HandleErrorLayer::new(on_refusal.clone()))
            .load_shed()
            .layer(tower::limit::GlobalConcurrencyLimitLayer::new(max))
            .timeout(REQUEST_TIMEOUT)
    };
    let timed = ServiceBuilder::new()
        .layer(HandleErrorLayer::new(on_refusal.clone()))
        .timeout(REQUEST_TIMEOUT);
    let heavy_api = Router::new()
        .route("/api/v1/processes", get(processes))
        .route("/api/v1/spans", get(spans))
        .route("/api/v1/viz/timeline/trace", get(viz_timeline_trace))
        .route("/api/v1/workloads/detail", get(workload_detail))
        .route("/api/v1/viz/binpacking", get(viz_binpacking))
        .layer(limited(state.max_concurrent));
    let read_api = Router::new()
        .route("/api/v1/processes/{pid}", get(process))
        .route("/api/v1/node", get(node))
        .route("/api/v1/status", get(status))
        .route("/api/v1/viz/heatmap", get(viz_heatmap))
        .route("/api/v1/viz/timeline", get(viz_timeline))
        .route("/api/v1/custom-metrics", get(custom::list))
        .layer(timed.clone())
        .merge(heavy_api)
        .route_layer(middleware::from_fn_with_state(state.clone(), read_auth));
    let admin = Router::new()
        .route(
            "/api/v1/config",
            get(config_get).put(config_put).post(config_post),
        )
        .route(
            "/api/v1/debug",
            get(debug_get).post(debug_set).put(debug_set),
        )
        .route("/api/v1/custom-metrics", axum::routing::post(custom::add))
        .route(
            "/api/v1/custom-metrics/{name}",
            axum::routing::delete(custom::remove),
        )
        .layer(timed.clone())
        .route_layer(middleware::from_fn_with_state(state.clone(), admin_auth));
    let scrape = Router::new()
        .route("/metrics", get(metrics))
        .layer(limited(MAX_CONCURRENT_SCRAPES));
    let live = Router::new()
        .route("/api/v1/live", get(ui::live))
        .route_layer(middleware::from_fn_with_state(state.clone(), read_auth));
    let dashboard = Router::new()
        .route("/ui", get(ui::to_index))
        .route("/ui/", get(ui::index))
        .route("/ui/login", get(ui::login_page).post(ui::login))
        .route("/ui/logout", axum::routing::post(ui::logout))
        .route("/ui/{file}", get(ui::asset))
        .layer(timed.clone())
        .merge(live)
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            ui::limit_rate,
        ));
    Router::new()
        .merge(read_api)
        .merge(dashboard)
        .merge(admin)
        .merge(scrape)
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/health", get(health))
        .route("/health/detailed", get(health_detailed))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Whether `given` is the (non-empty) token `expected`, compared in constant time.
fn token_matches(given: &str, expected: &str) -> bool {
    !given.is_empty() && bool::from(given.as_bytes().ct_eq(expected.as_bytes()))
}

/// Checks `Authorization: Bearer <token>` in constant time: `None` when it is right, else
/// the refusal (which never echoes what was sent).
fn refusal(state: &ApiState, headers: &HeaderMap) -> Option<Response> {
    let Some(expected) = &state.admin_token else {
        return Some(error(
            StatusCode::FORBIDDEN,
            "admin endpoints are off: start the agent with --admin-token-file or TASKSCOPE_ADMIN_TOKEN",
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if token_matches(given, expected) {
        None
    } else {
        let mut response = error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token: send Authorization: Bearer <the admin token>",
        );
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        Some(response)
    }
}

async fn admin_auth(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    match refusal(&state, request.headers()) {
        None => next.run(request).await,
        Some(response) => response,
    }
}

async fn read_auth(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    if !state.api_auth || ui::has_session(&state, request.headers()) {
        return next.run(request).await;
    }
    if state.admin_token.is_none() {
        return error(
            StatusCode::FORBIDDEN,
            "the JSON API needs a token (api_auth is on) and none is set: start the agent with \
             --admin-token-file or TASKSCOPE_ADMIN_TOKEN. /metrics and the health probes are open",
        );
    }
    admin_auth(State(state), request, next).await
}

#[derive(Serialize)]
struct ApiError {
    error: String,
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        Json(ApiError {
            error: message.into(),
        }),
    )
        .into_response()
}

async fn ask<T>(
    state: &ApiState,
    make: impl FnOnce(oneshot::Sender<T>) -> Query,
) -> Result<T, Response> {
    crate::collector::ask(&state.queries, make)
        .await
        .ok_or_else(|| {
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the collector is not running",
            )
        })
}

/// Asks the collector and serves its answer as JSON.
async fn answer<T: Serialize>(
    state: &ApiState,
    make: impl FnOnce(oneshot::Sender<T>) -> Query,
) -> Response {
    match ask(state, make).await {
        Ok(answer) => Json(answer).into_response(),
        Err(response) => response,
    }
}

/// Names a workload from the directories (pod, namespace, container, image).
fn name_workload(workload: &mut Workload, names: &DirectoryView) {
    let found = names.names(
        workload.pod_uid.as_deref(),
        workload.container_id.as_deref(),
    );
    workload.names = Some(Box::new(found.to_owned_names()));
}

/// A process answer with its workloads named.
async fn named_processes(state: &ApiState, mut answer: ProcessesResponse) -> Response {
    {
        let names = state.names.read();
        for process in &mut answer.processes {
            name_workload(&mut process.workload, &names);
        }
    }
    large_json(answer).await
}

/// A large answer (megabytes for thousands of processes) encoded on the blocking pool, so the
/// runtime's few threads stay free for the probes and the other requests.
async fn large_json<T: Serialize + Send + 'static>(answer: T) -> Response {
    let encoded = tokio::task::spawn_blocking(move || serde_json::to_vec(&answer)).await;
    match encoded {
        Ok(Ok(body)) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Ok(Err(err)) => error(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()),
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the answer could not be encoded",
        ),
    }
}

/// Query of `/api/v1/processes`.
#[derive(Debug, serde::Deserialize)]
struct ProcessesQuery {
    offset: Option<usize>,
    limit: Option<usize>,
}

async fn processes(State(state): State<ApiState>, query: UrlQuery<ProcessesQuery>) -> Response {
    let page = Page {
        offset: query.offset.unwrap_or(0),
        limit: query
            .limit
            .unwrap_or(DEFAULT_PROCESSES_PAGE)
            .min(MAX_PROCESSES_PAGE),
    };
    match ask(&state, |tx| Query::Processes(page, tx)).await {
        Ok(answer) => named_processes(&state, answer).await,
        Err(response) => response,
    }
}

async fn process(State(state): State<ApiState>, Path(pid): Path<String>) -> Response {
    let Ok(pid) = pid.parse::<u32>() else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("'{pid}' is not a pid: expected a decimal process id"),
        );
    };
    match ask(&state, |tx| Query::Process(pid, tx)).await {
        Ok(answer) if answer.processes.is_empty() => error(
            StatusCode::NOT_FOUND,
            format!("no live or recently exited process with pid {pid}"),
        ),
        Ok(answer) => named_processes(&state, answer).await,
        Err(response) => response,
    }
}

/// Query of `/api/v1/viz/heatmap`: strings, checked by [`HeatmapRequest::parse`] so that a
/// wrong value gets an error naming it.
#[derive(Debug, serde::Deserialize)]
struct HeatmapQuery {
    kind: Option<String>,
    seconds: Option<String>,
    workload: Option<String>,
}

async fn viz_heatmap(State(state): State<ApiState>, query: UrlQuery<HeatmapQuery>) -> Response {
    let made = HeatmapRequest::parse(
        query.kind.as_deref(),
        query.seconds.as_deref(),
        query.workload.as_deref(),
    )
    .and_then(|request| {
        // Held only while the heatmap is built; the recorder never panics holding it.
        let history = state
            .dashboard
            .history
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        heatmap(&history, &request)
    });
    match made {
        Ok(map) => Json(map).into_response(),
        Err(HeatmapError::BadRequest(message)) => error(StatusCode::BAD_REQUEST, message),
        Err(HeatmapError::UnknownWorkload(message)) => error(StatusCode::NOT_FOUND, message),
    }
}

/// Query of `/api/v1/viz/timeline` and its `/trace`.
#[derive(Debug, serde::Deserialize)]
struct TimelineQuery {
    seconds: Option<String>,
    columns: Option<String>,
}

/// Seconds a timeline shows when not asked.
const DEFAULT_TIMELINE_SECONDS: u64 = 10;
/// Columns a timeline has when not asked.
const DEFAULT_TIMELINE_COLUMNS: u64 = 600;

/// The switches of the window `query` asks for (the recorder starts if it is off).
async fn timeline_read(
    state: &ApiState,
    query: &TimelineQuery,
) -> Result<crate::collector::timeline::TimelineRead, Response> {
    let seconds = crate::viz::bounded_number(
        query.seconds.as_deref(),
        "seconds",
        1..=crate::collector::timeline::MAX_SECONDS,
        DEFAULT_TIMELINE_SECONDS,
    )
    .map_err(|message| error(StatusCode::BAD_REQUEST, message))?;
    ask(state, |tx| Query::Timeline(seconds, tx)).await
}

async fn viz_timeline(State(state): State<ApiState>, query: UrlQuery<TimelineQuery>) -> Response {
    let columns = match crate::viz::bounded_number(
        query.columns.as_deref(),
        "columns",
        crate::viz::timeline::MIN_COLUMNS as u64..=crate::viz::timeline::MAX_COLUMNS as u64,
        DEFAULT_TIMELINE_COLUMNS,
    ) {
        Ok(columns) => columns as usize,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let read = match timeline_read(&state, &query).await {
        Ok(read) => read,
        Err(response) => return response,
    };
    // Up to hundreds of thousands of switches: merged on the blocking pool.
    let clocks = crate::clock::Clocks::now();
    let built =
        tokio::task::spawn_blocking(move || crate::viz::timeline::build(&read, columns, &clocks))
            .await;
    match built {
        Ok(timeline) => large_json(timeline).await,
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the timeline could not be built",
        ),
    }
}

/// The timeline's window as a Chrome trace for Perfetto (the format of `taskscope record`).
async fn viz_timeline_trace(
    State(state): State<ApiState>,
    query: UrlQuery<TimelineQuery>,
) -> Response {
    let read = match timeline_read(&state, &query).await {
        Ok(read) => read,
        Err(response) => return response,
    };
    let processes = match ask(&state, |tx| Query::Processes(Page::ALL, tx)).await {
        Ok(processes) => processes,
        Err(response) => return response,
    };
    let clocks = crate::clock::Clocks::now();
    let (start, end) = (
        clocks.at_monotonic(read.from_ns),
        clocks.at_monotonic(read.to_ns),
    );
    let recording = crate::collector::Recording::of(read.switches, read.evicted);
    let trace = crate::record::chrome_trace(&recording, &processes, &start, &end);
    let mut response = large_json(trace).await;
    response.headers_mut().insert(
        header::CONTENT_DISPOSITION,
        header::HeaderValue::from_static("attachment; filename=\"taskscope-timeline.json\""),
    );
    response
}

/// The node's capacity against every workload's use, request and limit (built at most once
/// an interval: see `Dashboard::binpacking`).
async fn viz_binpacking(State(state): State<ApiState>) -> Response {
    let now = crate::clock::monotonic_ns();
    let fresh_for = crate::viz::INTERVAL.as_nanos() as u64;
    let cached = state
        .dashboard
        .binpacking
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
        .filter(|(built_at, _)| now.saturating_sub(*built_at) < fresh_for);
    let body = match cached {
        Some((_, body)) => body,
        None => match build_binpacking(&state).await {
            Ok(body) => {
                *state
                    .dashboard
                    .binpacking
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((now, body.clone()));
                body
            }
            Err(response) => return response,
        },
    };
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// The bin-packing view of the collector's latest figures, as JSON.
async fn build_binpacking(state: &ApiState) -> Result<axum::body::Bytes, Response> {
    let mut latest = ask(state, |tx| Query::Latest(false, tx)).await?;
    let (cpus, window_s) = state
        .dashboard
        .usage
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .cpus_of(&latest);
    {
        let names = state.names.read();
        for (workload, _) in &mut latest.workloads {
            name_workload(workload, &names);
        }
    }
    let limits = Arc::clone(&state.dashboard.limits);
    // A few files of every workload's cgroup: read on the blocking pool.
    let encoded = tokio::task::spawn_blocking(move || {
        let view = crate::viz::binpacking::of_latest(&latest, cpus, window_s, &limits);
        serde_json::to_vec(&view)
    })
    .await;
    match encoded {
        Ok(Ok(body)) => Ok(body.into()),
        _ => Err(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the bin-packing view could not be built",
        )),
    }
}

/// Query of `/api/v1/workloads/detail`.
#[derive(Debug, serde::Deserialize)]
struct WorkloadQuery {
    cgroup: Option<String>,
}

/// One workload's page: totals, top syscalls and errnos, block IO, processes and exits.
async fn workload_detail(
    State(state): State<ApiState>,
    query: UrlQuery<WorkloadQuery>,
) -> Response {
    let Some(cgroup) = query.cgroup.clone() else {
        return error(
            StatusCode::BAD_REQUEST,
            "cgroup is required: the workload's cgroup path, as `cgroup` in /api/v1/live's workload rows",
        );
    };
    let read = match ask(&state, |tx| Query::Workload(cgroup.clone(), tx)).await {
        Ok(Some(read)) => read,
        Ok(None) => {
            return error(
                StatusCode::NOT_FOUND,
                format!("no workload with cgroup {cgroup:?}: it has no process the agent knows"),
            )
        }
        Err(response) => return response,
    };
    let mut detail = crate::viz::workload::WorkloadDetail::new(read);
    {
        let names = state.names.read();
        name_workload(&mut detail.workload, &names);
        for process in detail.live.iter_mut().chain(detail.exited.iter_mut()) {
            name_workload(&mut process.workload, &names);
        }
    }
    large_json(detail).await
}

/// Query of `/api/v1/spans`.
#[derive(Debug, serde::Deserialize)]
struct SpansQuery {
    trace_id: Option<String>,
    pid: Option<u32>,
    limit: Option<usize>,
}

async fn spans(State(state): State<ApiState>, query: UrlQuery<SpansQuery>) -> Response {
    let trace_id =
        match query
            .trace_id
            .as_deref()
            .map(|t| u128::from_str_radix(t, 16))
        {
            None => None,
            Some(Ok(id)) if query.trace_id.as_ref().is_some_and(|t| t.len() == 32) => Some(id),
            Some(_) => return error(
                StatusCode::BAD_REQUEST,
                "trace_id must be 32 hex digits (as in /api/v1/spans answers and W3C traceparent)",
            ),
        };
    let filter = SpanFilter {
        trace_id,
        pid: query.pid,
        limit: query.limit.unwrap_or(1000).min(10_000),
    };
    match ask(&state, |tx| Query::Spans(filter, tx)).await {
        Ok(mut answer) => {
            {
                let names = state.names.read();
                for workload in answer.spans.iter_mut().filter_map(|s| s.workload.as_mut()) {
                    name_workload(workload, &names);
                }
            }
            large_json(answer).await
        }
        Err(response) => response,
    }
}

async fn node(State(state): State<ApiState>) -> Response {
    answer(&state, Query::Node).await
}

/// The collector's status plus the metadata sources'.
#[derive(Serialize)]
struct FullStatus {
    #[serde(flatten)]
    collector: StatusResponse,
    kubernetes: DirectoryStatus,
    /// Docker's and Podman's APIs: socket, state, containers named.
    container_runtimes: Vec<RuntimeSource>,
    otlp_metrics: Option<serde_json::Value>,
    /// Capabilities effective now (the rest were dropped after attaching).
    capabilities: Vec<String>,
}

async fn status(State(state): State<ApiState>) -> Response {
    match ask(&state, Query::Status).await {
        Ok(collector) => {
            let (kubernetes, container_runtimes) = {
                let names = state.names.read();
                (names.pods.status(), names.containers.sources.clone())
            };
            Json(FullStatus {
                collector,
                kubernetes,
                container_runtimes,
                otlp_metrics: state
                    .otlp_metrics
                    .as_deref()
                    .and_then(|s| serde_json::to_value(s).ok()),
                capabilities: crate::check::effective_capability_names(),
            })
            .into_response()
        }
        Err(response) => response,
    }
}

async fn metrics(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    let snapshot = match ask(&state, Query::Metrics).await {
        Ok(snapshot) => snapshot,
        Err(response) => return response,
    };
    // Encoding happens here, off the collector: a scrape does not hold up collection.
    let config = state.exposition_config;
    let exposition = Arc::clone(&state.exposition);
    let encoded = tokio::task::spawn_blocking(move || {
        exposition
            .lock()
            .map(|mut e| e.encode(snapshot, config))
            .unwrap_or_default()
    })
    .await
    .unwrap_or_default();
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if wants_openmetrics(accept) {
        ([(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)], encoded).into_response()
    } else {
        (
            [(header::CONTENT_TYPE, CLASSIC_CONTENT_TYPE)],
            to_classic(&encoded),
        )
            .into_response()
    }
}

async fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "no such endpoint; see /metrics, /livez, /readyz, /health, /health/detailed, /api/v1/processes, /api/v1/processes/{pid}, /api/v1/node, /api/v1/status, /api/v1/spans, /api/v1/config, /api/v1/debug",
    )
}

/// Plain-text probe answer.
fn probe(ok: bool, text: String) -> Response {
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        text + "\n",
    )
        .into_response()
}

fn latest(state: &ApiState) -> Option<HealthReport> {
    state
        .health
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
}

/// Alive: the collector answers and has read the kernel maps recently, and the health
/// evaluation keeps running.
async fn livez(State(state): State<ApiState>) -> Response {
    // Read from the collector's heartbeat, not asked through its queue: a flood of heavy
    // requests queues there, and liveness must not wait behind them.
    if state.queries.is_closed() {
        return probe(false, "collector not running".into());
    }
    let poll_limit = (state.poll_interval * 3).max(Duration::from_secs(5));
    match state.heartbeat.since_last_read() {
        Some(ago) if ago <= poll_limit => {}
        Some(ago) => {
            return probe(
                false,
                format!(
                    "the kernel maps were last read {:.1} s ago (limit {:.0} s)",
                    ago.as_secs_f64(),
                    poll_limit.as_secs_f64()
                ),
            )
        }
        None => return probe(false, "the kernel maps have not been read yet".into()),
    }
    let health_limit = state.health_interval * 3 + Duration::from_secs(5);
    if let Some(report) = latest(&state) {
        let age = crate::health::unix_now() - report.timestamp;
        if age > health_limit.as_secs_f64() {
            return probe(false, format!("health last evaluated {age:.0} s ago"));
        }
    }
    probe(true, "ok".into())
}

/// Ready: programs attached, events flowing, metadata ready.
async fn readyz(State(state): State<ApiState>) -> Response {
    match latest(&state).map(|r| r.ready) {
        Some(Ok(())) => probe(true, "ready".into()),
        Some(Err(reason)) => probe(false, format!("not ready: {reason}")),
        None => probe(
            false,
            "not ready: starting (no health evaluation yet)".into(),
        ),
    }
}

fn health_response(state: &ApiState, detailed: bool) -> Response {
    let Some(report) = latest(state) else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({
                "status": "starting",
                "message": "no health evaluation yet",
                "version": env!("CARGO_PKG_VERSION"),
            })),
        )
            .into_response();
    };
    let code = if report.status == Status::Unhealthy {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    let mut body = serde_json::to_value(&report).unwrap_or_default();
    if detailed {
        let directories = state.names.read();
        body["window_seconds"] = serde_json::json!(report.window_seconds);
        body["workloads"] = report
            .workloads
            .iter()
            .map(|w| {
                let names = directories.names(w.workload.pod_uid.as_deref(), w.workload.container_id.as_deref());
                serde_json::json!({
                    "cgroup": w.workload.cgroup,
                    "container_id": w.workload.container_id,
                    "pod_uid": w.workload.pod_uid,
                    "pod": names.pod,
                    "namespace": names.namespace,
                    "container": names.container,
                    "image": names.image,
                    "states": w.states.iter().map(|(s, why)| (s.name(), why)).collect::<std::collections::BTreeMap<_, _>>(),
                    "since": w.since,
                })
            })
            .collect();
    }
    (code, Json(body)).into_response()
}

async fn health(State(state): State<ApiState>) -> Response {
    health_response(&state, false)
}

async fn health_detailed(State(state): State<ApiState>) -> Response {
    health_response(&state, true)
}

async fn config_get(State(state): State<ApiState>) -> Response {
    let control = state.control.lock().await;
    Json(control.view()).into_response()
}

fn reload_answer(result: Result<crate::control::ReloadReport, String>) -> Response {
    match result {
        Ok(report) => Json(report).into_response(),
        Err(reason) => error(
            StatusCode::BAD_REQUEST,
            format!("{reason}; the running configuration is unchanged"),
        ),
    }
}

/// PUT: the body is a whole config file (TOML), validated, then applied.
async fn config_put(State(state): State<ApiState>, body: String) -> Response {
    let mut control = state.control.lock().await;
    reload_answer(control.reload_text(&body).await)
}

/// POST: read the config file again (as SIGHUP does).
async fn config_post(State(state): State<ApiState>) -> Response {
    let mut control = state.control.lock().await;
    reload_answer(control.reload_file().await)
}

#[derive(serde::Deserialize)]
struct DebugQuery {
    enabled: Option<bool>,
}

async fn debug_get(State(state): State<ApiState>) -> Response {
    Json(serde_json::json!({"debug": state.control.lock().await.debug()})).into_response()
}

async fn debug_set(State(state): State<ApiState>, query: UrlQuery<DebugQuery>) -> Response {
    let Some(enabled) = query.enabled else {
        return error(
            StatusCode::BAD_REQUEST,
            "say ?enabled=true or ?enabled=false",
        );
    };
    let mut control = state.control.lock().await;
    match control.set_debug(enabled).await {
        Ok(()) => Json(serde_json::json!({"debug": enabled})).into_response(),
        Err(reason) => error(StatusCode::INTERNAL_SERVER_ERROR, reason),
    }
}
