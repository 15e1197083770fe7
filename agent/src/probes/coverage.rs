//! What the attached hooks leave out on this kernel, and why: one decision, in the same words
//! for `taskscope check`, `run`'s log, `/health` and `/api/v1/status`.
//!
//! A required hook that does not attach stops the agent ([`super::LoadError::Required`]), so
//! what is left here are the optional ones: a missing optional hook means "runs, degraded".

use std::fmt;

use super::{HookStatus, ProbeGroup};

/// A part of the data this kernel does not give, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Degradation {
    pub(crate) group: ProbeGroup,
    /// The hooks that did not attach (with no fallback that did).
    pub(crate) tracepoints: Vec<&'static str>,
    pub(crate) reason: String,
}

impl fmt::Display for Degradation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}) unavailable because {}",
            self.group.name(),
            self.tracepoints.join(", "),
            self.reason
        )
    }
}

/// The one-line verdict for a kernel with `degradations` (none: `None`).
pub(crate) fn degraded_summary(degradations: &[Degradation]) -> Option<String> {
    (!degradations.is_empty()).then(|| {
        let parts: Vec<String> = degradations.iter().map(ToString::to_string).collect();
        format!("runs, degraded: {}", parts.join("; "))
    })
}

/// Why `hook` did not attach: the kernel release that added it when the running one is older,
/// else the first line of the last error the kernel gave.
fn reason(hook: &HookStatus, kernel: Option<(u32, u32)>) -> String {
    if let (Some((major, minor)), Some(running)) = (hook.since, kernel) {
        if running < (major, minor) {
            return format!(
                "kernel {}.{} has no {} tracepoint (added in {major}.{minor})",
                running.0, running.1, hook.tracepoint
            );
        }
    }
    match hook.errors.last().and_then(|e| e.lines().next()) {
        Some(line) => format!("{} did not attach: {line}", hook.tracepoint),
        None => format!("{} did not attach", hook.tracepoint),
    }
}

/// The optional hooks missing from `hooks` (as loaded on a kernel of version `kernel`), by
/// group. A hook whose fallbacks attached is not missing.
pub(crate) fn degradations(hooks: &[HookStatus], kernel: Option<(u32, u32)>) -> Vec<Degradation> {
    let mut out: Vec<Degradation> = Vec::new();
    for hook in hooks {
        if hook.attach_type.is_some() || !hook.replaced_by.is_empty() {
            continue;
        }
        let reason = reason(hook, kernel);
        match out.iter_mut().find(|d| d.group == hook.group) {
            Some(d) => {
                d.tracepoints.push(hook.tracepoint);
                if !d.reason.contains(&reason) {
                    d.reason = format!("{}; {reason}", d.reason);
                }
            }
            None => out.push(Degradation {
                group: hook.group,
                tracepoints: vec![hook.tracepoint],
                reason,
            }),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probes::{fallback_not_needed, mark_replaced, AttachType, HOOKS};

    /// Every hook as a kernel of `version` would load it, with the hooks in `absent` missing.
    fn loaded(version: (u32, u32), absent: &[&str]) -> Vec<HookStatus> {
        let mut hooks: Vec<HookStatus> = Vec::new();
        for hook in HOOKS {
            if fallback_not_needed(&hooks, hook) {
                continue;
            }
            let present = !absent.contains(&hook.tracepoint)
                && hook.since.is_none_or(|since| version >= since);
            let mut status = HookStatus::new(hook);
            if present {
                status.attach_type = Some(AttachType::TpBtf);
            } else {
                status.errors.push(format!(
                    "program {}: unknown BTF type btf_trace_{}",
                    hook.btf_program, hook.tracepoint
                ));
            }
            hooks.push(status);
        }
        mark_replaced(&mut hooks);
        hooks
    }

    #[test]
    fn a_kernel_with_every_hook_is_not_degraded() {
        let hooks = loaded((6, 18), &[]);
        assert!(
            hooks.iter().all(|h| h.instead_of.is_none()),
            "no fallback loaded"
        );
        assert_eq!(degradations(&hooks, Some((6, 18))), vec![]);
        assert_eq!(degraded_summary(&[]), None);
    }

    #[test]
    fn block_io_before_6_5_uses_the_fallback_and_is_not_degraded() {
        let hooks = loaded((6, 1), &[]);
        let start = hooks
            .iter()
            .find(|h| h.tracepoint == "block_io_start")
            .expect("block_io_start");
        assert_eq!(start.replaced_by, vec!["block_rq_insert", "block_rq_issue"]);
        assert_eq!(degradations(&hooks, Some((6, 1))), vec![]);
    }

    #[test]
    fn block_io_with_no_start_hook_at_all_is_degraded_with_the_version() {
        let hooks = loaded((6, 1), &["block_rq_insert", "block_rq_issue"]);
        let found = degradations(&hooks, Some((6, 1)));
        let text = degraded_summary(&found).expect("degraded");
        println!("{text}");
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].group, ProbeGroup::BlockIo);
        assert_eq!(
            found[0].tracepoints,
            vec!["block_io_start", "block_rq_insert", "block_rq_issue"]
        );
        assert!(text.starts_with(
            "runs, degraded: block_io (block_io_start, block_rq_insert, block_rq_issue) unavailable because kernel 6.1 has no block_io_start tracepoint (added in 6.5)"
        ));
    }

    #[test]
    fn each_missing_optional_hook_is_named_with_its_group_and_the_kernels_error() {
        for hook in HOOKS
            .iter()
            .filter(|h| !h.required && h.instead_of.is_none())
        {
            let hooks = loaded((6, 18), &[hook.tracepoint]);
            let found = degradations(&hooks, Some((6, 18)));
            if HOOKS.iter().any(|f| f.instead_of == Some(hook.tracepoint)) {
                assert_eq!(found, vec![], "{}: its fallbacks stand in", hook.tracepoint);
                continue;
            }
            let text = degraded_summary(&found).expect("degraded");
            println!("{}: {text}", hook.tracepoint);
            assert_eq!(found.len(), 1, "{text}");
            assert_eq!(found[0].group, hook.group);
            assert!(found[0].tracepoints.contains(&hook.tracepoint));
            assert!(
                text.contains(&format!("unknown BTF type btf_trace_{}", hook.tracepoint)),
                "{text}"
            );
        }
    }

    #[test]
    fn two_groups_missing_are_both_named() {
        let hooks = loaded((6, 18), &["sys_enter", "cgroup_attach_task"]);
        let text = degraded_summary(&degradations(&hooks, Some((6, 18)))).expect("degraded");
        assert!(text.contains("lifecycle (cgroup_attach_task) unavailable because"));
        assert!(text.contains("; syscall_latency (sys_enter) unavailable because"));
    }
}
