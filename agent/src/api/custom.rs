//! `/api/v1/custom-metrics`: list the custom metrics (with the JSON API's access), add and
//! remove them at runtime (admin token). An added definition is validated and attached as the
//! config file's are; it lasts until it is removed or the agent stops (a reload keeps it).

use axum::{
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    Json,
};

use super::{answer, ask, error, ApiState};
use crate::collector::{
    custom::{CustomDefinition, CustomDefinitionText},
    CustomRequest, Query,
};

/// GET: every definition, its state (where it is attached, problems) and figures.
pub(super) async fn list(State(state): State<ApiState>) -> Response {
    answer(&state, |tx| Query::Custom(CustomRequest::List(tx))).await
}

/// POST: a definition as JSON (`name`, `kind`, `start`, `end`, `selector`, as in the config
/// file). 201 with its state; 400 naming what is wrong, with nothing attached.
pub(super) async fn add(State(state): State<ApiState>, body: String) -> Response {
    let text: CustomDefinitionText = match serde_json::from_str(&body) {
        Ok(text) => text,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("the body is not a custom metric definition: {e}; send JSON like {{\"name\": \"pg_query\", \"kind\": \"latency\", \"start\": \"usdt:BINARY:PROVIDER:NAME\", \"end\": \"usdt:BINARY:PROVIDER:NAME\"}}"),
            )
        }
    };
    let definition = match CustomDefinition::try_from(text) {
        Ok(definition) => Box::new(definition),
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    match ask(&state, |tx| {
        Query::Custom(CustomRequest::Add(definition, tx))
    })
    .await
    {
        Ok(Ok(view)) => (StatusCode::CREATED, Json(view)).into_response(),
        Ok(Err(reason)) => error(StatusCode::BAD_REQUEST, reason),
        Err(response) => response,
    }
}

/// DELETE `/api/v1/custom-metrics/{name}`: detaches its probes and drops its figures.
pub(super) async fn remove(State(state): State<ApiState>, Path(name): Path<String>) -> Response {
    match ask(&state, |tx| {
        Query::Custom(CustomRequest::Remove(name.clone(), tx))
    })
    .await
    {
        Ok(true) => Json(serde_json::json!({ "removed": name })).into_response(),
        Ok(false) => error(
            StatusCode::NOT_FOUND,
            format!(
                "no custom metric is named {}; GET /api/v1/custom-metrics lists them",
                name.escape_debug()
            ),
        ),
        Err(response) => response,
    }
}
