//! Container names and images from the container runtimes' own APIs: Docker Engine and Podman
//! (which serves the same container API) on their unix sockets. Each runtime is listed once,
//! then followed through its event stream (never polled); the directory keeps only a name and
//! an image per container, at most `max_containers` of them.
//!
//! A runtime whose socket is absent is waited for quietly (a node without Docker is normal); one
//! that answered once and then fails is reported by health, and the names it gave are kept
//! until it answers again.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Empty};
use hyper::{body::Incoming, Request, Response};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::{net::UnixStream, sync::watch as signal};
use tracing::{info, warn};

/// What is kept of one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ContainerNames {
    /// The name the runtime gives it (`docker run --name`), without Docker's leading `/`.
    pub(crate) name: String,
    /// The image as the runtime names it (`nginx:1.27`), empty when it ran from a root
    /// filesystem.
    pub(crate) image: String,
    /// The runtime that reported it: `docker` or `podman`.
    pub(crate) runtime: &'static str,
}

/// The state of one runtime's API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "detail")]
pub(crate) enum RuntimeState {
    /// No socket at the path (yet): nothing to name; looked for again now and then.
    Absent,
    /// Listed, and its events followed.
    Synced,
    /// It answered before (or its socket is there) and fails now; names already known are
    /// kept and the connection is retried with backoff.
    Failing(String),
}

/// One runtime API the agent follows.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RuntimeSource {
    pub(crate) runtime: &'static str,
    pub(crate) socket: PathBuf,
    #[serde(flatten)]
    pub(crate) state: RuntimeState,
    pub(crate) containers: usize,
}

/// Names of the containers the runtimes report, by full container id. One writer per runtime
/// (its watch task, over its own entries), read at scrape time.
#[derive(Debug, Default)]
pub(crate) struct ContainerDirectory {
    containers: HashMap<String, ContainerNames>,
    max_containers: usize,
    /// Containers not cached because the directory was full.
    pub(crate) dropped_total: u64,
    pub(crate) sources: Vec<RuntimeSource>,
}

/// The directory as shared between the watch tasks and readers.
pub(crate) type SharedContainers = Arc<RwLock<ContainerDirectory>>;

impl ContainerDirectory {
    /// An empty directory of at most `max_containers`, followed from `sources`.
    pub(crate) fn new(max_containers: usize, sources: &[(&'static str, PathBuf)]) -> Self {
        Self {
            containers: HashMap::new(),
            max_containers,
            dropped_total: 0,
            sources: sources
                .iter()
                .map(|(runtime, socket)| RuntimeSource {
                    runtime,
                    socket: socket.clone(),
                    state: RuntimeState::Absent,
                    containers: 0,
                })
                .collect(),
        }
    }

    /// A container's names.
    pub(crate) fn get(&self, id: &str) -> Option<&ContainerNames> {
        self.containers.get(id)
    }

    /// Adds or updates a container; a new one beyond the ceiling is counted and left out.
    fn apply(&mut self, id: String, names: ContainerNames) {
        if !self.containers.contains_key(&id) && self.containers.len() >= self.max_containers {
            self.dropped_total += 1;
            return;
        }
        let names = ContainerNames {
            name: bounded(names.name),
            image: bounded(names.image),
            runtime: names.runtime,
        };
        self.containers.insert(bounded(id), names);
    }

    fn remove(&mut self, id: &str) {
        self.containers.remove(id);
    }

    /// Replaces everything `runtime` reported with a complete list of its containers.
    pub(crate) fn replace_runtime(
        &mut self,
        runtime: &'static str,
        list: Vec<(String, ContainerNames)>,
    ) {
        self.containers.retain(|_, c| c.runtime != runtime);
        for (id, names) in list {
            self.apply(id, names);
        }
        self.count(runtime);
    }

    fn count(&mut self, runtime: &'static str) {
        let count = self
            .containers
            .values()
            .filter(|c| c.runtime == runtime)
            .count();
        for source in self.sources.iter_mut().filter(|s| s.runtime == runtime) {
            source.containers = count;
        }
    }

    fn set_state(&mut self, runtime: &'static str, state: RuntimeState) {
        for source in self.sources.iter_mut().filter(|s| s.runtime == runtime) {
            if source.state != state {
                match &state {
                    RuntimeState::Failing(why) => warn!(
                        runtime, error = %why,
                        "container runtime API: names unavailable; labels fall back to the cgroup's"
                    ),
                    RuntimeState::Synced => info!(
                        runtime,
                        containers = source.containers,
                        "container runtime API: containers listed, following its events"
                    ),
                    _ => {}
                }
            }
            source.state = state.clone();
        }
    }
}

/// A container as `GET /containers/json` lists it (Docker Engine API; Podman's compatible API).
#[derive(Debug, Deserialize)]
struct ListedContainer {
    #[serde(rename = "Id")]
    id: String,
    #[serde(rename = "Names", default)]
    names: Vec<String>,
    #[serde(rename = "Image", default)]
    image: String,
}

/// One record of `GET /events` (only what is used).
#[derive(Debug, Deserialize)]
struct RuntimeEvent {
    #[serde(rename = "Type", default)]
    kind: String,
    #[serde(rename = "Action", default)]
    action: String,
    #[serde(rename = "Actor", default)]
    actor: Actor,
}

#[derive(Debug, Default, Deserialize)]
struct Actor {
    #[serde(rename = "ID", default)]
    id: String,
    #[serde(rename = "Attributes", default)]
    attributes: HashMap<String, String>,
}

/// Longest name or image kept (longer ones are cut at a character boundary): they become label
/// values.
const MAX_NAME_BYTES: usize = 256;

fn bounded(mut s: String) -> String {
    if s.len() > MAX_NAME_BYTES {
        let mut end = MAX_NAME_BYTES;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// How long a runtime may take to list its containers.
const LIST_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest line of the event stream, and largest list, accepted from a runtime.
const MAX_EVENT_BYTES: usize = 64 * 1024;
const MAX_LIST_BYTES: usize = 64 * 1024 * 1024;

/// How a runtime failed us.
#[derive(Debug, thiserror::Error)]
enum ApiError {
    #[error("no socket at {0}")]
    Absent(String),
    #[error("cannot connect to {socket}: {reason}")]
    Connect { socket: String, reason: String },
    #[error("{0}")]
    Http(String),
    #[error("answered {status} to {path}")]
    Status { status: u16, path: String },
    #[error("{0}")]
    Decode(String),
}

/// Plain HTTP/1.1 over the runtime's unix socket.
async fn request(socket: &Path, path: &str) -> Result<Response<Incoming>, ApiError> {
    if !socket.exists() {
        return Err(ApiError::Absent(socket.display().to_string()));
    }
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|e| ApiError::Connect {
            socket: socket.display().to_string(),
            reason: e.to_string(),
        })?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| ApiError::Http(e.to_string()))?;
    tokio::spawn(connection);
    let request = Request::get(path)
        .header("host", "localhost")
        .body(Empty::<Bytes>::new())
        .map_err(|e| ApiError::Http(e.to_string()))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| ApiError::Http(e.to_string()))?;
    if !response.status().is_success() {
        return Err(ApiError::Status {
            status: response.status().as_u16(),
            path: path.to_string(),
        });
    }
    Ok(response)
}

/// Every container of the runtime, running or not.
async fn list(
    socket: &Path,
    runtime: &'static str,
) -> Result<Vec<(String, ContainerNames)>, ApiError> {
    let response = request(socket, "/containers/json?all=true").await?;
    let body = http_body_util::Limited::new(response.into_body(), MAX_LIST_BYTES)
        .collect()
        .await
        .map_err(|e| ApiError::Http(e.to_string()))?
        .to_bytes();
    let listed: Vec<ListedContainer> =
        serde_json::from_slice(&body).map_err(|e| ApiError::Decode(e.to_string()))?;
    Ok(listed_names(listed, runtime))
}

/// The names kept of listed containers.
fn listed_names(
    listed: Vec<ListedContainer>,
    runtime: &'static str,
) -> Vec<(String, ContainerNames)> {
    listed
        .into_iter()
        .map(|c| {
            let name = c.names.first().map_or("", |n| n.trim_start_matches('/'));
            (
                c.id,
                ContainerNames {
                    name: name.to_string(),
                    image: c.image,
                    runtime,
                },
            )
        })
        .collect()
}

/// What one runtime event changes.
fn apply_event(directory: &mut ContainerDirectory, runtime: &'static str, event: RuntimeEvent) {
    if event.kind != "container" || event.actor.id.is_empty() {
        return;
    }
    match event.action.as_str() {
        "destroy" | "remove" => directory.remove(&event.actor.id),
        "create" | "start" | "rename" | "update" => {
            let attributes = &event.actor.attributes;
            let known = directory.get(&event.actor.id);
            let names = ContainerNames {
                name: attributes
                    .get("name")
                    .cloned()
                    .or_else(|| known.map(|k| k.name.clone()))
                    .unwrap_or_default(),
                image: attributes
                    .get("image")
                    .cloned()
                    .or_else(|| known.map(|k| k.image.clone()))
                    .unwrap_or_default(),
                runtime,
            };
            directory.apply(event.actor.id, names);
        }
        _ => return,
    }
    directory.count(runtime);
}

/// Splits complete lines off `buffer`; errors on a line longer than [`MAX_EVENT_BYTES`].
fn take_lines(buffer: &mut BytesMut) -> Result<Vec<Bytes>, ApiError> {
    let mut lines = Vec::new();
    while let Some(end) = buffer.iter().position(|&b| b == b'\n') {
        let line = buffer.split_to(end + 1).freeze();
        lines.push(line.slice(..end));
    }
    if buffer.len() > MAX_EVENT_BYTES {
        return Err(ApiError::Decode(format!(
            "an event longer than {MAX_EVENT_BYTES} bytes"
        )));
    }
    Ok(lines)
}

/// Lists the runtime, then follows its events until the stream ends or fails.
async fn sync_and_follow(
    socket: &Path,
    runtime: &'static str,
    directory: &SharedContainers,
) -> Result<std::convert::Infallible, ApiError> {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // A runtime that takes the connection and never answers must not stall this source.
    let listed = tokio::time::timeout(LIST_TIMEOUT, list(socket, runtime))
        .await
        .map_err(|_| {
            ApiError::Http(format!(
                "no answer to the container list in {LIST_TIMEOUT:?}"
            ))
        })??;
    if let Ok(mut d) = directory.write() {
        d.replace_runtime(runtime, listed);
        d.set_state(runtime, RuntimeState::Synced);
    }
    // Events from just before the list: none between the two is missed (a repeat is harmless).
    let filters = "%7B%22type%22%3A%5B%22container%22%5D%7D";
    let path = format!(
        "/events?since={}&filters={filters}",
        since.saturating_sub(1)
    );
    let mut body = request(socket, &path).await?.into_body();
    let mut buffer = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ApiError::Http(e.to_string()))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buffer.extend_from_slice(&data);
        let lines = take_lines(&mut buffer)?;
        let Ok(mut d) = directory.write() else {
            continue;
        };
        for line in lines.iter().filter(|l| !l.is_empty()) {
            match serde_json::from_slice::<RuntimeEvent>(line) {
                Ok(event) => apply_event(&mut d, runtime, event),
                Err(e) => return Err(ApiError::Decode(format!("an event: {e}"))),
            }
        }
    }
    Err(ApiError::Http("the event stream ended".into()))
}

/// Follows one runtime's containers into `directory` until `shutdown`, reconnecting with
/// backoff (1 s doubling to 30 s; every 30 s while its socket is absent).
pub(crate) async fn watch_runtime(
    runtime: &'static str,
    socket: PathBuf,
    directory: SharedContainers,
    mut shutdown: signal::Receiver<bool>,
) {
    let mut backoff = Duration::from_secs(1);
    loop {
        let outcome = tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return,
            outcome = sync_and_follow(&socket, runtime, &directory) => outcome,
        };
        let Err(stopped) = outcome;
        let synced = directory.read().is_ok_and(|d| {
            d.sources
                .iter()
                .any(|s| s.runtime == runtime && s.state == RuntimeState::Synced)
        });
        if synced {
            // It answered this time: a later failure starts its backoff afresh.
            backoff = Duration::from_secs(1);
        }
        let wait = match stopped {
            ApiError::Absent(_) => {
                if let Ok(mut d) = directory.write() {
                    // Absent from the start is normal; gone after it answered is a failure.
                    let was_seen = d
                        .sources
                        .iter()
                        .any(|s| s.runtime == runtime && s.state != RuntimeState::Absent);
                    let state = if was_seen {
                        RuntimeState::Failing(format!("its socket {} is gone", socket.display()))
                    } else {
                        RuntimeState::Absent
                    };
                    d.set_state(runtime, state);
                }
                Duration::from_secs(30).min(backoff * 4)
            }
            e => {
                if let Ok(mut d) = directory.write() {
                    d.set_state(runtime, RuntimeState::Failing(e.to_string()));
                }
                backoff
            }
        };
        backoff = (backoff * 2).min(Duration::from_secs(30));
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(name: &str, runtime: &'static str) -> ContainerNames {
        ContainerNames {
            name: name.into(),
            image: "img:1".into(),
            runtime,
        }
    }

    #[test]
    fn a_relist_replaces_only_that_runtimes_containers_and_the_ceiling_holds() {
        let mut d = ContainerDirectory::new(3, &[("docker", "/d".into()), ("podman", "/p".into())]);
        d.replace_runtime("docker", vec![("a".into(), names("web", "docker"))]);
        d.replace_runtime("podman", vec![("b".into(), names("db", "podman"))]);
        d.replace_runtime("docker", vec![("c".into(), names("cache", "docker"))]);
        assert_eq!(d.get("a"), None);
        assert_eq!(d.get("b").map(|c| c.name.as_str()), Some("db"));
        assert_eq!(d.sources[0].containers, 1);
        for id in ["x", "y", "z"] {
            d.apply(id.into(), names(id, "docker"));
        }
        assert_eq!(d.dropped_total, 2);
        assert_eq!(d.containers.len(), 3);
        // A runtime's strings become label values: bounded, cut at a character boundary.
        d.apply("x".into(), names(&"é".repeat(1000), "docker"));
        assert_eq!(d.get("x").map(|c| c.name.len()), Some(MAX_NAME_BYTES));
    }

    #[test]
    fn events_add_rename_and_remove_containers() {
        let mut d = ContainerDirectory::new(10, &[("docker", "/d".into())]);
        let event = |action: &str, attrs: &[(&str, &str)]| -> RuntimeEvent {
            serde_json::from_value(serde_json::json!({
                "Type": "container", "Action": action,
                "Actor": {"ID": "c1", "Attributes": attrs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<HashMap<_, _>>()},
            }))
            .unwrap()
        };
        apply_event(
            &mut d,
            "docker",
            event("start", &[("name", "web"), ("image", "nginx:1")]),
        );
        assert_eq!(
            d.get("c1"),
            Some(&ContainerNames {
                name: "web".into(),
                image: "nginx:1".into(),
                runtime: "docker"
            })
        );
        apply_event(&mut d, "docker", event("rename", &[("name", "web2")]));
        assert_eq!(
            d.get("c1").map(|c| (c.name.as_str(), c.image.as_str())),
            Some(("web2", "nginx:1"))
        );
        apply_event(&mut d, "docker", event("die", &[]));
        assert!(
            d.get("c1").is_some(),
            "a stopped container keeps its name until removed"
        );
        apply_event(&mut d, "docker", event("destroy", &[]));
        assert_eq!(d.get("c1"), None);
    }

    #[test]
    fn event_lines_are_split_and_bounded() {
        let mut buffer = BytesMut::from(&b"{\"a\":1}\n{\"b\""[..]);
        let lines = take_lines(&mut buffer).unwrap();
        assert_eq!(lines, vec![Bytes::from_static(b"{\"a\":1}")]);
        assert_eq!(&buffer[..], b"{\"b\"");
        buffer.extend_from_slice(&vec![b'x'; MAX_EVENT_BYTES + 1]);
        assert!(take_lines(&mut buffer).is_err());
    }

    #[test]
    fn a_listed_container_is_named_without_the_slash() {
        // As Docker 20.10 answered here (trimmed); Podman's rootfs containers have no image.
        let listed: Vec<ListedContainer> = serde_json::from_str(
            r#"[{"Id":"16566e","Names":["/web1"],"Image":"tsbusy:1","State":"running"},
                {"Id":"e63d99","Names":["/pod1"],"Image":"","Config":null}]"#,
        )
        .unwrap();
        let names = listed_names(listed, "docker");
        assert_eq!(
            names[0],
            (
                "16566e".into(),
                ContainerNames {
                    name: "web1".into(),
                    image: "tsbusy:1".into(),
                    runtime: "docker"
                }
            )
        );
        assert_eq!(
            (names[1].1.name.as_str(), names[1].1.image.as_str()),
            ("pod1", "")
        );
    }
}
