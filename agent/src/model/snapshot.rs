//! What the model hands to its consumers at scrape time: plain data, no handles.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::{
    model::{aggregate::WorkloadTotals, node::CpuWindow, workload::Workload},
    probes::{MapMemory, ProgramStats},
    procfs::ZoneFreeBlocks,
};

/// Data lost at one place, for one reason (kernel map or ring buffer full, undecodable
/// records, export queue full...).
#[derive(Debug, Serialize)]
pub(crate) struct LossView {
    /// Where it was lost (`ringbuf`, `tasks_map`, ...).
    pub(crate) source: &'static str,
    pub(crate) reason: &'static str,
    pub(crate) count: u64,
}

/// Where the agent itself can lose data: the `source` of a [`LossView`], besides the kernel's
/// ([`taskscope_common::Loss`] names its own).
pub(crate) mod loss_source {
    /// Ring-buffer records that could not be decoded.
    pub(crate) const RINGBUF_DECODER: &str = "ringbuf_decoder";
    /// Kernel map entries that could not be read (vanished mid-iteration, usually).
    pub(crate) const KERNEL_MAPS: &str = "kernel_maps";
    /// The task model: processes not tracked (it was full), exits not seen, events of
    /// processes it does not hold, spans nobody took, pids reused too soon.
    pub(crate) const TASK_MODEL: &str = "task_model";
    /// /proc reads that failed for a process found there.
    pub(crate) const PROCFS: &str = "procfs";
    /// Cgroup ids whose path could not be found.
    pub(crate) const CGROUP_RESOLVER: &str = "cgroup_resolver";
    /// Task spans not exported.
    pub(crate) const OTLP_SPANS: &str = "otlp_spans";
    /// Pods left out of the name cache.
    pub(crate) const KUBERNETES_PODS: &str = "kubernetes_pods";
    /// Containers left out of the runtimes' name cache.
    pub(crate) const CONTAINER_RUNTIMES: &str = "container_runtimes";
}

/// A process selected by `--process-metrics`, with its own figures.
#[derive(Debug)]
pub(crate) struct SelectedProcess {
    pub(crate) workload: Workload,
    pub(crate) pid: u32,
    pub(crate) comm: String,
    pub(crate) totals: WorkloadTotals,
}

/// What one scrape exposes.
#[derive(Debug, Default)]
pub(crate) struct MetricsSnapshot {
    pub(crate) workloads: Vec<(Workload, WorkloadTotals)>,
    /// Processes selected by `--process-metrics`.
    pub(crate) processes: Vec<SelectedProcess>,
    /// Per-CPU busy share and idle fragmentation over the latest window.
    pub(crate) cpu_windows: Vec<CpuWindow>,
    /// Free lists of each memory zone (`/proc/buddyinfo`).
    pub(crate) memory_zones: Vec<ZoneFreeBlocks>,
    /// (resource, some µs, full µs) from `/proc/pressure`.
    pub(crate) pressure: Vec<(&'static str, Option<u64>, Option<u64>)>,
    /// Kernel run statistics of each attached program.
    pub(crate) programs: Vec<(&'static str, ProgramStats)>,
    /// The kernel maps and the memory the kernel charges for each.
    pub(crate) kernel_maps: Vec<MapMemory>,
    /// Ring-buffer events received, by kind.
    pub(crate) events: BTreeMap<&'static str, u64>,
    pub(crate) lost: Vec<LossView>,
    /// Custom metrics' per-workload figures.
    pub(crate) custom: Vec<super::custom::CustomFamily>,
}
