//! The table of `taskscope top`: workloads or processes as lines, sorted by a column with a
//! stable order (equal figures keep the order they had), filtered by what was typed, and
//! processes as a tree.

use std::collections::HashMap;

use crate::viz::live::{ProcessRow, Rates, WorkloadRow};

/// What the table lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Workloads,
    Processes,
}

/// A column of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Column {
    Pid,
    Name,
    Cpu,
    RunqueueP99,
    Involuntary,
    Syscalls,
    Errors,
    Io,
    Failed,
    /// Processes of a workload, threads of a process.
    Count,
    Workload,
}

impl Column {
    /// The columns of a mode, left to right.
    pub(crate) fn of(mode: Mode) -> &'static [Column] {
        match mode {
            Mode::Workloads => &[
                Column::Name,
                Column::Cpu,
                Column::RunqueueP99,
                Column::Involuntary,
                Column::Syscalls,
                Column::Errors,
                Column::Io,
                Column::Failed,
                Column::Count,
            ],
            Mode::Processes => &[
                Column::Pid,
                Column::Name,
                Column::Cpu,
                Column::RunqueueP99,
                Column::Involuntary,
                Column::Syscalls,
                Column::Errors,
                Column::Io,
                Column::Count,
                Column::Workload,
            ],
        }
    }

    /// Its header in a mode.
    pub(crate) fn title(self, mode: Mode) -> &'static str {
        match self {
            Column::Pid => "PID",
            Column::Name if mode == Mode::Workloads => "WORKLOAD",
            Column::Name => "COMMAND",
            Column::Cpu => "CPU",
            Column::RunqueueP99 => "RQ p99",
            Column::Involuntary => "INV/s",
            Column::Syscalls => "SYS/s",
            Column::Errors => "ERR/s",
            Column::Io => "IO B/s",
            Column::Failed => "FAIL/s",
            Column::Count if mode == Mode::Workloads => "PROCS",
            Column::Count => "THR",
            Column::Workload => "WORKLOAD",
        }
    }

    /// Text columns sort A to Z first; figures the largest first.
    pub(crate) fn descending_first(self) -> bool {
        !matches!(self, Column::Name | Column::Workload | Column::Pid)
    }
}

/// One line of the table, from a workload or a process.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Line {
    /// What identifies it between frames: the cgroup, or the pid.
    pub(crate) key: String,
    pub(crate) pid: Option<u32>,
    pub(crate) ppid: Option<u32>,
    pub(crate) name: String,
    /// A process's workload; a workload's health states.
    pub(crate) workload: String,
    /// The cgroup (a workload's, or a process's).
    pub(crate) cgroup: String,
    pub(crate) rates: Rates,
    pub(crate) failed_per_s: Option<f64>,
    pub(crate) count: u64,
    /// Health states (workloads).
    pub(crate) states: Vec<String>,
    /// Depth in the process tree (0 outside tree view).
    pub(crate) depth: usize,
    /// Lower-case text a filter matches.
    search: String,
}

/// The name an operator knows a workload by: its container (with pod and namespace), its
/// systemd unit, or its cgroup.
pub(crate) fn workload_name(
    cgroup: &str,
    container: Option<&str>,
    pod: Option<&str>,
    namespace: Option<&str>,
    unit: Option<&str>,
) -> String {
    match (namespace, pod, container) {
        (Some(ns), Some(pod), Some(c)) => format!("{ns}/{pod}/{c}"),
        (_, _, Some(c)) => c.to_string(),
        _ => unit.map_or_else(|| cgroup.to_string(), str::to_string),
    }
}

impl Line {
    pub(crate) fn of_workload(row: &WorkloadRow) -> Self {
        let name = workload_name(
            &row.cgroup,
            row.container.as_deref(),
            row.pod.as_deref(),
            row.namespace.as_deref(),
            row.systemd_unit.as_deref(),
        );
        let states: Vec<String> = row.states.keys().cloned().collect();
        let search = [
            name.as_str(),
            &row.cgroup,
            row.container_id.as_deref().unwrap_or(""),
            &states.join(" "),
        ]
        .join(" ")
        .to_lowercase();
        Self {
            key: row.cgroup.clone(),
            pid: None,
            ppid: None,
            name,
            workload: states.join(","),
            cgroup: row.cgroup.clone(),
            rates: row.rates.clone(),
            failed_per_s: row.failed_per_s,
            count: row.running,
            states,
            depth: 0,
            search,
        }
    }

    pub(crate) fn of_process(row: &ProcessRow) -> Self {
        let cgroup = row.cgroup.clone().unwrap_or_default();
        let workload = workload_name(
            &cgroup,
            row.container.as_deref(),
            row.pod.as_deref(),
            row.namespace.as_deref(),
            None,
        );
        let search = format!("{} {} {} {}", row.pid, row.comm, workload, cgroup).to_lowercase();
        Self {
            key: row.pid.to_string(),
            pid: Some(row.pid),
            ppid: Some(row.ppid),
            name: row.comm.clone(),
            workload,
            cgroup,
            rates: row.rates.clone(),
            failed_per_s: None,
            count: row.threads as u64,
            states: Vec::new(),
            depth: 0,
            search,
        }
    }

    /// Whether every word of `filter` is in its names.
    pub(crate) fn matches(&self, filter: &str) -> bool {
        filter
            .to_lowercase()
            .split_whitespace()
            .all(|word| self.search.contains(word))
    }

    /// Its figure in `column`, rounded as it is shown, so that a change too small to see does
    /// not move it (`None`: no figure; sorts last).
    fn figure(&self, column: Column) -> Option<f64> {
        let r = &self.rates;
        match column {
            Column::Cpu => r.cpu.map(|c| (c * 100.0).round()),
            Column::RunqueueP99 => r.runqueue_p99_ns.map(|ns| ns as f64),
            Column::Involuntary => r.involuntary_switches_per_s.map(shown),
            Column::Syscalls => r.syscalls_per_s.map(shown),
            Column::Errors => r.syscall_errors_per_s.map(shown),
            Column::Io => r.io_bytes_per_s.map(shown),
            Column::Failed => self.failed_per_s.map(shown),
            Column::Count => Some(self.count as f64),
            Column::Pid => self.pid.map(f64::from),
            Column::Name | Column::Workload => None,
        }
    }
}

/// A rate rounded to the two significant digits the table shows.
fn shown(rate: f64) -> f64 {
    if rate < 1.0 {
        return (rate * 10.0).round() / 10.0;
    }
    let scale = 10f64.powi(rate.log10().floor() as i32 - 1);
    (rate / scale).round() * scale
}

/// Sorts `lines` by `column`, keeping the order of `previous` (keys, as last shown) between
/// lines whose figures are equal as shown, then by name.
pub(crate) fn sort(lines: &mut [Line], column: Column, descending: bool, previous: &[String]) {
    let position: HashMap<&str, usize> = previous
        .iter()
        .enumerate()
        .map(|(i, key)| (key.as_str(), i))
        .collect();
    let was = |line: &Line| {
        position
            .get(line.key.as_str())
            .copied()
            .unwrap_or(usize::MAX)
    };
    let directed = |order: std::cmp::Ordering| if descending { order.reverse() } else { order };
    lines.sort_by(|a, b| {
        let by_column = match column {
            Column::Name => directed(a.name.to_lowercase().cmp(&b.name.to_lowercase())),
            Column::Workload => directed(a.workload.cmp(&b.workload)),
            _ => match (a.figure(column), b.figure(column)) {
                (Some(x), Some(y)) => directed(x.total_cmp(&y)),
                // No figure yet: last either way.
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => std::cmp::Ordering::Equal,
            },
        };
        by_column
            .then_with(|| was(a).cmp(&was(b)))
            .then_with(|| a.name.cmp(&b.name))
            .then_with(|| a.key.cmp(&b.key))
    });
}

/// Orders sorted `lines` as a process tree: each after its parent (when its parent is
/// listed), siblings in their sorted order, with its depth set.
pub(crate) fn tree(lines: Vec<Line>) -> Vec<Line> {
    let listed: HashMap<u32, usize> = lines
        .iter()
        .enumerate()
        .filter_map(|(i, l)| l.pid.map(|pid| (pid, i)))
        .collect();
    let mut children: HashMap<usize, Vec<usize>> = HashMap::new();
    let mut roots = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let parent = line
            .ppid
            .and_then(|ppid| listed.get(&ppid))
            .filter(|&&p| p != i);
        match parent {
            Some(&p) => children.entry(p).or_default().push(i),
            None => roots.push(i),
        }
    }
    let mut order = Vec::with_capacity(lines.len());
    let mut seen = vec![false; lines.len()];
    let mut stack: Vec<(usize, usize)> = roots.iter().rev().map(|&i| (i, 0)).collect();
    while let Some((i, depth)) = stack.pop() {
        if std::mem::replace(&mut seen[i], true) {
            continue;
        }
        order.push((i, depth));
        for &child in children.get(&i).map_or(&[][..], Vec::as_slice).iter().rev() {
            stack.push((child, depth + 1));
        }
    }
    // A cycle of parents (pid reuse) leaves lines unreached: they go last, as roots.
    for (i, done) in seen.iter().enumerate() {
        if !done {
            order.push((i, 0));
        }
    }
    let mut slots: Vec<Option<Line>> = lines.into_iter().map(Some).collect();
    order
        .into_iter()
        .filter_map(|(i, depth)| {
            let mut line = slots[i].take()?;
            line.depth = depth;
            Some(line)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(pid: u32, ppid: u32, comm: &str, cpu: Option<f64>) -> Line {
        Line::of_process(&ProcessRow {
            pid,
            ppid,
            comm: comm.into(),
            cgroup: Some("/top-test".into()),
            container: None,
            pod: None,
            namespace: None,
            threads: 1,
            rates: Rates {
                cpu,
                ..Rates::default()
            },
        })
    }

    fn keys(lines: &[Line]) -> Vec<&str> {
        lines.iter().map(|l| l.key.as_str()).collect()
    }

    #[test]
    fn equal_figures_as_shown_keep_their_previous_order() {
        // 0.994 and 0.991 both show as 99%: the noise must not swap them.
        let mut lines = vec![
            process(1, 0, "a", Some(0.994)),
            process(2, 0, "b", Some(0.991)),
            process(3, 0, "c", Some(0.2)),
            process(4, 0, "d", None),
        ];
        let previous = vec!["2".to_string(), "1".to_string()];
        sort(&mut lines, Column::Cpu, true, &previous);
        assert_eq!(keys(&lines), ["2", "1", "3", "4"]);
        // Ascending: the smallest first, still no figure last.
        sort(&mut lines, Column::Cpu, false, &previous);
        assert_eq!(keys(&lines), ["3", "2", "1", "4"]);
        sort(&mut lines, Column::Name, false, &previous);
        assert_eq!(keys(&lines), ["1", "2", "3", "4"]);
    }

    #[test]
    fn rates_are_compared_as_shown() {
        assert_eq!(shown(0.04), 0.0);
        assert_eq!(shown(251.0), 250.0);
        assert_eq!(shown(12_345.0), 12_000.0);
    }

    #[test]
    fn a_filter_needs_every_word() {
        let line = process(812, 1, "nginx", Some(0.1));
        assert!(line.matches("NGINX"));
        assert!(line.matches("812 top-test"));
        assert!(!line.matches("nginx redis"));
        assert!(line.matches(""));
    }

    #[test]
    fn the_tree_puts_children_under_parents_and_survives_cycles() {
        let lines = vec![
            process(10, 1, "sh", Some(0.5)),
            process(12, 10, "make", Some(0.4)),
            process(13, 12, "cc", Some(0.3)),
            process(11, 10, "sleep", Some(0.0)),
            process(20, 21, "loop-a", None),
            process(21, 20, "loop-b", None),
        ];
        let tree = tree(lines);
        let shape: Vec<(&str, usize)> = tree.iter().map(|l| (l.name.as_str(), l.depth)).collect();
        assert_eq!(
            shape,
            [
                ("sh", 0),
                ("make", 1),
                ("cc", 2),
                ("sleep", 1),
                ("loop-a", 0),
                ("loop-b", 0)
            ]
        );
    }

    #[test]
    fn workloads_are_named_as_operators_know_them() {
        assert_eq!(
            workload_name(
                "/kubepods/x",
                Some("web"),
                Some("shop-1"),
                Some("prod"),
                None
            ),
            "prod/shop-1/web"
        );
        assert_eq!(
            workload_name(
                "/system.slice/nginx.service",
                None,
                None,
                None,
                Some("nginx.service")
            ),
            "nginx.service"
        );
        assert_eq!(
            workload_name("/dash-spin", None, None, None, None),
            "/dash-spin"
        );
    }
}
