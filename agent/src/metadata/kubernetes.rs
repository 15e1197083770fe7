//! The pods of this node from the Kubernetes API: listed once, then watched (never polled),
//! with client-go's backoff on errors. Only names are kept (see [`PodDirectory`]).

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    runtime::{
        watcher::{self, Event},
        WatchStreamExt,
    },
    Api, Client, Config,
};
use tokio::sync::watch as signal;
use tracing::{info, warn};

use super::{PodDirectory, PodNames, SharedPods, SourceState};

/// Why the Kubernetes API cannot be used at all.
#[derive(Debug, thiserror::Error)]
pub(crate) enum KubernetesError {
    #[error("--kubernetes needs this node's name: set NODE_NAME (from the downward API, spec.nodeName) or pass --node-name")]
    NoNodeName,
    #[error("--kubernetes: no Kubernetes API credentials found ({0}); run in a pod with a service account, or set KUBECONFIG")]
    NoConfig(String),
    #[error("--kubernetes: cannot build the API client: {0}")]
    Client(String),
}

/// A client for the API the environment points to (in-cluster service account, or KUBECONFIG).
pub(crate) async fn client() -> Result<Client, KubernetesError> {
    let config = Config::infer()
        .await
        .map_err(|e| KubernetesError::NoConfig(e.to_string()))?;
    Client::try_from(config).map_err(|e| KubernetesError::Client(e.to_string()))
}

/// The names kept of a pod; `None` without a UID.
pub(crate) fn pod_names(pod: &Pod) -> Option<PodNames> {
    let meta = &pod.metadata;
    let status = pod.status.as_ref();
    let containers = status
        .into_iter()
        .flat_map(|s| {
            [
                s.container_statuses.as_deref(),
                s.init_container_statuses.as_deref(),
                s.ephemeral_container_statuses.as_deref(),
            ]
        })
        .flatten()
        .flatten()
        .filter_map(|c| {
            // "containerd://<id>", "cri-o://<id>", "docker://<id>": the id is what the cgroup has.
            let id = c.container_id.as_deref()?;
            let id = id.split_once("://").map_or(id, |(_, id)| id);
            Some((id.to_string(), c.name.clone()))
        })
        .collect();
    Some(PodNames {
        uid: meta.uid.clone()?,
        name: meta.name.clone().unwrap_or_default(),
        namespace: meta.namespace.clone().unwrap_or_default(),
        containers,
    })
}

fn set_state(pods: &SharedPods, state: SourceState) {
    if let Ok(mut directory) = pods.write() {
        if directory.state != state {
            match &state {
                SourceState::Failing(why) => {
                    warn!(error = %why, "Kubernetes API: pod names unavailable; labels fall back to the cgroup's")
                }
                SourceState::Synced => info!(
                    pods = directory.status().pods,
                    "Kubernetes API: pods of this node synced"
                ),
                _ => {}
            }
        }
        directory.state = state;
    }
}

fn with_directory(pods: &SharedPods, f: impl FnOnce(&mut PodDirectory)) {
    if let Ok(mut directory) = pods.write() {
        f(&mut directory);
    }
}

/// Watches the pods scheduled on `node` into `pods` until `shutdown`.
pub(crate) async fn watch_pods(
    client: Client,
    node: String,
    pods: SharedPods,
    max_pods: usize,
    mut shutdown: signal::Receiver<bool>,
) {
    let api: Api<Pod> = Api::all(client);
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let mut stream = watcher::watcher(api, config).default_backoff().boxed();
    // A relist is applied whole at its end, so readers never see half a list.
    let mut relist: Vec<PodNames> = Vec::new();
    let mut relist_dropped = 0u64;
    loop {
        let event = tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return,
            event = stream.next() => event,
        };
        match event {
            None => return,
            Some(Err(err)) => set_state(&pods, SourceState::Failing(err.to_string())),
            Some(Ok(Event::Init)) => {
                relist.clear();
                relist_dropped = 0;
            }
            Some(Ok(Event::InitApply(pod))) => {
                if let Some(names) = pod_names(&pod) {
                    if relist.len() < max_pods {
                        relist.push(names);
                    } else {
                        relist_dropped += 1;
                    }
                }
            }
            Some(Ok(Event::InitDone)) => {
                let listed = std::mem::take(&mut relist);
                with_directory(&pods, |d| {
                    d.replace_all(listed);
                    d.dropped_total += relist_dropped;
                });
                set_state(&pods, SourceState::Synced);
            }
            Some(Ok(Event::Apply(pod))) => {
                if let Some(names) = pod_names(&pod) {
                    with_directory(&pods, |d| d.apply(names));
                }
                set_state(&pods, SourceState::Synced);
            }
            Some(Ok(Event::Delete(pod))) => {
                if let Some(uid) = pod.metadata.uid.as_deref() {
                    with_directory(&pods, |d| d.remove(uid));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_metadata_and_every_kind_of_container_status() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-0", "namespace": "shop", "uid": "u1"},
            "status": {
                "containerStatuses": [
                    {"name": "nginx", "containerID": "containerd://abc", "image": "", "imageID": "", "ready": true, "restartCount": 0},
                    {"name": "starting", "image": "", "imageID": "", "ready": false, "restartCount": 0}
                ],
                "initContainerStatuses": [
                    {"name": "init", "containerID": "cri-o://def", "image": "", "imageID": "", "ready": false, "restartCount": 0}
                ]
            }
        }))
        .unwrap();
        let names = pod_names(&pod).unwrap();
        assert_eq!(names.name, "web-0");
        assert_eq!(names.namespace, "shop");
        assert_eq!(
            names.containers,
            vec![
                ("abc".to_string(), "nginx".to_string()),
                ("def".to_string(), "init".to_string())
            ]
        );
        let no_uid: Pod =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "x"}})).unwrap();
        assert_eq!(pod_names(&no_uid), None);
    }
}
