//! `taskscope check`: can this host run the agent? One line per requirement.

use std::{fmt, fs, path::Path};

use taskscope_common::contract::MIN_KERNEL;

use crate::{
    probes::{
        btf::Btf,
        coverage::{degraded_summary, Degradation},
        offsets::KernelOffsets,
        LoadError, LoadOptions, Probes,
    },
    procfs::{kernel_lockdown, kernel_release, mount_point, mountinfo, parse_kernel_version},
};

/// Capability bits (linux/capability.h).
pub(crate) const CAP_SYS_PTRACE: u32 = 19;
pub(crate) const CAP_SYS_ADMIN: u32 = 21;
pub(crate) const CAP_PERFMON: u32 = 38;
pub(crate) const CAP_BPF: u32 = 39;

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
/// permitted and effective sets. With `uprobes`, CAP_SYS_ADMIN stays (custom metrics attach
/// uprobes at runtime; the kernel's uprobe perf events require it). Returns the names of what
/// was dropped.
pub(crate) fn drop_capabilities(uprobes: bool) -> Result<Vec<String>, String> {
    use caps::{CapSet, Capability};
    let effective = caps::read(None, CapSet::Effective).map_err(|e| e.to_string())?;
    let mut keep: caps::CapsHashSet = KEPT_CAPABILITIES.iter().map(|(c, _)| *c).collect();
    if uprobes {
        keep.insert(Capability::CAP_SYS_ADMIN);
    }
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

/// Every requirement, and what the kernel leaves out.
#[derive(Debug, Clone)]
pub struct Report {
    pub(crate) requirements: Vec<Requirement>,
    pub(crate) degraded: Vec<Degradation>,
}

/// What `check` concludes, and its exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Everything works (exit 0).
    Works,
    /// `run` runs without some optional probes: "runs, degraded: ..." (exit 3).
    Degraded(String),
    /// A required line is missing (exit 1).
    Cannot,
}

/// `check`'s exit code when `run` works without some optional probes.
pub const EXIT_DEGRADED: u8 = 3;

impl Verdict {
    /// The last line `check` prints.
    pub fn line(&self) -> String {
        match self {
            Verdict::Works => "taskscope run can work on this host".into(),
            Verdict::Degraded(summary) => format!("taskscope run {summary}"),
            Verdict::Cannot => {
                "taskscope run cannot work on this host: fix the missing required lines".into()
            }
        }
    }

    /// The exit code of `check`: 0, [`EXIT_DEGRADED`] or 1.
    pub fn exit_code(&self) -> u8 {
        match self {
            Verdict::Works => 0,
            Verdict::Degraded(_) => EXIT_DEGRADED,
            Verdict::Cannot => 1,
        }
    }
}

impl Report {
    /// The lines, one per requirement.
    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    /// The verdict: a missing required line first, then what the kernel leaves out.
    pub fn verdict(&self) -> Verdict {
        if !can_run(&self.requirements) {
            return Verdict::Cannot;
        }
        match degraded_summary(&self.degraded) {
            Some(summary) => Verdict::Degraded(summary),
            None => Verdict::Works,
        }
    }
}

/// Runs every check. Attach checks load the real programs (and unload them again).
pub fn run_checks(kernel_btf: &Path) -> Report {
    let mut requirements = Vec::new();
    prerequisites(&mut requirements, kernel_btf);
    // The programs are loaded only when everything they need is there.
    let can_load = requirements.iter().all(|r| r.ok);
    let degraded = attach_checks(&mut requirements, kernel_btf, can_load);
    host_facilities(&mut requirements);
    Report {
        requirements,
        degraded,
    }
}

/// What loading the programs needs: kernel version, BTF, capabilities.
fn prerequisites(out: &mut Vec<Requirement>, kernel_btf: &Path) {
    let release = kernel_release();
    let version = parse_kernel_version(&release);
    // Informational: distributions backport what the programs need (RHEL 9's 5.14 has
    // sched_switch's prev_state), so the BTF line below, which looks for each feature, decides.
    let new_enough = version.is_some_and(|v| v >= MIN_KERNEL);
    out.push(Requirement {
        name: "kernel version",
        ok: new_enough,
        required: false,
        detail: if new_enough {
            format!(
                "{release} (taskscope needs >= {}.{}; tested on 6.1, 6.12 and newer)",
                MIN_KERNEL.0, MIN_KERNEL.1
            )
        } else {
            format!(
                "{release} is older than {}.{}: it works only with what it lacks backported (the kernel BTF line looks)",
                MIN_KERNEL.0, MIN_KERNEL.1
            )
        },
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

    let lockdown = kernel_lockdown();
    out.push(Requirement {
        name: "kernel lockdown",
        ok: lockdown.as_deref() != Some("confidentiality"),
        required: true,
        detail: match lockdown.as_deref() {
            Some("confidentiality") => "confidentiality: BPF programs may not read kernel memory, which every taskscope program does".into(),
            Some(mode) => format!("{mode}: BPF programs may read kernel memory"),
            None => "not shown (securityfs not mounted, or no lockdown LSM): the attach lines below tell".into(),
        },
        fix: Some("boot with lockdown=integrity (what Secure Boot sets) or none".into()),
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

/// Loads and attaches the real programs the way `run` does (`force_raw_tp`: raw_tp only), then
/// detaches them.
fn try_load(kernel_btf: &Path, force_raw_tp: bool) -> Result<Probes, LoadError> {
    Probes::load(&LoadOptions {
        agent_tgid: std::process::id(),
        thresholds: taskscope_common::Thresholds::NEVER,
        disabled_groups: Vec::new(),
        record_switches: false,
        max_tasks: 1024,
        max_syscall_entries: 1024,
        max_workload_syscall_entries: 16384,
        max_syscall_entries_per_process: 128,
        max_io_requests: 16384,
        ring_buffer_bytes: 64 * 1024,
        force_raw_tp,
        kernel_btf: kernel_btf.to_path_buf(),
    })
}

/// The real programs, attached the way `run` would (tp_btf, then raw_tp), then detached.
/// Returns what the kernel leaves out (empty when the programs could not load).
fn attach_checks(
    out: &mut Vec<Requirement>,
    kernel_btf: &Path,
    can_load: bool,
) -> Vec<Degradation> {
    // Each attach type alone: informational, the agent takes either, hook by hook.
    for (name, force_raw_tp) in [("attach type tp_btf", false), ("attach type raw_tp", true)] {
        let result = if can_load {
            try_load(kernel_btf, force_raw_tp)
                .map(|probes| {
                    let want = if force_raw_tp { "raw_tp" } else { "tp_btf" };
                    // A hook replaced by its fallbacks counts through them.
                    let (used, other): (Vec<_>, Vec<_>) = probes
                        .hooks
                        .iter()
                        .filter(|h| h.replaced_by.is_empty())
                        .partition(|h| h.attach_type.is_some_and(|t| t.to_string() == want));
                    let fallbacks: Vec<String> = probes
                        .hooks
                        .iter()
                        .filter(|h| !h.replaced_by.is_empty())
                        .map(|h| {
                            format!(
                                "{} instead of {}",
                                h.replaced_by.join(" and "),
                                h.tracepoint
                            )
                        })
                        .collect();
                    (
                        used.len(),
                        other.iter().map(|h| h.tracepoint).collect::<Vec<_>>(),
                        fallbacks,
                    )
                })
                .map_err(|e| e.to_string())
        } else {
            Err("not tried: a requirement above is missing".into())
        };
        out.push(Requirement {
            name,
            ok: matches!(&result, Ok((_, others, _)) if others.is_empty()),
            required: false,
            detail: match &result {
                Ok((used, others, fallbacks)) => {
                    let mut text = if others.is_empty() {
                        format!("all {used} hooks attach")
                    } else {
                        format!("{used} hooks attach; not: {}", others.join(", "))
                    };
                    if !fallbacks.is_empty() {
                        text.push_str(&format!(" ({})", fallbacks.join("; ")));
                    }
                    text
                }
                Err(e) => e.lines().next().unwrap_or("").to_string(),
            },
            fix: Some("see docs/troubleshooting.md".into()),
        });
    }
    // The way `run` loads them: the verdict.
    let loaded = if can_load {
        try_load(kernel_btf, false).map_err(|e| e.to_string())
    } else {
        Err("not tried: a requirement above is missing".into())
    };
    let degraded = loaded
        .as_ref()
        .map(|p| p.degraded.clone())
        .unwrap_or_default();
    out.push(Requirement {
        name: "kernel programs",
        ok: loaded.is_ok(),
        required: true,
        detail: match (&loaded, degraded_summary(&degraded)) {
            (Ok(_), None) => "every hook attaches, with tp_btf or raw_tp".into(),
            (Ok(_), Some(summary)) => summary,
            (Err(e), _) => e.clone(),
        },
        fix: Some(
            "run `taskscope run` to see the verifier's output; see docs/troubleshooting.md".into(),
        ),
    });
    degraded
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

    #[test]
    fn the_verdict_puts_a_missing_requirement_before_a_degraded_kernel() {
        use crate::probes::ProbeGroup;
        let line = |required, ok| Requirement {
            name: "x",
            ok,
            required,
            detail: String::new(),
            fix: None,
        };
        let degraded = vec![Degradation {
            group: ProbeGroup::BlockIo,
            tracepoints: vec!["block_io_start"],
            reason: "kernel 6.1 has no block_io_start tracepoint (added in 6.5)".into(),
        }];
        let works = Report {
            requirements: vec![line(true, true), line(false, false)],
            degraded: Vec::new(),
        };
        assert_eq!(works.verdict(), Verdict::Works);
        assert_eq!(works.verdict().exit_code(), 0);
        let runs_degraded = Report {
            degraded: degraded.clone(),
            ..works.clone()
        };
        let verdict = runs_degraded.verdict();
        assert_eq!(verdict.exit_code(), EXIT_DEGRADED);
        assert_eq!(
            verdict.line(),
            "taskscope run runs, degraded: block_io (block_io_start) unavailable because kernel 6.1 has no block_io_start tracepoint (added in 6.5)"
        );
        let cannot = Report {
            requirements: vec![line(true, false)],
            degraded,
        };
        assert_eq!(cannot.verdict(), Verdict::Cannot);
        assert_eq!(cannot.verdict().exit_code(), 1);
    }
}
