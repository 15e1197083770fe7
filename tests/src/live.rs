//! The live feed's side of the tests (the dashboard's and `taskscope top`'s): an agent that
//! wants the token, a spinner in a cgroup of its own, a plain WebSocket client.

use std::{
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command},
    time::Duration,
};

use serde_json::Value;
use tungstenite::{client::IntoClientRequest, Message, WebSocket};

use crate::{cgroup2_root, workload_binary, Agent};

/// The API token of [`agent_with_token`].
pub const TOKEN: &str = "e2e-dashboard-token-0123456789";

/// An agent that wants the token (`--api-auth`), as the shipped configurations do.
pub fn agent_with_token() -> (Agent, PathBuf) {
    let token_file =
        std::env::temp_dir().join(format!("taskscope-dashboard-token-{}", std::process::id()));
    std::fs::write(&token_file, format!("{TOKEN}\n")).expect("token file");
    let agent = Agent::start(&[
        "--admin-token-file",
        token_file.to_str().expect("path"),
        "--api-auth",
    ]);
    (agent, token_file)
}

/// A process spinning one CPU in a cgroup of its own; killed and the cgroups removed on drop.
pub struct Spinner {
    pub child: Child,
    /// Its cgroup v2 directory.
    pub dir: PathBuf,
    /// The v1 cpu and memory cgroups of a capped spinner on a hybrid host.
    v1_dirs: Vec<PathBuf>,
}

/// The capped spinner's limits: half a CPU, 64 MiB.
const CAP_QUOTA_US: u64 = 50_000;
const CAP_PERIOD_US: u64 = 100_000;
pub const CAP_MEMORY_BYTES: u64 = 64 << 20;

impl Spinner {
    pub fn start(name: &str) -> Spinner {
        Self::start_with_limits(name, false)
    }

    /// With `capped`, its cgroup limits it to half a CPU and 64 MiB: in cgroup v2 where the
    /// controllers are there, else in the v1 cpu and memory hierarchies at the same path (as
    /// runc does on hybrid hosts).
    pub fn start_with_limits(name: &str, capped: bool) -> Spinner {
        let leaf = format!("{name}-{}", std::process::id());
        let root = PathBuf::from(cgroup2_root());
        let dir = root.join(&leaf);
        std::fs::create_dir_all(&dir).expect("create cgroup");
        let mut v1_dirs = Vec::new();
        let mut joins = format!("echo $$ > {}/cgroup.procs", dir.display());
        if capped {
            let controllers =
                std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
            if controllers.split_whitespace().any(|c| c == "cpu") {
                std::fs::write(root.join("cgroup.subtree_control"), "+cpu +memory")
                    .expect("enable controllers");
                std::fs::write(
                    dir.join("cpu.max"),
                    format!("{CAP_QUOTA_US} {CAP_PERIOD_US}"),
                )
                .expect("cpu.max");
                std::fs::write(dir.join("memory.max"), CAP_MEMORY_BYTES.to_string())
                    .expect("memory.max");
            } else {
                for (controller, files) in [
                    (
                        "cpu",
                        vec![
                            ("cpu.cfs_period_us", CAP_PERIOD_US),
                            ("cpu.cfs_quota_us", CAP_QUOTA_US),
                        ],
                    ),
                    ("memory", vec![("memory.limit_in_bytes", CAP_MEMORY_BYTES)]),
                ] {
                    let v1 = Path::new("/sys/fs/cgroup").join(controller).join(&leaf);
                    std::fs::create_dir_all(&v1).expect("create a v1 cgroup");
                    for (file, value) in files {
                        std::fs::write(v1.join(file), value.to_string()).expect(file);
                    }
                    joins += &format!(" && echo $$ > {}/cgroup.procs", v1.display());
                    v1_dirs.push(v1);
                }
            }
        }
        let script = format!(
            "{joins} && exec {} spin-for 300000",
            workload_binary().display()
        );
        let child = Command::new("sh")
            .args(["-c", &script])
            .spawn()
            .expect("spawn spinner");
        Spinner {
            child,
            dir,
            v1_dirs,
        }
    }

    /// The cgroup path as the agent names it (relative to the cgroup v2 root).
    pub fn cgroup(&self) -> String {
        format!(
            "/{}",
            self.dir
                .file_name()
                .and_then(|n| n.to_str())
                .expect("cgroup name")
        )
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir(&self.dir);
        for dir in &self.v1_dirs {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Opens the live feed with `headers`; the HTTP status when it is refused.
pub fn connect(agent: &Agent, headers: &[(&str, &str)]) -> Result<WebSocket<TcpStream>, u16> {
    let mut request = format!("ws://{}/api/v1/live", agent.addr)
        .into_client_request()
        .expect("request");
    for (name, value) in headers {
        request.headers_mut().insert(
            tungstenite::http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
            value.parse().expect("value"),
        );
    }
    let stream = TcpStream::connect(&agent.addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    match tungstenite::client(request, stream) {
        Ok((socket, _)) => Ok(socket),
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(response))) => {
            Err(response.status().as_u16())
        }
        Err(err) => panic!("handshake: {err}"),
    }
}

/// The next JSON message of the feed.
pub fn next_json(socket: &mut WebSocket<TcpStream>) -> Value {
    loop {
        match socket.read().expect("read a message") {
            Message::Text(text) => return serde_json::from_str(&text).expect("JSON"),
            Message::Close(frame) => panic!("closed: {frame:?}"),
            _ => continue,
        }
    }
}

/// The next frame of the feed (errors fail the test).
pub fn next_frame(socket: &mut WebSocket<TcpStream>) -> Value {
    loop {
        let message = next_json(socket);
        if message["type"] == "frame" {
            return message;
        }
        assert_ne!(message["type"], "error", "{message}");
    }
}
