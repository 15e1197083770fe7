//! The families every exposition carries, in one place: what a scrape holds (workloads under
//! the series cap, the node, the agent itself), the table of per-workload families (name, help,
//! type, series counted against the cap, how to expose them), and the two interfaces they are
//! written through: [`Exposer`] (one per family) and [`Samples`] (its samples). The Prometheus
//! text encoder (`prometheus.rs`) and the OTLP metrics converter (`otlp_metrics.rs`) each
//! implement them; neither parses the other's output.
//!
//! Reference of every family: docs/metrics.md.

use std::{collections::BTreeMap, fmt, sync::Arc};

use taskscope_common::{CustomStat, ProcessIo, SyscallStats, HIST_BUCKETS};

use super::{HttpRefusals, LiveFeedStats};
use crate::{
    cli::HistogramBuckets,
    health::SharedHealth,
    metadata::{Directories, DirectoryView, SourceState},
    model::{
        aggregate::{add_syscalls, WorkloadTotals},
        custom::CustomKind,
        errno::errno_name,
        node::{memory_fragmentation, node_idle_fragmentation, CpuWindow},
        snapshot::{loss_source, MetricsSnapshot, SelectedProcess},
        view::{block_op_name, device_name},
        workload::Workload,
    },
    probes::{MapMemory, ProgramStats},
    procfs::{self, CgroupMemory, CgroupMemoryReader, ZoneFreeBlocks},
    syscall_names::syscall_name,
};

/// The type of a family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FamilyType {
    Counter,
    Gauge,
    Histogram,
    Info,
}

/// A counter or gauge value. Integers stay integers in the text format.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Number {
    Unsigned(u64),
    Signed(i64),
    Float(f64),
}

impl Number {
    /// The value as a double (OTLP points).
    pub(crate) fn as_f64(self) -> f64 {
        match self {
            Number::Unsigned(v) => v as f64,
            Number::Signed(v) => v as f64,
            Number::Float(v) => v,
        }
    }
}

impl From<u64> for Number {
    fn from(value: u64) -> Self {
        Number::Unsigned(value)
    }
}

impl From<i64> for Number {
    fn from(value: i64) -> Self {
        Number::Signed(value)
    }
}

impl From<f64> for Number {
    fn from(value: f64) -> Self {
        Number::Float(value)
    }
}

/// A label set: (name, value) pairs.
pub(crate) type Labels = Vec<(&'static str, String)>;

/// Where the samples of one family go.
pub(crate) trait Samples {
    /// One counter or gauge sample (the family's type says which).
    fn number(&mut self, labels: &[(&'static str, String)], value: Number) -> fmt::Result;
    /// One histogram sample: per-bucket counts with their upper bounds (the last one +Inf),
    /// the sum and the count.
    fn histogram(
        &mut self,
        labels: &[(&'static str, String)],
        buckets: &[(f64, u64)],
        sum: f64,
        count: u64,
    ) -> fmt::Result;
    /// The one sample of an info family.
    fn info(&mut self, labels: &[(&'static str, String)]) -> fmt::Result;
}

/// Where a scrape's families go: the text encoder, or the OTLP converter.
pub(crate) trait Exposer {
    /// One family: `samples` writes its samples.
    fn family(
        &mut self,
        name: &str,
        help: &'static str,
        family_type: FamilyType,
        samples: &mut dyn FnMut(&mut dyn Samples) -> fmt::Result,
    ) -> fmt::Result;
}

/// Exposition settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ExpositionConfig {
    /// At most this many workload series per scrape; the rest is cut and counted.
    pub(crate) max_series: usize,
    /// Syscalls exported by name per workload (the busiest); the rest are `syscall="other"`.
    pub(crate) top_syscalls: usize,
    /// Spacing of the histogram buckets.
    pub(crate) histogram_buckets: HistogramBuckets,
}

/// log2 (ns) of the first and last finite bounds of the exported histogram buckets: 1.024 µs
/// and ~17 s. Every bound is a kernel bucket boundary, so folding is exact.
const EXPORTED_BOUNDS_LOG2: std::ops::RangeInclusive<usize> = 10..=34;

/// log2 (ns) of the finite bucket bounds with `spacing`.
fn bounds_log2(spacing: HistogramBuckets) -> impl Iterator<Item = usize> {
    let step = match spacing {
        HistogramBuckets::Log4 => 2,
        HistogramBuckets::Log2 => 1,
    };
    EXPORTED_BOUNDS_LOG2.step_by(step)
}

/// Series of one histogram sample with `spacing`: its buckets, +Inf, _sum and _count.
fn histogram_series(spacing: HistogramBuckets) -> usize {
    bounds_log2(spacing).count() + 3
}

/// Folds a kernel log2 histogram (bucket `j` counts values below 2^j) into exported buckets
/// of seconds spaced by `spacing`, per-bucket counts (the text encoder makes them cumulative).
pub(crate) fn export_buckets(
    hist: &[u64; HIST_BUCKETS],
    spacing: HistogramBuckets,
) -> Vec<(f64, u64)> {
    let bounds: Vec<usize> = bounds_log2(spacing).collect();
    let mut out: Vec<(f64, u64)> = bounds
        .iter()
        .map(|&i| ((1u64 << i) as f64 / 1e9, 0))
        .collect();
    out.push((f64::INFINITY, 0));
    for (j, &count) in hist.iter().enumerate() {
        // Values in bucket j are below 2^j ns: the first bound >= 2^j holds them all.
        let slot = bounds
            .iter()
            .position(|&i| j <= i && j + 1 < HIST_BUCKETS)
            .unwrap_or(bounds.len());
        out[slot].1 += count;
    }
    out
}

/// Exposes a kernel log2 histogram and its sum (ns) as one histogram sample, the count being
/// what the buckets hold.
fn expose_log2_histogram(
    family: &mut dyn Samples,
    labels: &[(&'static str, String)],
    hist: &[u64; HIST_BUCKETS],
    sum_ns: u64,
    spacing: HistogramBuckets,
) -> fmt::Result {
    let buckets = export_buckets(hist, spacing);
    let count = buckets.iter().map(|b| b.1).sum();
    family.histogram(labels, &buckets, sum_ns as f64 / 1e9, count)
}

const WORKLOAD_LABELS: [&str; 5] = ["namespace", "pod", "container", "container_id", "cgroup"];

/// One syscall (or `other`) of a workload, as exported.
#[derive(Debug)]
struct NamedSyscall {
    name: String,
    stats: SyscallStats,
    /// (errno, failures)
    errnos: Vec<(u32, u64)>,
}

/// What one subject (a workload, or a selected process) exports.
#[derive(Debug)]
struct Figures {
    totals: WorkloadTotals,
    /// The busiest syscalls by name, the rest as `other`.
    syscalls: Vec<NamedSyscall>,
    /// The workload cgroup's memory (workloads only, not selected processes).
    memory: Option<CgroupMemory>,
    /// A container's descriptive labels (image, runtime) for `taskscope_workload_info`.
    info: Option<Labels>,
}

impl Figures {
    /// The syscalls with a latency histogram: untimed ones (`syscall_latency` switched off)
    /// have none to show.
    fn timed_syscalls(&self) -> impl Iterator<Item = &NamedSyscall> {
        self.syscalls
            .iter()
            .filter(|s| s.stats.latency_hist.iter().any(|&n| n > 0))
    }
}

/// A subject kept under the series cap.
#[derive(Debug)]
struct KeptWorkload {
    labels: Labels,
    figures: Figures,
}

fn workload_labels(w: &Workload, directories: &DirectoryView) -> Labels {
    let names = directories.names(w.pod_uid.as_deref(), w.container_id.as_deref());
    // Without the Kubernetes API (or before it knows the pod), the pod is known by its UID.
    let values = [
        names.namespace.unwrap_or_default().to_string(),
        names
            .pod
            .or(w.pod_uid.as_deref())
            .unwrap_or_default()
            .to_string(),
        names.container.unwrap_or_default().to_string(),
        w.container_id.clone().unwrap_or_default(),
        w.cgroup.clone(),
    ];
    WORKLOAD_LABELS.iter().copied().zip(values).collect()
}

/// What describes a container workload beyond its identity: the image and the runtime.
fn container_info(w: &Workload, directories: &DirectoryView) -> Option<Labels> {
    let known = directories.containers.get(w.container_id.as_deref()?);
    let runtime = known.map(|c| c.runtime).or(w.runtime);
    Some(vec![
        ("image", known.map(|c| c.image.clone()).unwrap_or_default()),
        ("runtime", runtime.unwrap_or_default().to_string()),
    ])
}

fn with(base: &[(&'static str, String)], extra: &[(&'static str, String)]) -> Labels {
    base.iter().chain(extra).cloned().collect()
}

/// The busiest `k` syscalls by name, then the rest folded into `other`.
fn top_syscalls(totals: &WorkloadTotals, k: usize) -> Vec<NamedSyscall> {
    let mut by_count: Vec<(&u32, &SyscallStats)> = totals.syscalls.iter().collect();
    by_count.sort_by(|a, b| b.1.count.cmp(&a.1.count).then(a.0.cmp(b.0)));
    let errnos_of = |nr: u32| -> Vec<(u32, u64)> {
        totals
            .errnos
            .range((nr, 0)..=(nr, u32::MAX))
            .map(|(&(_, errno), &count)| (errno, count))
            .collect()
    };
    let mut out: Vec<NamedSyscall> = Vec::new();
    let mut other: Option<(SyscallStats, BTreeMap<u32, u64>)> = None;
    for (index, (&nr, stats)) in by_count.into_iter().enumerate() {
        if index < k {
            let name = syscall_name(nr).map_or_else(|| format!("syscall_{nr}"), str::to_string);
            out.push(NamedSyscall {
                name,
                stats: *stats,
                errnos: errnos_of(nr),
            });
            continue;
        }
        let (sum, errnos) = other.get_or_insert_with(|| {
            (
                SyscallStats {
                    count: 0,
                    errors: 0,
                    total_ns: 0,
                    latency_hist: [0; HIST_BUCKETS],
                },
                BTreeMap::new(),
            )
        });
        add_syscalls(sum, stats);
        for (errno, count) in errnos_of(nr) {
            *errnos.entry(errno).or_default() += count;
        }
    }
    if let Some((sum, errnos)) = other {
        out.push(NamedSyscall {
            name: "other".to_string(),
            stats: sum,
            errnos: errnos.into_iter().collect(),
        });
    }
    out
}

/// A custom metric's figures per workload: (name, kind, (workload labels, figures)).
type CustomSeries = (String, CustomKind, Vec<(Labels, CustomStat)>);

/// One scrape's worth of metrics, exposed by [`Scrape::expose`].
#[derive(Debug)]
pub(crate) struct Scrape {
    /// Workloads kept under the cap, with their top syscalls.
    kept: Vec<KeptWorkload>,
    /// Processes selected by --process-metrics.
    processes: Vec<KeptWorkload>,
    /// Spacing of the histogram buckets.
    histogram_buckets: HistogramBuckets,
    series: BTreeMap<&'static str, usize>,
    events: BTreeMap<&'static str, u64>,
    lost: Vec<(&'static str, &'static str, u64)>,
    cpu_windows: Vec<CpuWindow>,
    memory_zones: Vec<ZoneFreeBlocks>,
    pressure: Vec<(&'static str, Option<u64>, Option<u64>)>,
    programs: Vec<(&'static str, ProgramStats)>,
    kernel_maps: Vec<MapMemory>,
    previous_scrape_seconds: f64,
    dropped_series_total: u64,
    /// With `--kubernetes`: whether the pod list is synced.
    kubernetes_synced: Option<bool>,
    /// (component, taskscope_health_status value) of the latest health evaluation.
    health_components: Vec<(String, f64)>,
    /// (workload labels, state) of every workload in a bad state.
    workload_health: Vec<(Labels, &'static str)>,
    /// What /readyz says (absent before the first health evaluation).
    ready: Option<bool>,
    log_lines_suppressed: u64,
    /// (reason, count) of requests the HTTP server refused.
    http_refused: Vec<(&'static str, u64)>,
    /// (clients, frames sent, frames dropped, bytes sent) of the live feed.
    live_feed: [u64; 4],
    /// Custom metrics, per workload.
    custom: Vec<CustomSeries>,
}

/// Series one subject adds to a family group (for the cap and `taskscope_series`), per group,
/// a histogram taking `histogram` series.
fn series_of(figures: &Figures, workload: bool, histogram: usize) -> BTreeMap<&'static str, usize> {
    let mut groups = BTreeMap::new();
    for family in SUBJECT_FAMILIES {
        if family.workloads_only && !workload {
            continue;
        }
        *groups.entry(family.series_group).or_default() += (family.series)(figures, histogram);
    }
    groups
}

/// A family exported per subject (per workload, and per selected process under
/// `taskscope_process_`): described, counted and encoded from this one row.
struct SubjectFamily {
    /// The name after the prefix (`taskscope_` or `taskscope_process_`).
    suffix: &'static str,
    help: &'static str,
    family_type: FamilyType,
    /// The `family` label of `taskscope_series` its series are counted under.
    series_group: &'static str,
    /// Exported for workloads only, not for selected processes.
    workloads_only: bool,
    /// Series one subject adds, given the series one histogram takes.
    series: fn(&Figures, usize) -> usize,
    /// Exposes one subject's samples, histograms with the given spacing.
    expose: fn(&mut dyn Samples, &Labels, &Figures, HistogramBuckets) -> fmt::Result,
}

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// The labels of one block device and operation of a subject.
fn io_labels(labels: &Labels, dev: u32, op: u32) -> Labels {
    with(
        labels,
        &[("device", device_name(dev)), ("op", block_op_name(op))],
    )
}

/// One counter of each device and operation of a subject's block IO.
fn expose_io_counter(
    family: &mut dyn Samples,
    labels: &Labels,
    figures: &Figures,
    value: fn(&ProcessIo) -> u64,
) -> fmt::Result {
    for ((dev, op), io) in &figures.totals.io {
        family.number(&io_labels(labels, *dev, *op), Number::from(value(io)))?;
    }
    Ok(())
}

/// Every per-subject family, in exposition order.
const SUBJECT_FAMILIES: &[SubjectFamily] = &[
    SubjectFamily {
        suffix: "workload",
        help: "One series per container workload, labelled with what describes it: image (from the runtime's API) and runtime.",
        family_type: FamilyType::Info,
        series_group: "taskscope_workload_info",
        workloads_only: true,
        series: |f, _| usize::from(f.info.is_some()),
        expose: |family, labels, f, _| match &f.info {
            Some(info) => family.info(&with(labels, info)),
            None => Ok(()),
        },
    },
    SubjectFamily {
        suffix: "cpu_seconds",
        help: "Time the workload's tasks spent on a CPU (the kernel's sum_exec_runtime).",
        family_type: FamilyType::Counter,
        series_group: "taskscope_cpu_seconds",
        workloads_only: false,
        series: |_, _| 1,
        expose: |family, labels, f, _| {
            family.number(labels, Number::from(secs(f.totals.sched.on_cpu_ns)))
        },
    },
    SubjectFamily {
        suffix: "context_switches",
        help: "Context switches away from the workload's tasks: voluntary (blocked) or involuntary (preempted).",
        family_type: FamilyType::Counter,
        series_group: "taskscope_context_switches",
        workloads_only: false,
        series: |_, _| 2,
        expose: |family, labels, f, _| {
            for (kind, value) in [
                ("voluntary", f.totals.sched.voluntary_switches),
                ("involuntary", f.totals.sched.involuntary_switches),
            ] {
                family.number(
                    &with(labels, &[("kind", kind.to_string())]),
                    Number::from(value),
                )?;
            }
            Ok(())
        },
    },
    SubjectFamily {
        suffix: "runqueue_latency_seconds",
        help: "Waits for a CPU, from wakeup or preemption to running; _sum is the kernel's run_delay.",
        family_type: FamilyType::Histogram,
        series_group: "taskscope_runqueue_latency_seconds",
        workloads_only: false,
        series: |_, histogram| histogram,
        expose: |family, labels, f, spacing| {
            expose_log2_histogram(
 family, labels,
                &f.totals.sched.runqueue_hist,
                f.totals.sched.runqueue_wait_ns,
                spacing,
            )
        },
    },
    SubjectFamily {
        suffix: "syscalls",
        help: "Syscalls made, by name (the busiest per workload; the rest as other).",
        family_type: FamilyType::Counter,
        series_group: "taskscope_syscalls",
        workloads_only: false,
        series: |f, _| f.syscalls.len(),
        expose: |family, labels, f, _| {
            for NamedSyscall { name, stats, .. } in &f.syscalls {
                family.number(
                    &with(labels, &[("syscall", name.clone())]),
                    Number::from(stats.count),
                )?;
            }
            Ok(())
        },
    },
    SubjectFamily {
        suffix: "syscall_errors",
        help: "Syscalls that returned an error, by name and errno.",
        family_type: FamilyType::Counter,
        series_group: "taskscope_syscall_errors",
        workloads_only: false,
        series: |f, _| f.syscalls.iter().map(|s| s.errnos.len()).sum(),
        expose: |family, labels, f, _| {
            for NamedSyscall { name, errnos, .. } in &f.syscalls {
                for (errno, count) in errnos {
                    let errno =
                        errno_name(*errno).map_or_else(|| errno.to_string(), str::to_string);
                    family.number(
                        &with(labels, &[("syscall", name.clone()), ("errno", errno)]),
                        Number::from(*count),
                    )?;
                }
            }
            Ok(())
        },
    },
    SubjectFamily {
        suffix: "syscall_latency_seconds",
        help: "Syscall durations, entry to exit.",
        family_type: FamilyType::Histogram,
        series_group: "taskscope_syscall_latency_seconds",
        // The kernel keeps the histograms per cgroup, not per process.
        workloads_only: true,
        series: |f, histogram| f.timed_syscalls().count() * histogram,
        expose: |family, labels, f, spacing| {
            for NamedSyscall { name, stats, .. } in f.timed_syscalls() {
                expose_log2_histogram(
                    family,
                    &with(labels, &[("syscall", name.clone())]),
                    &stats.latency_hist,
                    stats.total_ns,
                    spacing,
                )?;
            }
            Ok(())
        },
    },
    SubjectFamily {
        suffix: "block_io_bytes",
        help: "Bytes of block IO the workload's processes issued, counted at issue.",
        family_type: FamilyType::Counter,
        series_group: "taskscope_block_io",
        workloads_only: false,
        series: |f, _| f.totals.io.len(),
        expose: |family, labels, f, _| expose_io_counter(family, labels, f, |io| io.bytes),
    },
    SubjectFamily {
        suffix: "block_io_requests",
        help: "Block IO requests the workload's processes issued.",
        family_type: FamilyType::Counter,
        series_group: "taskscope_block_io",
        workloads_only: false,
        series: |f, _| f.totals.io.len(),
        expose: |family, labels, f, _| expose_io_counter(family, labels, f, |io| io.requests),
    },
    SubjectFamily {
        suffix: "block_io_latency_seconds",
        help: "Block IO requests of the workload's processes, issue to completion.",
        family_type: FamilyType::Histogram,
        series_group: "taskscope_block_io",
        workloads_only: false,
        series: |f, histogram| f.totals.io.len() * histogram,
        expose: |family, labels, f, spacing| {
            for ((dev, op), io) in &f.totals.io {
                expose_log2_histogram(
 family, &io_labels(labels, *dev, *op),
                    &io.latency_hist,
                    io.total_latency_ns,
                    spacing,
                )?;
            }
            Ok(())
        },
    },
    SubjectFamily {
        suffix: "tasks_started",
        help: "Processes started in the workload while the agent ran.",
        family_type: FamilyType::Counter,
        series_group: "taskscope_tasks",
        workloads_only: true,
        series: |_, _| 1,
        expose: |family, labels, f, _| {
            family.number(labels, Number::from(f.totals.started))
        },
    },
    SubjectFamily {
        suffix: "tasks_exited",
        help: "Processes that exited: success (code 0), failure (other codes) or signal.",
        family_type: FamilyType::Counter,
        series_group: "taskscope_tasks",
        workloads_only: true,
        series: |_, _| 3,
        expose: |family, labels, f, _| {
            for (outcome, value) in [
                ("success", f.totals.exited_success),
                ("failure", f.totals.exited_failure),
                ("signal", f.totals.exited_signal),
            ] {
                family.number(
                    &with(labels, &[("outcome", outcome.to_string())]),
                    Number::from(value),
                )?;
            }
            Ok(())
        },
    },
    SubjectFamily {
        suffix: "tasks_running",
        help: "Live processes in the workload.",
        family_type: FamilyType::Gauge,
        series_group: "taskscope_tasks",
        workloads_only: true,
        series: |_, _| 1,
        expose: |family, labels, f, _| {
            family.number(labels, Number::from(f.totals.running as i64))
        },
    },
    SubjectFamily {
        suffix: "task_duration_seconds",
        help: "Lifetimes of processes seen from start to exit.",
        family_type: FamilyType::Histogram,
        series_group: "taskscope_task_duration_seconds",
        workloads_only: true,
        series: |_, histogram| histogram,
        expose: |family, labels, f, spacing| {
            expose_log2_histogram(
 family, labels,
                &f.totals.durations,
                f.totals.durations_sum_ns,
                spacing,
            )
        },
    },
    SubjectFamily {
        suffix: "memory_usage_bytes",
        help: "Memory charged to the workload's cgroup, page cache included (memory.current, or memory.usage_in_bytes on cgroup v1).",
        family_type: FamilyType::Gauge,
        series_group: "taskscope_memory",
        workloads_only: true,
        series: |f, _| usize::from(f.memory.is_some()),
        expose: |family, labels, f, _| match &f.memory {
            Some(m) => family.number(labels, Number::from(m.usage_bytes as i64)),
            None => Ok(()),
        },
    },
    SubjectFamily {
        suffix: "memory_limit_bytes",
        help: "Memory limit of the workload's cgroup (memory.max, or memory.limit_in_bytes on cgroup v1); absent when unlimited.",
        family_type: FamilyType::Gauge,
        series_group: "taskscope_memory",
        workloads_only: true,
        series: |f, _| usize::from(f.memory.as_ref().is_some_and(|m| m.limit_bytes.is_some())),
        expose: |family, labels, f, _| match f.memory.as_ref().and_then(|m| m.limit_bytes) {
            Some(limit) => family.number(labels, Number::from(limit as i64)),
            None => Ok(()),
        },
    },
];

/// Exposes the per-subject families (workloads, or selected processes) under `prefix`.
fn expose_subjects(
    out: &mut dyn Exposer,
    prefix: &str,
    subjects: &[KeptWorkload],
    workloads: bool,
    spacing: HistogramBuckets,
) -> fmt::Result {
    for row in SUBJECT_FAMILIES {
        if row.workloads_only && !workloads {
            continue;
        }
        let name = format!("{prefix}{}", row.suffix);
        out.family(&name, row.help, row.family_type, &mut |family| {
            for subject in subjects {
                (row.expose)(family, &subject.labels, &subject.figures, spacing)?;
            }
            Ok(())
        })?;
    }
    Ok(())
}

impl Scrape {
    /// Every family of the scrape, in exposition order.
    pub(crate) fn expose(&self, out: &mut dyn Exposer) -> fmt::Result {
        let spacing = self.histogram_buckets;
        expose_subjects(out, "taskscope_", &self.kept, true, spacing)?;
        if !self.processes.is_empty() {
            expose_subjects(out, "taskscope_process_", &self.processes, false, spacing)?;
        }
        self.expose_custom(out)?;
        self.expose_node(out)?;
        self.expose_pipeline(out)?;
        self.expose_health(out)?;
        self.expose_own_usage(out)
    }

    /// Each custom metric per workload: `taskscope_custom_<name>_total` and, for a latency,
    /// `taskscope_custom_<name>_seconds`.
    fn expose_custom(&self, out: &mut dyn Exposer) -> fmt::Result {
        for (name, kind, workloads) in &self.custom {
            out.family(
                &format!("taskscope_custom_{name}"),
                "Occurrences of a custom metric's start point (its end's, for a latency measured), per workload (docs/custom-metrics.md).",
                FamilyType::Counter,
                &mut |family| {
                    for (labels, stat) in workloads {
                        family.number(labels, Number::from(stat.count))?;
                    }
                    Ok(())
                },
            )?;
            if *kind != CustomKind::Latency {
                continue;
            }
            out.family(
                &format!("taskscope_custom_{name}_seconds"),
                "Time from a custom metric's start point to its end on the same thread, per workload (docs/custom-metrics.md).",
                FamilyType::Histogram,
                &mut |family| {
                    for (labels, stat) in workloads {
                        expose_log2_histogram(
                            family,
                            labels,
                            &stat.hist,
                            stat.total_ns,
                            self.histogram_buckets,
                        )?;
                    }
                    Ok(())
                },
            )?;
        }
        Ok(())
    }

    /// The node: CPU busy share and idle fragmentation, memory fragmentation, pressure.
    fn expose_node(&self, out: &mut dyn Exposer) -> fmt::Result {
        out.family(
            "taskscope_node_cpu_busy_ratio",
            "Share of the latest window (about one poll interval) each CPU ran something other than its idle task.",
            FamilyType::Gauge,
            &mut |family| {
                for w in &self.cpu_windows {
                    family.number(&[("cpu", w.cpu.to_string())], Number::from(w.busy_ratio))?;
                }
                Ok(())
            },
        )?;
        // Described always (so that the family is known), valued once an idle period ended.
        out.family(
            "taskscope_node_cpu_idle_fragmentation_ratio",
            "Share of the idle CPU time of the latest window that came in idle periods shorter than --idle-fragment-threshold.",
            FamilyType::Gauge,
            &mut |family| match node_idle_fragmentation(&self.cpu_windows) {
                Some(ratio) => family.number(&[], Number::from(ratio)),
                None => Ok(()),
            },
        )?;
        out.family(
            "taskscope_node_memory_fragmentation_ratio",
            "Share of a zone's free memory unusable for an allocation of the order (the kernel's unusable free space index, from /proc/buddyinfo).",
            FamilyType::Gauge,
            &mut |family| {
                for zone in &self.memory_zones {
                    for (order, ratio) in memory_fragmentation(zone).into_iter().enumerate() {
                        let labels = [
                            ("node", zone.node.to_string()),
                            ("zone", zone.zone.clone()),
                            ("order", order.to_string()),
                        ];
                        family.number(&labels, Number::from(ratio))?;
                    }
                }
                Ok(())
            },
        )?;
        out.family(
            "taskscope_node_pressure_stall_seconds",
            "Time some (or all, kind=full) non-idle tasks stalled on a resource (PSI, /proc/pressure).",
            FamilyType::Counter,
            &mut |family| {
                for (resource, some, full) in &self.pressure {
                    for (kind, micros) in [("some", some), ("full", full)] {
                        if let Some(micros) = micros {
                            let labels = [
                                ("resource", resource.to_string()),
                                ("kind", kind.to_string()),
                            ];
                            family.number(&labels, Number::from(*micros as f64 / 1e6))?;
                        }
                    }
                }
                Ok(())
            },
        )
    }

    /// The agent's data path: kernel program runs, events received and lost, series.
    fn expose_pipeline(&self, out: &mut dyn Exposer) -> fmt::Result {
        out.family(
            "taskscope_bpf_program_runs",
            "Runs of each kernel program, counted while BPF statistics are on (--bpf-stats).",
            FamilyType::Counter,
            &mut |family| {
                for (program, stats) in &self.programs {
                    family.number(
                        &[("program", program.to_string())],
                        Number::from(stats.run_cnt),
                    )?;
                }
                Ok(())
            },
        )?;
        out.family(
            "taskscope_bpf_program_run_seconds",
            "Time each kernel program ran, counted while BPF statistics are on (--bpf-stats).",
            FamilyType::Counter,
            &mut |family| {
                for (program, stats) in &self.programs {
                    let seconds = stats.run_time_ns as f64 / 1e9;
                    family.number(&[("program", program.to_string())], Number::from(seconds))?;
                }
                Ok(())
            },
        )?;
        out.family(
            "taskscope_kernel_map_bytes",
            "Memory the kernel charges for each of the agent's maps (memlock, allocated at load).",
            FamilyType::Gauge,
            &mut |family| {
                for map in &self.kernel_maps {
                    family.number(&[("map", map.name.clone())], Number::from(map.bytes))?;
                }
                Ok(())
            },
        )?;
        out.family(
            "taskscope_events",
            "Ring-buffer events received, by kind.",
            FamilyType::Counter,
            &mut |family| {
                for (source, count) in &self.events {
                    family.number(&[("source", source.to_string())], Number::from(*count))?;
                }
                Ok(())
            },
        )?;
        out.family(
            "taskscope_events_lost",
            "Data lost, by where and why (see docs/api.md).",
            FamilyType::Counter,
            &mut |family| {
                for (source, reason, count) in &self.lost {
                    let labels = [
                        ("source", source.to_string()),
                        ("reason", reason.to_string()),
                    ];
                    family.number(&labels, Number::from(*count))?;
                }
                Ok(())
            },
        )?;
        out.family(
            "taskscope_series",
            "Workload series in this scrape, by family.",
            FamilyType::Gauge,
            &mut |family| {
                for (name, count) in &self.series {
                    family.number(&[("family", name.to_string())], Number::from(*count as i64))?;
                }
                Ok(())
            },
        )?;
        out.family(
            "taskscope_series_dropped",
            "Workload series cut by the series cap, summed over scrapes.",
            FamilyType::Counter,
            &mut |family| family.number(&[], Number::from(self.dropped_series_total)),
        )
    }

    /// The agent's health and readiness, and the workloads in a bad state.
    fn expose_health(&self, out: &mut dyn Exposer) -> fmt::Result {
        if let Some(synced) = self.kubernetes_synced {
            out.family(
                "taskscope_kubernetes_synced",
                "1 when the pods of this node are listed and watched from the Kubernetes API; 0 while labels fall back to the cgroup's (--kubernetes only).",
                FamilyType::Gauge,
                &mut |family| family.number(&[], Number::from(i64::from(synced))),
            )?;
        }
        out.family(
            "taskscope_health_status",
            "Health of each part of the agent at the latest evaluation: 1 healthy, 0.5 degraded, 0 unhealthy, -1 switched off (see /health).",
            FamilyType::Gauge,
            &mut |family| {
                for (component, value) in &self.health_components {
                    family.number(&[("component", component.clone())], Number::from(*value))?;
                }
                Ok(())
            },
        )?;
        if let Some(ready) = self.ready {
            out.family(
                "taskscope_ready",
                "1 when /readyz answers 200: probes attached, events flowing, metadata ready.",
                FamilyType::Gauge,
                &mut |family| family.number(&[], Number::from(i64::from(ready))),
            )?;
        }
        out.family(
            "taskscope_workload_health_status",
            "1 for each workload and state it is in (starved, failing, io_bound, churning) at the latest evaluation; absent: not in that state (see /health/detailed).",
            FamilyType::Gauge,
            &mut |family| {
                for (labels, state) in &self.workload_health {
                    let labels = with(labels, &[("state", state.to_string())]);
                    family.number(&labels, Number::Signed(1))?;
                }
                Ok(())
            },
        )?;
        out.family(
            "taskscope_log_lines_suppressed",
            "Log lines dropped by the rate limit (--log-rate-limit); each place that was limited logs one summary line.",
            FamilyType::Counter,
            &mut |family| family.number(&[], Number::from(self.log_lines_suppressed)),
        )?;
        out.family(
            "taskscope_http_refused",
            "HTTP requests the agent refused to protect itself, by reason: connections (over --http-max-connections), busy (503: too many heavy requests at once, --api-max-concurrent), timeout (408), rate_limited (429: a dashboard client over its rate), login_failed (a dashboard login with a wrong token), live_clients (503: the live feed had its most clients).",
            FamilyType::Counter,
            &mut |family| {
                for (reason, count) in &self.http_refused {
                    family.number(&[("reason", reason.to_string())], Number::from(*count))?;
                }
                Ok(())
            },
        )?;
        self.expose_live_feed(out)
    }

    /// The live feed (`/api/v1/live`): its clients and what it sent and dropped.
    fn expose_live_feed(&self, out: &mut dyn Exposer) -> fmt::Result {
        let [clients, sent, dropped, bytes] = self.live_feed;
        out.family(
            "taskscope_live_clients",
            "Clients connected to the live feed (/api/v1/live) now.",
            FamilyType::Gauge,
            &mut |family| family.number(&[], Number::from(clients as i64)),
        )?;
        out.family(
            "taskscope_live_frames_sent",
            "Frames the live feed sent, over every client.",
            FamilyType::Counter,
            &mut |family| family.number(&[], Number::from(sent)),
        )?;
        out.family(
            "taskscope_live_frames_dropped",
            "Frames a live-feed client did not get because it was still receiving an earlier one (it got the newest instead).",
            FamilyType::Counter,
            &mut |family| family.number(&[], Number::from(dropped)),
        )?;
        out.family(
            "taskscope_live_sent_bytes",
            "Bytes of frames the live feed sent, over every client.",
            FamilyType::Counter,
            &mut |family| family.number(&[], Number::from(bytes)),
        )
    }

    /// What the agent itself costs, and its build.
    fn expose_own_usage(&self, out: &mut dyn Exposer) -> fmt::Result {
        out.family(
            "taskscope_scrape_duration_seconds",
            "How long the previous scrape took to build.",
            FamilyType::Gauge,
            &mut |family| family.number(&[], Number::from(self.previous_scrape_seconds)),
        )?;
        out.family(
            "taskscope_build",
            "Build of the agent.",
            FamilyType::Info,
            &mut |family| family.info(&[("version", env!("CARGO_PKG_VERSION").to_string())]),
        )?;
        let (cpu_ns, rss) = procfs::own_usage().unwrap_or_default();
        let cpu = cpu_ns as f64 / 1e9;
        out.family(
            "process_cpu_seconds",
            "CPU time of the agent (user + system).",
            FamilyType::Counter,
            &mut |family| family.number(&[], Number::from(cpu)),
        )?;
        out.family(
            "process_resident_memory_bytes",
            "Resident memory of the agent.",
            FamilyType::Gauge,
            &mut |family| family.number(&[], Number::from(rss as i64)),
        )
    }
}

/// What fits under the series cap.
struct Selected {
    kept: Vec<KeptWorkload>,
    processes: Vec<KeptWorkload>,
    /// Series per family of what was kept.
    series: BTreeMap<&'static str, usize>,
    /// Series cut by the cap.
    dropped: u64,
}

/// Encoder state kept across scrapes.
#[derive(Debug)]
pub(crate) struct Exposition {
    dropped_series_total: u64,
    /// How long the previous scrape took (encoding included), exposed by the next one.
    pub(crate) previous_scrape_seconds: f64,
    /// Length of the previous text, to allocate the next one at once.
    pub(crate) previous_len: usize,
    /// Reads workload memory from cgroupfs at scrape time (off the collector).
    memory: CgroupMemoryReader,
    /// Pod and container names and images (empty without their sources).
    directories: Directories,
    /// The latest health evaluation, when the agent runs one.
    health: Option<SharedHealth>,
    /// What the HTTP server refused, when it serves /metrics.
    http_refusals: Option<Arc<HttpRefusals>>,
    live_feed: Option<Arc<LiveFeedStats>>,
}

impl Default for Exposition {
    fn default() -> Self {
        Self::new(CgroupMemoryReader::default(), Directories::disabled())
    }
}

impl Exposition {
    /// One scrape of `snapshot`: what fits under the series cap, with the node's and the
    /// agent's own families.
    pub(crate) fn scrape(&mut self, snapshot: MetricsSnapshot, config: ExpositionConfig) -> Scrape {
        let directories = self.directories.clone();
        let names = directories.read();
        let selected = self.select(snapshot.workloads, snapshot.processes, config, &names);
        let pods = &names.pods;
        let containers = &names.containers;
        self.dropped_series_total += selected.dropped;
        let mut scrape = Scrape {
            kept: selected.kept,
            processes: selected.processes,
            histogram_buckets: config.histogram_buckets,
            series: selected.series,
            events: snapshot.events,
            cpu_windows: snapshot.cpu_windows,
            memory_zones: snapshot.memory_zones,
            pressure: snapshot.pressure,
            programs: snapshot.programs,
            kernel_maps: snapshot.kernel_maps,
            lost: snapshot
                .lost
                .iter()
                .map(|l| (l.source, l.reason, l.count))
                .chain((pods.state != SourceState::Disabled).then_some((
                    loss_source::KUBERNETES_PODS,
                    "cache_full",
                    pods.dropped_total,
                )))
                .chain((!containers.sources.is_empty()).then_some((
                    loss_source::CONTAINER_RUNTIMES,
                    "cache_full",
                    containers.dropped_total,
                )))
                .collect(),
            kubernetes_synced: match pods.state {
                SourceState::Disabled => None,
                SourceState::Synced => Some(true),
                _ => Some(false),
            },
            previous_scrape_seconds: self.previous_scrape_seconds,
            dropped_series_total: self.dropped_series_total,
            health_components: Vec::new(),
            workload_health: Vec::new(),
            ready: None,
            log_lines_suppressed: crate::logging::SUPPRESSED_TOTAL
                .load(std::sync::atomic::Ordering::Relaxed),
            http_refused: self
                .http_refusals
                .as_deref()
                .map(HttpRefusals::totals)
                .unwrap_or_default(),
            live_feed: self
                .live_feed
                .as_deref()
                .map(LiveFeedStats::totals)
                .unwrap_or_default(),
            custom: snapshot
                .custom
                .into_iter()
                .map(|family| {
                    let workloads = family
                        .workloads
                        .into_iter()
                        .map(|(cgroup, stat)| {
                            (
                                workload_labels(&Workload::from_cgroup(&cgroup), &names),
                                stat,
                            )
                        })
                        .collect();
                    (family.name, family.kind, workloads)
                })
                .collect(),
        };
        self.add_health(&mut scrape, &names);
        scrape
    }

    /// An encoder reading workload memory with `memory` and naming workloads from
    /// `directories`.
    pub(crate) fn new(memory: CgroupMemoryReader, directories: Directories) -> Self {
        Self {
            dropped_series_total: 0,
            previous_scrape_seconds: 0.0,
            previous_len: 0,
            memory,
            directories,
            health: None,
            http_refusals: None,
            live_feed: None,
        }
    }

    /// Also exports the latest health evaluation.
    pub(crate) fn with_health(mut self, health: SharedHealth) -> Self {
        self.health = Some(health);
        self
    }

    /// Also exports what the HTTP server refused and the live feed's counters.
    pub(crate) fn with_http_refusals(
        mut self,
        refusals: Arc<HttpRefusals>,
        live_feed: Arc<LiveFeedStats>,
    ) -> Self {
        self.http_refusals = Some(refusals);
        self.live_feed = Some(live_feed);
        self
    }

    /// Keeps the busiest workloads, then the selected processes, under the series cap.
    fn select(
        &self,
        mut workloads: Vec<(Workload, WorkloadTotals)>,
        selected_processes: Vec<SelectedProcess>,
        config: ExpositionConfig,
        names: &DirectoryView,
    ) -> Selected {
        // Under the cap, the busiest workloads are the ones kept.
        workloads.sort_by(|a, b| {
            b.1.sched
                .on_cpu_ns
                .cmp(&a.1.sched.on_cpu_ns)
                .then(a.0.cgroup.cmp(&b.0.cgroup))
        });
        let histogram = histogram_series(config.histogram_buckets);
        let mut kept = Vec::new();
        let mut series: BTreeMap<&'static str, usize> = BTreeMap::new();
        let mut used = 0usize;
        let mut dropped = 0u64;
        for (workload, totals) in workloads {
            let mut figures = Figures {
                syscalls: top_syscalls(&totals, config.top_syscalls),
                totals,
                memory: None,
                info: container_info(&workload, names),
            };
            let without_memory: usize = series_of(&figures, true, histogram).values().sum();
            if used + without_memory > config.max_series {
                // Cut without reading its memory (reads cost a scrape most with many
                // workloads): its memory series are not in the dropped count.
                dropped += without_memory as u64;
                continue;
            }
            figures.memory = self.memory.read(&workload.cgroup);
            let counts = series_of(&figures, true, histogram);
            let total: usize = counts.values().sum();
            if used + total > config.max_series {
                dropped += total as u64;
                continue;
            }
            used += total;
            for (family, count) in counts {
                *series.entry(family).or_default() += count;
            }
            kept.push(KeptWorkload {
                labels: workload_labels(&workload, names),
                figures,
            });
        }
        let mut processes = Vec::new();
        for p in selected_processes {
            let figures = Figures {
                syscalls: top_syscalls(&p.totals, config.top_syscalls),
                totals: p.totals,
                memory: None,
                info: None,
            };
            let total: usize = series_of(&figures, false, histogram).values().sum();
            if used + total > config.max_series {
                dropped += total as u64;
                continue;
            }
            used += total;
            *series.entry("taskscope_process").or_default() += total;
            let extra = [("pid", p.pid.to_string()), ("comm", p.comm.clone())];
            processes.push(KeptWorkload {
                labels: with(&workload_labels(&p.workload, names), &extra),
                figures,
            });
        }
        Selected {
            kept,
            processes,
            series,
            dropped,
        }
    }

    /// Adds the latest health evaluation, when the agent runs one.
    fn add_health(&self, scrape: &mut Scrape, names: &DirectoryView) {
        if let Some(health) = &self.health {
            let health = health.read().unwrap_or_else(|p| p.into_inner());
            if let Some(report) = health.as_ref() {
                scrape.ready = Some(report.ready.is_ok());
                scrape.health_components = report
                    .components
                    .iter()
                    .map(|(name, c)| (name.clone(), c.status.gauge()))
                    .collect();
                scrape.workload_health = report
                    .workloads
                    .iter()
                    .flat_map(|w| {
                        let labels = workload_labels(&w.workload, names);
                        w.states
                            .keys()
                            .map(move |state| (labels.clone(), state.name()))
                    })
                    .collect();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_fold_exactly_at_log2_boundaries() {
        let mut hist = [0u64; HIST_BUCKETS];
        hist[0] = 1; // 0 ns
        hist[10] = 2; // [512, 1024) ns: below 1 µs
        hist[11] = 3; // [1024, 2048): below 4.096 µs
        hist[12] = 4; // [2048, 4096): below 4.096 µs
        hist[34] = 5; // below 2^34 ns
        hist[HIST_BUCKETS - 1] = 6; // open-ended
        let b = export_buckets(&hist, HistogramBuckets::Log4);
        assert_eq!(b.len(), 14);
        assert_eq!(histogram_series(HistogramBuckets::Log4), 16);
        assert_eq!(b[0], (1024.0 / 1e9, 3));
        assert_eq!(b[1], (4096.0 / 1e9, 7));
        assert_eq!(b[12], ((1u64 << 34) as f64 / 1e9, 5));
        assert_eq!(b[13], (f64::INFINITY, 6));
        assert_eq!(b.iter().map(|x| x.1).sum::<u64>(), 21);
        // Every power of two: each kernel bucket from 1.024 µs on is a bucket of its own.
        let b = export_buckets(&hist, HistogramBuckets::Log2);
        assert_eq!(b.len(), 26);
        assert_eq!(histogram_series(HistogramBuckets::Log2), 28);
        assert_eq!(b[0], (1024.0 / 1e9, 3));
        assert_eq!(b[1], (2048.0 / 1e9, 3));
        assert_eq!(b[2], (4096.0 / 1e9, 4));
        assert_eq!(b[24], ((1u64 << 34) as f64 / 1e9, 5));
        assert_eq!(b[25], (f64::INFINITY, 6));
        assert_eq!(b.iter().map(|x| x.1).sum::<u64>(), 21);
    }

    #[test]
    fn busiest_syscalls_by_name_then_other() {
        let mut t = WorkloadTotals::default();
        for (nr, count) in [(0u32, 50u64), (1, 10), (2, 30), (3, 5)] {
            t.syscalls.insert(
                nr,
                SyscallStats {
                    count,
                    errors: 0,
                    total_ns: count,
                    latency_hist: [0; HIST_BUCKETS],
                },
            );
        }
        t.errnos.insert((3, 2), 4);
        let top = top_syscalls(&t, 2);
        let names: Vec<&str> = top.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, vec!["read", "open", "other"]);
        assert_eq!(top[2].stats.count, 15);
        assert_eq!(top[2].errnos, vec![(2, 4)]);
    }
}
