//! `cargo xtask bench-live`: what the dashboard's live feed costs the agent. The agent's CPU
//! with no client, then with browsers' worth of clients subscribed to the dashboard's sections,
//! then with one client of the process table (as `taskscope top --processes`), then with the
//! browsers on the bin-packing view (each asking `/api/v1/viz/binpacking` once a second), on
//! a node with many workloads (the frame's table full), and the frames' sizes.

use std::{
    net::TcpStream,
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::Result;
use clap::Args;
use tungstenite::{Message, WebSocket};

use crate::bench::{cgroup2_root, cpu_seconds, timed_get, Agent, BenchWorkloads, AGENT_ADDR};

#[derive(Args)]
pub struct LiveArgs {
    /// Workloads on the node: cgroups, each with one sleeping process.
    #[arg(long, default_value_t = 200)]
    workloads: usize,
    /// Clients connected at once (a browser each).
    #[arg(long, default_value_t = 3)]
    clients: usize,
    /// Seconds each configuration is measured.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
}

/// What one client received.
#[derive(Debug, Default)]
struct Received {
    frames: u64,
    bytes: u64,
    largest: usize,
    dropped: u64,
}

/// What `taskscope top --processes` subscribes to: the process table, which the agent builds
/// (reading every process) only while a client wants it.
const TOP_PROCESSES: &str = r#"{"subscribe":["node","agent","workloads","processes"]}"#;

/// A client reading every frame until `stop`, after sending `subscribe` if given.
fn client(stop: Arc<AtomicBool>, subscribe: Option<&'static str>) -> Result<Received> {
    let stream = TcpStream::connect(AGENT_ADDR)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let (mut socket, _): (WebSocket<TcpStream>, _) =
        tungstenite::client(format!("ws://{AGENT_ADDR}/api/v1/live"), stream)
            .map_err(|e| anyhow::anyhow!("connect to the live feed: {e}"))?;
    if let Some(message) = subscribe {
        socket.send(Message::Text(message.into()))?;
    }
    let mut received = Received::default();
    while !stop.load(Ordering::Relaxed) {
        match socket.read() {
            Ok(Message::Text(text)) if text.starts_with("{\"type\":\"frame\"") => {
                received.frames += 1;
                received.bytes += text.len() as u64;
                received.largest = received.largest.max(text.len());
                let frame: serde_json::Value = serde_json::from_str(&text)?;
                received.dropped += frame["dropped"].as_u64().unwrap_or(0);
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(received)
}

/// The agent's CPU (share of one core) over `seconds`.
fn agent_cpu(agent: &Agent, seconds: u64) -> Result<f64> {
    let (before, start) = (cpu_seconds(agent.pid())?, Instant::now());
    std::thread::sleep(Duration::from_secs(seconds));
    Ok((cpu_seconds(agent.pid())? - before) / start.elapsed().as_secs_f64())
}

pub fn run(args: &LiveArgs, agent_binary: &Path) -> Result<()> {
    let agent = Agent::start(agent_binary)?;
    let _workloads = BenchWorkloads::start(&cgroup2_root()?, args.workloads)?;
    std::thread::sleep(Duration::from_secs(5));
    let idle = agent_cpu(&agent, args.seconds)?;

    let (watched, received) = measure(&agent, args, args.clients, None)?;
    let (top, top_received) = measure(&agent, args, 1, Some(TOP_PROCESSES))?;
    let frames: u64 = received.iter().map(|r| r.frames).sum();
    let bytes: u64 = received.iter().map(|r| r.bytes).sum();
    let largest = received.iter().map(|r| r.largest).max().unwrap_or(0);
    let dropped: u64 = received.iter().map(|r| r.dropped).sum();
    println!(
        "live feed, {} workloads, {} clients, {} s each:",
        args.workloads, args.clients, args.seconds
    );
    println!(
        "  agent CPU, no client:       {:.2}% of a core",
        idle * 100.0
    );
    println!(
        "  agent CPU, {} clients:       {:.2}% of a core  (+{:.2} points) [target <= +1]",
        args.clients,
        watched * 100.0,
        (watched - idle) * 100.0
    );
    println!(
        "  frames: {frames} received, {:.1} KiB on average, {:.1} KiB largest, {dropped} skipped for slowness",
        bytes as f64 / frames.max(1) as f64 / 1024.0,
        largest as f64 / 1024.0
    );
    let processes = top_received.first().map_or(0, |r| r.largest);
    println!(
        "  agent CPU, 1 client with the process table (taskscope top --processes): {:.2}% of a core  (+{:.2} points); its largest frame {:.1} KiB",
        top * 100.0,
        (top - idle) * 100.0,
        processes as f64 / 1024.0
    );
    anyhow::ensure!(frames > 0, "no frame arrived");
    let (packing, answers) = measure_binpacking(&agent, args)?;
    let mean_ms =
        answers.iter().map(|a| a.0.as_secs_f64()).sum::<f64>() * 1e3 / answers.len().max(1) as f64;
    let slowest_ms = answers
        .iter()
        .map(|a| a.0.as_secs_f64() * 1e3)
        .fold(0.0, f64::max);
    let bytes = answers.iter().map(|a| a.1).max().unwrap_or(0);
    println!(
        "  agent CPU, {} clients on the bin-packing view (each GET /api/v1/viz/binpacking once a second): {:.2}% of a core  (+{:.2} points); an answer {mean_ms:.1} ms on average, {slowest_ms:.1} ms slowest, {:.1} KiB",
        args.clients,
        packing * 100.0,
        (packing - idle) * 100.0,
        bytes as f64 / 1024.0
    );
    Ok(())
}

/// The agent's CPU with `args.clients` browsers on the bin-packing view: each on the feed and
/// asking for the view once a second. The answers' (time, size).
fn measure_binpacking(agent: &Agent, args: &LiveArgs) -> Result<(f64, Vec<(Duration, usize)>)> {
    let stop = Arc::new(AtomicBool::new(false));
    let asker = {
        let (stop, clients) = (Arc::clone(&stop), args.clients);
        std::thread::spawn(move || -> Result<Vec<(Duration, usize)>> {
            let mut answers = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let second = Instant::now();
                for _ in 0..clients {
                    let (took, answer) = timed_get("/api/v1/viz/binpacking", "application/json")?;
                    anyhow::ensure!(answer.starts_with("HTTP/1.1 200"), "binpacking: {answer}");
                    answers.push((took, answer.len()));
                }
                std::thread::sleep(Duration::from_secs(1).saturating_sub(second.elapsed()));
            }
            Ok(answers)
        })
    };
    let measured = measure(agent, args, args.clients, None);
    stop.store(true, Ordering::Relaxed);
    let answers = asker
        .join()
        .map_err(|_| anyhow::anyhow!("the bin-packing client panicked"))??;
    Ok((measured?.0, answers))
}

/// The agent's CPU with `clients` clients connected (each sending `subscribe`), and what they
/// received.
fn measure(
    agent: &Agent,
    args: &LiveArgs,
    clients: usize,
    subscribe: Option<&'static str>,
) -> Result<(f64, Vec<Received>)> {
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || client(stop, subscribe))
        })
        .collect();
    // The first frames (the clients' first interval has no rates yet) are not measured.
    std::thread::sleep(Duration::from_secs(3));
    let cpu = agent_cpu(agent, args.seconds)?;
    stop.store(true, Ordering::Relaxed);
    let mut received = Vec::new();
    for thread in threads {
        received.push(
            thread
                .join()
                .map_err(|_| anyhow::anyhow!("a client panicked"))??,
        );
    }
    Ok((cpu, received))
}
