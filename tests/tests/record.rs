//! `taskscope record`: a Chrome trace of a window, checked against a process that reports its
//! own CPU time from /proc.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Command, Stdio},
};

use serde_json::Value;
use taskscope_e2e::{agent_binary, assert_close, workload_binary};

#[test]
fn a_recording_shows_which_task_ran_on_each_cpu_and_each_process_life() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let output = dir.join(format!("record-{}.json", std::process::id()));
    let spans_output = output.with_extension("spans.jsonl");
    let report = dir.join(format!("record-{}.schedstat", std::process::id()));
    let mut record = Command::new(agent_binary())
        .args(["record", "--duration", "3s", "--log-format", "text", "-o"])
        .arg(&output)
        .stdout(Stdio::piped())
        .spawn()
        .expect("taskscope record");
    let mut stdout = BufReader::new(record.stdout.take().expect("stdout"));
    let mut line = String::new();
    stdout.read_line(&mut line).expect("record output");
    assert!(line.starts_with("recording"), "{line}");

    // A process that starts and ends inside the window, burning 0.8 s of CPU.
    let mut worker = Command::new(workload_binary())
        .arg("spin-report")
        .arg("800")
        .arg(&report)
        .spawn()
        .expect("workload");
    let worker_pid = worker.id();
    assert!(worker.wait().expect("wait").success());
    let status = record.wait().expect("wait");
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut stdout, &mut rest);
    println!("{}", rest.trim());
    assert!(status.success());

    let trace: Value =
        serde_json::from_str(&std::fs::read_to_string(&output).expect("trace file")).expect("JSON");
    let events = trace["traceEvents"].as_array().expect("traceEvents");
    let on_cpu_us: f64 = events
        .iter()
        .filter(|e| e["ph"] == "X" && e["cat"] == "cpu" && e["args"]["pid"] == worker_pid)
        .filter_map(|e| e["dur"].as_f64())
        .sum();
    let cpu_tracks = events
        .iter()
        .filter(|e| e["ph"] == "M" && e["name"] == "thread_name" && e["pid"] == 0)
        .count();
    let life = events
        .iter()
        .find(|e| e["ph"] == "X" && e["cat"] == "process" && e["pid"] == worker_pid)
        .expect("the worker's process track");
    let schedstat = std::fs::read_to_string(&report).expect("report");
    let kernel_ns: u64 = schedstat
        .split_whitespace()
        .next()
        .and_then(|f| f.parse().ok())
        .expect("on-CPU ns");
    println!(
        "{} events, {cpu_tracks} CPU tracks, {} switches; worker: {:.0} us on CPU tracks, life {} us",
        events.len(),
        trace["otherData"]["switches"],
        on_cpu_us,
        life["dur"]
    );
    // Its slices on the CPU tracks add up to the CPU time it read for itself (it ran a little
    // after reading it, to exit).
    assert_close(
        "worker's slices on the CPU tracks vs its /proc/self/schedstat (ns)",
        (on_cpu_us * 1e3) as u64,
        kernel_ns,
        0.05,
    );
    assert!(cpu_tracks >= 1);
    assert_eq!(life["args"]["started_in_window"], true);
    assert_eq!(life["args"]["exit"]["code"], 0);
    let spans = std::fs::read_to_string(&spans_output).expect("spans file");
    assert!(
        spans
            .lines()
            .any(|l| serde_json::from_str::<Value>(l).is_ok_and(|s| s["pid"] == worker_pid)),
        "the worker's span in {}",
        spans_output.display()
    );
    let _ = std::fs::remove_file(output);
    let _ = std::fs::remove_file(spans_output);
    let _ = std::fs::remove_file(report);
}

#[test]
fn record_refuses_to_write_through_a_symbolic_link_and_leaves_its_target_alone() {
    // record runs as root: a link planted where its output goes must not let it overwrite the
    // link's target.
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let target = dir.join(format!("record-target-{}", std::process::id()));
    let link = dir.join(format!("record-link-{}.json", std::process::id()));
    std::fs::write(&target, "precious\n").expect("target");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&target, &link).expect("symlink");
    let out = Command::new(agent_binary())
        .args(["record", "--duration", "1s", "--log-format", "text", "-o"])
        .arg(&link)
        .output()
        .expect("taskscope record");
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("exit {:?}: {}", out.status.code(), stderr.trim());
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("symbolic link"), "{stderr}");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("recording"),
        "it recorded before refusing"
    );
    assert_eq!(
        std::fs::read_to_string(&target).expect("target"),
        "precious\n"
    );
    let _ = std::fs::remove_file(link);
    let _ = std::fs::remove_file(target);
}
