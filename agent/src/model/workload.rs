//! Workload identity from a cgroup v2 path: the container (and its runtime), the Kubernetes pod
//! UID and QoS class, or the systemd unit, with the plain cgroup path for everything else.
//!
//! A container is recognised only where its runtime puts it (paths relative to the cgroup v2
//! root), so that nobody can pass a cgroup of their own for someone else's container: a user
//! may create cgroups in their delegated subtree (`user@<uid>.service/...`) with any name,
//! including `docker-<a real container's id>.scope`, and those stay plain cgroups.
//! - Kubernetes, systemd driver: `/kubepods.slice/kubepods-burstable.slice/
//!   kubepods-burstable-pod<uid, '_' for '-'>.slice/<runtime>-<id>.scope` (Guaranteed pods
//!   sit directly under `kubepods.slice`, `kubepods-pod<uid>.slice`); the container is the
//!   pod's child: `cri-containerd-<id>.scope`, `crio-<id>.scope` or `docker-<id>.scope`;
//! - Kubernetes, cgroupfs driver: `/kubepods/burstable/pod<uid>/<id>` (`/kubepods/pod<uid>/<id>`
//!   for Guaranteed; CRI-O: `crio-<id>`);
//! - Docker: `/docker/<id>` (cgroupfs driver), `/system.slice/docker-<id>.scope` (systemd);
//! - Podman (rootful): `/libpod_parent/libpod-<id>` (cgroupfs; in a pod
//!   `/libpod_parent/<pod id>/libpod-<id>`), `/machine.slice/libpod-<id>.scope` (systemd; in a
//!   pod `/machine.slice/machine-libpod_pod_<pod id>.slice/libpod-<id>.scope`); conmon's own
//!   cgroup (`libpod-conmon-<id>.scope`, `/libpod_parent/conmon`) is not the container;
//! - containerd without Kubernetes: `/default/<id>` (the `default` namespace, cgroupfs),
//!   `/system.slice/nerdctl-<id>.scope`; CRI-O: `/system.slice/crio-<id>.scope`;
//! - a container's own sub-cgroups belong to it;
//! - systemd units: the last `*.service` or `*.scope` component.

use serde::Serialize;

use crate::metadata::WorkloadNames;

/// Kubernetes QoS class of a pod, from its cgroup slice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum QosClass {
    Guaranteed,
    Burstable,
    BestEffort,
}

/// Who a cgroup belongs to, as far as its path tells.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Workload {
    /// The cgroup v2 path.
    pub(crate) cgroup: String,
    /// Full container id (64 hex digits for the common runtimes).
    pub(crate) container_id: Option<String>,
    /// `containerd`, `cri-o`, `docker` or `podman`.
    pub(crate) runtime: Option<&'static str>,
    /// Kubernetes pod UID (with dashes).
    pub(crate) pod_uid: Option<String>,
    pub(crate) qos_class: Option<QosClass>,
    /// systemd unit (`ssh.service`, `session-3.scope`) for processes outside containers.
    pub(crate) systemd_unit: Option<String>,
    /// Names from the Kubernetes and container runtime APIs, filled where an answer is made
    /// (the JSON API); `None` where unknown.
    #[serde(flatten)]
    pub(crate) names: Option<Box<WorkloadNames>>,
}

/// Container scope prefixes and their runtimes (the `*-conmon-*` helpers excluded first).
const SCOPE_PREFIXES: &[(&str, &str)] = &[
    ("cri-containerd-", "containerd"),
    ("crio-", "cri-o"),
    ("docker-", "docker"),
    ("libpod-", "podman"),
    ("nerdctl-", "containerd"),
];

fn is_container_id(s: &str) -> bool {
    s.len() >= 12 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A pod UID from `pod<uid>` (cgroupfs) or `...-pod<uid_with_underscores>.slice` (systemd).
fn pod_uid(component: &str) -> Option<String> {
    let rest = component.strip_suffix(".slice").unwrap_or(component);
    let at = rest.rfind("pod")?;
    let before = &rest[..at];
    if !(before.is_empty() || before.ends_with('-')) {
        return None;
    }
    let uid = rest[at + 3..].replace('_', "-");
    let valid = uid.len() == 36 && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    valid.then_some(uid)
}

fn qos_class(component: &str) -> Option<QosClass> {
    let name = component.strip_suffix(".slice").unwrap_or(component);
    match name {
        "burstable" | "kubepods-burstable" => Some(QosClass::Burstable),
        "besteffort" | "kubepods-besteffort" => Some(QosClass::BestEffort),
        _ => None,
    }
}

impl Workload {
    /// Identifies the workload of a cgroup v2 path. Never fails: unknown layouts keep the path.
    pub(crate) fn from_cgroup(path: &str) -> Self {
        let mut workload = Workload {
            cgroup: path.to_string(),
            ..Workload::default()
        };
        let components: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
        let in_kubepods = components
            .first()
            .is_some_and(|c| *c == "kubepods" || *c == "kubepods.slice");
        let container = if in_kubepods {
            // kubepods[/qos]/pod: the pod is the second or third component.
            let pod = (1..=2).find_map(|i| Some((i, pod_uid(components.get(i)?)?)));
            pod.and_then(|(index, uid)| {
                workload.pod_uid = Some(uid);
                workload.qos_class = components[1..index]
                    .iter()
                    .find_map(|c| qos_class(c))
                    .or(Some(QosClass::Guaranteed));
                pod_container(components.get(index + 1)?)
            })
        } else {
            runtime_container(&components)
        };
        if let Some((id, runtime)) = container {
            workload.container_id = Some(id.to_string());
            workload.runtime = runtime;
        } else if !in_kubepods {
            workload.systemd_unit = components
                .iter()
                .rev()
                .find(|c| c.ends_with(".service") || c.ends_with(".scope"))
                .map(|c| c.to_string());
        }
        workload
    }

    /// The key metrics aggregate by: the container, else the cgroup.
    pub(crate) fn key(&self) -> &str {
        self.container_id.as_deref().unwrap_or(&self.cgroup)
    }
}

/// A container id (and runtime) named by a scope: `<runtime prefix><id>.scope`, or without the
/// `.scope` where `bare` (cgroupfs drivers).
fn scoped_id(component: &str, bare: bool) -> Option<(&str, Option<&'static str>)> {
    let scope = match component.strip_suffix(".scope") {
        Some(scope) => scope,
        None if bare => component,
        None => return None,
    };
    if scope.contains("-conmon-") {
        return None;
    }
    SCOPE_PREFIXES.iter().find_map(|(prefix, runtime)| {
        let id = scope
            .strip_prefix(prefix)
            .filter(|id| is_container_id(id))?;
        Some((id, Some(*runtime)))
    })
}

/// The container of a Kubernetes pod, from the pod cgroup's child.
fn pod_container(component: &str) -> Option<(&str, Option<&'static str>)> {
    if is_container_id(component) {
        return Some((component, None));
    }
    scoped_id(component, true)
}

/// A container outside Kubernetes, only at the places its runtime puts it.
fn runtime_container<'a>(components: &[&'a str]) -> Option<(&'a str, Option<&'static str>)> {
    let at = |i: usize| components.get(i).copied();
    let runtime_of = |found: Option<(&'a str, Option<&'static str>)>, runtime: &str| {
        found.filter(|(_, r)| *r == Some(runtime))
    };
    match at(0)? {
        "docker" => at(1)
            .filter(|id| is_container_id(id))
            .map(|id| (id, Some("docker"))),
        "default" => at(1)
            .filter(|id| is_container_id(id))
            .map(|id| (id, Some("containerd"))),
        "system.slice" => {
            scoped_id(at(1)?, false).filter(|(_, runtime)| !matches!(runtime, Some("podman")))
        }
        "machine.slice" => {
            let pod =
                at(1).filter(|c| c.starts_with("machine-libpod_pod_") && c.ends_with(".slice"));
            runtime_of(
                scoped_id(at(if pod.is_some() { 2 } else { 1 })?, false),
                "podman",
            )
        }
        "libpod_parent" => {
            let index = if at(1).is_some_and(is_container_id) {
                2
            } else {
                1
            };
            runtime_of(scoped_id(at(index)?, true), "podman")
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f809";
    const UID: &str = "1b2c3d4e-5f60-7182-93a4-b5c6d7e8f901";

    #[test]
    fn kubernetes_systemd_driver() {
        let uid_ = UID.replace('-', "_");
        let w = Workload::from_cgroup(&format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{ID}.scope"
        ));
        assert_eq!(w.pod_uid.as_deref(), Some(UID));
        assert_eq!(w.qos_class, Some(QosClass::Burstable));
        assert_eq!(w.container_id.as_deref(), Some(ID));
        assert_eq!(w.runtime, Some("containerd"));
        assert_eq!(w.systemd_unit, None);

        let w = Workload::from_cgroup(&format!(
            "/kubepods.slice/kubepods-pod{uid_}.slice/crio-{ID}.scope"
        ));
        assert_eq!(w.qos_class, Some(QosClass::Guaranteed));
        assert_eq!(w.runtime, Some("cri-o"));

        let w = Workload::from_cgroup(&format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice/docker-{ID}.scope"
        ));
        assert_eq!(w.qos_class, Some(QosClass::BestEffort));
        assert_eq!(w.runtime, Some("docker"));
    }

    #[test]
    fn kubernetes_cgroupfs_driver() {
        let w = Workload::from_cgroup(&format!("/kubepods/besteffort/pod{UID}/{ID}"));
        assert_eq!(w.pod_uid.as_deref(), Some(UID));
        assert_eq!(w.qos_class, Some(QosClass::BestEffort));
        assert_eq!(w.container_id.as_deref(), Some(ID));
        assert_eq!(w.runtime, None);
        let w = Workload::from_cgroup(&format!("/kubepods/pod{UID}/{ID}"));
        assert_eq!(w.qos_class, Some(QosClass::Guaranteed));
        // The pod's own cgroup (no container yet).
        let w = Workload::from_cgroup(&format!("/kubepods/burstable/pod{UID}"));
        assert_eq!(w.pod_uid.as_deref(), Some(UID));
        assert_eq!(w.container_id, None);
        assert_eq!(w.key(), format!("/kubepods/burstable/pod{UID}"));
    }

    #[test]
    fn plain_runtimes_and_systemd() {
        let w = Workload::from_cgroup(&format!("/system.slice/docker-{ID}.scope"));
        assert_eq!(
            (w.container_id.as_deref(), w.runtime),
            (Some(ID), Some("docker"))
        );
        assert_eq!(w.systemd_unit, None);
        let w = Workload::from_cgroup(&format!("/docker/{ID}"));
        assert_eq!(
            (w.container_id.as_deref(), w.runtime),
            (Some(ID), Some("docker"))
        );
        let w = Workload::from_cgroup(&format!("/machine.slice/libpod-{ID}.scope"));
        assert_eq!(w.runtime, Some("podman"));
        assert_eq!(w.key(), ID);
        // conmon is the runtime's helper, not the container.
        let w = Workload::from_cgroup(&format!("/machine.slice/libpod-conmon-{ID}.scope"));
        assert_eq!(w.container_id, None);
        assert_eq!(
            w.systemd_unit.as_deref(),
            Some(&*format!("libpod-conmon-{ID}.scope"))
        );
        let w = Workload::from_cgroup("/system.slice/ssh.service");
        assert_eq!(w.systemd_unit.as_deref(), Some("ssh.service"));
        assert_eq!(w.key(), "/system.slice/ssh.service");
        let w = Workload::from_cgroup("/");
        assert_eq!(
            w,
            Workload {
                cgroup: "/".into(),
                ..Workload::default()
            }
        );
    }

    #[test]
    fn every_runtime_layout_outside_kubernetes() {
        let cases = [
            (format!("/libpod_parent/libpod-{ID}"), Some("podman")),
            (format!("/libpod_parent/{ID}/libpod-{ID}"), Some("podman")),
            (
                format!("/machine.slice/machine-libpod_pod_{ID}.slice/libpod-{ID}.scope"),
                Some("podman"),
            ),
            (
                format!("/machine.slice/libpod-{ID}.scope/container"),
                Some("podman"),
            ),
            (format!("/docker/{ID}/init"), Some("docker")),
            (format!("/default/{ID}"), Some("containerd")),
            (
                format!("/system.slice/nerdctl-{ID}.scope"),
                Some("containerd"),
            ),
            (
                format!("/kubepods/burstable/pod{UID}/crio-{ID}"),
                Some("cri-o"),
            ),
        ];
        for (path, runtime) in cases {
            let w = Workload::from_cgroup(&path);
            assert_eq!(
                (w.container_id.as_deref(), w.runtime),
                (Some(ID), runtime),
                "{path}"
            );
        }
        // conmon's cgroup with the cgroupfs manager.
        assert_eq!(
            Workload::from_cgroup("/libpod_parent/conmon").container_id,
            None
        );
    }

    #[test]
    fn a_container_id_outside_its_runtimes_place_is_not_that_container() {
        const OTHER: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        for path in [
            // A user's delegated subtree: anyone can name a cgroup there.
            format!("/user.slice/user-1000.slice/user@1000.service/app.slice/docker-{ID}.scope"),
            format!("/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope"),
            format!("/user.slice/user-1000.slice/user@1000.service/docker/{ID}"),
            format!("/mine/docker/{ID}"),
            format!("/system.slice/mine.service/docker-{ID}.scope"),
            format!("/kubepods/burstable/pod{UID}/{OTHER}/docker-{ID}.scope"),
        ] {
            let w = Workload::from_cgroup(&path);
            assert_ne!(w.container_id.as_deref(), Some(ID), "{path}");
            assert_ne!(w.key(), ID, "{path}");
        }
        // Inside a container, a sub-cgroup named for another container is still the first one.
        let w = Workload::from_cgroup(&format!("/docker/{OTHER}/docker/{ID}"));
        assert_eq!(w.container_id.as_deref(), Some(OTHER));
    }

    #[test]
    fn lookalikes_are_not_containers_or_pods() {
        let w = Workload::from_cgroup("/system.slice/docker-compose.scope");
        assert_eq!(w.container_id, None);
        let w = Workload::from_cgroup("/mypods/pod1234/abc");
        assert_eq!(w.pod_uid, None);
        let w = Workload::from_cgroup("/kubepods/burstable/podnot-a-uid/x");
        assert_eq!(w.pod_uid, None);
    }
}
