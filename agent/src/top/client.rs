//! `taskscope top`'s connection to an agent: the live feed (a WebSocket) and the detail pages
//! (HTTP), on a thread of their own so that the screen never waits for the network.

use std::{path::Path, sync::mpsc as std_mpsc, time::Duration};

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::{net::TcpStream, sync::mpsc};
use tokio_tungstenite::{
    tungstenite::{self, client::IntoClientRequest, http, Message},
    MaybeTlsStream, WebSocketStream,
};

use crate::{
    api::ui::{ClientMessage, Hello},
    viz::live::{NodeSection, ProcessRow, Section, Table, WorkloadRow},
};

/// How long connecting, the agent's greeting and a detail request may take.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Largest message taken from the agent (a frame is some tens of KiB).
const MAX_MESSAGE_BYTES: usize = 4 << 20;

/// Messages from the network thread the screen has not taken yet (beyond: dropped, counted).
const QUEUE: usize = 16;

/// The agent to talk to.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    /// `http://HOST:PORT/`.
    pub(crate) base: reqwest::Url,
    token: Option<String>,
}

impl Endpoint {
    /// The agent at `url` (`http://HOST:PORT`, or `HOST:PORT`), with the API token if any.
    pub(crate) fn parse(url: &str, token: Option<String>) -> Result<Self, String> {
        let text = if url.contains("://") {
            url.to_string()
        } else {
            format!("http://{url}")
        };
        let base = reqwest::Url::parse(&text).map_err(|err| {
            format!("--url {url:?} is not a URL ({err}): expected http://HOST:PORT")
        })?;
        match base.scheme() {
            "http" => {}
            "https" => {
                return Err(format!(
                    "--url {url:?}: the agent serves plain HTTP, not https; reach a remote agent through `kubectl port-forward` or an SSH tunnel"
                ))
            }
            other => {
                return Err(format!(
                    "--url {url:?}: {other}:// is not supported: expected http://HOST:PORT"
                ))
            }
        }
        if base.host_str().is_none_or(str::is_empty) {
            return Err(format!(
                "--url {url:?} names no host: expected http://HOST:PORT"
            ));
        }
        Ok(Self { base, token })
    }

    /// The live feed's URL.
    fn live_url(&self) -> String {
        let mut url = self.base.clone();
        // http -> ws: both special schemes, so the change cannot fail.
        let _ = url.set_scheme("ws");
        url.set_path("/api/v1/live");
        url.set_query(None);
        url.to_string()
    }
}

/// The token from `--token-file` (which wins) or `--token` / TASKSCOPE_ADMIN_TOKEN.
pub(crate) fn read_token(
    token: Option<&str>,
    token_file: Option<&Path>,
) -> Result<Option<String>, String> {
    if let Some(path) = token_file {
        let text = std::fs::read_to_string(path)
            .map_err(|err| format!("cannot read the token file {}: {err}", path.display()))?;
        let token = text.trim();
        if token.is_empty() {
            return Err(format!("the token file {} is empty", path.display()));
        }
        return Ok(Some(token.to_string()));
    }
    Ok(token
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string))
}

/// The agent's section of a frame, as far as `top` shows it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct AgentSummary {
    pub(crate) health: Option<HealthSummary>,
    pub(crate) cpu: Option<f64>,
    pub(crate) rss_bytes: Option<u64>,
    pub(crate) lost_total: u64,
    pub(crate) live_processes: u64,
}

/// The agent's health verdict.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct HealthSummary {
    pub(crate) status: String,
    pub(crate) message: String,
}

/// One frame of the feed, with the sections `top` subscribes to.
#[derive(Debug, Deserialize)]
pub(crate) struct Frame {
    pub(crate) seq: u64,
    pub(crate) unix_ms: u64,
    pub(crate) dropped: u64,
    pub(crate) node: Option<NodeSection>,
    pub(crate) agent: Option<AgentSummary>,
    pub(crate) workloads: Option<Table<WorkloadRow>>,
    pub(crate) processes: Option<Table<ProcessRow>>,
}

/// What the network thread tells the screen.
#[derive(Debug)]
pub(crate) enum FromAgent {
    Frame(Box<Frame>),
    /// The answer to a detail request: its number and the page (or what went wrong).
    Detail(u64, Result<serde_json::Value, String>),
    /// The agent said a message was wrong.
    Refused(String),
    /// The feed ended.
    Closed(String),
}

/// What the screen asks the network thread.
#[derive(Debug)]
pub(crate) enum ToAgent {
    Feed(ClientMessage),
    /// A page of the JSON API (path and query), answered with this number.
    Detail(u64, String),
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A connected feed, greeted by the agent.
pub(crate) struct Connection {
    socket: Socket,
    pub(crate) hello: Hello,
    endpoint: Endpoint,
}

/// Connects to the agent's live feed and reads its greeting; the error is one line saying
/// what is wrong and what to do.
pub(crate) async fn connect(endpoint: &Endpoint) -> Result<Connection, String> {
    let url = endpoint.live_url();
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|err| format!("--url {}: {err}", endpoint.base))?;
    if let Some(token) = &endpoint.token {
        let value = http::HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| "the token holds characters a header cannot carry".to_string())?;
        request
            .headers_mut()
            .insert(http::header::AUTHORIZATION, value);
    }
    let config = tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_MESSAGE_BYTES));
    let connecting = tokio_tungstenite::connect_async_with_config(request, Some(config), false);
    let (mut socket, _) = tokio::time::timeout(TIMEOUT, connecting)
        .await
        .map_err(|_| {
            format!(
                "the agent at {} did not answer within {} s",
                endpoint.base,
                TIMEOUT.as_secs()
            )
        })?
        .map_err(|err| describe(&err, endpoint))?;
    let greeting = tokio::time::timeout(TIMEOUT, socket.next()).await;
    let hello = match greeting {
        Ok(Some(Ok(Message::Text(text)))) => serde_json::from_str::<Hello>(&text).ok(),
        _ => None,
    }
    .filter(|hello| hello.kind == "hello")
    .ok_or_else(|| {
        format!(
            "{} did not greet like a taskscope agent's live feed: is it one?",
            endpoint.base
        )
    })?;
    check_version(&hello.version)?;
    Ok(Connection {
        socket,
        hello,
        endpoint: endpoint.clone(),
    })
}

/// An agent of another minor version (0.x) may send frames this client reads wrong.
fn check_version(agent: &str) -> Result<(), String> {
    let ours = env!("CARGO_PKG_VERSION");
    let major_minor = |v: &str| v.split('.').take(2).collect::<Vec<_>>().join(".");
    if major_minor(agent) == major_minor(ours) {
        Ok(())
    } else {
        Err(format!(
            "the agent is version {agent} and this client {ours}: run the `taskscope top` of the agent's version"
        ))
    }
}

/// One line for a failed connection.
fn describe(err: &tungstenite::Error, endpoint: &Endpoint) -> String {
    let at = &endpoint.base;
    match err {
        tungstenite::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
            format!("cannot reach the agent at {at}: connection refused (is `taskscope run` running there? see --url)")
        }
        tungstenite::Error::Io(io) => format!("cannot reach the agent at {at}: {io}"),
        tungstenite::Error::Http(response) => {
            let status = response.status();
            let said = response
                .body()
                .as_deref()
                .and_then(|body| serde_json::from_slice::<serde_json::Value>(body).ok())
                .and_then(|v| v["error"].as_str().map(str::to_string))
                .map_or_else(String::new, |e| format!(": {e}"));
            match status.as_u16() {
                401 if endpoint.token.is_some() => format!(
                    "the agent at {at} refused the token ({status}){said}"
                ),
                401 => format!(
                    "the agent at {at} needs the API token ({status}): give it with --token-file or TASKSCOPE_ADMIN_TOKEN"
                ),
                404 => format!(
                    "the agent at {at} has no live feed ({status}): it is older than this client ({})",
                    env!("CARGO_PKG_VERSION")
                ),
                _ => format!("the agent at {at} answered {status}{said}"),
            }
        }
        other => format!("the agent at {at}: {other}"),
    }
}

impl Connection {
    /// Runs the connection on a thread of its own (with `runtime`): frames and answers come
    /// out of the receiver, requests go in through the sender.
    pub(crate) fn spawn(
        self,
        runtime: tokio::runtime::Runtime,
    ) -> (std_mpsc::Receiver<FromAgent>, mpsc::Sender<ToAgent>) {
        let (to_screen, from_agent) = std_mpsc::sync_channel(QUEUE);
        let (to_agent, requests) = mpsc::channel(QUEUE);
        std::thread::spawn(move || runtime.block_on(self.serve(to_screen, requests)));
        (from_agent, to_agent)
    }

    async fn serve(
        mut self,
        to_screen: std_mpsc::SyncSender<FromAgent>,
        mut requests: mpsc::Receiver<ToAgent>,
    ) {
        // reqwest's rustls wants a provider even for plain HTTP.
        crate::exporters::otlp_target::install_crypto_provider();
        let http = reqwest::Client::builder().timeout(TIMEOUT).build();
        let http = match http {
            Ok(http) => http,
            Err(err) => {
                let _ = to_screen.send(FromAgent::Closed(format!("no HTTP client: {err}")));
                return;
            }
        };
        loop {
            tokio::select! {
                message = self.socket.next() => {
                    let Some(news) = read_message(message) else { continue };
                    let closed = matches!(news, FromAgent::Closed(_));
                    // A screen that does not keep up misses frames; the next one is whole.
                    let _ = to_screen.try_send(news);
                    if closed {
                        return;
                    }
                }
                request = requests.recv() => match request {
                    None => return,
                    Some(ToAgent::Feed(message)) => {
                        let text = serde_json::to_string(&message).unwrap_or_default();
                        if self.socket.send(Message::Text(text.into())).await.is_err() {
                            let _ = to_screen.send(FromAgent::Closed("the agent closed the feed".into()));
                            return;
                        }
                    }
                    Some(ToAgent::Detail(id, path)) => {
                        let page = get_json(&http, &self.endpoint, &path).await;
                        let _ = to_screen.try_send(FromAgent::Detail(id, page));
                    }
                },
            }
        }
    }
}

/// What a message of the feed means to the screen (`None`: nothing).
fn read_message(message: Option<Result<Message, tungstenite::Error>>) -> Option<FromAgent> {
    match message {
        None => Some(FromAgent::Closed("the agent closed the feed".into())),
        Some(Err(err)) => Some(FromAgent::Closed(format!("the feed broke: {err}"))),
        Some(Ok(Message::Text(text))) => {
            let value: serde_json::Value = serde_json::from_str(&text).ok()?;
            match value["type"].as_str() {
                Some("frame") => match serde_json::from_value::<Frame>(value) {
                    Ok(frame) => Some(FromAgent::Frame(Box::new(frame))),
                    Err(err) => Some(FromAgent::Refused(format!(
                        "a frame this client cannot read: {err}"
                    ))),
                },
                Some("error") => Some(FromAgent::Refused(
                    value["error"].as_str().unwrap_or("?").to_string(),
                )),
                _ => None,
            }
        }
        Some(Ok(Message::Close(_))) => Some(FromAgent::Closed("the agent closed the feed".into())),
        Some(Ok(_)) => None,
    }
}

/// GETs a page of the JSON API.
async fn get_json(
    http: &reqwest::Client,
    endpoint: &Endpoint,
    path: &str,
) -> Result<serde_json::Value, String> {
    let url = endpoint
        .base
        .join(path)
        .map_err(|err| format!("{path}: {err}"))?;
    let mut request = http.get(url);
    if let Some(token) = &endpoint.token {
        request = request.bearer_auth(token);
    }
    let response = request
        .send()
        .await
        .map_err(|err| format!("{path}: {err}"))?;
    let status = response.status();
    let text = response
        .bytes()
        .await
        .map_err(|err| format!("{path}: {err}"))?;
    let body: serde_json::Value =
        serde_json::from_slice(&text).map_err(|err| format!("{path}: not JSON: {err}"))?;
    if status.is_success() {
        Ok(body)
    } else {
        Err(format!(
            "{path}: {status}: {}",
            body["error"].as_str().unwrap_or("")
        ))
    }
}

/// The sections `top` wants in a mode.
pub(crate) fn sections(processes: bool) -> Vec<Section> {
    let mut sections = vec![Section::Node, Section::Agent, Section::Workloads];
    if processes {
        sections.push(Section::Processes);
    }
    sections
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_and_the_feed_is_found_under_them() {
        let endpoint = Endpoint::parse("127.0.0.1:9720", None).expect("host:port");
        assert_eq!(endpoint.live_url(), "ws://127.0.0.1:9720/api/v1/live");
        let endpoint = Endpoint::parse("http://node-a:9720/ui/", None).expect("a URL");
        assert_eq!(endpoint.live_url(), "ws://node-a:9720/api/v1/live");
        assert!(Endpoint::parse("https://node-a:9720", None)
            .unwrap_err()
            .contains("plain HTTP"));
        assert!(Endpoint::parse("ftp://node-a", None)
            .unwrap_err()
            .contains("not supported"));
        assert!(Endpoint::parse("http://", None).is_err());
    }

    #[test]
    fn another_minor_version_is_refused() {
        assert!(check_version(env!("CARGO_PKG_VERSION")).is_ok());
        let err = check_version("9.9.0").unwrap_err();
        assert!(err.contains("9.9.0"), "{err}");
    }
}
