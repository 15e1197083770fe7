//! Custom metrics (`[[custom_metrics]]`, `/api/v1/custom-metrics`): their definitions, the
//! uprobes each is attached with, and their figures. One owner: the collector.
//!
//! A definition names its binary as the processes that run it see it. Containers run their
//! own copy, so the binary is looked up in every mount namespace on the node (through
//! `/proc/<pid>/root`) and attached once per distinct file (device and inode): a uprobe is
//! the kernel's per inode, so it covers every process that maps the file, those that start
//! later included. Every [`RESCAN_EVERY`] the namespaces are looked at again, for containers
//! started since with a copy of their own.

use std::{
    collections::BTreeMap,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use aya::maps::{HashMap as BpfHashMap, MapData};
use serde::{Deserialize, Serialize};
use taskscope_common::{
    bucket_upper_bound_ns, contract::maps, custom, CustomKey, CustomStarts, CustomStat,
    HIST_BUCKETS,
};
use tracing::{info, warn};

use crate::{
    bpf_sys::{attach_uprobe, UprobeLink, UprobeTarget},
    model::{
        custom::{CustomFamily, CustomKind, CustomLedger},
        process::Process,
        selector::ProcessSelector,
        snapshot::LossView,
        TaskModel,
    },
    probes::{
        points::{locate, Location, ProbePoint},
        Probes,
    },
    procfs,
    syscall_names::syscall_number,
};

/// Attached uprobes at most, over every definition; one more is counted lost.
pub(crate) const MAX_LINKS: usize = 1024;
/// How often the mount namespaces are looked at again for new copies of the binaries.
pub(crate) const RESCAN_EVERY: Duration = Duration::from_secs(10);
/// Binaries larger than this are not read (their symbols could not be looked up in bounded
/// memory).
const MAX_BINARY_BYTES: u64 = 256 << 20;
/// Problems a definition keeps (the latest), for the API and health.
const MAX_PROBLEMS: usize = 8;
/// Live processes listed per definition in the API (the most frequent).
const MAX_API_PROCESSES: usize = 100;

/// One custom metric as the config file and the admin API write it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CustomDefinitionText {
    pub(crate) name: String,
    pub(crate) kind: CustomKind,
    pub(crate) start: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) end: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) selector: Option<String>,
}

/// A validated definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CustomDefinition {
    pub(crate) text: CustomDefinitionText,
    pub(crate) start: ProbePoint,
    pub(crate) end: Option<ProbePoint>,
    pub(crate) selector: Option<ProcessSelector>,
}

/// Names become metric names (`taskscope_custom_<name>_total`): lowercase letters, digits and
/// `_`, not starting with a digit.
const MAX_NAME: usize = 64;

impl TryFrom<CustomDefinitionText> for CustomDefinition {
    type Error = String;

    fn try_from(text: CustomDefinitionText) -> Result<Self, String> {
        let name = &text.name;
        let valid_name = !name.is_empty()
            && name.len() <= MAX_NAME
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !valid_name {
            return Err(format!(
                "custom metric name '{}' must be 1 to {MAX_NAME} of a-z, 0-9 and _, not starting with a digit (it becomes taskscope_custom_<name>_total)",
                name.escape_debug()
            ));
        }
        let point = |which: &str, value: &str| {
            value
                .parse::<ProbePoint>()
                .map_err(|e| format!("custom metric {name}: {which}: {e}"))
        };
        let start = point("start", &text.start)?;
        let end = text.end.as_deref().map(|e| point("end", e)).transpose()?;
        match (text.kind, &end) {
            (CustomKind::Count, Some(_)) => {
                return Err(format!(
                    "custom metric {name}: kind \"count\" counts `start` and takes no `end`; use kind \"latency\" to time start to end"
                ))
            }
            (CustomKind::Latency, None) => {
                return Err(format!(
                    "custom metric {name}: kind \"latency\" needs an `end` (the point that stops the clock on the same thread)"
                ))
            }
            _ => {}
        }
        if let ProbePoint::Syscalls(names) = &start {
            if text.kind == CustomKind::Latency {
                return Err(format!(
                    "custom metric {name}: a syscall: source counts calls (kind \"count\"); their latency per workload is taskscope_syscall_latency_seconds"
                ));
            }
            if let Some(unknown) = names.iter().find(|n| syscall_number(n).is_none()) {
                return Err(format!(
                    "custom metric {name}: start: no syscall is called '{}' on this architecture (names as in syscalls(2): read, openat, ...)",
                    unknown.escape_debug()
                ));
            }
        }
        if matches!(end, Some(ProbePoint::Syscalls(_))) {
            return Err(format!(
                "custom metric {name}: end: a syscall: source cannot end a latency; time a function or a USDT probe pair"
            ));
        }
        let selector = text
            .selector
            .as_deref()
            .map(|s| s.parse::<ProcessSelector>())
            .transpose()
            .map_err(|e| format!("custom metric {name}: selector: {e}"))?;
        Ok(CustomDefinition {
            start,
            end,
            selector,
            text,
        })
    }
}

impl CustomDefinition {
    /// The syscall numbers a `syscall:` definition counts (none for a probe point).
    fn syscall_numbers(&self) -> Vec<u32> {
        match &self.start {
            ProbePoint::Syscalls(names) => names.iter().filter_map(|n| syscall_number(n)).collect(),
            _ => Vec::new(),
        }
    }
}

/// Where a definition came from: a reload replaces the file's, never the API's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Origin {
    File,
    Api,
}

/// One file a definition is attached to.
#[derive(Debug)]
struct AttachedFile {
    /// The path this agent opened it by.
    path: PathBuf,
    links: Vec<UprobeLink>,
    /// Bit `i`: point `i` (0 start, 1 end) is attached here.
    points: u8,
}

/// A definition in effect.
#[derive(Debug)]
struct ActiveMetric {
    definition: CustomDefinition,
    origin: Origin,
    /// By (device, inode).
    files: BTreeMap<(u64, u64), AttachedFile>,
    /// The latest problems (a copy that could not be probed), newest last.
    problems: Vec<String>,
    /// (file, point) pairs that could not be probed: not read again at each look.
    failed: std::collections::BTreeSet<((u64, u64), usize)>,
}

impl ActiveMetric {
    fn links(&self) -> usize {
        self.files.values().map(|f| f.links.len()).sum()
    }

    fn note(&mut self, problem: String) {
        if self.problems.contains(&problem) {
            return;
        }
        if self.problems.len() == MAX_PROBLEMS {
            self.problems.remove(0);
        }
        self.problems.push(problem);
    }
}

/// The custom metrics in effect and their figures.
pub(crate) struct CustomMetrics {
    /// Index = the metric's number in the kernel (its cookie).
    slots: Vec<Option<ActiveMetric>>,
    stats: Option<BpfHashMap<MapData, CustomKey, CustomStat>>,
    /// Threads' latency starts: a removed definition's are cleared, so that a definition
    /// given its number later does not end a start that was not its own.
    starts: Option<BpfHashMap<MapData, u32, CustomStarts>>,
    ledger: CustomLedger,
    last_scan: Option<Instant>,
    /// Uprobes not attached because [`MAX_LINKS`] were.
    pub(crate) links_over_cap: u64,
    /// Entries of the kernel map that could not be read or deleted.
    pub(crate) map_errors: u64,
}

/// A definition, its state and its figures, as the API shows them.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct CustomMetricView {
    #[serde(flatten)]
    pub(crate) definition: CustomDefinitionText,
    pub(crate) origin: Origin,
    /// `attached`, or `degraded` when some copy of the binary could not be probed.
    pub(crate) state: &'static str,
    pub(crate) problems: Vec<String>,
    pub(crate) files: Vec<AttachedFileView>,
    /// Kernel ids of its links (`bpftool link` lists them).
    pub(crate) link_ids: Vec<u32>,
    pub(crate) workloads: Vec<CustomFigures>,
    pub(crate) processes: Vec<CustomFigures>,
}

/// A definition's state, for `/api/v1/status` and health.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct CustomMetricState {
    pub(crate) name: String,
    /// `attached`, or `degraded` when some copy of the binary could not be probed.
    pub(crate) state: &'static str,
    pub(crate) files: usize,
    pub(crate) probes: usize,
    pub(crate) problems: Vec<String>,
}

/// One probed file.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct AttachedFileView {
    pub(crate) path: String,
    pub(crate) device: u64,
    pub(crate) inode: u64,
    pub(crate) probes: usize,
}

/// A metric's figures for one workload (`cgroup`) or process (`pid`).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct CustomFigures {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) cgroup: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) pid: Option<u32>,
    pub(crate) count: u64,
    /// Latency only: the sum of the measured times.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) total_ns: Option<u64>,
    /// Latency only: non-empty log2 buckets (`le_ns`: values below it).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) latency: Vec<BucketView>,
}

/// One log2 bucket.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct BucketView {
    pub(crate) le_ns: u64,
    pub(crate) count: u64,
}

fn figures(kind: CustomKind, stat: &CustomStat) -> CustomFigures {
    let latency = kind == CustomKind::Latency;
    CustomFigures {
        cgroup: None,
        pid: None,
        count: stat.count,
        total_ns: latency.then_some(stat.total_ns),
        latency: if latency {
            (0..HIST_BUCKETS)
                .filter(|&i| stat.hist[i] > 0)
                .map(|i| BucketView {
                    le_ns: bucket_upper_bound_ns(i),
                    count: stat.hist[i],
                })
                .collect()
        } else {
            Vec::new()
        },
    }
}

impl CustomMetrics {
    /// Takes the kernel's map of figures from `probes` (none: custom metrics cannot be had).
    pub(crate) fn new(probes: &mut Probes) -> Self {
        let stats = probes
            .ebpf
            .take_map(maps::CUSTOM_STATS)
            .and_then(|map| BpfHashMap::try_from(map).ok());
        let starts = probes
            .ebpf
            .take_map(maps::CUSTOM_STARTS)
            .and_then(|map| BpfHashMap::try_from(map).ok());
        CustomMetrics {
            slots: (0..custom::MAX_METRICS).map(|_| None).collect(),
            stats,
            starts,
            ledger: CustomLedger::default(),
            last_scan: None,
            links_over_cap: 0,
            map_errors: 0,
        }
    }

    fn active(&self) -> impl Iterator<Item = (u32, &ActiveMetric)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| Some((i as u32, s.as_ref()?)))
    }

    fn links(&self) -> usize {
        self.active().map(|(_, m)| m.links()).sum()
    }

    /// Puts `definition` into effect: attached to every copy of its binary now on the node.
    /// An error (nothing attached for one of its points, a name in use, no room) names the
    /// problem and leaves nothing behind.
    pub(crate) fn add(
        &mut self,
        probes: &mut Probes,
        definition: CustomDefinition,
        origin: Origin,
    ) -> Result<CustomMetricView, String> {
        let name = definition.text.name.clone();
        if self.active().any(|(_, m)| m.definition.text.name == name) {
            return Err(format!(
                "custom metric {name} is already defined; remove it first"
            ));
        }
        let Some(index) = self.slots.iter().position(Option::is_none) else {
            return Err(format!(
                "custom metric {name}: {} are defined, the most the agent keeps; remove one first",
                custom::MAX_METRICS
            ));
        };
        if self.stats.is_none() {
            return Err(format!(
                "custom metric {name}: the kernel object has no {} map",
                maps::CUSTOM_STATS
            ));
        }
        let mut metric = ActiveMetric {
            definition,
            origin,
            files: BTreeMap::new(),
            problems: Vec::new(),
            failed: Default::default(),
        };
        let roots = procfs::mount_namespace_roots();
        let budget = MAX_LINKS.saturating_sub(self.links());
        let found = attach_new_files(probes, index as u32, &mut metric, &roots, budget)?;
        if found.unattached_point {
            let why = metric.problems.join("; ");
            return Err(format!(
                "custom metric {name}: could not attach: {}",
                if why.is_empty() {
                    format!(
                        "{} is in none of the {} root filesystems on this node (mount namespaces and chroots, through /proc/<pid>/root)",
                        binaries(&metric.definition).join(" and "),
                        roots.len()
                    )
                } else {
                    why
                }
            ));
        }
        self.links_over_cap += found.over_cap;
        info!(
            metric = %name,
            files = metric.files.len(),
            probes = metric.links(),
            "custom metric attached"
        );
        self.slots[index] = Some(metric);
        self.view(index as u32)
            .ok_or_else(|| format!("custom metric {name}: lost after attaching"))
    }

    /// Detaches and forgets the definition called `name`; false when there is none.
    pub(crate) fn remove(&mut self, name: &str) -> bool {
        let Some(index) = self
            .active()
            .find(|(_, m)| m.definition.text.name == name)
            .map(|(i, _)| i)
        else {
            return false;
        };
        // Dropping the links detaches them.
        self.slots[index as usize] = None;
        let keys = self.ledger.forget_metric(index);
        self.delete_kernel_entries(&keys);
        // Entries the ledger never saw (written after the last read).
        if let Some(stats) = &self.stats {
            let rest: Vec<CustomKey> = stats
                .keys()
                .filter_map(Result::ok)
                .filter(|k| k.metric == index)
                .collect();
            self.delete_kernel_entries(&rest);
        }
        self.clear_starts(index);
        info!(metric = %name, "custom metric removed; its probes are detached");
        true
    }

    /// Replaces the file's definitions with `wanted` (a reload): all of it or, on any error,
    /// nothing. Definitions added through the API stay.
    pub(crate) fn replace_file_definitions(
        &mut self,
        probes: &mut Probes,
        wanted: Vec<CustomDefinition>,
    ) -> Result<(), String> {
        let unchanged = |d: &CustomDefinition, slots: &[Option<ActiveMetric>]| {
            slots
                .iter()
                .flatten()
                .any(|m| m.origin == Origin::File && &m.definition == d)
        };
        let stale: Vec<String> = self
            .active()
            .filter(|(_, m)| m.origin == Origin::File && !wanted.contains(&m.definition))
            .map(|(_, m)| m.definition.text.name.clone())
            .collect();
        let fresh: Vec<CustomDefinition> = wanted
            .into_iter()
            .filter(|d| !unchanged(d, &self.slots))
            .collect();
        // A changed definition keeps its name: the old one goes first, and comes back on error.
        let mut removed = Vec::new();
        for name in &stale {
            if let Some((_, m)) = self.active().find(|(_, m)| &m.definition.text.name == name) {
                removed.push(m.definition.clone());
            }
            self.remove(name);
        }
        let mut added = Vec::new();
        for definition in fresh {
            let name = definition.text.name.clone();
            match self.add(probes, definition, Origin::File) {
                Ok(_) => added.push(name),
                Err(error) => {
                    for name in &added {
                        self.remove(name);
                    }
                    for definition in removed {
                        if let Err(again) = self.add(probes, definition, Origin::File) {
                            warn!(%again, "a custom metric of the previous configuration could not be attached again");
                        }
                    }
                    return Err(error);
                }
            }
        }
        Ok(())
    }

    /// Looks for copies of the binaries started since the last look (every [`RESCAN_EVERY`]).
    pub(crate) fn rescan_if_due(&mut self, probes: &mut Probes) {
        let due = self.last_scan.is_none_or(|at| at.elapsed() >= RESCAN_EVERY);
        if !due || self.active().next().is_none() {
            return;
        }
        self.last_scan = Some(Instant::now());
        let roots = procfs::mount_namespace_roots();
        for index in 0..self.slots.len() {
            let budget = MAX_LINKS.saturating_sub(self.links());
            let Some(metric) = self.slots[index].as_mut() else {
                continue;
            };
            if let Ok(found) = attach_new_files(probes, index as u32, metric, &roots, budget) {
                self.links_over_cap += found.over_cap;
            }
        }
    }

    /// Reads the kernel's figures into the ledger and deletes the entries of processes gone.
    pub(crate) fn read(&mut self, model: &mut TaskModel) {
        let Some(stats) = &self.stats else {
            return;
        };
        if self.active().next().is_none() && self.ledger.is_empty() {
            return;
        }
        let mut read = Vec::new();
        for entry in stats.iter() {
            match entry {
                Ok(entry) => read.push(entry),
                Err(_) => self.map_errors += 1,
            }
        }
        let selectors: Vec<Option<ProcessSelector>> = self
            .slots
            .iter()
            .map(|s| s.as_ref().and_then(|m| m.definition.selector.clone()))
            .collect();
        let selected = |metric: u32, process: Option<&Process>| {
            match (selectors.get(metric as usize), process) {
                (Some(Some(selector)), Some(process)) => selector.matches(process),
                // A process never known cannot be picked by a selector.
                (Some(Some(_)), None) => false,
                (Some(None), _) => true,
                (None, _) => false,
            }
        };
        read.extend(self.syscall_figures(model));
        // syscall: metrics are made of the model's counters, not of kernel entries.
        let from_model: Vec<u32> = self
            .active()
            .filter(|(_, m)| m.definition.start.binary().is_none())
            .map(|(i, _)| i)
            .collect();
        let applied = self.ledger.apply(&read, model, &selected, &|metric| {
            from_model.contains(&metric)
        });
        self.delete_kernel_entries(&applied.forget);
    }

    /// What each process counted of the syscalls of each `syscall:` definition, as kernel
    /// entries would say it (in the cgroup the process is in now).
    fn syscall_figures(&self, model: &TaskModel) -> Vec<(CustomKey, CustomStat)> {
        let mut out = Vec::new();
        for (index, metric) in self.active() {
            let numbers = metric.definition.syscall_numbers();
            if numbers.is_empty() {
                continue;
            }
            for process in model.live().chain(model.exited()) {
                let count: u64 = numbers
                    .iter()
                    .filter_map(|nr| process.syscalls.get(nr))
                    .map(|c| c.count)
                    .sum();
                if count == 0 {
                    continue;
                }
                let key = CustomKey {
                    tgid: process.pid,
                    metric: index,
                    cgroup_id: process.cgroup_id.unwrap_or(0),
                };
                let stat = CustomStat {
                    count,
                    ..CustomStat::default()
                };
                out.push((key, stat));
            }
        }
        out
    }

    /// Clears metric `index`'s starts in every thread's entry (its probes are detached: no
    /// new one comes).
    fn clear_starts(&mut self, index: u32) {
        let Some(starts) = &mut self.starts else {
            return;
        };
        let threads: Vec<(u32, CustomStarts)> = starts.iter().filter_map(Result::ok).collect();
        for (tid, mut entry) in threads {
            let Some(slot) = entry.ts_ns.get_mut(index as usize) else {
                continue;
            };
            if *slot == 0 {
                continue;
            }
            *slot = 0;
            // BPF_EXIST: a thread whose entry went meanwhile (its last end, its exit) is left
            // alone. A start of another metric written between the read and this write is
            // lost (its end is counted as `end_without_start`): removals are rare.
            const BPF_EXIST: u64 = 2;
            let _ = starts.insert(tid, entry, BPF_EXIST);
        }
    }

    fn delete_kernel_entries(&mut self, keys: &[CustomKey]) {
        let Some(stats) = &mut self.stats else {
            return;
        };
        for key in keys {
            if stats.remove(key).is_err() {
                self.map_errors += 1;
            }
        }
    }

    /// Occurrences lost in userspace (source `custom_metrics`).
    pub(crate) fn losses(&self) -> impl Iterator<Item = LossView> {
        [
            ("probe_cap", self.links_over_cap),
            ("workload_evicted", self.ledger.losses.workloads_evicted),
            ("unknown_process", self.ledger.losses.unknown_process),
            ("map_error", self.map_errors),
        ]
        .into_iter()
        .map(|(reason, count)| LossView {
            source: "custom_metrics",
            reason,
            count,
        })
    }

    /// The definition in slot `index` as the API shows it.
    fn view(&self, index: u32) -> Option<CustomMetricView> {
        let metric = self.slots.get(index as usize)?.as_ref()?;
        let kind = metric.definition.text.kind;
        let workloads = self
            .ledger
            .workloads(index)
            .iter()
            .map(|(cgroup, stat)| CustomFigures {
                cgroup: Some(cgroup.to_string()),
                ..figures(kind, stat)
            })
            .collect();
        let mut processes: Vec<CustomFigures> = self
            .ledger
            .processes(index)
            .iter()
            .map(|(&pid, stat)| CustomFigures {
                pid: Some(pid),
                ..figures(kind, stat)
            })
            .collect();
        processes.sort_by(|a, b| b.count.cmp(&a.count).then(a.pid.cmp(&b.pid)));
        processes.truncate(MAX_API_PROCESSES);
        Some(CustomMetricView {
            definition: metric.definition.text.clone(),
            origin: metric.origin,
            state: state_of(metric),
            problems: metric.problems.clone(),
            files: metric
                .files
                .iter()
                .map(|(&(device, inode), file)| AttachedFileView {
                    path: file.path.display().to_string(),
                    device,
                    inode,
                    probes: file.links.len(),
                })
                .collect(),
            link_ids: metric
                .files
                .values()
                .flat_map(|f| f.links.iter().filter_map(UprobeLink::id))
                .collect(),
            workloads,
            processes,
        })
    }

    /// Every definition's state, in name order.
    pub(crate) fn states(&self) -> Vec<CustomMetricState> {
        let mut states: Vec<CustomMetricState> = self
            .active()
            .map(|(_, m)| CustomMetricState {
                name: m.definition.text.name.clone(),
                state: state_of(m),
                files: m.files.len(),
                probes: m.links(),
                problems: m.problems.clone(),
            })
            .collect();
        states.sort_by(|a, b| a.name.cmp(&b.name));
        states
    }

    /// Every definition, in name order.
    pub(crate) fn views(&self) -> Vec<CustomMetricView> {
        let mut views: Vec<CustomMetricView> =
            self.active().filter_map(|(i, _)| self.view(i)).collect();
        views.sort_by(|a, b| a.definition.name.cmp(&b.definition.name));
        views
    }

    /// Every definition's per-workload figures, for /metrics and OTLP.
    pub(crate) fn families(&self) -> Vec<CustomFamily> {
        let mut families: Vec<CustomFamily> = self
            .active()
            .map(|(index, metric)| CustomFamily {
                name: metric.definition.text.name.clone(),
                kind: metric.definition.text.kind,
                workloads: self
                    .ledger
                    .workloads(index)
                    .into_iter()
                    .map(|(cgroup, stat)| (cgroup.to_string(), stat))
                    .collect(),
            })
            .collect();
        families.sort_by(|a, b| a.name.cmp(&b.name));
        families
    }
}

fn state_of(metric: &ActiveMetric) -> &'static str {
    if metric.problems.is_empty() {
        "attached"
    } else {
        "degraded"
    }
}

/// The binaries a definition probes.
fn binaries(definition: &CustomDefinition) -> Vec<String> {
    let mut out: Vec<String> = [Some(&definition.start), definition.end.as_ref()]
        .into_iter()
        .flatten()
        .filter_map(|p| p.binary())
        .map(|b| b.display().to_string())
        .collect();
    out.dedup();
    out
}

/// What one look at the namespaces found.
#[derive(Debug, Default)]
struct Found {
    /// A point of the definition is attached nowhere.
    unattached_point: bool,
    over_cap: u64,
}

/// Most (file, point) pairs a definition remembers as not probeable.
const MAX_FAILED: usize = 1024;

/// Attaches `metric` (number `index`) to each copy of its binaries in `roots` it is not yet
/// attached to, with at most `budget` new links. A copy that cannot be probed is noted as a
/// problem; the error is for a definition that cannot work anywhere (no program).
fn attach_new_files(
    probes: &mut Probes,
    index: u32,
    metric: &mut ActiveMetric,
    roots: &[PathBuf],
    mut budget: usize,
) -> Result<Found, String> {
    if metric.definition.start.binary().is_none() {
        // The agent's own syscall accounting: nothing to attach.
        return Ok(Found::default());
    }
    let program = probes.custom_program()?;
    let latency = metric.definition.text.kind == CustomKind::Latency;
    let points: Vec<ProbePoint> = [Some(metric.definition.start.clone())]
        .into_iter()
        .chain([metric.definition.end.clone()])
        .flatten()
        .collect();
    let mut found = Found::default();
    for (which, point) in points.iter().enumerate() {
        let Some(binary) = point.binary() else {
            continue;
        };
        let bit = 1u8 << which;
        for root in roots {
            let Some(file) = procfs::open_in_root(root, binary) else {
                continue;
            };
            let Ok(meta) = file.metadata() else {
                continue;
            };
            // Shown as the root's view of it; handed to the kernel as the file this agent
            // opened (resolved inside the root), by its descriptor.
            let path = root.join(binary.strip_prefix("/").unwrap_or(binary));
            let opened = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
            let id = (meta.dev(), meta.ino());
            let done = metric.files.get(&id).is_some_and(|f| f.points & bit != 0);
            if done || metric.failed.contains(&(id, which)) {
                continue;
            }
            let locations = match read_locations(&file, meta.len(), point, binary) {
                Ok(locations) => locations,
                Err(problem) => {
                    metric.note(problem);
                    if metric.failed.len() < MAX_FAILED {
                        metric.failed.insert((id, which));
                    }
                    continue;
                }
            };
            let cookie = custom::cookie(index, latency, which == 1);
            let mut links = Vec::new();
            for location in locations {
                if budget == 0 {
                    found.over_cap += 1;
                    metric.note(format!(
                        "{} (as {}): not attached, {MAX_LINKS} probes are attached already (custom_metrics/probe_cap)",
                        binary.display(),
                        path.display()
                    ));
                    continue;
                }
                match attach_at(program, &opened, location, cookie) {
                    Ok(link) => {
                        links.push(link);
                        budget -= 1;
                    }
                    Err(e) => metric.note(format!(
                        "{} (as {}): attaching at file offset {:#x}: {e}",
                        binary.display(),
                        path.display(),
                        location.offset
                    )),
                }
            }
            if links.is_empty() {
                continue;
            }
            let file = metric.files.entry(id).or_insert_with(|| AttachedFile {
                path: path.clone(),
                links: Vec::new(),
                points: 0,
            });
            file.links.extend(links);
            file.points |= bit;
        }
        if !metric.files.values().any(|f| f.points & bit != 0) {
            found.unattached_point = true;
        }
    }
    Ok(found)
}

/// Where `point` is in `file` (`binary` as the definition names it).
fn read_locations(
    file: &std::fs::File,
    size: u64,
    point: &ProbePoint,
    binary: &Path,
) -> Result<Vec<Location>, String> {
    use std::io::Read;
    if size > MAX_BINARY_BYTES {
        return Err(format!(
            "{}: {size} bytes, larger than the {MAX_BINARY_BYTES} the agent reads",
            binary.display()
        ));
    }
    let mut data = Vec::with_capacity(size as usize);
    // `take`: the file may grow after the size was read.
    file.take(MAX_BINARY_BYTES)
        .read_to_end(&mut data)
        .map_err(|e| format!("{}: {e}", binary.display()))?;
    locate(point, &data).map_err(|e| format!("{}: {e}", binary.display()))
}

fn attach_at(
    program: std::os::fd::BorrowedFd<'_>,
    path: &Path,
    location: Location,
    cookie: u64,
) -> std::io::Result<UprobeLink> {
    attach_uprobe(
        program,
        UprobeTarget {
            path,
            offset: location.offset,
            retprobe: location.retprobe,
            ref_ctr_offset: location.semaphore,
            cookie,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(name: &str, kind: CustomKind, start: &str, end: Option<&str>) -> CustomDefinitionText {
        CustomDefinitionText {
            name: name.into(),
            kind,
            start: start.into(),
            end: end.map(str::to_string),
            selector: None,
        }
    }

    #[test]
    fn definitions_are_checked_before_anything_is_attached() {
        let check = |t: CustomDefinitionText| CustomDefinition::try_from(t).map(|_| ());
        assert!(check(text(
            "pg_query",
            CustomKind::Latency,
            "usdt:/p:postgresql:query__start",
            Some("usdt:/p:postgresql:query__done")
        ))
        .is_ok());
        assert!(
            check(text("Bad-Name", CustomKind::Count, "uprobe:/a:f", None))
                .unwrap_err()
                .contains("must be 1 to 64 of a-z")
        );
        assert!(check(text(
            "c",
            CustomKind::Count,
            "uprobe:/a:f",
            Some("uretprobe:/a:f")
        ))
        .unwrap_err()
        .contains("takes no `end`"));
        assert!(check(text("l", CustomKind::Latency, "uprobe:/a:f", None))
            .unwrap_err()
            .contains("needs an `end`"));
        assert!(check(text(
            "l",
            CustomKind::Latency,
            "uprobe:a:f",
            Some("uretprobe:/a:f")
        ))
        .unwrap_err()
        .contains("start: probe 'uprobe:a:f'"));
        assert!(check(text("s", CustomKind::Count, "syscall:read,openat", None)).is_ok());
        assert!(check(text("s", CustomKind::Count, "syscall:reed", None))
            .unwrap_err()
            .contains("no syscall is called 'reed'"));
        assert!(check(text(
            "s",
            CustomKind::Latency,
            "syscall:read",
            Some("syscall:read")
        ))
        .unwrap_err()
        .contains("counts calls"));
        let mut selected = text("s", CustomKind::Count, "uprobe:/a:f", None);
        selected.selector = Some("color=red".into());
        assert!(check(selected)
            .unwrap_err()
            .contains("selector: invalid process selector"));
    }
}
