//! What the model hands to its consumers at scrape time: plain data, no handles.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::{
    model::{aggregate::WorkloadTotals, node::CpuWindow, workload::Workload},
    probes::ProgramStats,
    procfs::ZoneFreeBlocks,
};

/// Data lost at one place, for one reason (kernel map or ring buffer full, undecodable
/// records, export queue full...).
#[derive(Debug, Serialize)]
pub struct LossView {
    /// Where it was lost (`ringbuf`, `tasks_map`, ...).
    pub source: &'static str,
    pub reason: &'static str,
    pub count: u64,
}

/// Where the agent itself can lose data: the `source` of a [`LossView`], besides the kernel's
/// ([`taskscope_common::Loss`] names its own).
pub mod loss_source {
    /// Ring-buffer records that could not be decoded.
    pub const RINGBUF_DECODER: &str = "ringbuf_decoder";
    /// Kernel map entries that could not be read (vanished mid-iteration, usually).
    pub const KERNEL_MAPS: &str = "kernel_maps";
    /// Processes not tracked: the task model was full.
    pub const TASK_MODEL: &str = "task_model";
    /// Task spans not exported.
    pub const OTLP_SPANS: &str = "otlp_spans";
    /// Pods left out of the name cache.
    pub const KUBERNETES_PODS: &str = "kubernetes_pods";
}

/// A process selected by `--process-metrics`, with its own figures.
#[derive(Debug)]
pub struct SelectedProcess {
    pub workload: Workload,
    pub pid: u32,
    pub comm: String,
    pub totals: WorkloadTotals,
}

/// What one scrape exposes.
#[derive(Debug, Default)]
pub struct MetricsSnapshot {
    pub workloads: Vec<(Workload, WorkloadTotals)>,
    /// Processes selected by `--process-metrics`.
    pub processes: Vec<SelectedProcess>,
    /// Per-CPU busy share and idle fragmentation over the latest window.
    pub cpu_windows: Vec<CpuWindow>,
    /// Free lists of each memory zone (`/proc/buddyinfo`).
    pub memory_zones: Vec<ZoneFreeBlocks>,
    /// (resource, some µs, full µs) from `/proc/pressure`.
    pub pressure: Vec<(&'static str, Option<u64>, Option<u64>)>,
    /// Kernel run statistics of each attached program.
    pub programs: Vec<(&'static str, ProgramStats)>,
    /// Ring-buffer events received, by kind.
    pub events: BTreeMap<&'static str, u64>,
    pub lost: Vec<LossView>,
}
