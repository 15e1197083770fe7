//! The dashboard: its pages and assets (embedded gzipped at build time from agent/ui), the
//! login that turns the API token into a session cookie, and the live feed (`/api/v1/live`,
//! a WebSocket) its views update from.
//!
//! Every dashboard request takes from its client's rate limit first. With `api_auth` on, the
//! login page and its style sheet are the only things served without a token or a session.

use std::{net::SocketAddr, sync::atomic::Ordering, sync::Arc, time::Duration};

use axum::{
    extract::{
        rejection::FormRejection,
        ws::{Message, WebSocket, WebSocketUpgrade},
        ConnectInfo, Form, Path, Request, State,
    },
    http::{header, HeaderMap, HeaderValue, StatusCode},
    middleware::Next,
    response::{IntoResponse, Redirect, Response},
    Extension,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};

use super::{
    error, refusal,
    server::ConnectionSocket,
    session::{session_cookie, RateLimits, Sessions, Spend, COOKIE, SESSION_TTL},
    token_matches, ApiState,
};
use crate::{
    collector::Query,
    exporters::{HttpRefusals, LiveFeedStats},
    health::SharedHealth,
    metadata::Directories,
    viz::{
        self,
        live::{CgroupLimits, Section},
        LiveFrames, LiveSources, SharedHistory,
    },
};

/// The assets: (name under /ui/, content type, gzipped bytes), from agent/build.rs.
static ASSETS: &[(&str, &str, &[u8])] = include!(concat!(env!("OUT_DIR"), "/ui_assets.rs"));

/// Assets served without a session: the login page needs them.
const PUBLIC_ASSETS: &[&str] = &["login.html", "login.js", "style.css"];

/// Live-feed clients connected at once (more get 503).
pub(crate) const MAX_LIVE_CLIENTS: usize = 16;

/// Largest message a live-feed client may send.
const MAX_CLIENT_MESSAGE_BYTES: usize = 4096;

/// What the kernel may buffer for one live-feed client: a client that reads slower than the
/// frames come fills it within seconds, and then gets only the newest frame.
const LIVE_SEND_BUFFER_BYTES: usize = 16 * 1024;

/// A frame not taken by the client in this long ends its connection.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Most frames between two a client gets (`every`).
pub(crate) const MAX_EVERY: u64 = 10;

/// Bad messages a client may send before it is disconnected.
const MAX_BAD_MESSAGES: u32 = 20;

/// What the dashboard's pages may load and connect to: this agent only.
const CONTENT_SECURITY_POLICY: &str =
    "default-src 'self'; connect-src 'self'; img-src 'self' data:; \
     frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// What the dashboard keeps: the node's recent history, the live feed, sessions and rate
/// limits.
#[derive(Clone)]
pub(crate) struct Dashboard {
    pub(crate) history: SharedHistory,
    /// The workloads' recent on-CPU times and the readers of their cgroups' limits (the
    /// bin-packing view).
    pub(crate) usage: viz::SharedUsage,
    pub(crate) limits: Arc<CgroupLimits>,
    /// The bin-packing answer last built (CLOCK_MONOTONIC when, its JSON): served again
    /// within [`viz::INTERVAL`], so that browsers on the view (each asking once a second)
    /// cost one build a second between them.
    pub(crate) binpacking: Arc<std::sync::Mutex<Option<(u64, axum::body::Bytes)>>>,
    /// The live feed's newest frame, its counters and its client slots.
    pub(crate) live: LiveFrames,
    pub(crate) live_stats: Arc<LiveFeedStats>,
    process_subscribers: viz::ProcessSubscribers,
    live_slots: Arc<Semaphore>,
    sessions: Arc<Sessions>,
    rate_limits: Arc<RateLimits>,
}

impl Dashboard {
    /// Starts recording the node's history (and the live frames while someone listens).
    pub(crate) fn start(
        queries: &mpsc::Sender<Query>,
        health: &SharedHealth,
        names: &Directories,
        shutdown: &watch::Receiver<bool>,
    ) -> Self {
        let history = SharedHistory::default();
        let (frames, _) = watch::channel(Arc::default());
        let live = Arc::new(frames);
        let process_subscribers = viz::ProcessSubscribers::default();
        let usage = viz::SharedUsage::default();
        let limits = CgroupLimits::from_mounts(&crate::procfs::mountinfo());
        let sources = LiveSources {
            frames: Arc::clone(&live),
            process_subscribers: Arc::clone(&process_subscribers),
            health: Arc::clone(health),
            names: names.clone(),
            limits: limits.clone(),
        };
        tokio::spawn(viz::record(
            queries.clone(),
            Arc::clone(&history),
            Arc::clone(&usage),
            sources,
            shutdown.clone(),
        ));
        Self {
            history,
            usage,
            limits: Arc::new(limits),
            binpacking: Arc::default(),
            live,
            live_stats: Arc::default(),
            process_subscribers,
            live_slots: Arc::new(Semaphore::new(MAX_LIVE_CLIENTS)),
            sessions: Arc::default(),
            rate_limits: Arc::default(),
        }
    }
}

/// Whether the request carries the token or a live session (always, with `api_auth` off).
pub(crate) fn authorized(state: &ApiState, headers: &HeaderMap) -> bool {
    if !state.api_auth {
        return true;
    }
    has_session(state, headers)
        || (state.admin_token.is_some() && refusal(state, headers).is_none())
}

/// The session ids in the request's `Cookie` headers.
fn session_ids(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(session_cookie)
}

/// Whether the request's cookie names a live session.
pub(crate) fn has_session(state: &ApiState, headers: &HeaderMap) -> bool {
    session_ids(headers).any(|id| state.dashboard.sessions.is_valid(id))
}

/// The client's address (the server puts it on every request).
fn client_of(request: &Request) -> Option<std::net::IpAddr> {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip())
}

/// 429 with when to retry.
fn rate_limited(state: &ApiState, wait: Duration) -> Response {
    state.refusals.count(HttpRefusals::RATE_LIMITED);
    let mut response = error(
        StatusCode::TOO_MANY_REQUESTS,
        "too many dashboard requests from this address: retry later",
    );
    let seconds = wait.as_secs().max(1).to_string();
    if let Ok(value) = HeaderValue::from_str(&seconds) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

/// Middleware of every dashboard route: the client's rate limit.
pub(crate) async fn limit_rate(
    State(state): State<ApiState>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(client) = client_of(&request) {
        if let Err(wait) = state.dashboard.rate_limits.spend(client, Spend::Request) {
            return rate_limited(&state, wait);
        }
    }
    next.run(request).await
}

/// `/ui`: the dashboard lives under `/ui/`.
pub(crate) async fn to_index() -> Redirect {
    Redirect::permanent("/ui/")
}

/// `/ui/`: the dashboard, or the login page when the request has neither token nor session.
pub(crate) async fn index(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    if !authorized(&state, &headers) {
        return Redirect::to("/ui/login").into_response();
    }
    asset_response("index.html", &headers)
}

/// `/ui/{file}`: an asset.
pub(crate) async fn asset(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !PUBLIC_ASSETS.contains(&name.as_str()) && !authorized(&state, &headers) {
        return error(
            StatusCode::UNAUTHORIZED,
            "log in at /ui/login first, or send Authorization: Bearer <the API token>",
        );
    }
    asset_response(&name, &headers)
}

/// `GET /ui/login`.
pub(crate) async fn login_page(headers: HeaderMap) -> Response {
    asset_response("login.html", &headers)
}

/// The login form's fields.
#[derive(Deserialize)]
pub(crate) struct LoginForm {
    token: String,
}

/// `POST /ui/login`: the token for a session cookie.
pub(crate) async fn login(
    State(state): State<ApiState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    form: Result<Form<LoginForm>, FormRejection>,
) -> Response {
    let Ok(Form(form)) = form else {
        return error(
            StatusCode::BAD_REQUEST,
            "expected a form with a `token` field (application/x-www-form-urlencoded)",
        );
    };
    if !state.api_auth {
        return Redirect::to("/ui/").into_response();
    }
    let Some(expected) = &state.admin_token else {
        return Redirect::to("/ui/login?error=no-token-set").into_response();
    };
    if !token_matches(&form.token, expected) {
        state.refusals.count(HttpRefusals::LOGIN_FAILED);
        if let Err(wait) = state
            .dashboard
            .rate_limits
            .spend(client.ip(), Spend::FailedLogin)
        {
            return rate_limited(&state, wait);
        }
        return Redirect::to("/ui/login?error=wrong-token").into_response();
    }
    let Some(id) = state.dashboard.sessions.start() else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the system gave no randomness for a session id",
        );
    };
    let cookie = format!(
        "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
        SESSION_TTL.as_secs()
    );
    let mut response = Redirect::to("/ui/").into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// `POST /ui/logout`: ends the session and clears the cookie.
pub(crate) async fn logout(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    for id in session_ids(&headers) {
        state.dashboard.sessions.end(id);
    }
    let mut response = Redirect::to("/ui/login").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "taskscope_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
    response
}

/// An asset, gzipped when the client takes gzip (every browser), else inflated.
fn asset_response(name: &str, headers: &HeaderMap) -> Response {
    let Some((_, content_type, gzipped)) = ASSETS.iter().find(|(n, _, _)| *n == name) else {
        return error(StatusCode::NOT_FOUND, format!("no dashboard file '{name}'"));
    };
    let takes_gzip = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|e| e.trim().starts_with("gzip")));
    let mut response = if takes_gzip {
        let mut response = gzipped.to_vec().into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        response
    } else {
        let mut body = Vec::new();
        let mut decoder = flate2::read::GzDecoder::new(*gzipped);
        if std::io::Read::read_to_end(&mut decoder, &mut body).is_err() {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "a dashboard file is damaged",
            );
        }
        body.into_response()
    };
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    response
}

/// `GET /api/v1/live`: the WebSocket feed (auth and rate limit are the routes' middleware).
pub(crate) async fn live(
    State(state): State<ApiState>,
    socket: Option<Extension<ConnectionSocket>>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    if !same_origin(&headers) {
        return error(
            StatusCode::FORBIDDEN,
            "the live feed takes connections from the agent's own pages only (Origin differs from Host)",
        );
    }
    let Ok(slot) = Arc::clone(&state.dashboard.live_slots).try_acquire_owned() else {
        state.refusals.count(HttpRefusals::LIVE_CLIENTS);
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the live feed has its most clients ({MAX_LIVE_CLIENTS}): retry later"),
        );
    };
    if let Some(Extension(socket)) = socket {
        if let Err(err) = socket.cap_send_buffer(LIVE_SEND_BUFFER_BYTES) {
            tracing::debug!(%err, "cannot cap a live-feed client's send buffer");
        }
    }
    upgrade
        .max_message_size(MAX_CLIENT_MESSAGE_BYTES)
        .max_frame_size(MAX_CLIENT_MESSAGE_BYTES)
        .on_upgrade(move |socket| feed(socket, state, slot))
}

/// A browser's cross-site WebSocket is refused: its `Origin` must name the host it connects
/// to. Clients that send no `Origin` (scripts with the token) are not browsers.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let origin_host = origin.split_once("://").map(|(_, rest)| rest);
    host.is_some() && origin_host == host
}

/// What a client may send: any of the fields, as JSON text.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClientMessage {
    /// The sections it wants from now on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) subscribe: Option<Vec<Section>>,
    /// Stop (true) or resume (false) sending.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) pause: Option<bool>,
    /// Send every n-th frame (1 to [`MAX_EVERY`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) every: Option<u64>,
}

/// One client's settings.
#[derive(Debug)]
struct Subscription {
    sections: Vec<Section>,
    paused: bool,
    every: u64,
    /// The sequence number of the last frame sent.
    last_seq: Option<u64>,
}

/// The feed's first message: what this agent is and sends.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Hello {
    /// `"hello"`.
    #[serde(rename = "type")]
    pub(crate) kind: String,
    /// The agent's version.
    pub(crate) version: String,
    /// Time between frames.
    pub(crate) interval_ms: u64,
    pub(crate) sections: Vec<Section>,
    pub(crate) max_every: u64,
}

/// Serves one live-feed client until it leaves or stops taking frames.
async fn feed(mut socket: WebSocket, state: ApiState, slot: OwnedSemaphorePermit) {
    let stats = Arc::clone(&state.dashboard.live_stats);
    stats.clients.fetch_add(1, Ordering::Relaxed);
    let mut frames = state.dashboard.live.subscribe();
    let mut demand = ProcessDemand {
        subscribers: Arc::clone(&state.dashboard.process_subscribers),
        counted: false,
    };
    let mut subscription = Subscription {
        sections: Section::DEFAULT.to_vec(),
        paused: false,
        every: 1,
        last_seq: None,
    };
    let hello = Hello {
        kind: "hello".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        interval_ms: viz::INTERVAL.as_millis() as u64,
        sections: Section::ALL.to_vec(),
        max_every: MAX_EVERY,
    };
    let mut bad_messages = 0;
    let mut open = send_text(
        &mut socket,
        serde_json::to_string(&hello).unwrap_or_default(),
    )
    .await;
    while open {
        tokio::select! {
            changed = frames.changed() => {
                if changed.is_err() {
                    break;
                }
                let frame = Arc::clone(&frames.borrow_and_update());
                open = send_frame(&mut socket, &frame, &mut subscription, &stats).await;
            }
            message = socket.recv() => {
                let text = match message {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(Message::Binary(_))) => "binary".into(),
                    _ => break,
                };
                let answer = apply(&text, &mut subscription);
                demand.set(
                    !subscription.paused && subscription.sections.contains(&Section::Processes),
                );
                if let Err(problem) = answer {
                    bad_messages += 1;
                    let reply = serde_json::json!({"type": "error", "error": problem});
                    open = bad_messages <= MAX_BAD_MESSAGES
                        && send_text(&mut socket, reply.to_string()).await;
                } else if !subscription.paused
                    && frames.borrow().is_fresh(crate::clock::monotonic_ns())
                {
                    // The newest frame at once, with what was just subscribed to.
                    let frame = Arc::clone(&frames.borrow());
                    subscription.last_seq = None;
                    open = send_frame(&mut socket, &frame, &mut subscription, &stats).await;
                }
            }
        }
    }
    stats.clients.fetch_sub(1, Ordering::Relaxed);
    drop(slot);
}

/// Counts a client among the process table's subscribers while it wants the table.
struct ProcessDemand {
    subscribers: viz::ProcessSubscribers,
    counted: bool,
}

impl ProcessDemand {
    fn set(&mut self, wanted: bool) {
        if wanted != self.counted {
            if wanted {
                self.subscribers.fetch_add(1, Ordering::Relaxed);
            } else {
                self.subscribers.fetch_sub(1, Ordering::Relaxed);
            }
            self.counted = wanted;
        }
    }
}

impl Drop for ProcessDemand {
    fn drop(&mut self) {
        self.set(false);
    }
}

/// Applies a client's message to its subscription.
fn apply(text: &str, subscription: &mut Subscription) -> Result<(), String> {
    let message: ClientMessage = serde_json::from_str(text).map_err(|err| {
        format!(
            "cannot read the message: {err}; expected JSON like {{\"subscribe\":[\"node\",\"workloads\"],\"pause\":false,\"every\":1}}"
        )
    })?;
    if let Some(every) = message.every {
        if !(1..=MAX_EVERY).contains(&every) {
            return Err(format!("`every` must be 1 to {MAX_EVERY}, not {every}"));
        }
        subscription.every = every;
    }
    if let Some(mut sections) = message.subscribe {
        sections.sort_unstable();
        sections.dedup();
        subscription.sections = sections;
    }
    if let Some(paused) = message.pause {
        subscription.paused = paused;
    }
    Ok(())
}

/// Sends `frame` if the subscription wants it now; false when the connection is done.
async fn send_frame(
    socket: &mut WebSocket,
    frame: &viz::live::LiveFrame,
    subscription: &mut Subscription,
    stats: &crate::exporters::LiveFeedStats,
) -> bool {
    if subscription.paused || frame.seq == 0 {
        return true;
    }
    let mut dropped = 0;
    if let Some(last) = subscription.last_seq {
        let since = frame.seq.saturating_sub(last);
        if since < subscription.every {
            return true;
        }
        dropped = since - subscription.every;
    }
    subscription.last_seq = Some(frame.seq);
    let text = frame.message(&subscription.sections, dropped);
    stats.frames_dropped.fetch_add(dropped, Ordering::Relaxed);
    stats.frames_sent.fetch_add(1, Ordering::Relaxed);
    stats
        .bytes_sent
        .fetch_add(text.len() as u64, Ordering::Relaxed);
    send_text(socket, text).await
}

/// Sends a text message within [`SEND_TIMEOUT`]; false when the client is gone or too slow.
async fn send_text(socket: &mut WebSocket, text: String) -> bool {
    matches!(
        tokio::time::timeout(SEND_TIMEOUT, socket.send(Message::Text(text.into()))).await,
        Ok(Ok(()))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subscription() -> Subscription {
        Subscription {
            sections: Section::ALL.to_vec(),
            paused: false,
            every: 1,
            last_seq: None,
        }
    }

    #[test]
    fn a_client_message_changes_only_what_it_names() {
        let mut s = subscription();
        apply(r#"{"subscribe":["workloads","node","node"]}"#, &mut s).unwrap();
        assert_eq!(s.sections, vec![Section::Node, Section::Workloads]);
        apply(r#"{"pause":true}"#, &mut s).unwrap();
        assert!(s.paused);
        assert_eq!(s.sections, vec![Section::Node, Section::Workloads]);
        apply(r#"{"every":3,"pause":false}"#, &mut s).unwrap();
        assert_eq!((s.every, s.paused), (3, false));
    }

    #[test]
    fn bad_client_messages_are_refused_with_a_reason() {
        let mut s = subscription();
        let err = apply(r#"{"every":0}"#, &mut s).unwrap_err();
        assert!(err.contains("`every` must be 1 to 10"), "{err}");
        let err = apply(r#"{"subscribe":["everything"]}"#, &mut s).unwrap_err();
        assert!(err.contains("unknown variant"), "{err}");
        let err = apply(r#"{"pasue":true}"#, &mut s).unwrap_err();
        assert!(err.contains("unknown field"), "{err}");
        assert!(apply("binary", &mut s).is_err());
        assert_eq!(s.every, 1);
    }

    #[test]
    fn only_same_origin_browsers_connect() {
        let mut headers = HeaderMap::new();
        assert!(same_origin(&headers), "no Origin: not a browser");
        headers.insert(header::HOST, HeaderValue::from_static("node:9720"));
        headers.insert(header::ORIGIN, HeaderValue::from_static("http://node:9720"));
        assert!(same_origin(&headers));
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://evil.example"),
        );
        assert!(!same_origin(&headers));
    }

    #[test]
    fn every_asset_is_embedded_and_inflates() {
        for (name, _, gzipped) in ASSETS {
            let mut body = Vec::new();
            let mut decoder = flate2::read::GzDecoder::new(*gzipped);
            std::io::Read::read_to_end(&mut decoder, &mut body).unwrap();
            assert!(!body.is_empty(), "{name}");
        }
        for public in PUBLIC_ASSETS {
            assert!(ASSETS.iter().any(|(n, _, _)| n == public), "{public}");
        }
    }
}
