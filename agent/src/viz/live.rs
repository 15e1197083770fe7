//! The live feed's frames (`/api/v1/live`, the dashboard's): what the node, the agent and the
//! workloads did in the latest interval, built once an interval on the consumers' side while
//! at least one client listens, and shared by every client.
//!
//! A frame is a set of sections, each encoded once (JSON) so that a client gets the sections it
//! subscribed to without the agent encoding anything per client.

use std::collections::{BTreeMap, HashMap};

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use super::history::Frame;
use crate::{
    collector::StatusResponse,
    health::HealthReport,
    metadata::DirectoryView,
    model::{
        aggregate::WorkloadTotals,
        histogram::{self, Log2Hist},
        process::SchedTotals,
        queries::ProcessCounters,
        workload::Workload,
    },
    procfs::{self, CgroupCpuReader, CgroupMemoryReader, ZoneFreeBlocks},
};

/// Rows of a frame's workload table: the busiest by CPU (the rest are counted).
pub(crate) const MAX_WORKLOAD_ROWS: usize = 100;

/// Rows of a frame's process table: the busiest by CPU (the rest are counted).
pub(crate) const MAX_PROCESS_ROWS: usize = 100;

/// Idle periods shorter than this are fragments: too short to be of use to a task that would
/// wait for a whole CPU (2^20 ns, about a millisecond: one log2 bucket boundary).
pub(crate) const FRAGMENT_BELOW_NS: u64 = 1 << 20;

/// Free memory in blocks of at least this order (2^9 pages: 2 MiB, a huge page) is unfragmented.
const UNFRAGMENTED_ORDER: usize = 9;

/// The parts of a frame a client can subscribe to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Section {
    /// CPUs, memory, pressure, process starts and failures.
    Node,
    /// The agent's health, cost and losses.
    Agent,
    /// The busiest workloads, with their rates in the interval.
    Workloads,
    /// The newest column of the time heatmaps (CPU busy, node run-queue waits).
    Heatmaps,
    /// The busiest processes, with their rates in the interval (built only while a client
    /// subscribes to it: it reads every process).
    Processes,
}

impl Section {
    /// Every section, in the order a frame lists them.
    pub(crate) const ALL: [Section; 5] = [
        Section::Node,
        Section::Agent,
        Section::Workloads,
        Section::Heatmaps,
        Section::Processes,
    ];

    /// What a client gets until it subscribes: the dashboard's sections.
    pub(crate) const DEFAULT: [Section; 4] = [
        Section::Node,
        Section::Agent,
        Section::Workloads,
        Section::Heatmaps,
    ];

    /// The section's key in a frame.
    pub(crate) fn key(self) -> &'static str {
        match self {
            Section::Node => "node",
            Section::Agent => "agent",
            Section::Workloads => "workloads",
            Section::Heatmaps => "heatmaps",
            Section::Processes => "processes",
        }
    }
}

/// One frame of the feed: its sections, each already encoded as JSON.
#[derive(Debug, Default)]
pub(crate) struct LiveFrame {
    /// Counts frames since the agent started, so that a client sees how many it missed.
    pub(crate) seq: u64,
    pub(crate) unix_ms: u64,
    /// CLOCK_MONOTONIC when it was built.
    pub(crate) built_at_ns: u64,
    pub(crate) sections: BTreeMap<Section, String>,
}

impl LiveFrame {
    /// Whether it describes the latest interval (a frame from before the feed's clients all
    /// left is stale).
    pub(crate) fn is_fresh(&self, now_ns: u64) -> bool {
        self.seq > 0 && now_ns.saturating_sub(self.built_at_ns) <= STALE_AFTER_NS
    }

    /// The frame as sent to a client subscribed to `wanted`, with `dropped` frames it missed.
    pub(crate) fn message(&self, wanted: &[Section], dropped: u64) -> String {
        let mut out = format!(
            "{{\"type\":\"frame\",\"seq\":{},\"unix_ms\":{},\"dropped\":{dropped}",
            self.seq, self.unix_ms
        );
        for (section, json) in &self.sections {
            if wanted.contains(section) {
                out.push_str(",\"");
                out.push_str(section.key());
                out.push_str("\":");
                out.push_str(json);
            }
        }
        out.push('}');
        out
    }
}

/// A frame older than this (two intervals) was built before the current clients came.
const STALE_AFTER_NS: u64 = 2_000_000_000;

/// Frames a workload's CPU is averaged over. A task's CPU time reaches the agent when it
/// leaves a CPU, so a task that runs for long stretches would show 0 in one second and 2 in the
/// next; over three seconds the figure is steady (a stretch longer than that still is lumpy).
pub(crate) const CPU_WINDOW_FRAMES: usize = 3;

/// The counters of one workload a frame turns into rates.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Counters {
    on_cpu_ns: u64,
    /// `on_cpu_ns` at this frame and the ones before it, newest last; `cpu_depth` are valid.
    cpu_past: [u64; CPU_WINDOW_FRAMES],
    cpu_depth: usize,
    involuntary_switches: u64,
    syscalls: u64,
    syscall_errors: u64,
    io_bytes: u64,
    started: u64,
    failed: u64,
    runqueue: Log2Hist,
}

impl Counters {
    /// A workload's counters now, `before` the previous frame's.
    fn of(totals: &WorkloadTotals, before: Option<&Counters>) -> Self {
        let sums = Sums {
            syscalls: totals.syscalls.values().map(|s| s.count).sum(),
            syscall_errors: totals.syscalls.values().map(|s| s.errors).sum(),
            io_bytes: totals.io.values().map(|io| io.bytes).sum(),
            started: totals.started,
            failed: totals.exited_failure + totals.exited_signal,
        };
        Self::new(&totals.sched_since_agent(), sums, before)
    }

    /// A process's counters now, `before` the previous frame's.
    fn of_process(process: &ProcessCounters, before: Option<&Counters>) -> Self {
        let sums = Sums {
            syscalls: process.syscalls,
            syscall_errors: process.syscall_errors,
            io_bytes: process.io_bytes,
            started: 0,
            failed: 0,
        };
        Self::new(&process.sched, sums, before)
    }

    fn new(sched: &SchedTotals, sums: Sums, before: Option<&Counters>) -> Self {
        let mut cpu_past = [0; CPU_WINDOW_FRAMES];
        if let Some(before) = before {
            cpu_past[..CPU_WINDOW_FRAMES - 1].copy_from_slice(&before.cpu_past[1..]);
        }
        cpu_past[CPU_WINDOW_FRAMES - 1] = sched.on_cpu_ns;
        Self {
            on_cpu_ns: sched.on_cpu_ns,
            cpu_past,
            cpu_depth: before.map_or(1, |b| (b.cpu_depth + 1).min(CPU_WINDOW_FRAMES)),
            involuntary_switches: sched.involuntary_switches,
            syscalls: sums.syscalls,
            syscall_errors: sums.syscall_errors,
            io_bytes: sums.io_bytes,
            started: sums.started,
            failed: sums.failed,
            runqueue: sched.runqueue_hist,
        }
    }
}

/// Counts summed over syscalls, devices or processes.
struct Sums {
    syscalls: u64,
    syscall_errors: u64,
    io_bytes: u64,
    started: u64,
    failed: u64,
}

/// The rates of one row (a workload or a process) between two frames' counters.
#[derive(Debug, Default, Serialize, Deserialize, Clone, PartialEq)]
pub(crate) struct Rates {
    /// CPUs' worth of on-CPU time, over the last [`CPU_WINDOW_FRAMES`] frames.
    pub(crate) cpu: Option<f64>,
    pub(crate) runqueue_waits: Option<u64>,
    pub(crate) runqueue_p50_ns: Option<u64>,
    pub(crate) runqueue_p99_ns: Option<u64>,
    pub(crate) involuntary_switches_per_s: Option<f64>,
    pub(crate) syscalls_per_s: Option<f64>,
    pub(crate) syscall_errors_per_s: Option<f64>,
    pub(crate) io_bytes_per_s: Option<f64>,
}

impl Rates {
    /// Rates over `seconds` (the CPU over the window is the builder's to fill in).
    fn between(now: &Counters, before: Option<&Counters>, seconds: f64) -> Self {
        let rate = |pick: fn(&Counters) -> u64| rate(now, before, seconds, pick);
        let waits = before.map(|b| histogram::delta(&now.runqueue, Some(&b.runqueue)));
        Self {
            cpu: None,
            runqueue_waits: waits.map(|w| w.iter().sum()),
            runqueue_p50_ns: waits.and_then(|w| histogram::quantile_ns(&w, 0.5)),
            runqueue_p99_ns: waits.and_then(|w| histogram::quantile_ns(&w, 0.99)),
            involuntary_switches_per_s: rate(|c| c.involuntary_switches),
            syscalls_per_s: rate(|c| c.syscalls),
            syscall_errors_per_s: rate(|c| c.syscall_errors),
            io_bytes_per_s: rate(|c| c.io_bytes),
        }
    }
}

/// The per-second rate of the counter `pick` between two frames (`None`: no earlier frame).
fn rate(
    now: &Counters,
    before: Option<&Counters>,
    seconds: f64,
    pick: fn(&Counters) -> u64,
) -> Option<f64> {
    let before = before?;
    (seconds > 0.0).then(|| pick(now).saturating_sub(pick(before)) as f64 / seconds)
}

/// The node-wide readings a frame takes from /proc (cumulative where the kernel's are).
#[derive(Debug, Clone, Default)]
pub(crate) struct ProcReadings {
    /// `MemTotal` and `MemAvailable` of /proc/meminfo (bytes).
    pub(crate) memory: Option<(u64, u64)>,
    pub(crate) zones: Vec<ZoneFreeBlocks>,
    /// Stall totals (µs) by resource: (`some`, `full`).
    pub(crate) pressure: Vec<(&'static str, Option<u64>, Option<u64>)>,
    /// The agent's own CPU time (ns) and resident memory (bytes).
    pub(crate) agent_cpu_ns: Option<u64>,
    pub(crate) agent_rss_bytes: Option<u64>,
}

impl ProcReadings {
    /// Reads them now.
    pub(crate) fn read() -> Self {
        let own = procfs::own_usage();
        Self {
            memory: procfs::read_meminfo(),
            zones: procfs::read_buddyinfo(),
            pressure: procfs::read_pressure(),
            agent_cpu_ns: own.map(|o| o.0),
            agent_rss_bytes: own.map(|o| o.1),
        }
    }
}

/// Readers of the cgroups' limits (the bin-packing view's requests and limits).
#[derive(Debug, Clone, Default)]
pub(crate) struct CgroupLimits {
    pub(crate) memory: CgroupMemoryReader,
    pub(crate) cpu: CgroupCpuReader,
}

impl CgroupLimits {
    /// Readers of the hierarchies mounted on this host.
    pub(crate) fn from_mounts(mountinfo: &str) -> Self {
        Self {
            memory: CgroupMemoryReader::from_mounts(mountinfo),
            cpu: CgroupCpuReader::from_mounts(mountinfo),
        }
    }

    /// The memory `cgroup` uses and its limits; a CPU request only for a Kubernetes pod's
    /// cgroup (`in_pod`): elsewhere CPU shares are a relative weight, not a request.
    pub(crate) fn of(&self, cgroup: &str, in_pod: bool) -> CgroupFigures {
        let mut figures = CgroupFigures::default();
        if let Some(memory) = self.memory.read(cgroup) {
            figures.memory_bytes = Some(memory.usage_bytes);
            figures.memory_limit_bytes = memory.limit_bytes;
        }
        if let Some(cpu) = self.cpu.read(cgroup) {
            figures.cpu_limit = cpu.limit_cores;
            if in_pod {
                figures.cpu_request = cpu.shares.map(|shares| shares as f64 / 1024.0);
            }
        }
        figures
    }
}

/// A cgroup's memory use, its limits and its CPU request (`None`: not set or not accounted).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct CgroupFigures {
    /// Memory charged to it (page cache included, as the kernel counts it against the limit).
    pub(crate) memory_bytes: Option<u64>,
    pub(crate) memory_limit_bytes: Option<u64>,
    /// CPUs' worth it may use.
    pub(crate) cpu_limit: Option<f64>,
    /// A Kubernetes pod's CPU request, from its CPU shares.
    pub(crate) cpu_request: Option<f64>,
}

/// What a frame is built from.
pub(crate) struct Inputs<'a> {
    /// The history's newest frame (the interval the live frame describes).
    pub(crate) frame: &'a Frame,
    /// CLOCK_MONOTONIC of the kernel read the counters are of (the running threads' time is
    /// carried up to it).
    pub(crate) sampled_at_ns: u64,
    pub(crate) workloads: &'a [(Workload, WorkloadTotals)],
    /// Every live process's counters, when a client subscribes to the process table.
    pub(crate) processes: Option<&'a [ProcessCounters]>,
    pub(crate) status: &'a StatusResponse,
    pub(crate) health: Option<&'a HealthReport>,
    pub(crate) names: &'a DirectoryView<'a>,
    pub(crate) limits: &'a CgroupLimits,
    pub(crate) proc: ProcReadings,
}

/// Builds frames, keeping the previous interval's counters to make rates of.
#[derive(Debug, Default)]
pub(crate) struct LiveBuilder {
    seq: u64,
    previous: HashMap<String, Counters>,
    /// Each live process's counters at the previous frame, by (pid, start ticks).
    previous_processes: HashMap<(u32, u64), Counters>,
    /// Lengths of the latest frames' intervals (ns), newest last.
    intervals: std::collections::VecDeque<u64>,
    /// CLOCK_MONOTONIC of the previous frame's sample.
    last_sampled_ns: Option<u64>,
    previous_proc: Option<ProcReadings>,
}

impl LiveBuilder {
    /// Forgets the previous interval (no client listened since): the next frame has no rates
    /// rather than rates over the whole pause.
    pub(crate) fn pause(&mut self) {
        self.previous.clear();
        self.previous_processes.clear();
        self.intervals.clear();
        self.previous_proc = None;
        self.last_sampled_ns = None;
    }

    /// The frame of the interval `inputs` describes.
    pub(crate) fn build(&mut self, inputs: Inputs<'_>) -> LiveFrame {
        self.seq += 1;
        // Rates are over the time between the two kernel reads the counters are of: the
        // running threads' time is carried to the reads, not past them, so a thread that left
        // its CPU after a read is not counted on until the next.
        let interval_ns = self
            .last_sampled_ns
            .replace(inputs.sampled_at_ns)
            .map_or(inputs.frame.interval_ns, |last| {
                inputs.sampled_at_ns.saturating_sub(last)
            });
        let seconds = interval_ns as f64 / 1e9;
        if self.intervals.len() == CPU_WINDOW_FRAMES {
            self.intervals.pop_front();
        }
        self.intervals.push_back(interval_ns);
        let rows = self.workload_rows(&inputs, seconds);
        let previous_proc = self.previous_proc.replace(inputs.proc.clone());
        let node = node_section(&inputs, previous_proc.as_ref(), &rows.all_rates, seconds);
        let agent = agent_section(&inputs, previous_proc.as_ref(), seconds);
        let heatmaps = HeatmapsSection {
            unix_ms: inputs.frame.unix_ms,
            cpu_busy: &inputs.frame.cpu_busy,
            node_runqueue: inputs.frame.node_runqueue.as_slice(),
        };
        let mut sections = BTreeMap::new();
        let mut put = |section: Section, json: serde_json::Result<String>| {
            // Plain data: encoding cannot fail; an empty section would if it did.
            sections.insert(section, json.unwrap_or_else(|_| "null".into()));
        };
        put(Section::Node, serde_json::to_string(&node));
        put(Section::Agent, serde_json::to_string(&agent));
        put(Section::Workloads, serde_json::to_string(&rows.table));
        put(Section::Heatmaps, serde_json::to_string(&heatmaps));
        match inputs.processes {
            Some(processes) => {
                let table = self.process_rows(processes, inputs.names, seconds);
                put(Section::Processes, serde_json::to_string(&table));
            }
            None => self.previous_processes.clear(),
        }
        LiveFrame {
            seq: self.seq,
            unix_ms: inputs.frame.unix_ms,
            built_at_ns: crate::clock::monotonic_ns(),
            sections,
        }
    }

    /// CPUs' worth of on-CPU time over the last [`CPU_WINDOW_FRAMES`] frames (fewer when the
    /// workload or the client is newer).
    fn cpu_over_window(&self, before: &Counters, now: &Counters) -> Option<f64> {
        let depth = before.cpu_depth.min(self.intervals.len());
        let oldest = before.cpu_past[CPU_WINDOW_FRAMES - depth];
        let span_ns: u64 = self.intervals.iter().rev().take(depth).sum();
        (depth > 0 && span_ns > 0)
            .then(|| now.on_cpu_ns.saturating_sub(oldest) as f64 / span_ns as f64)
    }

    /// The workload table, and the node's process rates summed over every workload.
    fn workload_rows(&mut self, inputs: &Inputs<'_>, seconds: f64) -> Rows {
        let mut now = HashMap::with_capacity(inputs.workloads.len());
        let mut rows: Vec<WorkloadRow> = Vec::with_capacity(inputs.workloads.len());
        let mut all_rates = ProcessRates::default();
        for (workload, totals) in inputs.workloads {
            let before = self.previous.get(&workload.cgroup);
            let counters = Counters::of(totals, before);
            let mut row = WorkloadRow::new(workload, totals.running, &counters, before, seconds);
            row.rates.cpu = before.and_then(|b| self.cpu_over_window(b, &counters));
            all_rates.add(&row);
            now.insert(workload.cgroup.clone(), counters);
            rows.push(row);
        }
        self.previous = now;
        // The busiest first; ties by cgroup so that the table's order holds between frames.
        rows.sort_by(|a, b| by_cpu(&a.rates, &b.rates).then_with(|| a.cgroup.cmp(&b.cgroup)));
        let total = rows.len();
        rows.truncate(MAX_WORKLOAD_ROWS);
        let states = workload_states(inputs.health);
        for row in &mut rows {
            if let Some((states, since)) = states.get(row.cgroup.as_str()) {
                row.states = states.clone();
                row.states_since = Some(*since);
            }
            let names = inputs
                .names
                .names(row.pod_uid.as_deref(), row.container_id.as_deref());
            row.pod = names.pod.map(str::to_string);
            row.namespace = names.namespace.map(str::to_string);
            row.container = names.container.map(str::to_string);
            row.read_limits(inputs.limits);
        }
        Rows {
            table: Table {
                total,
                left_out: total - rows.len(),
                rows,
            },
            all_rates,
        }
    }
}

impl LiveBuilder {
    /// The process table: the busiest live processes with their rates.
    fn process_rows(
        &mut self,
        processes: &[ProcessCounters],
        names: &DirectoryView<'_>,
        seconds: f64,
    ) -> Table<ProcessRow> {
        let mut now = HashMap::with_capacity(processes.len());
        let mut rows: Vec<ProcessRow> = Vec::with_capacity(processes.len());
        for process in processes {
            let key = (process.pid, process.start_ticks);
            let before = self.previous_processes.get(&key);
            let counters = Counters::of_process(process, before);
            let mut rates = Rates::between(&counters, before, seconds);
            rates.cpu = before.and_then(|b| self.cpu_over_window(b, &counters));
            now.insert(key, counters);
            rows.push(ProcessRow {
                pid: process.pid,
                ppid: process.ppid,
                comm: process.comm.clone(),
                cgroup: process.cgroup.clone(),
                container: None,
                pod: None,
                namespace: None,
                threads: process.threads,
                rates,
            });
        }
        self.previous_processes = now;
        rows.sort_by(|a, b| by_cpu(&a.rates, &b.rates).then_with(|| a.pid.cmp(&b.pid)));
        let total = rows.len();
        rows.truncate(MAX_PROCESS_ROWS);
        for row in &mut rows {
            let workload = Workload::from_cgroup(row.cgroup.as_deref().unwrap_or("/"));
            let names = names.names(
                workload.pod_uid.as_deref(),
                workload.container_id.as_deref(),
            );
            row.pod = names.pod.map(str::to_string);
            row.namespace = names.namespace.map(str::to_string);
            row.container = names.container.map(str::to_string);
        }
        Table {
            total,
            left_out: total - rows.len(),
            rows,
        }
    }
}

/// The busier (more CPU) first; rows with no CPU figure yet last.
fn by_cpu(a: &Rates, b: &Rates) -> std::cmp::Ordering {
    b.cpu.unwrap_or(0.0).total_cmp(&a.cpu.unwrap_or(0.0))
}

/// One live process in the interval (rates `None` as for a workload).
#[derive(Debug, Serialize, Deserialize, Clone, PartialEq)]
pub(crate) struct ProcessRow {
    pub(crate) pid: u32,
    pub(crate) ppid: u32,
    pub(crate) comm: String,
    pub(crate) cgroup: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub(crate) container: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub(crate) pod: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub(crate) namespace: Option<String>,
    /// Live threads.
    pub(crate) threads: usize,
    #[serde(flatten)]
    pub(crate) rates: Rates,
}

/// The workload rows of a frame and the sums the node section shows.
struct Rows {
    table: Table<WorkloadRow>,
    all_rates: ProcessRates,
}

/// The health report's workload states (and since when), by cgroup.
fn workload_states(
    health: Option<&HealthReport>,
) -> HashMap<&str, (BTreeMap<String, String>, f64)> {
    health
        .map(|report| {
            report
                .workloads
                .iter()
                .map(|w| {
                    let states = w
                        .states
                        .iter()
                        .map(|(state, why)| (state.name().to_string(), why.clone()))
                        .collect();
                    (w.workload.cgroup.as_str(), (states, w.since))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A table of a frame (workloads or processes): the busiest rows.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Table<Row> {
    /// Rows known to the agent.
    pub(crate) total: usize,
    /// Those beyond the table's bound, not listed.
    pub(crate) left_out: usize,
    pub(crate) rows: Vec<Row>,
}

/// One workload in the interval. Rates are `None` in the first frame a client gets and for a
/// workload new in it (nothing to compare with).
#[derive(Debug, Serialize, Deserialize, Clone, PartialEq)]
pub(crate) struct WorkloadRow {
    pub(crate) cgroup: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub(crate) container_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub(crate) runtime: Option<Cow<'static, str>>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub(crate) pod_uid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub(crate) systemd_unit: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub(crate) pod: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub(crate) namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub(crate) container: Option<String>,
    #[serde(flatten)]
    pub(crate) rates: Rates,
    pub(crate) started_per_s: Option<f64>,
    pub(crate) failed_per_s: Option<f64>,
    /// Live processes.
    pub(crate) running: u64,
    /// Memory charged to its cgroup and the cgroup's limit (`None`: unlimited or not
    /// accounted).
    pub(crate) memory_bytes: Option<u64>,
    pub(crate) memory_limit_bytes: Option<u64>,
    /// CPUs' worth its cgroup may use (`None`: unlimited).
    pub(crate) cpu_limit: Option<f64>,
    /// A Kubernetes pod's CPU request, from its cgroup's CPU shares (`None` outside pods).
    pub(crate) cpu_request: Option<f64>,
    /// Health states (starved, failing, io_bound, churning) and why.
    #[serde(default)]
    pub(crate) states: BTreeMap<String, String>,
    /// Unix seconds of the health evaluation that first saw these states.
    pub(crate) states_since: Option<f64>,
}

impl WorkloadRow {
    fn new(
        workload: &Workload,
        running: u64,
        now: &Counters,
        before: Option<&Counters>,
        seconds: f64,
    ) -> Self {
        Self {
            cgroup: workload.cgroup.clone(),
            container_id: workload.container_id.clone(),
            runtime: workload.runtime.map(Cow::Borrowed),
            pod_uid: workload.pod_uid.clone(),
            systemd_unit: workload.systemd_unit.clone(),
            pod: None,
            namespace: None,
            container: None,
            rates: Rates::between(now, before, seconds),
            started_per_s: rate(now, before, seconds, |c| c.started),
            failed_per_s: rate(now, before, seconds, |c| c.failed),
            running,
            memory_bytes: None,
            memory_limit_bytes: None,
            cpu_limit: None,
            cpu_request: None,
            states: BTreeMap::new(),
            states_since: None,
        }
    }

    /// Fills in its cgroup's memory and CPU limits.
    fn read_limits(&mut self, limits: &CgroupLimits) {
        let figures = limits.of(&self.cgroup, self.pod_uid.is_some());
        self.memory_bytes = figures.memory_bytes;
        self.memory_limit_bytes = figures.memory_limit_bytes;
        self.cpu_limit = figures.cpu_limit;
        self.cpu_request = figures.cpu_request;
    }
}

/// Processes running, started and failed, over every workload.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub(crate) struct ProcessRates {
    pub(crate) running: u64,
    pub(crate) started_per_s: Option<f64>,
    pub(crate) failed_per_s: Option<f64>,
}

impl ProcessRates {
    fn add(&mut self, row: &WorkloadRow) {
        self.running += row.running;
        let add = |sum: &mut Option<f64>, rate: Option<f64>| {
            if let Some(rate) = rate {
                *sum = Some(sum.unwrap_or(0.0) + rate);
            }
        };
        add(&mut self.started_per_s, row.started_per_s);
        add(&mut self.failed_per_s, row.failed_per_s);
    }
}

/// The node in the interval.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct NodeSection {
    pub(crate) interval_s: f64,
    /// Share of the interval each CPU was busy (`None`: not yet seen).
    pub(crate) cpu_busy: Vec<Option<f64>>,
    /// CPUs' worth of busy time, over the CPUs seen.
    pub(crate) busy_cpus: f64,
    /// Share of the interval's closed idle time that was in periods shorter than
    /// [`FRAGMENT_BELOW_NS`] (`None`: no idle period closed).
    pub(crate) idle_fragmented_share: Option<f64>,
    pub(crate) fragment_below_ns: u64,
    pub(crate) memory_total_bytes: Option<u64>,
    pub(crate) memory_available_bytes: Option<u64>,
    /// Share of free memory not in blocks of 2 MiB or more (/proc/buddyinfo).
    pub(crate) memory_fragmented_share: Option<f64>,
    /// Share of the interval some (or all) tasks stalled on each resource (/proc/pressure).
    pub(crate) pressure: Vec<Pressure>,
    pub(crate) processes: ProcessRates,
}

/// Stall shares of one resource.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Pressure {
    pub(crate) resource: Cow<'static, str>,
    pub(crate) some: Option<f64>,
    pub(crate) full: Option<f64>,
}

fn node_section(
    inputs: &Inputs<'_>,
    previous: Option<&ProcReadings>,
    processes: &ProcessRates,
    seconds: f64,
) -> NodeSection {
    let frame = inputs.frame;
    let (mut idle, mut fragmented) = (0u64, 0u64);
    for buckets in &frame.cpu_idle_ns_by_bucket {
        for (index, ns) in buckets.iter().enumerate() {
            idle += ns;
            if histogram::below_ns(index).is_some_and(|below| below <= FRAGMENT_BELOW_NS) {
                fragmented += ns;
            }
        }
    }
    let pressure = inputs
        .proc
        .pressure
        .iter()
        .map(|&(resource, some, full)| {
            let before = previous.and_then(|p| p.pressure.iter().find(|r| r.0 == resource));
            let share = |now: Option<u64>, before: Option<u64>| {
                let stalled_us = now?.checked_sub(before?)?;
                (seconds > 0.0).then(|| (stalled_us as f64 / 1e6 / seconds).min(1.0))
            };
            Pressure {
                resource: Cow::Borrowed(resource),
                some: share(some, before.and_then(|b| b.1)),
                full: share(full, before.and_then(|b| b.2)),
            }
        })
        .collect();
    NodeSection {
        interval_s: seconds,
        cpu_busy: frame.cpu_busy.clone(),
        busy_cpus: frame.cpu_busy.iter().flatten().sum(),
        idle_fragmented_share: (idle > 0).then(|| fragmented as f64 / idle as f64),
        fragment_below_ns: FRAGMENT_BELOW_NS,
        memory_total_bytes: inputs.proc.memory.map(|m| m.0),
        memory_available_bytes: inputs.proc.memory.map(|m| m.1),
        memory_fragmented_share: memory_fragmented_share(&inputs.proc.zones),
        pressure,
        processes: processes.clone(),
    }
}

/// Share of free pages in blocks smaller than 2 MiB, over every zone.
fn memory_fragmented_share(zones: &[ZoneFreeBlocks]) -> Option<f64> {
    let (mut free, mut small) = (0u64, 0u64);
    for zone in zones {
        for (order, blocks) in zone.free_blocks.iter().enumerate() {
            let pages = blocks.saturating_mul(1 << order.min(63));
            free = free.saturating_add(pages);
            if order < UNFRAGMENTED_ORDER {
                small = small.saturating_add(pages);
            }
        }
    }
    (free > 0).then(|| small as f64 / free as f64)
}

#[derive(Debug, Serialize)]
struct AgentSection<'a> {
    /// The latest health evaluation: status, components and why (`None` before the first).
    health: Option<AgentHealth<'a>>,
    /// CPUs' worth of the agent's own CPU time in the interval.
    cpu: Option<f64>,
    rss_bytes: Option<u64>,
    /// Time the kernel programs ran (ns, since they were loaded; counted only while the
    /// kernel's BPF statistics are on).
    bpf_run_ns: u64,
    /// Data lost since the agent started, by source and reason.
    lost: &'a [crate::model::snapshot::LossView],
    lost_total: u64,
    live_processes: usize,
    kernel_tasks: usize,
}

#[derive(Debug, Serialize)]
struct AgentHealth<'a> {
    status: crate::health::Status,
    message: &'a str,
    /// Unix seconds of the evaluation.
    timestamp: f64,
    components: &'a BTreeMap<String, crate::health::Component>,
}

fn agent_section<'a>(
    inputs: &'a Inputs<'_>,
    previous: Option<&ProcReadings>,
    seconds: f64,
) -> AgentSection<'a> {
    let cpu = previous
        .and_then(|p| p.agent_cpu_ns)
        .zip(inputs.proc.agent_cpu_ns)
        .filter(|_| seconds > 0.0)
        .map(|(before, now)| now.saturating_sub(before) as f64 / 1e9 / seconds);
    AgentSection {
        health: inputs.health.map(|report| AgentHealth {
            status: report.status,
            message: &report.message,
            timestamp: report.timestamp,
            components: &report.components,
        }),
        cpu,
        rss_bytes: inputs.proc.agent_rss_bytes,
        bpf_run_ns: inputs.status.bpf_run_time_ns,
        lost: &inputs.status.lost,
        lost_total: inputs.status.lost.iter().map(|l| l.count).sum(),
        live_processes: inputs.status.live_processes,
        kernel_tasks: inputs.status.kernel_tasks,
    }
}

#[derive(Debug, Serialize)]
struct HeatmapsSection<'a> {
    /// The column's time (the end of its interval).
    unix_ms: u64,
    /// One cell per CPU: its busy share.
    cpu_busy: &'a [Option<f64>],
    /// Run-queue waits of the node by log2 bucket (as the runqueue heatmap's rows).
    node_runqueue: &'a [u64],
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_workload_cpu_is_averaged_over_the_window() {
        let mut builder = LiveBuilder::default();
        let mut before: Option<Counters> = None;
        let mut cpus = Vec::new();
        // A task that leaves the CPU seldom: its time arrives in lumps (0, 2 s, 0, 1 s, 0).
        for on_cpu_s in [0u64, 0, 2, 2, 3, 3] {
            if builder.intervals.len() == CPU_WINDOW_FRAMES {
                builder.intervals.pop_front();
            }
            builder.intervals.push_back(1_000_000_000);
            let mut totals = WorkloadTotals::default();
            totals.sched.on_cpu_ns = on_cpu_s * 1_000_000_000;
            let now = Counters::of(&totals, before.as_ref());
            cpus.push(before.and_then(|b| builder.cpu_over_window(&b, &now)));
            before = Some(now);
        }
        let rounded: Vec<Option<f64>> = cpus
            .iter()
            .map(|c| c.map(|c| (c * 1000.0).round() / 1000.0))
            .collect();
        // Per second this would be 0, 2, 0, 1, 0.
        assert_eq!(
            rounded,
            vec![
                None,
                Some(0.0),
                Some(1.0),
                Some(0.667),
                Some(1.0),
                Some(0.333)
            ]
        );
    }

    fn process(pid: u32, start_ticks: u64, on_cpu_s: f64, syscalls: u64) -> ProcessCounters {
        ProcessCounters {
            pid,
            start_ticks,
            ppid: 1,
            comm: format!("p{pid}"),
            cgroup: Some("/w".into()),
            threads: 1,
            sched: SchedTotals {
                on_cpu_ns: (on_cpu_s * 1e9) as u64,
                ..SchedTotals::default()
            },
            syscalls,
            syscall_errors: 0,
            io_bytes: 0,
        }
    }

    #[test]
    fn the_process_table_makes_rates_per_process_and_keeps_the_busiest() {
        let directories = crate::metadata::Directories::disabled();
        let names = directories.read();
        let mut builder = LiveBuilder::default();
        builder.intervals.push_back(1_000_000_000);
        let first = builder.process_rows(&[process(10, 5, 1.0, 100)], &names, 1.0);
        assert_eq!(first.rows[0].rates.cpu, None, "nothing to compare with yet");
        builder.intervals.push_back(1_000_000_000);
        // Pid 10 is a new process (another start): no rates; pid 11 spun half a CPU.
        let many: Vec<ProcessCounters> = (0..MAX_PROCESS_ROWS as u32 + 5)
            .map(|i| process(100 + i, 1, 0.0, 0))
            .chain([process(10, 6, 0.2, 0), process(11, 1, 0.5, 50)])
            .collect();
        builder.process_rows(&many, &names, 1.0);
        builder.intervals.push_back(1_000_000_000);
        let mut next = many.clone();
        if let Some(spinner) = next.iter_mut().find(|p| p.pid == 11) {
            spinner.sched.on_cpu_ns += 500_000_000;
            spinner.syscalls += 30;
        }
        let table = builder.process_rows(&next, &names, 1.0);
        assert_eq!(table.total, MAX_PROCESS_ROWS + 7);
        assert_eq!(table.left_out, 7);
        assert_eq!(table.rows.len(), MAX_PROCESS_ROWS);
        let top = &table.rows[0];
        assert_eq!((top.pid, top.rates.cpu), (11, Some(0.5)));
        assert_eq!(top.rates.syscalls_per_s, Some(30.0));
        builder.pause();
        assert!(builder.previous_processes.is_empty());
    }

    #[test]
    fn memory_fragmentation_is_the_share_of_free_pages_in_small_blocks() {
        let zone = ZoneFreeBlocks {
            node: 0,
            zone: "Normal".into(),
            // 4 single pages, and one 2 MiB block (order 9: 512 pages).
            free_blocks: vec![4, 0, 0, 0, 0, 0, 0, 0, 0, 1],
        };
        let share = memory_fragmented_share(&[zone]).expect("a share");
        assert!((share - 4.0 / 516.0).abs() < 1e-12, "{share}");
        assert_eq!(memory_fragmented_share(&[]), None);
    }
}
