//! Task spans: each process seen from its fork to its exit, as a span of a trace whose shape
//! is the process tree (docs/spans.md).
//!
//! A process whose parent the agent saw start belongs to its parent's trace, as a child of the
//! parent's span; any other process (its parent was already running: a daemon, a login shell)
//! starts a trace of its own. Ids are derived from (pid, start time) with a per-agent random
//! key, so they are stable for the life of the agent and need no table.

use std::hash::{BuildHasher, RandomState};

use serde::{Serialize, Serializer};
use taskscope_common::block_op;

use crate::clock::Clocks;

use super::{
    exit::ExitStatus,
    view::{block_op_name, device_name, SlowSyscallView},
    workload::Workload,
    Process, SlowWait,
};

/// Where a span sits in its trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SpanIds {
    pub(crate) trace_id: u128,
    pub(crate) span_id: u64,
    pub(crate) parent_span_id: Option<u64>,
    /// The parent is a span of another program (from `TRACEPARENT`), not a process's.
    pub(crate) parent_is_remote: bool,
}

impl SpanIds {
    /// These ids moved into the trace a `TRACEPARENT` names, under its span.
    pub(crate) fn joined(self, trace_id: u128, parent_span_id: u64) -> SpanIds {
        SpanIds {
            trace_id,
            span_id: self.span_id,
            parent_span_id: Some(parent_span_id),
            parent_is_remote: true,
        }
    }
}

/// Makes span and trace ids.
#[derive(Debug, Default)]
pub(crate) struct SpanIdSource {
    key: RandomState,
}

impl SpanIdSource {
    /// The ids of a process started at `start_ns` (CLOCK_BOOTTIME) whose parent's ids are
    /// `parent` when the parent's start was seen too.
    pub(crate) fn ids(&self, pid: u32, start_ns: u64, parent: Option<&SpanIds>) -> SpanIds {
        // Never zero: an all-zero id is invalid in W3C trace context and OTLP.
        let span_id = self.key.hash_one((pid, start_ns, 0u8)) | 1;
        match parent {
            Some(parent) => SpanIds {
                trace_id: parent.trace_id,
                span_id,
                parent_span_id: Some(parent.span_id),
                parent_is_remote: false,
            },
            None => {
                let high = u128::from(self.key.hash_one((pid, start_ns, 1u8)));
                SpanIds {
                    trace_id: (high << 64) | u128::from(span_id),
                    span_id,
                    parent_span_id: None,
                    parent_is_remote: false,
                }
            }
        }
    }
}

fn hex128<S: Serializer>(v: &u128, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{v:032x}"))
}

fn hex64<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{v:016x}"))
}

fn hex64_opt<S: Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => hex64(v, s),
        None => s.serialize_none(),
    }
}

/// One finished process as a span.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct TaskSpan {
    #[serde(serialize_with = "hex128")]
    pub(crate) trace_id: u128,
    #[serde(serialize_with = "hex64")]
    pub(crate) span_id: u64,
    #[serde(serialize_with = "hex64_opt")]
    pub(crate) parent_span_id: Option<u64>,
    /// The parent span came from `TRACEPARENT` in the process's environment.
    pub(crate) parent_is_remote: bool,
    /// The executable's name (`comm`).
    pub(crate) name: String,
    pub(crate) start_unix_ns: u64,
    pub(crate) end_unix_ns: u64,
    pub(crate) duration_ns: u64,
    /// Unix time of its (last) exec, if it exec'd.
    pub(crate) exec_unix_ns: Option<u64>,
    pub(crate) pid: u32,
    pub(crate) ppid: u32,
    pub(crate) exe: Option<String>,
    pub(crate) command_line: Vec<String>,
    pub(crate) uid: Option<u32>,
    pub(crate) workload: Option<Workload>,
    pub(crate) exit: ExitStatus,
    /// Error for a non-zero exit or a fatal signal.
    pub(crate) error: bool,
    /// "exit code 3", "killed by SIGTERM".
    pub(crate) status_message: String,
    pub(crate) time: SpanTime,
    pub(crate) slow_syscalls: Vec<SlowSyscallView>,
    /// Run-queue waits and block requests over their thresholds.
    pub(crate) slow_waits: Vec<SlowWaitView>,
}

/// A wait over its threshold, as spans and the API show it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum SlowWaitView {
    /// Waited this long for a CPU (`--slow-runqueue-wait`).
    RunqueueWait {
        tid: u32,
        duration_ns: u64,
        /// When it got the CPU.
        end_unix_ns: u64,
    },
    /// A block request it issued took this long (`--slow-block-io`).
    BlockIo {
        device: String,
        op: String,
        bytes: u64,
        duration_ns: u64,
        /// When the request completed.
        end_unix_ns: u64,
    },
}

impl SlowWaitView {
    pub(crate) fn new(wait: &SlowWait, clocks: &Clocks) -> Self {
        match *wait {
            SlowWait::RunqueueWait {
                tid,
                at_ns,
                wait_ns,
            } => SlowWaitView::RunqueueWait {
                tid,
                duration_ns: wait_ns,
                end_unix_ns: clocks.monotonic_to_unix(at_ns),
            },
            SlowWait::BlockIo {
                at_ns,
                dev,
                op,
                bytes,
                latency_ns,
            } => SlowWaitView::BlockIo {
                device: device_name(dev),
                op: block_op_name(op),
                bytes,
                duration_ns: latency_ns,
                end_unix_ns: clocks.monotonic_to_unix(at_ns),
            },
        }
    }
}

/// Where the span's wall time went (docs/spans.md: how they add up).
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub(crate) struct SpanTime {
    /// On a CPU, all threads.
    pub(crate) on_cpu_ns: u64,
    /// Runnable, waiting for a CPU, all threads.
    pub(crate) runqueue_wait_ns: u64,
    /// The rest of the duration: sleeping or blocked (for a single thread, exactly
    /// duration - on CPU - run-queue wait; never below zero).
    pub(crate) blocked_ns: u64,
    /// Completion latency of the block IO it issued (part of `blocked_ns` when it waited).
    pub(crate) block_io_ns: u64,
    pub(crate) syscalls: u64,
    pub(crate) syscall_ns: u64,
    pub(crate) read_bytes: u64,
    pub(crate) write_bytes: u64,
    pub(crate) voluntary_switches: u64,
    pub(crate) involuntary_switches: u64,
}

impl TaskSpan {
    /// The span of a retired process; `None` unless its fork and exit were both seen.
    pub(crate) fn of(p: &Process, clocks: &Clocks) -> Option<TaskSpan> {
        let ids = p.span_ids?;
        let start_boot = p.start_boottime_ns?;
        let exit_mono = p.exit_time_ns?;
        let exit = p.exit?;
        if exit == ExitStatus::Unknown {
            return None;
        }
        let start_unix_ns = clocks.boottime_to_unix(start_boot);
        // A process still runs after its exit event (tearing down its memory and files): it
        // ends when it last leaves a CPU, which its CPU time includes.
        let end_mono = exit_mono.max(p.last_switch_out_ns);
        let end_unix_ns = clocks.monotonic_to_unix(end_mono).max(start_unix_ns);
        let duration_ns = end_unix_ns - start_unix_ns;
        let sched = p.sched(end_mono, &Default::default());
        let mut time = SpanTime {
            on_cpu_ns: sched.on_cpu_ns,
            runqueue_wait_ns: sched.runqueue_wait_ns,
            blocked_ns: duration_ns.saturating_sub(sched.on_cpu_ns + sched.runqueue_wait_ns),
            voluntary_switches: sched.voluntary_switches,
            involuntary_switches: sched.involuntary_switches,
            ..SpanTime::default()
        };
        for s in p.syscalls.values() {
            time.syscalls += s.count;
            time.syscall_ns += s.total_ns;
        }
        for (&(_, op), io) in &p.io {
            time.block_io_ns += io.total_latency_ns;
            match op {
                block_op::READ => time.read_bytes += io.bytes,
                block_op::WRITE => time.write_bytes += io.bytes,
                _ => {}
            }
        }
        let status_message = match exit {
            ExitStatus::Exited { code } => format!("exit code {code}"),
            ExitStatus::Signaled {
                signal_name,
                core_dumped,
                ..
            } => format!(
                "killed by {signal_name}{}",
                if core_dumped { " (core dumped)" } else { "" }
            ),
            ExitStatus::Unknown => String::new(),
        };
        Some(TaskSpan {
            trace_id: ids.trace_id,
            span_id: ids.span_id,
            parent_span_id: ids.parent_span_id,
            parent_is_remote: ids.parent_is_remote,
            name: p.comm.clone(),
            start_unix_ns,
            end_unix_ns,
            duration_ns,
            exec_unix_ns: p.exec_time_ns.map(|t| clocks.monotonic_to_unix(t)),
            pid: p.pid,
            ppid: p.ppid,
            exe: p.exe.clone(),
            command_line: p.cmdline.clone(),
            uid: p.uid,
            workload: p.cgroup_path.as_deref().map(Workload::from_cgroup),
            exit,
            error: exit.is_failure(),
            status_message,
            time,
            slow_syscalls: p
                .slow_syscalls
                .iter()
                .map(|s| SlowSyscallView::new(s, clocks))
                .collect(),
            slow_waits: p
                .slow_waits
                .iter()
                .map(|w| SlowWaitView::new(w, clocks))
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn children_share_the_trace_and_point_at_their_parent() {
        let source = SpanIdSource::default();
        let root = source.ids(100, 5_000, None);
        let child = source.ids(101, 6_000, Some(&root));
        let grandchild = source.ids(102, 7_000, Some(&child));
        assert_eq!(root.parent_span_id, None);
        assert_eq!(child.trace_id, root.trace_id);
        assert_eq!(grandchild.trace_id, root.trace_id);
        assert_eq!(child.parent_span_id, Some(root.span_id));
        assert_eq!(grandchild.parent_span_id, Some(child.span_id));
        assert_ne!(child.span_id, grandchild.span_id);
        // The same process gets the same ids; a reused pid does not.
        assert_eq!(source.ids(100, 5_000, None), root);
        assert_ne!(source.ids(100, 9_000, None).trace_id, root.trace_id);
        assert_ne!(root.span_id, 0);
        assert_ne!(root.trace_id >> 64, 0);
    }
}
