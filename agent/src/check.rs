//! `taskscope check`: can this host run the agent? One line per requirement.

use std::{fmt, fs, path::Path};

use crate::{
    probes::{btf::Btf, offsets::KernelOffsets, LoadOptions, Probes},
    procfs::{mount_point, mountinfo},
};

/// Capability bits (linux/capability.h).
pub(crate) const CAP_SYS_PTRACE: u32 = 19;
pub(crate) const CAP_SYS_ADMIN: u32 = 21;
pub(crate) const CAP_PERFMON: u32 = 38;
pub(crate) const CAP_BPF: u32 = 39;

/// Oldest kernel with everything `run` needs: BPF ring buffer (5.8), tp_btf (5.5).
const MIN_KERNEL: (u32, u32) = (5, 8);

/// One requirement and how this host meets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    pub(crate) name: &'static str,
    pub(crate) ok: bool,
    /// `run` cannot work without it.
    pub(crate) required: bool,
    /// What was found.
    pub(crate) detail: String,
    /// What to do when it is missing.
    pub(crate) fix: Option<String>,
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = if self.ok { "ok" } else { "missing" };
        let kind = if self.required { "" } else { " (optional)" };
        write!(f, "{status:<8} {}{kind}: {}", self.name, self.detail)?;
        if let (false, Some(fix)) = (self.ok, &self.fix) {
            write!(f, ". To fix: {fix}")?;
        }
        Ok(())
    }
}

/// Parses `major.minor` from a kernel release string such as `6.18.44-fc-v657`.
pub(crate) fn parse_kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Effective capability mask from the `CapEff:` line of `/proc/self/status`.
pub(crate) fn parse_cap_eff(status: &str) -> Option<u64> {
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))?
        .trim();
    u64::from_str_radix(hex, 16).ok()
}

/// The effective capabilities of this process (0 when unreadable).
pub(crate) fn effective_caps() -> u64 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| parse_cap_eff(&s))
        .unwrap_or(0)
}

/// Capabilities `run` lacks, by name. CAP_SYS_ADMIN stands in for both on any kernel.
pub(crate) fn missing_capabilities(caps: u64) -> Vec<&'static str> {
    let has = |bit: u32| caps & (1u64 << bit) != 0;
    if has(CAP_SYS_ADMIN) {
        return Vec::new();
    }
    let mut missing = Vec::new();
    if !has(CAP_BPF) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_PERFMON) {
        missing.push("CAP_PERFMON");
    }
    missing
}

/// Capabilities kept once the programs are attached, and why (docs/install.md lists the
/// same). Everything else the process holds is dropped from every set, bounding included.
pub(crate) const KEPT_CAPABILITIES: &[(caps::Capability, &str)] = &[
    (
        caps::Capability::CAP_BPF,
        "re-attach a probe group switched back on at runtime (reload)",
    ),
    (
        caps::Capability::CAP_PERFMON,
        "re-attach a probe group switched back on at runtime (reload)",
    ),
    (
        caps::Capability::CAP_SYS_PTRACE,
        "read /proc/<pid>/environ (TRACEPARENT), exe and io of other users' processes",
    ),
];

/// Drops every capability `run` no longer needs once the programs are attached: from the
/// bounding set first (that needs CAP_SETPCAP, still held), then from the inheritable,
/// permitted and effective sets. Returns the names of what was dropped.
pub(crate) fn drop_capabilities() -> Result<Vec<String>, String> {
    use caps::{CapSet, Capability};
    let effective = caps::read(None, CapSet::Effective).map_err(|e| e.to_string())?;
    let mut keep: caps::CapsHashSet = KEPT_CAPABILITIES.iter().map(|(c, _)| *c).collect();
    // A kernel older than CAP_BPF (5.8) only knows CAP_SYS_ADMIN for BPF.
    if !effective.contains(&Capability::CAP_BPF) && effective.contains(&Capability::CAP_SYS_ADMIN) {
        keep.insert(Capability::CAP_SYS_ADMIN);
    }
    let keep: caps::CapsHashSet = keep.intersection(&effective).copied().collect();
    let mut dropped: Vec<String> = effective.difference(&keep).map(|c| c.to_string()).collect();
    dropped.sort();
    if effective.contains(&Capability::CAP_SETPCAP) {
        for cap in caps::all() {
            if !keep.contains(&cap) {
                // Capabilities this kernel does not know cannot be dropped: fine.
                let _ = caps::drop(None, CapSet::Bounding, cap);
            }
        }
    }
    caps::set(None, CapSet::Inheritable, &caps::CapsHashSet::new()).map_err(|e| e.to_string())?;
    caps::set(None, CapSet::Effective, &keep).map_err(|e| e.to_string())?;
    caps::set(None, CapSet::Permitted, &keep).map_err(|e| e.to_string())?;
    Ok(dropped)
}

/// Names of the capabilities effective now.
pub(crate) fn effective_capability_names() -> Vec<String> {
    let mut names: Vec<String> = caps::read(None, caps::CapSet::Effective)
        .map(|set| set.iter().map(|c| c.to_string()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

/// An optional requirement met by a mounted filesystem.
fn mount_requirement(
    mounts: &str,
    (name, fstype): (&'static str, &str),
    missing: &str,
    fix: &str,
) -> Requirement {
    let at = mount_point(mounts, fstype);
    Requirement {
        name,
        ok: at.is_some(),
        required: false,
        detail: match at {
            Some(at) => format!("mounted at {}", at.display()),
            None => missing.to_string(),
        },
        fix: Some(fix.to_string()),
    }
}

fn kernel_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Runs every check. Attach checks load the real programs (and unload them again).
pub fn run_checks(kernel_btf: &Path) -> Vec<Requirement> {
    let mut out = Vec::new();
    prerequisites(&mut out, kernel_btf);
    // The programs are loaded only when everything they need is there.
    let can_load = out.iter().all(|r| r.ok);
    attach_checks(&mut out, kernel_btf, can_load);
    host_facilities(&mut out);
    out
}

/// What loading the programs needs: kernel version, BTF, capabilities.
fn prerequisites(out: &mut Vec<Requirement>, kernel_btf: &Path) {
    let release = kernel_release();
    let version = parse_kernel_version(&release);
    out.push(Requirement {
        name: "kernel version",
        ok: version.is_some_and(|v| v >= MIN_KERNEL),
        required: true,
        detail: format!("{release} (needs >= {}.{})", MIN_KERNEL.0, MIN_KERNEL.1),
        fix: Some("upgrade the kernel".into()),
    });

    let shown = kernel_btf.display();
    let btf = fs::read(kernel_btf)
        .map_err(|e| e.to_string())
        .and_then(|data| Btf::parse(&data).map_err(|e| e.to_string()))
        .and_then(|btf| KernelOffsets::from_btf(&btf).map_err(|e| e.to_string()));
    out.push(Requirement {
        name: "kernel BTF",
        ok: btf.is_ok(),
        required: true,
        detail: match &btf {
            Ok(o) => format!("{shown}: {} struct offsets found", o.globals.len()),
            Err(e) => format!("{shown}: {e}"),
        },
        fix: Some("use a kernel built with CONFIG_DEBUG_INFO_BTF=y, or pass its BTF file with --kernel-btf".into()),
    });

    let missing = missing_capabilities(effective_caps());
    out.push(Requirement {
        name: "capabilities",
        ok: missing.is_empty(),
        required: true,
        detail: if missing.is_empty() {
            "CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN) are effective".into()
        } else {
            format!("{} not effective", missing.join(" and "))
        },
        fix: Some("run as root, or grant CAP_BPF and CAP_PERFMON (see docs/install.md)".into()),
    });

    let refused = crate::bpf_sys::bpf_refused_before_the_kernel();
    let seccomp = crate::procfs::own_seccomp_mode();
    out.push(Requirement {
        name: "bpf() not filtered",
        ok: !refused,
        required: true,
        detail: match (refused, seccomp) {
            (false, _) => "bpf() reaches the kernel".into(),
            (true, Some(2)) => "a seccomp filter (Seccomp: 2 in /proc/self/status) refuses bpf() whatever the capabilities: a container runtime's default profile allows it only with CAP_SYS_ADMIN".into(),
            (true, _) => "bpf() is refused before the kernel sees it (a security module?)".into(),
        },
        fix: Some("run with the seccomp profile deploy/seccomp/taskscope.json (docs/install.md, \"Seccomp\")".into()),
    });

    let ptrace = effective_caps() & (1 << CAP_SYS_PTRACE) != 0;
    out.push(Requirement {
        name: "CAP_SYS_PTRACE",
        ok: ptrace,
        required: false,
        detail: if ptrace {
            "effective".into()
        } else {
            "not effective: TRACEPARENT, executable paths and /proc io of other users' processes are not read".into()
        },
        fix: Some("grant CAP_SYS_PTRACE (see docs/install.md)".into()),
    });
}

/// The real programs, attached the way `run` would (tp_btf, then raw_tp), then detached.
fn attach_checks(out: &mut Vec<Requirement>, kernel_btf: &Path, can_load: bool) {
    // The real programs, attached the way `run` would, then detached.
    for (name, force_raw_tp) in [("attach type tp_btf", false), ("attach type raw_tp", true)] {
        let result = if can_load {
            Probes::load(&LoadOptions {
                agent_tgid: std::process::id(),
                thresholds: taskscope_common::Thresholds::NEVER,
                disabled_groups: Vec::new(),
                record_switches: false,
                max_tasks: 1024,
                max_syscall_entries: 1024,
                ring_buffer_bytes: 64 * 1024,
                force_raw_tp,
                kernel_btf: kernel_btf.to_path_buf(),
            })
            .map(|probes| {
                let want = if force_raw_tp { "raw_tp" } else { "tp_btf" };
                let (used, other): (Vec<_>, Vec<_>) = probes
                    .hooks
                    .iter()
                    .partition(|h| h.attach_type.is_some_and(|t| t.to_string() == want));
                (
                    used.len(),
                    other.iter().map(|h| h.tracepoint).collect::<Vec<_>>(),
                )
            })
            .map_err(|e| e.to_string())
        } else {
            Err("not tried: a requirement above is missing".into())
        };
        out.push(Requirement {
            name,
            // tp_btf is optional (raw_tp is the fallback); raw_tp must work when tp_btf does not.
            ok: matches!(&result, Ok((_, others)) if others.is_empty()),
            required: false,
            detail: match &result {
                Ok((used, others)) if others.is_empty() => format!("all {used} hooks attach"),
                Ok((used, others)) => format!("{used} hooks attach; not: {}", others.join(", ")),
                Err(e) => e.lines().next().unwrap_or("").to_string(),
            },
            fix: Some("see docs/troubleshooting.md".into()),
        });
    }
    let attach_ok = out
        .iter()
        .filter(|r| r.name.starts_with("attach type"))
        .any(|r| r.ok);
    out.push(Requirement {
        name: "kernel programs",
        ok: attach_ok,
        required: true,
        detail: if attach_ok {
            "every hook attaches with tp_btf or raw_tp".into()
        } else {
            "some hooks attach with neither tp_btf nor raw_tp".into()
        },
        fix: Some(
            "run `taskscope run` to see the verifier's output; see docs/troubleshooting.md".into(),
        ),
    });
}

/// Mounts and kernel settings that change what is measured, not whether it runs.
fn host_facilities(out: &mut Vec<Requirement>) {
    let mounts = mountinfo();
    out.push(mount_requirement(
        &mounts,
        ("tracefs", "tracefs"),
        "not mounted; taskscope does not need it (tp_btf and raw_tp attach without it)",
        "mount -t tracefs nodev /sys/kernel/tracing (only for other tools)",
    ));
    out.push(mount_requirement(
        &mounts,
        ("bpffs", "bpf"),
        "not mounted; taskscope pins nothing, so it does not need it",
        "mount -t bpf bpf /sys/fs/bpf (only for pinning)",
    ));
    out.push(mount_requirement(
        &mounts,
        ("cgroup v2", "cgroup2"),
        "not mounted: processes get cgroup ids but no cgroup paths",
        "mount -t cgroup2 none /sys/fs/cgroup/unified",
    ));
    let stats = fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")
        .map(|s| s.trim() == "1")
        .unwrap_or(false);
    out.push(Requirement {
        name: "bpf_stats",
        ok: stats,
        required: false,
        detail: if stats {
            "on: per-program run counts and run time are measured".into()
        } else {
            "off: per-program run counts and run time are not measured (costs ~20 ns per program run when on)".into()
        },
        fix: Some("sysctl -w kernel.bpf_stats_enabled=1".into()),
    });
    if !Path::new("/proc/self/schedstat").exists() {
        out.push(Requirement {
            name: "schedstat",
            ok: false,
            required: false,
            detail: "/proc/<pid>/schedstat is missing (CONFIG_SCHED_INFO): nothing to compare run-queue figures with".into(),
            fix: None,
        });
    }
}

/// Whether every required line is ok.
pub fn can_run(requirements: &[Requirement]) -> bool {
    requirements.iter().all(|r| r.ok || !r.required)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions() {
        assert_eq!(parse_kernel_version("6.18.44-fc-v657"), Some((6, 18)));
        assert_eq!(parse_kernel_version("5.8.0"), Some((5, 8)));
        assert_eq!(parse_kernel_version("garbage"), None);
        assert!(Some((5, 4)) < Some(MIN_KERNEL));
        assert!(Some((6, 1)) >= Some(MIN_KERNEL));
    }

    #[test]
    fn capabilities() {
        assert_eq!(
            parse_cap_eff("Name:\tx\nCapEff:\t000001ffffffffff\n"),
            Some(0x1ff_ffff_ffff)
        );
        assert_eq!(missing_capabilities(1 << CAP_SYS_ADMIN), Vec::<&str>::new());
        assert_eq!(
            missing_capabilities((1 << CAP_BPF) | (1 << CAP_PERFMON)),
            Vec::<&str>::new()
        );
        assert_eq!(missing_capabilities(1 << CAP_BPF), vec!["CAP_PERFMON"]);
        assert_eq!(missing_capabilities(0), vec!["CAP_BPF", "CAP_PERFMON"]);
    }

    #[test]
    fn requirement_lines() {
        let r = Requirement {
            name: "tracefs",
            ok: false,
            required: false,
            detail: "not mounted".into(),
            fix: Some("mount it".into()),
        };
        assert_eq!(
            r.to_string(),
            "missing  tracefs (optional): not mounted. To fix: mount it"
        );
        assert!(can_run(std::slice::from_ref(&r)));
        assert!(!can_run(&[Requirement {
            required: true,
            ..r
        }]));
    }
}
