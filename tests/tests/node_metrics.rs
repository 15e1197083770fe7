//! Node figures on /metrics against the kernel's own: /proc/buddyinfo, and idle gaps of a
//! known length made by a duty-cycle workload.

use std::{process::Command, time::Duration};

use taskscope_e2e::{http_get, workload_binary, Agent};

/// Per (node, zone, order): the unusable free space index from /proc/buddyinfo.
fn fragmentation_from_buddyinfo() -> Vec<((String, String, usize), f64)> {
    let text = std::fs::read_to_string("/proc/buddyinfo").expect("/proc/buddyinfo");
    let mut out = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // Node 0, zone Normal n0 n1 ...
        let node = fields[1].trim_end_matches(',').to_string();
        let zone = fields[3].to_string();
        let blocks: Vec<u64> = fields[4..]
            .iter()
            .map(|f| f.parse().expect("count"))
            .collect();
        let pages_from =
            |o: usize| -> u64 { blocks.iter().enumerate().skip(o).map(|(j, n)| n << j).sum() };
        let total = pages_from(0);
        for order in 0..blocks.len() {
            let ratio = if total == 0 {
                1.0
            } else {
                1.0 - pages_from(order) as f64 / total as f64
            };
            out.push(((node.clone(), zone.clone(), order), ratio));
        }
    }
    out
}

fn metric(scrape: &str, prefix: &str) -> Option<f64> {
    scrape
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[test]
fn memory_fragmentation_agrees_with_buddyinfo() {
    let agent = Agent::start(&[]);
    let before = fragmentation_from_buddyinfo();
    let (_, scrape) = http_get(&agent.addr, "/metrics").expect("scrape");
    let after = fragmentation_from_buddyinfo();
    for (((node, zone, order), b), (_, a)) in before.iter().zip(&after) {
        let name = format!(
            "taskscope_node_memory_fragmentation_ratio{{node=\"{node}\",zone=\"{zone}\",order=\"{order}\"}}"
        );
        let agent_value = metric(&scrape, &name).unwrap_or_else(|| panic!("no {name}"));
        let (low, high) = (b.min(*a) - 0.01, b.max(*a) + 0.01);
        println!("node {node} zone {zone} order {order}: taskscope {agent_value:.4}, buddyinfo before {b:.4} after {a:.4}");
        assert!(
            (low..=high).contains(&agent_value),
            "{name}: {agent_value} outside [{low}, {high}]"
        );
    }
}

/// Node idle fragmentation while every CPU runs a duty cycle with idle gaps of `sleep_us`.
fn idle_fragmentation_with_gaps(agent: &Agent, run_us: u64, sleep_us: u64) -> f64 {
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let children: Vec<_> = (0..cpus)
        .map(|cpu| {
            Command::new(workload_binary())
                .args([
                    "duty",
                    &cpu.to_string(),
                    &run_us.to_string(),
                    &sleep_us.to_string(),
                    "3000",
                ])
                .spawn()
                .expect("duty workload")
        })
        .collect();
    // Past the first windows (the agent measures over --poll-interval, 200 ms here).
    std::thread::sleep(Duration::from_millis(1500));
    // The family is absent for a window with no idle time at all (the ratio is undefined),
    // which other load on the machine can cause: ask again while the duty cycles run.
    let ratio = taskscope_e2e::wait_for(
        "a window with idle time",
        Duration::from_millis(1400),
        || {
            let (_, scrape) = http_get(&agent.addr, "/metrics").ok()?;
            metric(&scrape, "taskscope_node_cpu_idle_fragmentation_ratio")
        },
    );
    for mut child in children {
        let _ = child.wait();
    }
    ratio
}

#[test]
fn cpu_idle_fragmentation_follows_the_length_of_idle_gaps() {
    let agent = Agent::start(&[]);
    let short = idle_fragmentation_with_gaps(&agent, 200, 200);
    let long = idle_fragmentation_with_gaps(&agent, 1000, 20_000);
    println!(
        "idle fragmentation (threshold 1 ms): gaps of 0.2 ms -> {short:.3}, gaps of 20 ms -> {long:.3}"
    );
    assert!(
        short > 0.8,
        "0.2 ms gaps should be mostly fragmented idle time: {short}"
    );
    assert!(
        long < 0.2,
        "20 ms gaps should be mostly whole idle time: {long}"
    );
}
