//! The page of one workload or process (Enter on a row): its run-queue latency histogram, top
//! syscalls and errnos, block IO, processes as a tree, recent exits and slow events, as lines
//! of text from the JSON API's answer (`/api/v1/workloads/detail`, `/api/v1/processes/{pid}`).

use serde_json::Value;

use super::{
    format::{bytes, count, ns, unix_time},
    table::{self, Line},
};
use crate::viz::live::{ProcessRow, Rates};

/// Lines of a list the page shows at most.
const MAX_LIST: usize = 20;

/// Width of the histogram's longest bar.
const BAR: usize = 30;

/// The lines of a workload's page.
pub(crate) fn workload(page: &Value) -> Vec<String> {
    let w = &page["workload"];
    let mut out = vec![
        format!(
            "WORKLOAD {}   cgroup {}",
            table::workload_name(
                w["cgroup"].as_str().unwrap_or("?"),
                w["container"].as_str(),
                w["pod"].as_str(),
                w["namespace"].as_str(),
                w["systemd_unit"].as_str()
            ),
            w["cgroup"].as_str().unwrap_or("?")
        ),
        format!(
            "processes: {} running, {} started, {} exited 0, {} failed, {} killed by a signal (since the agent started)",
            page["running"], page["started"], page["exited_success"], page["exited_failure"], page["exited_signal"]
        ),
        String::new(),
    ];
    histogram(&mut out, &page["sched"]["runqueue"], &page["sched"]);
    syscalls(&mut out, page["syscalls"].as_array(), "p99_ns");
    out.push(String::new());
    out.push("ERRORS (syscall, errno)".into());
    for e in list(&page["errors"]) {
        out.push(format!(
            "  {:<20} {:<12} {:>10}",
            e["syscall"].as_str().unwrap_or("?"),
            e["errno_name"].as_str().unwrap_or("?"),
            e["count"].as_u64().unwrap_or(0)
        ));
    }
    block_io(&mut out, &page["block_io"]);
    out.push(String::new());
    out.push(format!(
        "PROCESSES (tree; {} live)              CPU s   RQ WAIT    SYSCALLS",
        page["live_total"]
    ));
    let lines: Vec<Line> = list(&page["live"])
        .map(|p| {
            let row = ProcessRow {
                pid: as_u32(&p["pid"]),
                ppid: as_u32(&p["ppid"]),
                comm: p["comm"].as_str().unwrap_or("?").to_string(),
                cgroup: None,
                container: None,
                pod: None,
                namespace: None,
                threads: p["threads"]["live"].as_u64().unwrap_or(0) as usize,
                rates: Rates::default(),
            };
            let mut line = Line::of_process(&row);
            line.workload = format!(
                "{:>8.2}   {:>8}   {:>9}",
                p["sched"]["on_cpu_ns"].as_u64().unwrap_or(0) as f64 / 1e9,
                ns(p["sched"]["runqueue_wait_ns"].as_u64()),
                count(p["syscalls"]["count"].as_f64())
            );
            line
        })
        .collect();
    for line in table::tree(lines) {
        let name = format!(
            "{}{} {}",
            "  ".repeat(line.depth),
            line.pid.unwrap_or(0),
            line.name
        );
        out.push(format!("  {name:<36} {}", line.workload));
    }
    exits(&mut out, &page["exited"]);
    let live: Vec<&Value> = list(&page["live"]).collect();
    let exited: Vec<&Value> = list(&page["exited"]).collect();
    slow_events(&mut out, live.iter().chain(exited.iter()).copied());
    out
}

/// The lines of a process's page (the first, live, process of the answer).
pub(crate) fn process(page: &Value) -> Vec<String> {
    let Some(p) = page["processes"].as_array().and_then(|p| p.first()) else {
        return vec!["no such process".into()];
    };
    let command: Vec<&str> = p["cmdline"]
        .as_array()
        .map(|args| args.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut out = vec![
        format!(
            "PROCESS {} {}   parent {}   {}   cgroup {}",
            p["pid"],
            p["comm"].as_str().unwrap_or("?"),
            p["ppid"],
            p["state"].as_str().unwrap_or("?"),
            p["cgroup"]["path"].as_str().unwrap_or("?")
        ),
        format!("command: {}", command.join(" ")),
        format!(
            "threads: {} live, {} started, {} exited   on CPU {:.2} s, run-queue wait {}, switches {} voluntary / {} involuntary",
            p["threads"]["live"],
            p["threads"]["started"],
            p["threads"]["exited"],
            p["sched"]["on_cpu_ns"].as_u64().unwrap_or(0) as f64 / 1e9,
            ns(p["sched"]["runqueue_wait_ns"].as_u64()),
            p["sched"]["voluntary_switches"],
            p["sched"]["involuntary_switches"]
        ),
        String::new(),
    ];
    histogram(&mut out, &p["sched"]["runqueue_latency"], &Value::Null);
    let mut by_syscall: Vec<Value> = p["syscalls"]["by_syscall"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    by_syscall.sort_by_key(|s| std::cmp::Reverse(s["count"].as_u64().unwrap_or(0)));
    syscalls(&mut out, Some(&by_syscall), "");
    out.push(String::new());
    out.push("ERRORS (syscall, errno)".into());
    let mut errors: Vec<(String, String, u64)> = by_syscall
        .iter()
        .flat_map(|s| {
            list(&s["errnos"]).map(move |e| {
                (
                    s["name"].as_str().unwrap_or("?").to_string(),
                    e["name"].as_str().unwrap_or("?").to_string(),
                    e["count"].as_u64().unwrap_or(0),
                )
            })
        })
        .collect();
    errors.sort_by_key(|e| std::cmp::Reverse(e.2));
    for (syscall, errno, n) in errors.into_iter().take(MAX_LIST) {
        out.push(format!("  {syscall:<20} {errno:<12} {n:>10}"));
    }
    if let Some(exit) = p.get("exit").filter(|e| !e.is_null()) {
        out.push(String::new());
        out.push(format!(
            "EXIT {} at {}",
            exit_text(exit),
            unix_time(p["exit_time_unix_ns"].as_u64())
        ));
    }
    slow_events(&mut out, std::iter::once(p));
    out
}

/// The run-queue latency histogram (log2 buckets) with its quantiles.
fn histogram(out: &mut Vec<String>, buckets: &Value, sched: &Value) {
    let buckets: Vec<(Option<u64>, u64)> = list(buckets)
        .map(|b| (b["below_ns"].as_u64(), b["count"].as_u64().unwrap_or(0)))
        .collect();
    let total: u64 = buckets.iter().map(|b| b.1).sum();
    out.push(format!(
        "RUN-QUEUE LATENCY (since the agent started: {total} waits{})",
        match (
            sched["runqueue_p50_ns"].as_u64(),
            sched["runqueue_p99_ns"].as_u64()
        ) {
            (Some(p50), Some(p99)) => format!(", p50 < {}, p99 < {}", ns(Some(p50)), ns(Some(p99))),
            _ => String::new(),
        }
    ));
    let most = buckets.iter().map(|b| b.1).max().unwrap_or(0).max(1);
    for (below, n) in buckets {
        let width = (n as f64 / most as f64 * BAR as f64).ceil() as usize;
        let bound = below.map_or_else(|| "beyond".to_string(), |b| format!("< {}", ns(Some(b))));
        out.push(format!("  {bound:>9} {:<BAR$} {n}", "█".repeat(width)));
    }
}

/// The most frequent syscalls with their failures (and a latency quantile when `p99` names one).
fn syscalls(out: &mut Vec<String>, rows: Option<&Vec<Value>>, p99: &str) {
    out.push(String::new());
    out.push(format!(
        "TOP SYSCALLS {:<8}      COUNT     ERRORS   TOTAL TIME{}",
        "",
        if p99.is_empty() { "" } else { "        P99" }
    ));
    for s in rows.into_iter().flatten().take(MAX_LIST) {
        let quantile = if p99.is_empty() {
            String::new()
        } else {
            format!(" {:>10}", ns(s[p99].as_u64()))
        };
        out.push(format!(
            "  {:<20} {:>10} {:>10} {:>12}{quantile}",
            s["name"]
                .as_str()
                .map_or_else(|| format!("#{}", s["nr"]), str::to_string),
            s["count"].as_u64().unwrap_or(0),
            s["errors"].as_u64().unwrap_or(0),
            ns(s["total_latency_ns"].as_u64())
        ));
    }
}

fn block_io(out: &mut Vec<String>, rows: &Value) {
    out.push(String::new());
    out.push("BLOCK IO (device, operation)         BYTES   REQUESTS".into());
    for io in list(rows) {
        out.push(format!(
            "  {:<12} {:<20} {:>8} {:>10}",
            io["device"].as_str().unwrap_or("?"),
            io["op"].as_str().unwrap_or("?"),
            bytes(io["bytes"].as_f64()),
            io["requests"].as_u64().unwrap_or(0)
        ));
    }
}

/// The latest exited processes with their codes and signals.
fn exits(out: &mut Vec<String>, exited: &Value) {
    out.push(String::new());
    out.push("RECENT EXITS".into());
    for p in list(exited) {
        out.push(format!(
            "  {}  {:>7} {:<16} {}",
            unix_time(p["exit_time_unix_ns"].as_u64()),
            p["pid"].as_u64().unwrap_or(0),
            p["comm"].as_str().unwrap_or("?"),
            exit_text(&p["exit"])
        ));
    }
}

/// `exit 3`, `signal SIGKILL (core dumped)`, `exit not seen`.
fn exit_text(exit: &Value) -> String {
    match exit["kind"].as_str() {
        Some("exited") => format!("exit {}", exit["code"]),
        Some("signaled") => format!(
            "signal {}{}",
            exit["signal_name"].as_str().unwrap_or("?"),
            if exit["core_dumped"].as_bool() == Some(true) {
                " (core dumped)"
            } else {
                ""
            }
        ),
        _ => "exit not seen".into(),
    }
}

/// Slow syscalls and waits of `processes`, the latest first.
fn slow_events<'a>(out: &mut Vec<String>, processes: impl Iterator<Item = &'a Value>) {
    let mut events: Vec<(u64, String)> = Vec::new();
    for p in processes {
        let who = format!("{} {}", p["pid"], p["comm"].as_str().unwrap_or("?"));
        for s in list(&p["slow_syscalls"]) {
            let at = s["time_unix_ns"].as_u64().unwrap_or(0);
            events.push((
                at,
                format!(
                    "{who}: {} took {} (returned {})",
                    s["name"].as_str().unwrap_or("syscall"),
                    ns(s["duration_ns"].as_u64()),
                    s["ret"]
                ),
            ));
        }
        for w in list(&p["slow_waits"]) {
            let at = w["end_unix_ns"].as_u64().unwrap_or(0);
            events.push((
                at,
                format!(
                    "{who}: {} of {}",
                    w["kind"].as_str().unwrap_or("wait"),
                    ns(w["duration_ns"].as_u64())
                ),
            ));
        }
    }
    events.sort_by_key(|e| std::cmp::Reverse(e.0));
    out.push(String::new());
    out.push("SLOW EVENTS (over the agent's thresholds)".into());
    for (at, text) in events.into_iter().take(MAX_LIST) {
        out.push(format!("  {}  {text}", unix_time(Some(at))));
    }
}

fn list(value: &Value) -> impl Iterator<Item = &Value> {
    value.as_array().into_iter().flatten().take(200)
}

fn as_u32(value: &Value) -> u32 {
    value
        .as_u64()
        .and_then(|v| u32::try_from(v).ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_page_shows_its_histogram_errors_exit_and_slow_events() {
        let page = serde_json::json!({"processes": [{
            "pid": 42, "ppid": 1, "comm": "worker", "state": "exited", "cmdline": ["worker", "-v"],
            "cgroup": {"path": "/w"},
            "threads": {"live": 0, "started": 1, "exited": 1},
            "sched": {"on_cpu_ns": 1_500_000_000u64, "runqueue_wait_ns": 2_000_000, "voluntary_switches": 3,
                      "involuntary_switches": 4,
                      "runqueue_latency": [{"below_ns": 8192, "count": 10}, {"below_ns": 16384, "count": 5}]},
            "syscalls": {"by_syscall": [
                {"nr": 0, "name": "read", "count": 7, "errors": 2, "total_latency_ns": 1000,
                 "errnos": [{"errno": 11, "name": "EAGAIN", "count": 2}]}]},
            "exit": {"kind": "signaled", "signal": 9, "signal_name": "SIGKILL", "core_dumped": false},
            "exit_time_unix_ns": 1_796_000_000_000_000_000u64,
            "slow_syscalls": [{"tid": 42, "nr": 0, "name": "read", "duration_ns": 1_200_000_000u64,
                               "ret": 0, "time_unix_ns": 1_795_999_999_000_000_000u64}],
            "slow_waits": []
        }]});
        let text = process(&page).join("\n");
        assert!(text.contains("PROCESS 42 worker"), "{text}");
        assert!(text.contains("15 waits"), "{text}");
        assert!(text.contains("EAGAIN"), "{text}");
        assert!(text.contains("signal SIGKILL"), "{text}");
        assert!(text.contains("read took 1.20s"), "{text}");
    }
}
