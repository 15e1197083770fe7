//! The HTTP JSON API (schema in docs/api.md).
//!
//! Handlers never touch the model: they send a [`Query`] to the collector and serve its answer.

use std::sync::{Arc, Mutex};

use axum::{
    extract::{Path, Query as UrlQuery, State},
    http::{header, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::{
    collector::{Query, SpanFilter, StatusResponse},
    exporters::otlp_metrics::OtlpMetricsStats,
    exporters::prometheus::{
        to_classic, wants_openmetrics, Exposition, ExpositionConfig, CLASSIC_CONTENT_TYPE,
        OPENMETRICS_CONTENT_TYPE,
    },
    metadata::{DirectoryStatus, SharedPods},
};

/// Handle on the collector for request handlers.
#[derive(Clone)]
pub struct ApiState {
    pub queries: mpsc::Sender<Query>,
    /// Prometheus exposition state (kept across scrapes) and settings.
    pub exposition: Arc<Mutex<Exposition>>,
    pub exposition_config: ExpositionConfig,
    /// Pod names from the Kubernetes API (its state is part of /api/v1/status).
    pub pods: SharedPods,
    /// The OTLP metrics exporter, when on (part of /api/v1/status).
    pub otlp_metrics: Option<Arc<OtlpMetricsStats>>,
}

/// Builds the router.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/api/v1/processes", get(processes))
        .route("/api/v1/processes/{pid}", get(process))
        .route("/api/v1/node", get(node))
        .route("/api/v1/status", get(status))
        .route("/api/v1/spans", get(spans))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(state)
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
    let (tx, rx) = oneshot::channel();
    let unavailable = || {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the collector is not running",
        )
    };
    state
        .queries
        .send(make(tx))
        .await
        .map_err(|_| unavailable())?;
    rx.await.map_err(|_| unavailable())
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

async fn processes(State(state): State<ApiState>) -> Response {
    answer(&state, Query::Processes).await
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
        Ok(answer) => Json(answer).into_response(),
        Err(response) => response,
    }
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
    answer(&state, |tx| Query::Spans(filter, tx)).await
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
    otlp_metrics: Option<serde_json::Value>,
}

async fn status(State(state): State<ApiState>) -> Response {
    match ask(&state, Query::Status).await {
        Ok(collector) => {
            let kubernetes = state
                .pods
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .status();
            Json(FullStatus {
                collector,
                kubernetes,
                otlp_metrics: state
                    .otlp_metrics
                    .as_deref()
                    .and_then(|s| serde_json::to_value(s).ok()),
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
        "no such endpoint; see /metrics, /api/v1/processes, /api/v1/processes/{pid}, /api/v1/node, /api/v1/status, /api/v1/spans",
    )
}
