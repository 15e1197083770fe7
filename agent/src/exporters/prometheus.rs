//! Prometheus exposition of the task model (metric reference: docs/metrics.md).
//!
//! The collector hands over a [`MetricsSnapshot`] (plain data, built at scrape time from the
//! model and a fresh read of the kernel maps); this module turns it into OpenMetrics text with
//! the official client (`prometheus-client`), keeping the number of workload series under a cap.

use std::{collections::BTreeMap, fmt::Write as _, sync::Arc};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder},
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
    registry::Registry,
};
use taskscope_common::{ProcessIo, SyscallStats, HIST_BUCKETS};

use crate::{
    health::SharedHealth,
    metadata::{PodDirectory, SharedPods, SourceState},
    model::{
        aggregate::{add_syscalls, WorkloadTotals},
        errno::errno_name,
        node::{memory_fragmentation, node_idle_fragmentation, CpuWindow},
        snapshot::{loss_source, MetricsSnapshot, SelectedProcess},
        view::{block_op_name, device_name},
        workload::Workload,
    },
    probes::ProgramStats,
    procfs::{CgroupMemory, CgroupMemoryReader, ZoneFreeBlocks},
    syscall_names::syscall_name,
};

/// Exposition settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ExpositionConfig {
    /// At most this many workload series per scrape; the rest is cut and counted.
    pub(crate) max_series: usize,
    /// Syscalls exported by name per workload (the busiest); the rest are `syscall="other"`.
    pub(crate) top_syscalls: usize,
}

/// Upper bounds (ns) of exported histogram buckets: every second log2 bucket from 1 µs
/// (2^10 ns) to ~17 s (2^34 ns), then +Inf. Exact: each bound is a log2 bucket boundary.
const EXPORTED_BOUNDS_LOG2: [usize; 13] = [10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30, 32, 34];

/// Folds a kernel log2 histogram (bucket `j` counts values below 2^j) into exported buckets
/// of seconds, per-bucket counts (the encoder makes them cumulative).
pub(crate) fn export_buckets(hist: &[u64; HIST_BUCKETS]) -> Vec<(f64, u64)> {
    let mut out: Vec<(f64, u64)> = EXPORTED_BOUNDS_LOG2
        .iter()
        .map(|&i| ((1u64 << i) as f64 / 1e9, 0))
        .collect();
    out.push((f64::INFINITY, 0));
    for (j, &count) in hist.iter().enumerate() {
        // Values in bucket j are below 2^j ns: the first bound >= 2^j holds them all.
        let slot = EXPORTED_BOUNDS_LOG2
            .iter()
            .position(|&i| j <= i && j + 1 < HIST_BUCKETS)
            .unwrap_or(EXPORTED_BOUNDS_LOG2.len());
        out[slot].1 += count;
    }
    out
}

/// Encodes a kernel log2 histogram and its sum (ns) as one histogram series, the count being
/// what the buckets hold.
fn encode_log2_histogram(
    mut metric: prometheus_client::encoding::MetricEncoder<'_>,
    hist: &[u64; HIST_BUCKETS],
    sum_ns: u64,
) -> Result<(), std::fmt::Error> {
    let buckets = export_buckets(hist);
    let count = buckets.iter().map(|b| b.1).sum();
    metric.encode_histogram::<Labels>(sum_ns as f64 / 1e9, count, &buckets, None)
}

const WORKLOAD_LABELS: [&str; 5] = ["namespace", "pod", "container", "container_id", "cgroup"];

/// A label set as the client encodes it.
type Labels = Vec<(&'static str, String)>;

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
}

/// A subject kept under the series cap.
#[derive(Debug)]
struct KeptWorkload {
    labels: Labels,
    figures: Figures,
}

fn workload_labels(w: &Workload, pods: &PodDirectory) -> Labels {
    let names = pods.names(w.pod_uid.as_deref(), w.container_id.as_deref());
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

/// One scrape's worth of metrics, encoded by [`Collector::encode`].
#[derive(Debug)]
struct Scrape {
    /// Workloads kept under the cap, with their top syscalls.
    kept: Vec<KeptWorkload>,
    /// Processes selected by --process-metrics.
    processes: Vec<KeptWorkload>,
    series: BTreeMap<&'static str, usize>,
    events: BTreeMap<&'static str, u64>,
    lost: Vec<(&'static str, &'static str, u64)>,
    cpu_windows: Vec<CpuWindow>,
    memory_zones: Vec<ZoneFreeBlocks>,
    pressure: Vec<(&'static str, Option<u64>, Option<u64>)>,
    programs: Vec<(&'static str, ProgramStats)>,
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
}

fn describe<'a>(
    encoder: &'a mut DescriptorEncoder,
    name: &'a str,
    help: &str,
    metric_type: MetricType,
) -> Result<prometheus_client::encoding::MetricEncoder<'a>, std::fmt::Error> {
    encoder.encode_descriptor(name, help, None, metric_type)
}

/// Series one subject adds to a family group (for the cap and `taskscope_series`), per group.
fn series_of(figures: &Figures, workload: bool) -> BTreeMap<&'static str, usize> {
    let mut groups = BTreeMap::new();
    for family in SUBJECT_FAMILIES {
        if family.workloads_only && !workload {
            continue;
        }
        *groups.entry(family.series_group).or_default() += (family.series)(figures);
    }
    groups
}

/// Series of one histogram sample: its buckets, +Inf, _sum and _count.
const HISTOGRAM_SERIES: usize = EXPORTED_BOUNDS_LOG2.len() + 3;

/// A family exported per subject (per workload, and per selected process under
/// `taskscope_process_`): described, counted and encoded from this one row.
struct SubjectFamily {
    /// The name after the prefix (`taskscope_` or `taskscope_process_`).
    suffix: &'static str,
    help: &'static str,
    metric_type: MetricType,
    /// The `family` label of `taskscope_series` its series are counted under.
    series_group: &'static str,
    /// Exported for workloads only, not for selected processes.
    workloads_only: bool,
    /// Series one subject adds.
    series: fn(&Figures) -> usize,
    /// Encodes one subject's samples.
    encode: fn(&mut MetricEncoder<'_>, &Labels, &Figures) -> Result<(), std::fmt::Error>,
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
fn encode_io_counter(
    family: &mut MetricEncoder<'_>,
    labels: &Labels,
    figures: &Figures,
    value: fn(&ProcessIo) -> u64,
) -> Result<(), std::fmt::Error> {
    for ((dev, op), io) in &figures.totals.io {
        ConstCounter::new(value(io))
            .encode(family.encode_family(&io_labels(labels, *dev, *op))?)?;
    }
    Ok(())
}

/// Every per-subject family, in exposition order.
const SUBJECT_FAMILIES: &[SubjectFamily] = &[
    SubjectFamily {
        suffix: "cpu_seconds",
        help: "Time the workload's tasks spent on a CPU (the kernel's sum_exec_runtime).",
        metric_type: MetricType::Counter,
        series_group: "taskscope_cpu_seconds",
        workloads_only: false,
        series: |_| 1,
        encode: |family, labels, f| {
            ConstCounter::new(secs(f.totals.sched.on_cpu_ns)).encode(family.encode_family(labels)?)
        },
    },
    SubjectFamily {
        suffix: "context_switches",
        help: "Context switches away from the workload's tasks: voluntary (blocked) or involuntary (preempted).",
        metric_type: MetricType::Counter,
        series_group: "taskscope_context_switches",
        workloads_only: false,
        series: |_| 2,
        encode: |family, labels, f| {
            for (kind, value) in [
                ("voluntary", f.totals.sched.voluntary_switches),
                ("involuntary", f.totals.sched.involuntary_switches),
            ] {
                ConstCounter::new(value)
                    .encode(family.encode_family(&with(labels, &[("kind", kind.to_string())]))?)?;
            }
            Ok(())
        },
    },
    SubjectFamily {
        suffix: "runqueue_latency_seconds",
        help: "Waits for a CPU, from wakeup or preemption to running; _sum is the kernel's run_delay.",
        metric_type: MetricType::Histogram,
        series_group: "taskscope_runqueue_latency_seconds",
        workloads_only: false,
        series: |_| HISTOGRAM_SERIES,
        encode: |family, labels, f| {
            encode_log2_histogram(
                family.encode_family(labels)?,
                &f.totals.sched.runqueue_hist,
                f.totals.sched.runqueue_wait_ns,
            )
        },
    },
    SubjectFamily {
        suffix: "syscalls",
        help: "Syscalls made, by name (the busiest per workload; the rest as other).",
        metric_type: MetricType::Counter,
        series_group: "taskscope_syscalls",
        workloads_only: false,
        series: |f| f.syscalls.len(),
        encode: |family, labels, f| {
            for NamedSyscall { name, stats, .. } in &f.syscalls {
                ConstCounter::new(stats.count)
                    .encode(family.encode_family(&with(labels, &[("syscall", name.clone())]))?)?;
            }
            Ok(())
        },
    },
    SubjectFamily {
        suffix: "syscall_errors",
        help: "Syscalls that returned an error, by name and errno.",
        metric_type: MetricType::Counter,
        series_group: "taskscope_syscall_errors",
        workloads_only: false,
        series: |f| f.syscalls.iter().map(|s| s.errnos.len()).sum(),
        encode: |family, labels, f| {
            for NamedSyscall { name, errnos, .. } in &f.syscalls {
                for (errno, count) in errnos {
                    let errno =
                        errno_name(*errno).map_or_else(|| errno.to_string(), str::to_string);
                    ConstCounter::new(*count).encode(family.encode_family(&with(
                        labels,
                        &[("syscall", name.clone()), ("errno", errno)],
                    ))?)?;
                }
            }
            Ok(())
        },
    },
    SubjectFamily {
        suffix: "syscall_latency_seconds",
        help: "Syscall durations, entry to exit.",
        metric_type: MetricType::Histogram,
        series_group: "taskscope_syscall_latency_seconds",
        workloads_only: false,
        series: |f| f.syscalls.len() * HISTOGRAM_SERIES,
        encode: |family, labels, f| {
            for NamedSyscall { name, stats, .. } in &f.syscalls {
                encode_log2_histogram(
                    family.encode_family(&with(labels, &[("syscall", name.clone())]))?,
                    &stats.latency_hist,
                    stats.total_ns,
                )?;
            }
            Ok(())
        },
    },
    SubjectFamily {
        suffix: "block_io_bytes",
        help: "Bytes of block IO the workload's processes issued, counted at issue.",
        metric_type: MetricType::Counter,
        series_group: "taskscope_block_io",
        workloads_only: false,
        series: |f| f.totals.io.len(),
        encode: |family, labels, f| encode_io_counter(family, labels, f, |io| io.bytes),
    },
    SubjectFamily {
        suffix: "block_io_requests",
        help: "Block IO requests the workload's processes issued.",
        metric_type: MetricType::Counter,
        series_group: "taskscope_block_io",
        workloads_only: false,
        series: |f| f.totals.io.len(),
        encode: |family, labels, f| encode_io_counter(family, labels, f, |io| io.requests),
    },
    SubjectFamily {
        suffix: "block_io_latency_seconds",
        help: "Block IO requests of the workload's processes, issue to completion.",
        metric_type: MetricType::Histogram,
        series_group: "taskscope_block_io",
        workloads_only: false,
        series: |f| f.totals.io.len() * HISTOGRAM_SERIES,
        encode: |family, labels, f| {
            for ((dev, op), io) in &f.totals.io {
                encode_log2_histogram(
                    family.encode_family(&io_labels(labels, *dev, *op))?,
                    &io.latency_hist,
                    io.total_latency_ns,
                )?;
            }
            Ok(())
        },
    },
    SubjectFamily {
        suffix: "tasks_started",
        help: "Processes started in the workload while the agent ran.",
        metric_type: MetricType::Counter,
        series_group: "taskscope_tasks",
        workloads_only: true,
        series: |_| 1,
        encode: |family, labels, f| {
            ConstCounter::new(f.totals.started).encode(family.encode_family(labels)?)
        },
    },
    SubjectFamily {
        suffix: "tasks_exited",
        help: "Processes that exited: success (code 0), failure (other codes) or signal.",
        metric_type: MetricType::Counter,
        series_group: "taskscope_tasks",
        workloads_only: true,
        series: |_| 3,
        encode: |family, labels, f| {
            for (outcome, value) in [
                ("success", f.totals.exited_success),
                ("failure", f.totals.exited_failure),
                ("signal", f.totals.exited_signal),
            ] {
                ConstCounter::new(value).encode(
                    family.encode_family(&with(labels, &[("outcome", outcome.to_string())]))?,
                )?;
            }
            Ok(())
        },
    },
    SubjectFamily {
        suffix: "tasks_running",
        help: "Live processes in the workload.",
        metric_type: MetricType::Gauge,
        series_group: "taskscope_tasks",
        workloads_only: true,
        series: |_| 1,
        encode: |family, labels, f| {
            ConstGauge::new(f.totals.running as i64).encode(family.encode_family(labels)?)
        },
    },
    SubjectFamily {
        suffix: "task_duration_seconds",
        help: "Lifetimes of processes seen from start to exit.",
        metric_type: MetricType::Histogram,
        series_group: "taskscope_task_duration_seconds",
        workloads_only: true,
        series: |_| HISTOGRAM_SERIES,
        encode: |family, labels, f| {
            encode_log2_histogram(
                family.encode_family(labels)?,
                &f.totals.durations,
                f.totals.durations_sum_ns,
            )
        },
    },
    SubjectFamily {
        suffix: "memory_usage_bytes",
        help: "Memory charged to the workload's cgroup, page cache included (memory.current, or memory.usage_in_bytes on cgroup v1).",
        metric_type: MetricType::Gauge,
        series_group: "taskscope_memory",
        workloads_only: true,
        series: |f| usize::from(f.memory.is_some()),
        encode: |family, labels, f| match &f.memory {
            Some(m) => ConstGauge::new(m.usage_bytes as i64).encode(family.encode_family(labels)?),
            None => Ok(()),
        },
    },
    SubjectFamily {
        suffix: "memory_limit_bytes",
        help: "Memory limit of the workload's cgroup (memory.max, or memory.limit_in_bytes on cgroup v1); absent when unlimited.",
        metric_type: MetricType::Gauge,
        series_group: "taskscope_memory",
        workloads_only: true,
        series: |f| usize::from(f.memory.as_ref().is_some_and(|m| m.limit_bytes.is_some())),
        encode: |family, labels, f| match f.memory.as_ref().and_then(|m| m.limit_bytes) {
            Some(limit) => ConstGauge::new(limit as i64).encode(family.encode_family(labels)?),
            None => Ok(()),
        },
    },
];

/// Encodes the per-subject families (workloads, or selected processes) under `prefix`.
fn encode_subjects(
    encoder: &mut DescriptorEncoder,
    prefix: &str,
    subjects: &[KeptWorkload],
    workloads: bool,
) -> Result<(), std::fmt::Error> {
    for row in SUBJECT_FAMILIES {
        if row.workloads_only && !workloads {
            continue;
        }
        let name = format!("{prefix}{}", row.suffix);
        let mut family = describe(encoder, &name, row.help, row.metric_type)?;
        for subject in subjects {
            (row.encode)(&mut family, &subject.labels, &subject.figures)?;
        }
    }
    Ok(())
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        encode_subjects(&mut encoder, "taskscope_", &self.kept, true)?;
        if !self.processes.is_empty() {
            encode_subjects(&mut encoder, "taskscope_process_", &self.processes, false)?;
        }
        self.encode_node(&mut encoder)?;
        self.encode_pipeline(&mut encoder)?;
        self.encode_health(&mut encoder)?;
        self.encode_own_usage(&mut encoder)
    }
}

impl Scrape {
    /// The node: CPU busy share and idle fragmentation, memory fragmentation, pressure.
    fn encode_node(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = describe(encoder, "taskscope_node_cpu_busy_ratio", "Share of the latest window (about one poll interval) each CPU ran something other than its idle task.", MetricType::Gauge)?;
        for w in &self.cpu_windows {
            ConstGauge::new(w.busy_ratio)
                .encode(family.encode_family(&[("cpu", w.cpu.to_string())])?)?;
        }
        // Described always (so that the family is known), valued once an idle period ended.
        let family = describe(encoder, "taskscope_node_cpu_idle_fragmentation_ratio", "Share of the idle CPU time of the latest window that came in idle periods shorter than --idle-fragment-threshold.", MetricType::Gauge)?;
        if let Some(ratio) = node_idle_fragmentation(&self.cpu_windows) {
            ConstGauge::new(ratio).encode(family)?;
        }
        let mut family = describe(encoder, "taskscope_node_memory_fragmentation_ratio", "Share of a zone's free memory unusable for an allocation of the order (the kernel's unusable free space index, from /proc/buddyinfo).", MetricType::Gauge)?;
        for zone in &self.memory_zones {
            for (order, ratio) in memory_fragmentation(zone).into_iter().enumerate() {
                let labels = [
                    ("node", zone.node.to_string()),
                    ("zone", zone.zone.clone()),
                    ("order", order.to_string()),
                ];
                ConstGauge::new(ratio).encode(family.encode_family(&labels)?)?;
            }
        }
        let mut family = describe(encoder, "taskscope_node_pressure_stall_seconds", "Time some (or all, kind=full) non-idle tasks stalled on a resource (PSI, /proc/pressure).", MetricType::Counter)?;
        for (resource, some, full) in &self.pressure {
            for (kind, micros) in [("some", some), ("full", full)] {
                if let Some(micros) = micros {
                    ConstCounter::new(*micros as f64 / 1e6).encode(
                        family.encode_family(&[("resource", *resource), ("kind", kind)])?,
                    )?;
                }
            }
        }

        Ok(())
    }

    /// The agent's data path: kernel program runs, events received and lost, series.
    fn encode_pipeline(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = describe(
            encoder,
            "taskscope_bpf_program_runs",
            "Runs of each kernel program, counted while BPF statistics are on (--bpf-stats).",
            MetricType::Counter,
        )?;
        for (program, stats) in &self.programs {
            ConstCounter::new(stats.run_cnt)
                .encode(family.encode_family(&[("program", *program)])?)?;
        }
        let mut family = describe(
            encoder,
            "taskscope_bpf_program_run_seconds",
            "Time each kernel program ran, counted while BPF statistics are on (--bpf-stats).",
            MetricType::Counter,
        )?;
        for (program, stats) in &self.programs {
            ConstCounter::new(stats.run_time_ns as f64 / 1e9)
                .encode(family.encode_family(&[("program", *program)])?)?;
        }
        let mut family = describe(
            encoder,
            "taskscope_events",
            "Ring-buffer events received, by kind.",
            MetricType::Counter,
        )?;
        for (source, count) in &self.events {
            ConstCounter::new(*count).encode(family.encode_family(&[("source", *source)])?)?;
        }
        let mut family = describe(
            encoder,
            "taskscope_events_lost",
            "Data lost, by where and why (see docs/api.md).",
            MetricType::Counter,
        )?;
        for (source, reason, count) in &self.lost {
            ConstCounter::new(*count)
                .encode(family.encode_family(&[("source", *source), ("reason", *reason)])?)?;
        }
        let mut family = describe(
            encoder,
            "taskscope_series",
            "Workload series in this scrape, by family.",
            MetricType::Gauge,
        )?;
        for (name, count) in &self.series {
            ConstGauge::new(*count as i64).encode(family.encode_family(&[("family", *name)])?)?;
        }
        let family = describe(
            encoder,
            "taskscope_series_dropped",
            "Workload series cut by the series cap, summed over scrapes.",
            MetricType::Counter,
        )?;
        ConstCounter::new(self.dropped_series_total).encode(family)?;
        Ok(())
    }

    /// The agent's health and readiness, and the workloads in a bad state.
    fn encode_health(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some(synced) = self.kubernetes_synced {
            let family = describe(
                encoder,
                "taskscope_kubernetes_synced",
                "1 when the pods of this node are listed and watched from the Kubernetes API; 0 while labels fall back to the cgroup's (--kubernetes only).",
                MetricType::Gauge,
            )?;
            ConstGauge::new(i64::from(synced)).encode(family)?;
        }
        let mut family = describe(
            encoder,
            "taskscope_health_status",
            "Health of each part of the agent at the latest evaluation: 1 healthy, 0.5 degraded, 0 unhealthy, -1 switched off (see /health).",
            MetricType::Gauge,
        )?;
        for (component, value) in &self.health_components {
            ConstGauge::new(*value)
                .encode(family.encode_family(&[("component", component.as_str())])?)?;
        }
        if let Some(ready) = self.ready {
            let family = describe(
                encoder,
                "taskscope_ready",
                "1 when /readyz answers 200: probes attached, events flowing, metadata ready.",
                MetricType::Gauge,
            )?;
            ConstGauge::new(i64::from(ready)).encode(family)?;
        }
        let mut family = describe(
            encoder,
            "taskscope_workload_health_status",
            "1 for each workload and state it is in (starved, failing, io_bound, churning) at the latest evaluation; absent: not in that state (see /health/detailed).",
            MetricType::Gauge,
        )?;
        for (labels, state) in &self.workload_health {
            let labels = with(labels, &[("state", state.to_string())]);
            ConstGauge::new(1).encode(family.encode_family(&labels)?)?;
        }
        let family = describe(
            encoder,
            "taskscope_log_lines_suppressed",
            "Log lines dropped by the rate limit (--log-rate-limit); each place that was limited logs one summary line.",
            MetricType::Counter,
        )?;
        ConstCounter::new(self.log_lines_suppressed).encode(family)?;
        Ok(())
    }

    /// What the agent itself costs, and its build.
    fn encode_own_usage(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let family = describe(
            encoder,
            "taskscope_scrape_duration_seconds",
            "How long the previous scrape took to build.",
            MetricType::Gauge,
        )?;
        ConstGauge::new(self.previous_scrape_seconds).encode(family)?;
        let mut family = describe(
            encoder,
            "taskscope_build",
            "Build of the agent.",
            MetricType::Info,
        )?;
        family.encode_info(&[("version", env!("CARGO_PKG_VERSION"))])?;
        let (cpu, rss) = self_usage();
        let family = describe(
            encoder,
            "process_cpu_seconds",
            "CPU time of the agent (user + system).",
            MetricType::Counter,
        )?;
        ConstCounter::new(cpu).encode(family)?;
        let family = describe(
            encoder,
            "process_resident_memory_bytes",
            "Resident memory of the agent.",
            MetricType::Gauge,
        )?;
        ConstGauge::new(rss as i64).encode(family)?;
        Ok(())
    }
}

/// (CPU seconds, resident bytes) of this process, from /proc/self.
fn self_usage() -> (f64, u64) {
    let cpu = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1.split_whitespace().collect::<Vec<_>>();
            let ticks: u64 =
                rest.get(11)?.parse::<u64>().ok()? + rest.get(12)?.parse::<u64>().ok()?;
            Some(ticks as f64 / crate::procfs::USER_HZ as f64)
        })
        .unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(0) as u64;
    let rss = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * page);
    (cpu, rss)
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
    previous_scrape_seconds: f64,
    previous_len: usize,
    /// Reads workload memory from cgroupfs at scrape time (off the collector).
    memory: CgroupMemoryReader,
    /// Pod and container names (empty without `--kubernetes`).
    pods: SharedPods,
    /// The latest health evaluation, when the agent runs one.
    health: Option<SharedHealth>,
}

impl Default for Exposition {
    fn default() -> Self {
        Self::new(CgroupMemoryReader::default(), PodDirectory::disabled())
    }
}

impl Exposition {
    /// An encoder reading workload memory with `memory` and naming pods from `pods`.
    pub(crate) fn new(memory: CgroupMemoryReader, pods: SharedPods) -> Self {
        Self {
            dropped_series_total: 0,
            previous_scrape_seconds: 0.0,
            previous_len: 0,
            memory,
            pods,
            health: None,
        }
    }

    /// Also exports the latest health evaluation.
    pub(crate) fn with_health(mut self, health: SharedHealth) -> Self {
        self.health = Some(health);
        self
    }

    /// Encodes a snapshot as OpenMetrics text.
    pub(crate) fn encode(&mut self, snapshot: MetricsSnapshot, config: ExpositionConfig) -> String {
        let started = std::time::Instant::now();
        let pods = Arc::clone(&self.pods);
        let pods = pods.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        let selected = self.select(snapshot.workloads, snapshot.processes, config, &pods);
        self.dropped_series_total += selected.dropped;
        let mut scrape = Scrape {
            kept: selected.kept,
            processes: selected.processes,
            series: selected.series,
            events: snapshot.events,
            cpu_windows: snapshot.cpu_windows,
            memory_zones: snapshot.memory_zones,
            pressure: snapshot.pressure,
            programs: snapshot.programs,
            lost: snapshot
                .lost
                .iter()
                .map(|l| (l.source, l.reason, l.count))
                .chain((pods.state != SourceState::Disabled).then_some((
                    loss_source::KUBERNETES_PODS,
                    "cache_full",
                    pods.dropped_total,
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
        };
        self.add_health(&mut scrape, &pods);
        let mut registry = Registry::default();
        registry.register_collector(Box::new(scrape));
        // About as long as the last one: no copying while the text grows.
        let mut text = String::with_capacity(self.previous_len + self.previous_len / 8);
        if prometheus_client::encoding::text::encode(&mut text, &registry).is_err() {
            text.clear();
            let _ = writeln!(text, "# taskscope: encoding failed\n# EOF");
        }
        self.previous_scrape_seconds = started.elapsed().as_secs_f64();
        self.previous_len = text.len();
        text
    }

    /// Keeps the busiest workloads, then the selected processes, under the series cap.
    fn select(
        &self,
        mut workloads: Vec<(Workload, WorkloadTotals)>,
        selected_processes: Vec<SelectedProcess>,
        config: ExpositionConfig,
        pods: &PodDirectory,
    ) -> Selected {
        // Under the cap, the busiest workloads are the ones kept.
        workloads.sort_by(|a, b| {
            b.1.sched
                .on_cpu_ns
                .cmp(&a.1.sched.on_cpu_ns)
                .then(a.0.cgroup.cmp(&b.0.cgroup))
        });
        let mut kept = Vec::new();
        let mut series: BTreeMap<&'static str, usize> = BTreeMap::new();
        let mut used = 0usize;
        let mut dropped = 0u64;
        for (workload, totals) in workloads {
            let mut figures = Figures {
                syscalls: top_syscalls(&totals, config.top_syscalls),
                totals,
                memory: None,
            };
            let without_memory: usize = series_of(&figures, true).values().sum();
            if used + without_memory > config.max_series {
                // Cut without reading its memory (reads cost a scrape most with many
                // workloads): its memory series are not in the dropped count.
                dropped += without_memory as u64;
                continue;
            }
            figures.memory = self.memory.read(&workload.cgroup);
            let counts = series_of(&figures, true);
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
                labels: workload_labels(&workload, pods),
                figures,
            });
        }
        let mut processes = Vec::new();
        for p in selected_processes {
            let figures = Figures {
                syscalls: top_syscalls(&p.totals, config.top_syscalls),
                totals: p.totals,
                memory: None,
            };
            let total: usize = series_of(&figures, false).values().sum();
            if used + total > config.max_series {
                dropped += total as u64;
                continue;
            }
            used += total;
            *series.entry("taskscope_process").or_default() += total;
            let extra = [("pid", p.pid.to_string()), ("comm", p.comm.clone())];
            processes.push(KeptWorkload {
                labels: with(&workload_labels(&p.workload, pods), &extra),
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
    fn add_health(&self, scrape: &mut Scrape, pods: &PodDirectory) {
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
                        let labels = workload_labels(&w.workload, pods);
                        w.states
                            .keys()
                            .map(move |state| (labels.clone(), state.name()))
                    })
                    .collect();
            }
        }
    }
}

/// Content type of OpenMetrics text.
pub(crate) const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Content type of the classic Prometheus text format.
pub(crate) const CLASSIC_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether an `Accept` header asks for OpenMetrics (as Prometheus servers do).
pub(crate) fn wants_openmetrics(accept: &str) -> bool {
    accept.contains("application/openmetrics-text")
}

/// Rewrites OpenMetrics text into the classic text format (0.0.4): counter and info families
/// are named by their samples (`x_total`, `x_info`, info becoming a gauge), `# EOF` and
/// `# UNIT` lines go.
pub(crate) fn to_classic(openmetrics: &str) -> String {
    let mut types: BTreeMap<&str, &str> = BTreeMap::new();
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some((name, kind)) = rest.split_once(' ') {
                types.insert(name, kind);
            }
        }
    }
    let renamed = |name: &str| -> (String, Option<&'static str>) {
        match types.get(name) {
            Some(&"counter") => (format!("{name}_total"), None),
            Some(&"info") => (format!("{name}_info"), Some("gauge")),
            _ => (name.to_string(), None),
        }
    };
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let rewritten = if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            format!("# HELP {} {help}", renamed(name).0)
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let (name, new_kind) = renamed(name);
            format!("# TYPE {name} {}", new_kind.unwrap_or(kind))
        } else {
            line.to_string()
        };
        out.push_str(&rewritten);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classic_format_names_families_by_their_samples() {
        let om = "# HELP a_seconds Time.\n# TYPE a_seconds counter\na_seconds_total{x=\"1\"} 2\n\
                  # HELP b Build.\n# TYPE b info\nb_info{version=\"1\"} 1\n\
                  # HELP c Gauge.\n# TYPE c gauge\nc 3\n# EOF\n";
        assert_eq!(
            to_classic(om),
            "# HELP a_seconds_total Time.\n# TYPE a_seconds_total counter\na_seconds_total{x=\"1\"} 2\n\
             # HELP b_info Build.\n# TYPE b_info gauge\nb_info{version=\"1\"} 1\n\
             # HELP c Gauge.\n# TYPE c gauge\nc 3\n"
        );
        assert!(wants_openmetrics(
            "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"
        ));
        assert!(!wants_openmetrics("*/*"));
    }

    #[test]
    fn buckets_fold_exactly_at_log2_boundaries() {
        let mut hist = [0u64; HIST_BUCKETS];
        hist[0] = 1; // 0 ns
        hist[10] = 2; // [512, 1024) ns: below 1 µs
        hist[11] = 3; // [1024, 2048): below 4.096 µs
        hist[12] = 4; // [2048, 4096): below 4.096 µs
        hist[34] = 5; // below 2^34 ns
        hist[HIST_BUCKETS - 1] = 6; // open-ended
        let b = export_buckets(&hist);
        assert_eq!(b.len(), EXPORTED_BOUNDS_LOG2.len() + 1);
        assert_eq!(b[0], (1024.0 / 1e9, 3));
        assert_eq!(b[1], (4096.0 / 1e9, 7));
        assert_eq!(b[12], ((1u64 << 34) as f64 / 1e9, 5));
        assert_eq!(b[13], (f64::INFINITY, 6));
        assert_eq!(b.iter().map(|x| x.1).sum::<u64>(), 21);
    }

    fn synthetic(workloads: usize) -> MetricsSnapshot {
        let mut snapshot = MetricsSnapshot::default();
        for i in 0..workloads {
            let mut totals = WorkloadTotals::default();
            totals.sched.on_cpu_ns = i as u64;
            for nr in 0..(i % 13) as u32 {
                totals.syscalls.insert(
                    nr,
                    SyscallStats {
                        count: 1 + nr as u64,
                        errors: 0,
                        total_ns: 1,
                        latency_hist: [0; HIST_BUCKETS],
                    },
                );
                totals.errnos.insert((nr, 2), 1);
            }
            snapshot
                .workloads
                .push((Workload::from_cgroup(&format!("/w{i}")), totals));
        }
        snapshot
    }

    fn value(text: &str, sample: &str) -> f64 {
        text.lines()
            .find(|l| l.starts_with(sample))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(f64::NAN)
    }

    fn workload_series(text: &str) -> usize {
        text.lines()
            .filter(|l| !l.starts_with('#') && l.contains("cgroup=\""))
            .count()
    }

    #[test]
    fn the_cap_keeps_whole_workloads_and_counts_the_rest() {
        let config = |max_series| ExpositionConfig {
            max_series,
            top_syscalls: 5,
        };
        let all = Exposition::default().encode(synthetic(60), config(usize::MAX));
        let total = workload_series(&all);
        let mut capped = Exposition::default();
        let text = capped.encode(synthetic(60), config(1000));
        let kept = workload_series(&text);
        let dropped = value(&text, "taskscope_series_dropped_total");
        assert!(kept <= 1000, "{kept}");
        assert_eq!(
            kept as f64 + dropped,
            total as f64,
            "kept {kept} + dropped {dropped} = all {total}"
        );
        // The counter adds up over scrapes.
        let again = capped.encode(synthetic(60), config(1000));
        assert_eq!(
            value(&again, "taskscope_series_dropped_total"),
            2.0 * dropped
        );
        assert_eq!(value(&all, "taskscope_series_dropped_total"), 0.0);
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
