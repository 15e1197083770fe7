//! A node's worth of processes at the default sizes: thousands of live processes, each making
//! 30 distinct syscalls a known number of times. Every process's counts and its workload's are
//! exact, and nothing is lost anywhere. Run as root (`cargo xtask test`).

use serde_json::Value;
use taskscope_e2e::{cgroup2_root, http_get, monotonic_ns, sample, Agent, Workload};

/// As many processes as this 2-core machine starts in a few seconds (each is a fork of the
/// small workload binary, a few hundred KiB of its own).
const PROCESSES: usize = 3000;
/// Calls of each of the 30 syscalls per process.
const CALLS: u64 = 10;

/// The 30 syscalls the workload's children make (`KNOWN_SYSCALLS` in the workload binary).
const SYSCALLS: [&str; 30] = [
    "getpid",
    "getppid",
    "getuid",
    "geteuid",
    "getgid",
    "getegid",
    "gettid",
    "getpgrp",
    "getpgid",
    "getsid",
    "sched_yield",
    "getpriority",
    "getrlimit",
    "uname",
    "getcwd",
    "times",
    "sysinfo",
    "getrusage",
    "getcpu",
    "clock_gettime",
    "gettimeofday",
    "time",
    "sched_getscheduler",
    "sched_getparam",
    "sched_getaffinity",
    "getgroups",
    "getresuid",
    "getresgid",
    "capget",
    "getitimer",
];

fn count_of(process: &Value, syscall: &str) -> u64 {
    process["syscalls"]["by_syscall"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["name"] == syscall)
        .and_then(|s| s["count"].as_u64())
        .unwrap_or(0)
}

#[test]
fn thousands_of_processes_have_exact_syscall_counts_and_nothing_is_lost_at_default_sizes() {
    // Only the exposition is widened (every syscall by name); every kernel table is at its
    // default size.
    let agent = Agent::start(&["--top-syscalls", "64"]);
    let cgroup_dir = std::path::Path::new(&cgroup2_root())
        .join(format!("taskscope-scale-{}", std::process::id()));
    std::fs::create_dir(&cgroup_dir).expect("create cgroup");
    let parent = Workload::run_in_cgroups(
        &[&cgroup_dir],
        &["many-processes", &PROCESSES.to_string(), &CALLS.to_string()],
    );
    let children: Vec<u32> = parent
        .output
        .split(',')
        .map(|p| p.parse().expect("pid"))
        .collect();
    assert_eq!(children.len(), PROCESSES);
    let processes = agent.processes_after(monotonic_ns());
    let status = agent.get("/api/v1/status");
    let (_, scrape) = http_get(&agent.addr, "/metrics").expect("scrape");

    let by_pid: std::collections::HashMap<u64, &Value> = processes
        .iter()
        .filter_map(|p| Some((p["pid"].as_u64()?, p)))
        .collect();
    let parent_process = by_pid
        .get(&u64::from(parent.pid()))
        .unwrap_or_else(|| panic!("the parent {} is not in the API", parent.pid()));
    let mut wrong = Vec::new();
    for &pid in &children {
        let Some(child) = by_pid.get(&u64::from(pid)) else {
            wrong.push(format!("{pid}: not in the API"));
            continue;
        };
        for syscall in SYSCALLS {
            let count = count_of(child, syscall);
            if count != CALLS {
                wrong.push(format!("{pid} {syscall}: {count}"));
            }
        }
    }
    println!(
        "{} processes in the API, {PROCESSES} children x 30 syscalls x {CALLS} calls; counts not {CALLS}: {} {:?}",
        processes.len(),
        wrong.len(),
        wrong.iter().take(10).collect::<Vec<_>>()
    );
    // The workload's figures, from the kernel's per-cgroup table, with a latency histogram
    // holding each call: the children's calls, and those of the parent's it made in the
    // cgroup. The kernel charges a call to the cgroup the caller is in at the time, and the
    // parent began as a shell in the test's cgroup (`echo $$ > cgroup.procs`, then exec):
    // its calls before the move are in its process's counts but not in this workload's.
    let cgroup = parent_process["cgroup"]["path"].as_str().unwrap_or("/");
    for syscall in SYSCALLS {
        let children_calls = PROCESSES as u64 * CALLS;
        let parent_calls = count_of(parent_process, syscall);
        let labels = [
            format!("cgroup=\"{cgroup}\""),
            format!("syscall=\"{syscall}\""),
        ];
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        let total = sample(&scrape, "taskscope_syscalls_total", &labels);
        let histogram = sample(&scrape, "taskscope_syscall_latency_seconds_count", &labels);
        let in_range = |v: Option<f64>| {
            v.is_some_and(|v| {
                v >= children_calls as f64 && v <= (children_calls + parent_calls) as f64
            })
        };
        if !in_range(total) || histogram != total {
            wrong.push(format!(
                "workload {syscall}: total {total:?}, histogram {histogram:?}, expected {children_calls} (+ up to {parent_calls} of the parent's)"
            ));
        }
    }
    let lost: Vec<String> = status["lost"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| l["count"].as_u64().unwrap_or(0) > 0)
        .map(|l| format!("{}/{}: {}", l["source"], l["reason"], l["count"]))
        .collect();
    let memory: Vec<String> = status["kernel_maps"]
        .as_array()
        .into_iter()
        .flatten()
        .take(4)
        .map(|m| {
            format!(
                "{} {:.1} MiB",
                m["name"],
                m["bytes"].as_f64().unwrap_or(0.0) / 1048576.0
            )
        })
        .collect();
    println!("losses: {lost:?}; largest kernel maps now: {memory:?}");
    parent.finish();
    let _ = std::fs::remove_dir(&cgroup_dir);
    assert!(
        wrong.is_empty(),
        "{} wrong: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(20)]
    );
    assert!(lost.is_empty(), "lost at default sizes: {lost:?}");
}
