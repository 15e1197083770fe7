//! Command-line interface (every flag is documented in docs/configuration.md).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::model::selector::ProcessSelector;

/// taskscope: zero-instrumentation observability for every task on a Linux node.
#[derive(Debug, Parser)]
#[command(name = "taskscope", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load the kernel programs, keep the task model and serve the HTTP API.
    Run(Box<RunArgs>),
    /// Check that this host can run the agent: one line per requirement; exit code 0 if it can,
    /// 3 if it runs degraded (optional probes missing, named with the reason), 1 if it cannot.
    Check(CheckArgs),
    /// Record what happens on the node for a while: which task ran on each CPU and every
    /// process's life, as a Chrome trace (opens in Perfetto), plus the spans as JSON lines.
    Record(RecordArgs),
    /// The live view in a terminal: the node, its workloads and processes from a running
    /// agent's live feed (needs no privileges; never loads kernel programs).
    Top(TopArgs),
}

/// How to attach the kernel programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum AttachMode {
    /// tp_btf where the kernel allows it, raw_tp otherwise.
    Auto,
    /// raw_tp only.
    RawTp,
}

/// OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum OtlpProtocol {
    /// OTLP/HTTP with protobuf bodies (port 4318).
    #[value(name = "http/protobuf", alias = "http")]
    HttpProtobuf,
    /// OTLP/gRPC (port 4317).
    Grpc,
}

/// Spacing of the exported histogram buckets, from 1.024 µs to ~17 s (the kernel keeps every
/// power of two of nanoseconds; docs/metrics.md#histograms).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum HistogramBuckets {
    /// Every second power of two (1.024 µs, 4.096 µs, 16.384 µs, ...): 14 buckets.
    Log4,
    /// Every power of two, the kernel's own resolution (1.024 µs, 2.048 µs, ...): 26 buckets.
    Log2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Config file (TOML): keys are these flags' names in snake_case (docs/configuration.md).
    /// Flags and environment variables win over it. Re-read on SIGHUP.
    #[arg(long, env = "TASKSCOPE_CONFIG", value_name = "PATH")]
    pub(crate) config: Option<PathBuf>,

    /// Address of the HTTP API.
    #[arg(long, default_value = "127.0.0.1:9720", env = "TASKSCOPE_LISTEN")]
    pub(crate) listen: SocketAddr,

    /// How often the kernel maps are read into the task model.
    #[arg(long, default_value = "1s", value_parser = duration_in(Duration::from_millis(10), HOUR))]
    pub(crate) poll_interval: Duration,

    /// An API answer comes from a kernel read at most this old.
    #[arg(long, default_value = "100ms", value_parser = duration_in(Duration::ZERO, HOUR))]
    pub(crate) max_staleness: Duration,

    /// How often lifecycle events are read from the ring buffer when the kernel has not woken
    /// the agent (it does when an eighth of the ring is full).
    #[arg(long, default_value = "100ms", value_parser = duration_in(Duration::from_millis(1), Duration::from_secs(10)))]
    pub(crate) drain_interval: Duration,

    /// Syscalls at least this long are reported one by one.
    #[arg(long, default_value = "100ms", value_parser = duration_in(Duration::from_micros(1), HOUR))]
    pub(crate) slow_syscall: Duration,

    /// Waits for a CPU at least this long are reported one by one (span events
    /// `slow_runqueue_wait`).
    #[arg(long, default_value = "50ms", value_parser = duration_in(Duration::from_micros(1), HOUR))]
    pub(crate) slow_runqueue_wait: Duration,

    /// Block requests at least this long (issue to completion) are reported one by one (span
    /// events `slow_block_io`).
    #[arg(long, default_value = "100ms", value_parser = duration_in(Duration::from_micros(1), HOUR))]
    pub(crate) slow_block_io: Duration,

    /// Capacity of the kernel's per-task table (threads).
    #[arg(long, default_value_t = 32768, value_parser = clap::value_parser!(u32).range(1024..=4_194_304))]
    pub(crate) max_tasks: u32,

    /// Capacity of the kernel's per-(process, syscall) table of counts (the errno table gets
    /// a quarter): 10,000 processes of 30 syscalls each fit the default. Entries of exited
    /// processes are freed two polls after their exit.
    #[arg(long, default_value_t = 524_288, value_parser = clap::value_parser!(u32).range(1024..=4_194_304))]
    pub(crate) max_syscall_entries: u32,

    /// Capacity of the kernel's per-(cgroup, syscall) table, which holds the latency
    /// histograms /metrics exports. Entries of a cgroup without live processes for
    /// --series-ttl are freed, so it must hold the cgroups a node makes in that time.
    #[arg(long, default_value_t = 262_144, value_parser = clap::value_parser!(u32).range(1024..=4_194_304))]
    pub(crate) max_workload_syscall_entries: u32,

    /// Entries one process may take in the syscall tables (its distinct syscalls and their
    /// errnos together). Beyond, its syscalls are counted under the syscall "other" and the
    /// detail lost is counted (syscalls_map/process_cap): one process cannot fill the tables.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(8..=4096))]
    pub(crate) max_syscall_entries_per_process: u32,

    /// Capacity of the kernel's table of block requests in flight. A request whose start did
    /// not fit has its latency lost, counted (io_starts_map/map_full) when it completes.
    #[arg(long, default_value_t = 16384, value_parser = clap::value_parser!(u32).range(16..=1_048_576))]
    pub(crate) max_io_requests: u32,

    /// Ring buffer size in KiB (a power of two, at least 64).
    #[arg(long, default_value_t = 1024, value_parser = parse_ring_kib)]
    pub(crate) ring_buffer_kib: u32,

    /// How long exited processes stay visible in the API.
    #[arg(long, default_value = "5m", value_parser = duration_in(Duration::from_secs(1), DAY))]
    pub(crate) exited_retention: Duration,

    /// At most this many exited processes are kept.
    #[arg(long, default_value_t = 10_000, value_parser = count_in(1, 1_000_000))]
    pub(crate) max_exited: usize,

    /// At most this many workload series per /metrics scrape; what is cut is counted in
    /// taskscope_series_dropped_total.
    #[arg(long, default_value_t = 10_000, value_parser = count_in(1, 100_000_000))]
    pub(crate) max_series: usize,

    /// Syscalls exported by name per workload (the busiest); the rest as syscall="other".
    #[arg(long, default_value_t = 10, value_parser = count_in(1, 512))]
    pub(crate) top_syscalls: usize,

    /// Bucket spacing of the latency histograms on /metrics and over OTLP: log4 (every second
    /// power of two, 14 buckets) or log2 (every power of two, the kernel's own resolution, 26
    /// buckets: a quantile within a factor of 2 instead of 4, at 12 more series a histogram).
    #[arg(long, value_enum, default_value_t = HistogramBuckets::Log4)]
    pub(crate) histogram_buckets: HistogramBuckets,

    /// Idle periods shorter than this count as fragmented idle CPU time (rounded to the
    /// nearest power of two nanoseconds).
    #[arg(long, default_value = "1ms", value_parser = duration_in(Duration::from_micros(1), Duration::from_secs(1)))]
    pub(crate) idle_fragment_threshold: Duration,

    /// Processes that get their own series on /metrics (`taskscope_process_*`, with `pid` and
    /// `comm`): KEY=PATTERN[,KEY=PATTERN...], KEY one of comm, exe, pid, cgroup, `*` a
    /// wildcard. Repeat the flag for more selectors.
    #[arg(long = "process-metrics", value_name = "SELECTOR", value_parser = parse_selector)]
    pub(crate) process_metrics: Vec<ProcessSelector>,

    /// Workloads without live processes stay in /metrics this long.
    #[arg(long, default_value = "5m", value_parser = duration_in(Duration::from_secs(1), 7 * DAY))]
    pub(crate) series_ttl: Duration,

    /// Turn on the kernel's BPF run statistics while the agent runs, for
    /// taskscope_bpf_program_runs_total and _run_seconds_total (about 20 ns per program run).
    #[arg(long)]
    pub(crate) bpf_stats: bool,

    /// Keep CAP_SYS_ADMIN after start-up, so that custom metrics can attach uprobes (the
    /// kernel's uprobe perf events require it). On whenever the config file defines
    /// `[[custom_metrics]]`; needed to add them through the admin API otherwise.
    #[arg(long)]
    pub(crate) uprobes: bool,

    /// The config file's `[[custom_metrics]]`, validated (no flag: a table per metric).
    #[arg(skip)]
    pub(crate) custom_metrics: Vec<crate::collector::custom::CustomDefinition>,

    /// Attach types to use.
    #[arg(long, value_enum, default_value_t = AttachMode::Auto)]
    pub(crate) attach: AttachMode,

    /// Name pods, namespaces and containers from the Kubernetes API (pods of this node only,
    /// watched). Credentials: the pod's service account, or KUBECONFIG.
    #[arg(long, env = "TASKSCOPE_KUBERNETES")]
    pub(crate) kubernetes: bool,

    /// This node's name, for --kubernetes (set NODE_NAME from the downward API).
    #[arg(long, env = "NODE_NAME")]
    pub(crate) node_name: Option<String>,

    /// Also redact matches of this regular expression in command lines (the whole match, or
    /// its `value` group if it has one), on top of the built-in patterns (passwords, tokens,
    /// API keys, Authorization headers, AWS key ids, URL credentials). Repeatable.
    #[arg(long = "redact-pattern", value_name = "REGEX", value_parser = parse_regex)]
    pub(crate) redact_patterns: Vec<regex::Regex>,

    /// A process started with TRACEPARENT (W3C trace context) in its environment joins that
    /// trace, its span a child of the given span (its children follow it).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub(crate) join_traceparent: bool,

    /// Export task spans and metrics over OTLP to this collector base URL (for HTTP,
    /// `/v1/traces` and `/v1/metrics` are appended; https:// for TLS). Without it: the
    /// standard OTEL_EXPORTER_OTLP_ENDPOINT, or the per-signal
    /// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT / OTEL_EXPORTER_OTLP_METRICS_ENDPOINT (full URLs).
    #[arg(long, env = "TASKSCOPE_OTLP_ENDPOINT")]
    pub(crate) otlp_endpoint: Option<String>,

    /// Share of ordinary process trees whose spans are exported (0 to 1); a tree with a failed
    /// or slow process is always exported whole.
    #[arg(long, default_value_t = 1.0, value_parser = parse_ratio)]
    pub(crate) span_sample_ratio: f64,

    /// A process at least this long keeps its whole tree's spans whatever the sample ratio.
    #[arg(long, default_value = "10s", value_parser = duration_in(Duration::from_millis(1), DAY))]
    pub(crate) slow_span: Duration,

    /// Spans exported per second at most (0: no limit); the rest are counted
    /// (reason="rate_limited").
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub(crate) span_rate_limit: u32,

    /// OTLP transport: http/protobuf (port 4318) or grpc (port 4317). Default: from
    /// OTEL_EXPORTER_OTLP_{TRACES,METRICS}_PROTOCOL or OTEL_EXPORTER_OTLP_PROTOCOL, else
    /// http/protobuf.
    #[arg(long, value_enum)]
    pub(crate) otlp_protocol: Option<OtlpProtocol>,

    /// A header sent with every OTLP request (HTTP header or gRPC metadata), NAME=VALUE;
    /// repeatable. Added to OTEL_EXPORTER_OTLP_HEADERS and ..._{TRACES,METRICS}_HEADERS (the
    /// flag wins for the same name).
    /// (Checked at start, not by the parser, so that an error never shows the value.)
    #[arg(long = "otlp-header", value_name = "NAME=VALUE")]
    pub(crate) otlp_headers: Vec<String>,

    /// PEM file of the CA that signed the collector's certificate (https:// endpoints), on top
    /// of the system's roots. Default: OTEL_EXPORTER_OTLP_CERTIFICATE.
    #[arg(long, value_name = "PEM")]
    pub(crate) otlp_ca_file: Option<PathBuf>,

    /// Client certificate (PEM) for collectors that require mutual TLS, with
    /// --otlp-client-key. Default: OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE.
    #[arg(long, value_name = "PEM", requires = "otlp_client_key")]
    pub(crate) otlp_client_certificate: Option<PathBuf>,

    /// The client certificate's private key (PEM). Default: OTEL_EXPORTER_OTLP_CLIENT_KEY.
    #[arg(long, value_name = "PEM", requires = "otlp_client_certificate")]
    pub(crate) otlp_client_key: Option<PathBuf>,

    /// The passwd file that names span owners (`process.owner`); in a container, mount the
    /// host's /etc/passwd and point this at it.
    #[arg(long, default_value = "/etc/passwd", value_name = "PATH")]
    pub(crate) passwd_file: PathBuf,

    /// How often the /metrics families are sent over OTLP (to --otlp-endpoint,
    /// OTEL_EXPORTER_OTLP_METRICS_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT); 0s turns it off.
    #[arg(long, default_value = "60s", value_parser = off_or_duration_in(Duration::from_secs(1), HOUR))]
    pub(crate) otlp_metrics_interval: Duration,

    /// Spans waiting for export at most; more are dropped and counted
    /// (taskscope_events_lost_total{source="otlp_spans",reason="queue_full"}).
    #[arg(long, default_value_t = 4096, value_parser = count_in(1, 1_000_000))]
    pub(crate) otlp_queue: usize,

    /// A failed export is retried with backoff this long, then its spans are dropped and
    /// counted (reason="export_failed").
    #[arg(long, default_value = "30s", value_parser = duration_in(Duration::ZERO, DAY))]
    pub(crate) otlp_retry_for: Duration,

    /// Docker Engine API socket, for container names and images (`""` to turn it off). Looked
    /// for again every 30 s while absent.
    #[arg(long, default_value = "/run/docker.sock", value_name = "PATH")]
    pub(crate) docker_socket: std::path::PathBuf,

    /// Podman API socket (`podman system service`; it serves Docker's container API), for
    /// container names and images (`""` to turn it off).
    #[arg(long, default_value = "/run/podman/podman.sock", value_name = "PATH")]
    pub(crate) podman_socket: std::path::PathBuf,

    /// At most this many containers' names are cached from the runtimes' APIs; containers
    /// beyond it are counted in taskscope_events_lost_total{source="container_runtimes"}.
    #[arg(long, default_value_t = 16384, value_parser = count_in(1, 1_000_000))]
    pub(crate) max_containers: usize,

    /// At most this many pods' names are cached (a node runs at most a few hundred); pods
    /// beyond it are counted in taskscope_events_lost_total{source="kubernetes_pods"}.
    #[arg(long, default_value_t = 2048, value_parser = count_in(1, 1_000_000))]
    pub(crate) kubernetes_max_pods: usize,

    /// Probe groups to leave detached: syscalls, syscall_latency (syscalls still counted, not
    /// timed, at about a third of the cost), block_io (scheduling and lifecycle are the task
    /// model's and always on). Repeatable; changes live on reload.
    #[arg(long = "disable-probes", value_name = "GROUP", value_parser = parse_optional_probe_group)]
    pub(crate) disable_probes: Vec<crate::probes::ProbeGroup>,

    /// How often health is evaluated (/health, /readyz, taskscope_health_status); workload
    /// health is judged on the figures of this window.
    #[arg(long, default_value = "10s", value_parser = duration_in(Duration::from_millis(100), HOUR))]
    pub(crate) health_interval: Duration,

    /// A workload is `starved` when its run-queue latency p99 over the window is above this.
    #[arg(long, default_value = "50ms", value_parser = parse_positive_duration)]
    pub(crate) health_starved_runqueue_p99: Duration,

    /// A workload is `failing` when at least this share of its syscalls failed in the window
    /// (with at least 100 syscalls), 0 to 1 ...
    #[arg(long, default_value_t = 0.5, value_parser = parse_ratio)]
    pub(crate) health_failing_syscall_error_ratio: f64,

    /// ... or when at least this many of its processes exited with failure in the window.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) health_failing_exits: u64,

    /// A workload is `io_bound` when its block IO latency p99 over the window is above this.
    #[arg(long, default_value = "200ms", value_parser = parse_positive_duration)]
    pub(crate) health_io_latency_p99: Duration,

    /// A workload is `churning` when more processes than this start per second.
    #[arg(long, default_value_t = 50.0, value_parser = parse_positive)]
    pub(crate) health_churn_starts_per_second: f64,

    /// A process running longer than this is logged once, with where its time went.
    #[arg(long, default_value = "5m", value_parser = parse_positive_duration)]
    pub(crate) slow_task: Duration,

    /// A process (running at least 1 s) that spent more than this share of its life waiting
    /// for a CPU is logged once, 0 to 1.
    #[arg(long, default_value_t = 0.5, value_parser = parse_ratio)]
    pub(crate) slow_task_runqueue_share: f64,

    /// Start in debug mode (switchable at runtime with POST /api/v1/debug): debug logs, every
    /// task's span exported whatever the sampling, slow-task threshold divided by 10.
    #[arg(long)]
    pub(crate) debug: bool,

    /// File holding the bearer token of the admin endpoints (/api/v1/config, /api/v1/debug);
    /// TASKSCOPE_ADMIN_TOKEN gives the token itself. Without either they are off.
    #[arg(long, value_name = "PATH")]
    pub(crate) admin_token_file: Option<PathBuf>,

    /// Put the read-only JSON API (/api/v1/*) behind the admin token too. /metrics, /livez,
    /// /readyz and /health stay open.
    #[arg(long)]
    pub(crate) api_auth: bool,

    /// HTTP connections open at once; more are closed at once and counted
    /// (taskscope_http_refused_total{reason="connections"}).
    #[arg(long, default_value = "256", value_parser = count_in(1, 65_536))]
    pub(crate) http_max_connections: usize,

    /// Heavy JSON API requests (process and span listings) served at once; more get 503
    /// (taskscope_http_refused_total{reason="busy"}). The health probes are never limited.
    #[arg(long, default_value = "4", value_parser = count_in(1, 256))]
    pub(crate) api_max_concurrent: usize,

    /// Log lines per second from one place in the code at most; the rest are counted and
    /// summarized (taskscope_log_lines_suppressed_total).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub log_rate_limit: u32,

    #[command(flatten)]
    pub(crate) kernel: KernelArgs,

    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Debug, Args)]
pub struct RecordArgs {
    /// How long to record.
    #[arg(long, default_value = "10s", value_parser = duration_in(Duration::from_millis(100), HOUR))]
    pub(crate) duration: Duration,

    /// The Chrome trace event file to write (JSON).
    #[arg(short, long)]
    pub output: PathBuf,

    /// The spans of processes that ended in the window, as JSON lines (default: OUTPUT with
    /// `.spans.jsonl` in place of its extension).
    #[arg(long)]
    pub(crate) spans_output: Option<PathBuf>,

    #[command(flatten)]
    pub(crate) kernel: KernelArgs,

    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Debug, Args)]
pub struct TopArgs {
    /// The agent to watch (`http://HOST:PORT`; the agent serves plain HTTP: reach a remote one
    /// through `kubectl port-forward` or an SSH tunnel).
    #[arg(long, default_value = "http://127.0.0.1:9720", env = "TASKSCOPE_URL")]
    pub url: String,

    /// The API token. A flag's value is visible to other users in the process list: prefer
    /// TASKSCOPE_ADMIN_TOKEN or --token-file.
    #[arg(long, env = "TASKSCOPE_ADMIN_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,

    /// File holding the API token (wins over --token and TASKSCOPE_ADMIN_TOKEN).
    #[arg(long)]
    pub(crate) token_file: Option<PathBuf>,

    /// Seconds between refreshes (the feed's frames are a second apart).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=10))]
    pub(crate) interval: u64,

    /// Print one text snapshot and exit (also what happens when the output is not a
    /// terminal).
    #[arg(long)]
    pub(crate) once: bool,

    /// Start with the process table rather than the workload table.
    #[arg(long)]
    pub(crate) processes: bool,

    /// Width of a text snapshot (`--once`; default: the terminal's, else 120).
    #[arg(long, value_parser = clap::value_parser!(u16).range(40..=1000))]
    pub(crate) width: Option<u16>,

    /// Where `s` writes screen snapshots.
    #[arg(long, default_value = ".")]
    pub(crate) snapshot_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub kernel: KernelArgs,

    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Debug, Clone, Args)]
pub struct KernelArgs {
    /// The running kernel's BTF, where struct offsets are read from.
    #[arg(long, default_value = crate::probes::KERNEL_BTF)]
    pub kernel_btf: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Json, env = "TASKSCOPE_LOG_FORMAT")]
    pub(crate) log_format: LogFormat,

    /// Log filter (tracing EnvFilter syntax, e.g. `info` or `taskscope=debug`).
    #[arg(long, default_value = "info", env = "TASKSCOPE_LOG")]
    pub(crate) log_level: String,
}

/// Parses a ratio from 0 to 1.
fn parse_ratio(text: &str) -> Result<f64, String> {
    let ratio: f64 = text
        .parse()
        .map_err(|_| format!("'{text}' is not a number: write a ratio from 0 to 1, e.g. 0.1"))?;
    if (0.0..=1.0).contains(&ratio) {
        Ok(ratio)
    } else {
        Err(format!(
            "{ratio} is out of range: write a ratio from 0 to 1, e.g. 0.1"
        ))
    }
}

/// Parses a probe group the agent can run without.
fn parse_optional_probe_group(text: &str) -> Result<crate::probes::ProbeGroup, String> {
    use crate::probes::ProbeGroup;
    match ProbeGroup::ALL.into_iter().find(|group| group.name() == text) {
        Some(group) if group.can_be_disabled() => Ok(group),
        Some(_) => Err(format!(
            "the {text} probes cannot be switched off: the task model needs them; only syscalls and block_io can"
        )),
        None => Err(format!("unknown probe group '{text}': use syscalls or block_io")),
    }
}

/// Parses a duration above zero.
fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    let duration = parse_duration(text)?;
    if duration.is_zero() {
        return Err(format!("'{text}' must be above zero"));
    }
    Ok(duration)
}

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);

/// `duration` in the largest unit that writes it whole (`10ms`, `1h`).
fn show_duration(duration: Duration) -> String {
    let nanos = duration.as_nanos();
    if nanos == 0 {
        return "0s".into();
    }
    let units: [(u128, &str); 6] = [
        (3_600_000_000_000, "h"),
        (60_000_000_000, "m"),
        (1_000_000_000, "s"),
        (1_000_000, "ms"),
        (1_000, "us"),
        (1, "ns"),
    ];
    let (size, unit) = units
        .into_iter()
        .find(|(size, _)| nanos.is_multiple_of(*size))
        .unwrap_or((1, "ns"));
    format!("{}{unit}", nanos / size)
}

/// A parser of durations from `min` to `max`: zero and absurd values are refused at start-up
/// and on reload, naming the range, before anything is loaded.
fn duration_in(
    min: Duration,
    max: Duration,
) -> impl Fn(&str) -> Result<Duration, String> + Clone + Send + Sync + 'static {
    move |text| {
        let duration = parse_duration(text)?;
        if duration < min || duration > max {
            return Err(format!(
                "'{text}' is out of range: write a duration from {} to {}",
                show_duration(min),
                show_duration(max)
            ));
        }
        Ok(duration)
    }
}

/// [`duration_in`], where `0s` also means "off".
fn off_or_duration_in(
    min: Duration,
    max: Duration,
) -> impl Fn(&str) -> Result<Duration, String> + Clone + Send + Sync + 'static {
    let within = duration_in(min, max);
    move |text| match parse_duration(text)? {
        Duration::ZERO => Ok(Duration::ZERO),
        _ => within(text).map_err(|e| format!("{e}, or 0s for off")),
    }
}

/// A parser of counts (sizes, caps, queue lengths) from `min` to `max`.
fn count_in(
    min: usize,
    max: usize,
) -> impl Fn(&str) -> Result<usize, String> + Clone + Send + Sync + 'static {
    move |text| match text.trim().parse::<usize>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!(
            "'{text}' is out of range: write a whole number from {min} to {max}"
        )),
    }
}

/// Parses a number above zero.
fn parse_positive(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        _ => Err(format!("'{text}' is not a number above zero")),
    }
}

/// Parses a regular expression for `--redact-pattern`.
fn parse_regex(text: &str) -> Result<regex::Regex, String> {
    regex::Regex::new(text).map_err(|e| format!("invalid regular expression: {e}"))
}

/// Parses `250ms`, `1s`, `5m`, `2h`, `1500us`, `10ns`.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("'{text}' has no unit: write e.g. 500ms, 2s or 5m"))?;
    let (number, unit) = text.split_at(split);
    let unit = unit.trim_start();
    let value: u64 = number
        .parse()
        .map_err(|_| format!("'{text}' does not start with a whole number: write e.g. 500ms"))?;
    let nanos_per_unit: u64 = match unit {
        "ns" => 1,
        "us" | "µs" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        other => {
            return Err(format!(
                "'{text}' has unknown unit '{other}': use ns, us, ms, s, m or h"
            ))
        }
    };
    value
        .checked_mul(nanos_per_unit)
        .map(Duration::from_nanos)
        .ok_or_else(|| format!("'{text}' is too large"))
}

fn parse_selector(text: &str) -> Result<ProcessSelector, String> {
    text.parse()
        .map_err(|e: crate::model::selector::SelectorError| e.to_string())
}

fn parse_ring_kib(text: &str) -> Result<u32, String> {
    let kib: u32 = text
        .parse()
        .map_err(|_| format!("'{text}' is not a number of KiB"))?;
    if kib < 64 || !kib.is_power_of_two() || kib > 1 << 20 {
        return Err(format!(
            "{kib} KiB: the ring buffer must be a power of two between 64 and 1048576 KiB"
        ));
    }
    Ok(kib)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("15us"), Ok(Duration::from_micros(15)));
        assert!(parse_duration("5").unwrap_err().contains("no unit"));
        assert!(parse_duration("5 parsecs")
            .unwrap_err()
            .contains("unknown unit"));
        assert!(parse_duration("ms").is_err());
        assert!(parse_duration("99999999999999999h")
            .unwrap_err()
            .contains("too large"));
    }

    #[test]
    fn zero_and_absurd_values_are_refused_with_the_range() {
        let poll = duration_in(Duration::from_millis(10), HOUR);
        assert_eq!(poll("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(
            poll("0s").unwrap_err(),
            "'0s' is out of range: write a duration from 10ms to 1h"
        );
        assert!(poll("2h").unwrap_err().contains("from 10ms to 1h"));
        let queue = count_in(1, 1_000_000);
        assert_eq!(queue("4096"), Ok(4096));
        assert_eq!(
            queue("9223372036854775807").unwrap_err(),
            "'9223372036854775807' is out of range: write a whole number from 1 to 1000000"
        );
        assert!(queue("0").is_err());
        assert!(queue("-1").is_err());
        assert_eq!(show_duration(Duration::from_micros(1)), "1us");
        assert_eq!(show_duration(7 * DAY), "168h");
        assert_eq!(show_duration(Duration::ZERO), "0s");
        let export = off_or_duration_in(Duration::from_secs(1), HOUR);
        assert_eq!(export("0s"), Ok(Duration::ZERO));
        assert!(export("1ms")
            .unwrap_err()
            .ends_with("from 1s to 1h, or 0s for off"));
    }

    #[test]
    fn only_optional_probe_groups_can_be_disabled() {
        assert!(parse_optional_probe_group("block_io").is_ok());
        assert!(parse_optional_probe_group("lifecycle")
            .unwrap_err()
            .contains("cannot be switched off"));
        assert!(parse_optional_probe_group("disk")
            .unwrap_err()
            .contains("syscalls or block_io"));
    }

    #[test]
    fn ring_sizes() {
        assert_eq!(parse_ring_kib("1024"), Ok(1024));
        assert!(parse_ring_kib("1000").is_err());
        assert!(parse_ring_kib("32").is_err());
        assert!(parse_ring_kib("lots").is_err());
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
