//! Pod, namespace and container names from the Kubernetes API (`--kubernetes`).
//!
//! No Kubernetes API server can be installed here (Debian has only kubectl; envtest binaries
//! are downloads), so the agent talks to a stand-in on loopback that speaks the API's wire
//! protocol for pods: a list (`GET /api/v1/pods?fieldSelector=...`), then a watch (a chunked
//! stream of `{"type":"ADDED","object":{...}}` lines). The agent's side is the real kube-rs
//! client and watcher; the cgroups and processes are real.

use std::{
    io::{BufRead, BufReader, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::{json, Value};
use taskscope_e2e::{cgroup2_root, http_get, wait_for, workload_binary, Agent};

/// The stand-in API server: serves `pods` (all nodes; it filters by `spec.nodeName` as the
/// real server does) and streams `watch_events` to every watch.
#[derive(Default)]
struct ApiState {
    pods: Vec<Value>,
    watch_events: Vec<Value>,
    /// Request lines received.
    requests: Vec<String>,
}

struct StandInApi {
    addr: String,
    state: Arc<Mutex<ApiState>>,
}

impl StandInApi {
    fn start(pods: Vec<Value>) -> StandInApi {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let state = Arc::new(Mutex::new(ApiState {
            pods,
            ..ApiState::default()
        }));
        let shared = Arc::clone(&state);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let state = Arc::clone(&shared);
                std::thread::spawn(move || serve(stream, &state));
            }
        });
        StandInApi { addr, state }
    }

    fn push_event(&self, kind: &str, pod: Value) {
        let mut state = self.state.lock().expect("state");
        state
            .watch_events
            .push(json!({"type": kind, "object": pod}));
    }

    fn requests(&self) -> Vec<String> {
        self.state.lock().expect("state").requests.clone()
    }
}

fn query_value<'a>(target: &'a str, key: &str) -> Option<&'a str> {
    target
        .split_once('?')?
        .1
        .split('&')
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
}

fn serve(stream: TcpStream, state: &Mutex<ApiState>) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut stream = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        // Headers: read to the blank line (GET requests carry no body).
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                break;
            }
        }
        let target = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or("")
            .to_string();
        state
            .lock()
            .expect("state")
            .requests
            .push(request_line.trim().to_string());
        let selector = query_value(&target, "fieldSelector")
            .unwrap_or("")
            .replace("%3D", "=");
        let node = selector.strip_prefix("spec.nodeName=").map(str::to_string);
        let on_node = |pod: &Value| node.as_deref().is_none_or(|n| pod["spec"]["nodeName"] == n);
        if !target.starts_with("/api/v1/pods") {
            let body =
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404})
                    .to_string();
            let _ = write!(stream, "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len());
            continue;
        }
        if matches!(query_value(&target, "watch"), Some("true" | "1")) {
            // A watch: a chunked stream of events, kept open.
            if write!(stream, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n").is_err() {
                return;
            }
            let mut sent = 0;
            loop {
                let events: Vec<Value> = {
                    let state = state.lock().expect("state");
                    state.watch_events[sent..].to_vec()
                };
                for event in events {
                    sent += 1;
                    if !on_node(&event["object"]) {
                        continue;
                    }
                    let line = format!("{event}\n");
                    if write!(stream, "{:x}\r\n{line}\r\n", line.len()).is_err() {
                        return;
                    }
                }
                if stream.flush().is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let items: Vec<Value> = state
            .lock()
            .expect("state")
            .pods
            .iter()
            .filter(|p| on_node(p))
            .cloned()
            .collect();
        let body = json!({
            "kind": "PodList",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": "100"},
            "items": items,
        })
        .to_string();
        if write!(
            stream,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .is_err()
        {
            return;
        }
    }
}

fn pod(uid: &str, name: &str, namespace: &str, node: &str, containers: &[(&str, &str)]) -> Value {
    let statuses: Vec<Value> = containers
        .iter()
        .map(|(id, name)| {
            json!({"name": name, "containerID": format!("containerd://{id}"), "image": "x", "imageID": "", "ready": true, "restartCount": 0})
        })
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "uid": uid, "resourceVersion": "100"},
        "spec": {"nodeName": node, "containers": []},
        "status": {"containerStatuses": statuses},
    })
}

/// A kubeconfig pointing at the stand-in (plain HTTP, no credentials).
fn kubeconfig(dir: &Path, server: &str) -> PathBuf {
    let path = dir.join(format!("kubeconfig-{}", std::process::id()));
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: standin\n  cluster:\n    server: http://{server}\nusers:\n- name: agent\n  user: {{}}\ncontexts:\n- name: standin\n  context:\n    cluster: standin\n    user: agent\ncurrent-context: standin\n"
        ),
    )
    .expect("kubeconfig");
    path
}

/// A sleeper in a Kubernetes-style cgroup (systemd driver, containerd).
struct PodProcess {
    child: Child,
    dir: PathBuf,
    cgroup: String,
}

impl PodProcess {
    fn start(uid: &str, container_id: &str) -> PodProcess {
        let cgroup = format!(
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{container_id}.scope",
            uid.replace('-', "_")
        );
        let dir = Path::new(&cgroup2_root()).join(&cgroup);
        std::fs::create_dir_all(&dir).expect("create cgroup");
        let script = format!(
            "echo $$ > {}/cgroup.procs && exec {} sleep 60000",
            dir.display(),
            workload_binary().display()
        );
        let child = Command::new("sh")
            .arg("-c")
            .arg(&script)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("sh");
        PodProcess {
            child,
            dir,
            cgroup: format!("/{cgroup}"),
        }
    }
}

impl Drop for PodProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let root = PathBuf::from(cgroup2_root());
        let mut dir = self.dir.clone();
        while dir != root && dir.starts_with(&root) {
            let _ = std::fs::remove_dir(&dir);
            dir.pop();
        }
    }
}

/// The `tasks_running` line of a cgroup in a scrape.
fn running_line(scrape: &str, cgroup: &str) -> Option<String> {
    scrape
        .lines()
        .find(|l| {
            l.starts_with("taskscope_tasks_running{") && l.contains(&format!("cgroup=\"{cgroup}\""))
        })
        .map(str::to_string)
}

#[test]
fn pods_and_containers_are_named_from_the_api_listed_then_watched() {
    let uid1 = "6a1f0c9e-1111-4c3b-9d7e-000000000001";
    let uid2 = "6a1f0c9e-2222-4c3b-9d7e-000000000002";
    let id1 = format!("{:064x}", 0xabc1u64);
    let id2 = format!("{:064x}", 0xabc2u64);
    let api = StandInApi::start(vec![
        pod(uid1, "web-0", "shop", "node-a", &[(&id1, "nginx")]),
        // Same uid scheme, another node: must not be asked for.
        pod(
            "6a1f0c9e-3333-4c3b-9d7e-000000000003",
            "elsewhere",
            "shop",
            "node-b",
            &[],
        ),
    ]);
    let config = kubeconfig(Path::new(env!("CARGO_TARGET_TMPDIR")), &api.addr);
    let first = PodProcess::start(uid1, &id1);
    let second = PodProcess::start(uid2, &id2);
    let agent = Agent::start_with_env(
        &["--kubernetes"],
        &[
            ("KUBECONFIG", config.to_str().expect("path")),
            ("NODE_NAME", "node-a"),
        ],
    );

    // Listed: the first pod is named.
    let line = wait_for("web-0 named in /metrics", Duration::from_secs(20), || {
        let (_, scrape) = http_get(&agent.addr, "/metrics").ok()?;
        running_line(&scrape, &first.cgroup).filter(|l| l.contains("pod=\"web-0\""))
    });
    println!("listed: {line}");
    assert!(line.contains("namespace=\"shop\""), "{line}");
    assert!(line.contains("container=\"nginx\""), "{line}");
    assert!(line.contains(&format!("container_id=\"{id1}\"")), "{line}");
    // The second pod is not in the list yet: its labels fall back to the cgroup's (pod UID).
    let (_, scrape) = http_get(&agent.addr, "/metrics").expect("scrape");
    let fallback = running_line(&scrape, &second.cgroup).expect("second pod's series");
    println!("not yet known: {fallback}");
    assert!(fallback.contains(&format!("pod=\"{uid2}\"")) && fallback.contains("namespace=\"\""));
    assert!(
        scrape.contains("taskscope_kubernetes_synced 1"),
        "not synced"
    );

    // Watched: the second pod arrives as an event, with no new list.
    let lists_before = api
        .requests()
        .iter()
        .filter(|r| !r.contains("watch="))
        .count();
    api.push_event(
        "ADDED",
        pod(uid2, "batch-7", "jobs", "node-a", &[(&id2, "worker")]),
    );
    let line = wait_for(
        "batch-7 named from the watch",
        Duration::from_secs(20),
        || {
            let (_, scrape) = http_get(&agent.addr, "/metrics").ok()?;
            running_line(&scrape, &second.cgroup).filter(|l| l.contains("pod=\"batch-7\""))
        },
    );
    println!("watched: {line}");
    assert!(line.contains("namespace=\"jobs\"") && line.contains("container=\"worker\""));
    let requests = api.requests();
    let lists_after = requests.iter().filter(|r| !r.contains("watch=")).count();
    println!("requests to the API: {requests:#?}");
    assert_eq!(
        lists_before, lists_after,
        "the agent listed again instead of watching"
    );
    assert!(
        requests
            .iter()
            .all(|r| r.contains("fieldSelector=spec.nodeName%3Dnode-a")),
        "a request for pods of other nodes"
    );
    assert!(
        requests.iter().any(|r| r.contains("watch=true")),
        "no watch"
    );

    // A deleted pod's names go (its processes may outlive it for a moment).
    api.push_event(
        "DELETED",
        pod(uid1, "web-0", "shop", "node-a", &[(&id1, "nginx")]),
    );
    let line = wait_for(
        "web-0 forgotten after DELETED",
        Duration::from_secs(20),
        || {
            let (_, scrape) = http_get(&agent.addr, "/metrics").ok()?;
            running_line(&scrape, &first.cgroup).filter(|l| l.contains(&format!("pod=\"{uid1}\"")))
        },
    );
    println!("deleted: {line}");
    let status = agent.get("/api/v1/status");
    println!("status.kubernetes: {}", status["kubernetes"]);
    assert_eq!(status["kubernetes"]["state"], "synced");
    assert_eq!(status["kubernetes"]["pods"], 1);
    let _ = std::fs::remove_file(config);
}

#[test]
fn without_the_api_labels_fall_back_and_status_says_why() {
    // An API address nothing listens on.
    let closed = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = closed.local_addr().expect("addr").to_string();
    drop(closed);
    let config = kubeconfig(Path::new(env!("CARGO_TARGET_TMPDIR")), &addr);
    let uid = "6a1f0c9e-4444-4c3b-9d7e-000000000004";
    let id = format!("{:064x}", 0xabc4u64);
    let process = PodProcess::start(uid, &id);
    let agent = Agent::start_with_env(
        &["--kubernetes"],
        &[
            ("KUBECONFIG", config.to_str().expect("path")),
            ("NODE_NAME", "node-a"),
        ],
    );
    let status = wait_for("the API failure in status", Duration::from_secs(20), || {
        let status = agent.get("/api/v1/status");
        (status["kubernetes"]["state"] == "failing").then_some(status)
    });
    println!("status.kubernetes: {}", status["kubernetes"]);
    assert!(!status["kubernetes"]["detail"]
        .as_str()
        .unwrap_or("")
        .is_empty());
    let line = wait_for("the pod's series", Duration::from_secs(20), || {
        let (_, scrape) = http_get(&agent.addr, "/metrics").ok()?;
        running_line(&scrape, &process.cgroup).map(|l| (l, scrape))
    });
    println!("fallback: {}", line.0);
    assert!(
        line.0.contains(&format!("pod=\"{uid}\""))
            && line.0.contains(&format!("container_id=\"{id}\""))
    );
    assert!(line.1.contains("taskscope_kubernetes_synced 0"));
    let _ = std::fs::remove_file(config);
}

#[test]
fn kubernetes_without_a_node_name_is_a_clear_error() {
    let out = Command::new(taskscope_e2e::agent_binary())
        .args(["run", "--listen", "127.0.0.1:0", "--kubernetes"])
        .env_remove("NODE_NAME")
        .env("KUBECONFIG", "/nonexistent")
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("exit {:?}: {stderr}", out.status.code());
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("NODE_NAME"), "{stderr}");
}
