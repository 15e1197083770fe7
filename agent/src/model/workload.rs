//! Workload identity from a cgroup v2 path: the container (and its runtime), the Kubernetes pod
//! UID and QoS class, or the systemd unit, with the plain cgroup path for everything else.
//!
//! Recognised layouts (paths relative to the cgroup v2 root):
//! - Kubernetes, systemd driver: `/kubepods.slice/kubepods-burstable.slice/
//!   kubepods-burstable-pod<uid, '_' for '-'>.slice/cri-containerd-<id>.scope` (Guaranteed pods
//!   sit directly under `kubepods.slice`, `kubepods-pod<uid>.slice`);
//! - Kubernetes, cgroupfs driver: `/kubepods/burstable/pod<uid>/<id>` (`/kubepods/pod<uid>/<id>`
//!   for Guaranteed);
//! - containerd/CRI `cri-containerd-<id>.scope`, CRI-O `crio-<id>.scope`, Docker
//!   `docker-<id>.scope` or `/docker/<id>`, Podman `libpod-<id>.scope`;
//! - systemd units: the last `*.service` or `*.scope` component.

use serde::Serialize;

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
}

/// Container scope prefixes and their runtimes (the `*-conmon-*` helpers excluded first).
const SCOPE_PREFIXES: &[(&str, &str)] = &[
    ("cri-containerd-", "containerd"),
    ("crio-", "cri-o"),
    ("docker-", "docker"),
    ("libpod-", "podman"),
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
        for (index, component) in components.iter().enumerate() {
            if in_kubepods {
                if let Some(uid) = pod_uid(component) {
                    workload.pod_uid = Some(uid);
                    workload.qos_class = components[1..index]
                        .iter()
                        .find_map(|c| qos_class(c))
                        .or(Some(QosClass::Guaranteed));
                    continue;
                }
            }
            if let Some(id) = container_in(component, components.get(index.wrapping_sub(1))) {
                workload.container_id = Some(id.0);
                workload.runtime = id.1;
            }
        }
        // Kubernetes with the cgroupfs driver names the container cgroup by its bare id.
        if workload.container_id.is_none() && workload.pod_uid.is_some() {
            if let Some(last) = components.last().filter(|c| is_container_id(c)) {
                workload.container_id = Some(last.to_string());
            }
        }
        if workload.container_id.is_none() && !in_kubepods {
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

/// A container id (and runtime) named by one path component.
fn container_in(component: &str, parent: Option<&&str>) -> Option<(String, Option<&'static str>)> {
    if let Some(scope) = component.strip_suffix(".scope") {
        if scope.contains("-conmon-") {
            return None;
        }
        for (prefix, runtime) in SCOPE_PREFIXES {
            if let Some(id) = scope.strip_prefix(prefix).filter(|id| is_container_id(id)) {
                return Some((id.to_string(), Some(runtime)));
            }
        }
        return None;
    }
    // Docker with the cgroupfs driver: /docker/<id>.
    if parent.is_some_and(|p| *p == "docker") && is_container_id(component) {
        return Some((component.to_string(), Some("docker")));
    }
    None
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
        let w = Workload::from_cgroup(&format!(
            "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope"
        ));
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
    fn lookalikes_are_not_containers_or_pods() {
        let w = Workload::from_cgroup("/system.slice/docker-compose.scope");
        assert_eq!(w.container_id, None);
        let w = Workload::from_cgroup("/mypods/pod1234/abc");
        assert_eq!(w.pod_uid, None);
        let w = Workload::from_cgroup("/kubepods/burstable/podnot-a-uid/x");
        assert_eq!(w.pod_uid, None);
    }
}
