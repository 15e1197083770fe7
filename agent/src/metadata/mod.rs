//! Names of workloads the cgroup path does not carry: pod name, namespace and container name,
//! from the Kubernetes API (`--kubernetes`, see [`kubernetes`]); container names and images
//! from Docker's and Podman's APIs (see [`runtimes`]). Without them, workloads keep what the
//! cgroup gives (pod UID, container id), and `/api/v1/status` says why.

#[cfg(feature = "kubernetes")]
pub(crate) mod kubernetes;
pub(crate) mod runtimes;
pub(crate) mod users;

use std::{
    collections::HashMap,
    sync::{Arc, RwLock, RwLockReadGuard},
};

use runtimes::{ContainerDirectory, SharedContainers};

use serde::Serialize;

/// What is kept of one pod: only the names, so that the cache stays small.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PodNames {
    pub(crate) uid: String,
    pub(crate) name: String,
    pub(crate) namespace: String,
    /// (container id without the runtime scheme, container name).
    pub(crate) containers: Vec<(String, String)>,
}

/// The state of the Kubernetes metadata source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "detail")]
// Connecting and Failing are the Kubernetes watch's states (feature `kubernetes`).
#[cfg_attr(not(feature = "kubernetes"), allow(dead_code))]
pub(crate) enum SourceState {
    /// `--kubernetes` not given: labels come from the cgroup path only.
    Disabled,
    /// Listing pods for the first time.
    Connecting,
    /// The pod list is complete and being watched.
    Synced,
    /// The API cannot be reached or refused us; names already known are kept, the watch is
    /// retried with backoff.
    Failing(String),
}

/// Names of the pods on this node, by pod UID. One writer (the watch task), read at scrape time.
#[derive(Debug)]
pub(crate) struct PodDirectory {
    pods: HashMap<String, PodNames>,
    /// Container name by container id, across all pods.
    containers: HashMap<String, String>,
    max_pods: usize,
    /// Pods not cached because the directory was full.
    pub(crate) dropped_total: u64,
    pub(crate) state: SourceState,
}

/// The directory as shared between the watch task and readers.
pub(crate) type SharedPods = Arc<RwLock<PodDirectory>>;

/// What the directory knows of a workload.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct KubernetesNames<'a> {
    pub(crate) pod: Option<&'a str>,
    pub(crate) namespace: Option<&'a str>,
    pub(crate) container: Option<&'a str>,
}

/// A status summary for `/api/v1/status`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct DirectoryStatus {
    #[serde(flatten)]
    pub(crate) state: SourceState,
    pub(crate) pods: usize,
    pub(crate) max_pods: usize,
    pub(crate) dropped_total: u64,
}

impl PodDirectory {
    /// An empty directory holding at most `max_pods` pods.
    pub(crate) fn new(max_pods: usize, state: SourceState) -> Self {
        Self {
            pods: HashMap::new(),
            containers: HashMap::new(),
            max_pods,
            dropped_total: 0,
            state,
        }
    }

    /// A directory that will stay empty (no Kubernetes API).
    pub(crate) fn disabled() -> SharedPods {
        Arc::new(RwLock::new(Self::new(0, SourceState::Disabled)))
    }

    /// Adds or updates a pod; a new pod beyond `max_pods` is counted and left out.
    #[cfg_attr(not(feature = "kubernetes"), allow(dead_code))]
    pub(crate) fn apply(&mut self, pod: PodNames) {
        if !self.pods.contains_key(&pod.uid) && self.pods.len() >= self.max_pods {
            self.dropped_total += 1;
            return;
        }
        self.remove(&pod.uid);
        for (id, name) in &pod.containers {
            self.containers.insert(id.clone(), name.clone());
        }
        self.pods.insert(pod.uid.clone(), pod);
    }

    /// Forgets a pod and its containers.
    #[cfg_attr(not(feature = "kubernetes"), allow(dead_code))]
    pub(crate) fn remove(&mut self, uid: &str) {
        if let Some(old) = self.pods.remove(uid) {
            for (id, _) in &old.containers {
                self.containers.remove(id);
            }
        }
    }

    /// Replaces everything with a complete list (after a (re)list of the API).
    #[cfg_attr(not(feature = "kubernetes"), allow(dead_code))]
    pub(crate) fn replace_all(&mut self, pods: Vec<PodNames>) {
        self.pods.clear();
        self.containers.clear();
        for pod in pods {
            self.apply(pod);
        }
    }

    /// Names for a workload known by pod UID and container id (from its cgroup).
    pub(crate) fn names(
        &self,
        pod_uid: Option<&str>,
        container_id: Option<&str>,
    ) -> KubernetesNames<'_> {
        let pod = pod_uid.and_then(|uid| self.pods.get(uid));
        KubernetesNames {
            pod: pod.map(|p| p.name.as_str()),
            namespace: pod.map(|p| p.namespace.as_str()),
            container: container_id
                .and_then(|id| self.containers.get(id))
                .map(String::as_str),
        }
    }

    pub(crate) fn status(&self) -> DirectoryStatus {
        DirectoryStatus {
            state: self.state.clone(),
            pods: self.pods.len(),
            max_pods: self.max_pods,
            dropped_total: self.dropped_total,
        }
    }
}

/// Every source of workload names, as their readers hold them.
#[derive(Debug, Clone)]
pub(crate) struct Directories {
    pub(crate) pods: SharedPods,
    pub(crate) containers: SharedContainers,
}

/// The directories read-locked for one scrape, export batch or answer.
pub(crate) struct DirectoryView<'a> {
    pub(crate) pods: RwLockReadGuard<'a, PodDirectory>,
    pub(crate) containers: RwLockReadGuard<'a, ContainerDirectory>,
}

/// What the directories know of a workload, borrowed from them.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct FoundNames<'a> {
    pub(crate) pod: Option<&'a str>,
    pub(crate) namespace: Option<&'a str>,
    /// Kubernetes' container name in a pod, else the runtime's.
    pub(crate) container: Option<&'a str>,
    /// The image, from the runtime's API.
    pub(crate) image: Option<&'a str>,
}

/// A workload's names, owned (the JSON API's `workload` objects carry them).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub(crate) struct WorkloadNames {
    pub(crate) pod: Option<String>,
    pub(crate) namespace: Option<String>,
    pub(crate) container: Option<String>,
    pub(crate) image: Option<String>,
}

impl FoundNames<'_> {
    pub(crate) fn to_owned_names(&self) -> WorkloadNames {
        let owned = |s: Option<&str>| s.map(str::to_string);
        WorkloadNames {
            pod: owned(self.pod),
            namespace: owned(self.namespace),
            container: owned(self.container),
            image: owned(self.image),
        }
    }
}

impl Directories {
    /// Directories that stay empty (no Kubernetes API, no runtime socket).
    pub(crate) fn disabled() -> Self {
        Self {
            pods: PodDirectory::disabled(),
            containers: Arc::new(RwLock::new(ContainerDirectory::default())),
        }
    }

    pub(crate) fn read(&self) -> DirectoryView<'_> {
        DirectoryView {
            pods: self.pods.read().unwrap_or_else(|p| p.into_inner()),
            containers: self.containers.read().unwrap_or_else(|p| p.into_inner()),
        }
    }
}

impl DirectoryView<'_> {
    /// Names for a workload known by pod UID and container id (from its cgroup).
    pub(crate) fn names(
        &self,
        pod_uid: Option<&str>,
        container_id: Option<&str>,
    ) -> FoundNames<'_> {
        let kubernetes = self.pods.names(pod_uid, container_id);
        let runtime = container_id.and_then(|id| self.containers.get(id));
        let non_empty = |s: &str| !s.is_empty();
        FoundNames {
            pod: kubernetes.pod,
            namespace: kubernetes.namespace,
            container: kubernetes
                .container
                .or_else(|| runtime.map(|c| c.name.as_str()).filter(|n| non_empty(n))),
            image: runtime.map(|c| c.image.as_str()).filter(|i| non_empty(i)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(uid: &str, name: &str, containers: &[(&str, &str)]) -> PodNames {
        PodNames {
            uid: uid.into(),
            name: name.into(),
            namespace: "shop".into(),
            containers: containers
                .iter()
                .map(|(id, n)| (id.to_string(), n.to_string()))
                .collect(),
        }
    }

    #[test]
    fn names_by_uid_and_container_id() {
        let mut d = PodDirectory::new(10, SourceState::Synced);
        d.apply(pod("u1", "web-0", &[("c1", "nginx"), ("c2", "sidecar")]));
        let names = d.names(Some("u1"), Some("c2"));
        assert_eq!(names.pod, Some("web-0"));
        assert_eq!(names.namespace, Some("shop"));
        assert_eq!(names.container, Some("sidecar"));
        assert_eq!(d.names(Some("u2"), None), KubernetesNames::default());
        // An update replaces the containers (a restarted container has a new id).
        d.apply(pod("u1", "web-0", &[("c3", "nginx")]));
        assert_eq!(d.names(Some("u1"), Some("c1")).container, None);
        assert_eq!(d.names(Some("u1"), Some("c3")).container, Some("nginx"));
        d.remove("u1");
        assert_eq!(d.names(Some("u1"), Some("c3")), KubernetesNames::default());
    }

    #[test]
    fn the_ceiling_holds_and_counts_what_it_left_out() {
        let mut d = PodDirectory::new(2, SourceState::Synced);
        for i in 0..5 {
            d.apply(pod(&format!("u{i}"), "p", &[]));
        }
        assert_eq!(d.status().pods, 2);
        assert_eq!(d.dropped_total, 3);
        // Updates of cached pods still apply at the ceiling.
        d.apply(pod("u0", "renamed", &[]));
        assert_eq!(d.names(Some("u0"), None).pod, Some("renamed"));
        d.replace_all(vec![pod("u9", "q", &[("c", "main")])]);
        assert_eq!(d.status().pods, 1);
        assert_eq!(d.names(Some("u0"), None).pod, None);
    }
}
