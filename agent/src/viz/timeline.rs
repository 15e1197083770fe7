//! The timeline view's data: which task ran on each CPU over the last seconds, merged on the
//! server to the view's resolution so that an answer stays small whatever the switch rate
//! (at most one run per column per CPU).

use std::collections::HashMap;

use serde::Serialize;

use crate::{clock::Clocks, collector::timeline::TimelineRead};

/// Columns a view may ask for.
pub(crate) const MAX_COLUMNS: usize = 2000;
pub(crate) const MIN_COLUMNS: usize = 10;

/// A column goes to its busiest task when tasks ran at least this share of it; else it is idle.
const BUSY_SHARE: f64 = 0.5;

/// One CPU's runs: `[first column, end column (exclusive), task index]`, idle between them.
#[derive(Debug, Serialize, PartialEq)]
pub(crate) struct CpuRuns {
    pub(crate) cpu: u32,
    pub(crate) runs: Vec<[u32; 3]>,
}

/// A task of the timeline (a process: its threads are one task).
#[derive(Debug, Serialize, PartialEq)]
pub(crate) struct Task {
    pub(crate) pid: u32,
    pub(crate) comm: String,
    /// Its on-CPU time in the window, over every CPU (ns, before merging).
    pub(crate) on_cpu_ns: u64,
}

/// The answer of `/api/v1/viz/timeline`.
#[derive(Debug, Serialize)]
pub(crate) struct Timeline {
    pub(crate) from_unix_ms: u64,
    pub(crate) to_unix_ms: u64,
    pub(crate) columns: usize,
    pub(crate) column_ns: u64,
    pub(crate) cpus: Vec<CpuRuns>,
    /// The tasks runs point at, busiest first.
    pub(crate) tasks: Vec<Task>,
    /// When the switch recorder started: the window before it is empty.
    pub(crate) recording_since_unix_ms: Option<u64>,
    /// Switches in the window, and those lost: let go by the recorder's bound, or not taken by
    /// the ring buffer (since the agent started).
    pub(crate) switches: usize,
    pub(crate) switches_evicted: u64,
    pub(crate) ringbuf_lost: u64,
}

/// Per-CPU runs of `read`'s switches at `columns` columns.
pub(crate) fn build(read: &TimelineRead, columns: usize, clocks: &Clocks) -> Timeline {
    let columns = columns.clamp(MIN_COLUMNS, MAX_COLUMNS);
    let span = read.to_ns.saturating_sub(read.from_ns).max(1);
    let column_ns = span.div_ceil(columns as u64).max(1);
    let mut by_cpu: HashMap<u32, Vec<(u64, u32)>> = HashMap::new();
    for switch in &read.switches {
        by_cpu
            .entry(switch.header.cpu)
            .or_default()
            .push((switch.header.ts_ns, switch.next_tgid));
    }
    let mut on_cpu: HashMap<u32, u64> = HashMap::new();
    let mut cpus: Vec<(u32, Vec<(usize, u32)>)> = by_cpu
        .into_iter()
        .map(|(cpu, mut switches)| {
            switches.sort_unstable_by_key(|s| s.0);
            let columns = dominant_per_column(&switches, read, column_ns, columns, &mut on_cpu);
            (cpu, columns)
        })
        .collect();
    cpus.sort_unstable_by_key(|c| c.0);
    let mut tasks: Vec<Task> = on_cpu
        .into_iter()
        .map(|(pid, on_cpu_ns)| Task {
            pid,
            comm: read.names.get(&pid).cloned().unwrap_or_default(),
            on_cpu_ns,
        })
        .collect();
    tasks.sort_unstable_by(|a, b| b.on_cpu_ns.cmp(&a.on_cpu_ns).then(a.pid.cmp(&b.pid)));
    let index: HashMap<u32, u32> = tasks
        .iter()
        .enumerate()
        .map(|(i, t)| (t.pid, i as u32))
        .collect();
    let mut cpus: Vec<CpuRuns> = cpus
        .into_iter()
        .map(|(cpu, dominant)| CpuRuns {
            cpu,
            runs: runs(&dominant, &index),
        })
        .collect();
    let tasks = keep_listed_tasks(tasks, &mut cpus);
    let unix_ms = |ns: u64| clocks.monotonic_to_unix(ns) / 1_000_000;
    Timeline {
        from_unix_ms: unix_ms(read.from_ns),
        to_unix_ms: unix_ms(read.to_ns),
        columns,
        column_ns,
        cpus,
        tasks,
        recording_since_unix_ms: read.recording_since_ns.map(unix_ms),
        switches: read.switches.len(),
        switches_evicted: read.evicted,
        ringbuf_lost: read.ring_lost,
    }
}

/// For each column with a busy task: (column, the task with the most time in it). Each switch
/// starts a run of the task switched in (pid 0: idle), until the CPU's next switch or the
/// window's end. Adds each task's time to `on_cpu`.
fn dominant_per_column(
    switches: &[(u64, u32)],
    read: &TimelineRead,
    column_ns: u64,
    columns: usize,
    on_cpu: &mut HashMap<u32, u64>,
) -> Vec<(usize, u32)> {
    let mut out = Vec::new();
    let mut column = 0usize;
    let mut in_column: HashMap<u32, u64> = HashMap::new();
    let mut close = |column: usize, in_column: &mut HashMap<u32, u64>| {
        let busy: u64 = in_column.values().sum();
        if busy as f64 >= BUSY_SHARE * column_ns as f64 {
            if let Some((&task, _)) = in_column
                .iter()
                .max_by_key(|(t, ns)| (**ns, u32::MAX - **t))
            {
                out.push((column, task));
            }
        }
        in_column.clear();
    };
    for (i, &(start, task)) in switches.iter().enumerate() {
        let end = switches.get(i + 1).map_or(read.to_ns, |next| next.0);
        let (start, end) = (start.max(read.from_ns), end.min(read.to_ns));
        if task == 0 || end <= start {
            continue;
        }
        *on_cpu.entry(task).or_default() += end - start;
        let mut at = start;
        while at < end {
            let here = ((at - read.from_ns) / column_ns) as usize;
            if here >= columns {
                break;
            }
            if here != column {
                close(column, &mut in_column);
                column = here;
            }
            let column_end = read.from_ns + (here as u64 + 1) * column_ns;
            let until = end.min(column_end);
            *in_column.entry(task).or_default() += until - at;
            at = until;
        }
    }
    close(column, &mut in_column);
    out
}

/// Tasks listed besides those the runs show: the busiest, even where they never won a column.
const MAX_UNSHOWN_TASKS: usize = 50;

/// The tasks the runs point at and the [`MAX_UNSHOWN_TASKS`] busiest, the runs renumbered: a
/// node with thousands of tasks in the window answers with the few a person can see.
fn keep_listed_tasks(tasks: Vec<Task>, cpus: &mut [CpuRuns]) -> Vec<Task> {
    let mut shown = vec![false; tasks.len()];
    for run in cpus.iter().flat_map(|c| &c.runs) {
        shown[run[2] as usize] = true;
    }
    let mut renumber = vec![0u32; tasks.len()];
    let mut kept = Vec::new();
    for (i, task) in tasks.into_iter().enumerate() {
        if shown[i] || i < MAX_UNSHOWN_TASKS {
            renumber[i] = kept.len() as u32;
            kept.push(task);
        }
    }
    for run in cpus.iter_mut().flat_map(|c| &mut c.runs) {
        run[2] = renumber[run[2] as usize];
    }
    kept
}

/// Consecutive columns of the same task as one run.
fn runs(dominant: &[(usize, u32)], index: &HashMap<u32, u32>) -> Vec<[u32; 3]> {
    let mut runs: Vec<[u32; 3]> = Vec::new();
    for &(column, task) in dominant {
        let Some(&task) = index.get(&task) else {
            continue;
        };
        let column = column as u32;
        match runs.last_mut() {
            Some(last) if last[1] == column && last[2] == task => last[1] = column + 1,
            _ => runs.push([column, column + 1, task]),
        }
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;
    use taskscope_common::{event_kind, EventHeader, SwitchEvent};

    fn switch(cpu: u32, ts_ns: u64, next_tgid: u32) -> SwitchEvent {
        SwitchEvent {
            header: EventHeader {
                kind: event_kind::SWITCH,
                cpu,
                ts_ns,
                pid: 0,
                tgid: 0,
            },
            next_pid: next_tgid,
            next_tgid,
        }
    }

    #[test]
    fn runs_are_merged_to_the_columns_and_idle_is_left_out() {
        let clocks = Clocks::now();
        let read = TimelineRead {
            from_ns: 1_000,
            to_ns: 2_000,
            // CPU 0: task 7 from before the window to 1400, idle to 1600, task 9 to the end.
            // CPU 1: many short switches between 5 and 6, 5 taking 3/4 of the time.
            switches: [
                vec![switch(0, 500, 7), switch(0, 1_400, 0), switch(0, 1_600, 9)],
                (0..100u64)
                    .flat_map(|i| {
                        let at = 1_000 + i * 10;
                        [switch(1, at, 5), switch(1, at + 7, 6)]
                    })
                    .collect(),
            ]
            .concat(),
            names: [(7, "seven".into()), (9, "nine".into()), (5, "five".into())].into(),
            ..TimelineRead::default()
        };
        let timeline = build(&read, 10, &clocks);
        assert_eq!(timeline.column_ns, 100);
        let task = |pid| timeline.tasks.iter().position(|t| t.pid == pid).unwrap() as u32;
        assert_eq!(
            timeline.cpus[0].runs,
            vec![[0, 4, task(7)], [6, 10, task(9)]]
        );
        assert_eq!(timeline.cpus[1].runs, vec![[0, 10, task(5)]]);
        let five = &timeline.tasks[task(5) as usize];
        assert_eq!((five.comm.as_str(), five.on_cpu_ns), ("five", 700));
        assert_eq!(timeline.tasks[task(7) as usize].on_cpu_ns, 400);
        assert_eq!(timeline.tasks[0].pid, 5, "busiest first");
    }

    #[test]
    fn the_answer_is_bounded_by_the_columns() {
        let read = TimelineRead {
            from_ns: 0,
            to_ns: 1_000_000,
            switches: (0..100_000u64)
                .map(|i| switch(0, i * 10, 1 + (i % 1000) as u32))
                .collect(),
            ..TimelineRead::default()
        };
        let timeline = build(&read, 100_000, &Clocks::now());
        assert_eq!(timeline.columns, MAX_COLUMNS);
        assert!(timeline.cpus[0].runs.len() <= MAX_COLUMNS);
        assert!(timeline.tasks.len() <= MAX_COLUMNS + MAX_UNSHOWN_TASKS);
        for run in &timeline.cpus[0].runs {
            assert!((run[2] as usize) < timeline.tasks.len());
        }
    }
}
