//! `taskscope run`: wiring the pipeline together and shutting it down cleanly.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use tokio::{
    net::TcpListener,
    signal::unix::{signal, SignalKind},
    sync::{mpsc, watch},
};
use tracing::{info, warn};

use crate::{
    api::{self, ui::Dashboard, ApiState},
    check::{drop_capabilities, effective_capability_names, effective_caps, missing_capabilities},
    cli::{AttachMode, RunArgs},
    collector::{
        export::{MetricsExportStats, SpanSink},
        Collector, CollectorConfig, LiveSettings, Query,
    },
    config::RunConfig,
    control::{self, Control},
    exporters::{
        families::{Exposition, ExpositionConfig},
        otlp::{self, OtlpConfig},
        otlp_metrics::{self, OtlpMetricsConfig},
        otlp_target::{self, OtlpFlags, Signal},
        HttpRefusals,
    },
    health::{self, MonitorSources, SharedHealth},
    logging::LogControl,
    metadata::{
        runtimes::{self, ContainerDirectory, SharedContainers},
        Directories, PodDirectory, SharedPods,
    },
    model::{host::SystemHost, redact::Redactor, ModelConfig, TaskModel},
    probes::{coverage::degraded_summary, BpfStatsGuard, LoadOptions, Probes},
    procfs::{cgroup2_mount, mountinfo, CgroupMemoryReader, CgroupResolver},
};

/// Why `run` could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("taskscope run needs {missing} (or root): run it as root or grant these capabilities; `taskscope check` lists what is missing")]
    Capabilities { missing: String },
    #[error("cannot listen on {addr}: {source}. Choose another address with --listen")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Load(#[from] crate::probes::LoadError),
    #[error(transparent)]
    Collector(#[from] crate::collector::CollectorError),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("HTTP server failed: {0}")]
    Serve(std::io::Error),
    #[error("{0}")]
    Kubernetes(String),
    #[error("{0}")]
    Otlp(String),
    #[error("the collector stopped (see the log line before this one); exiting")]
    CollectorStopped,
    /// A setting that cannot be used (exit code 2, as a bad flag).
    #[error("{0}")]
    Config(String),
}

impl RunError {
    /// 2 for a configuration the agent cannot start with, 1 for everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            RunError::Config(_) => 2,
            _ => 1,
        }
    }
}

/// The admin token from `--admin-token-file` or `TASKSCOPE_ADMIN_TOKEN`.
fn admin_token(args: &RunArgs) -> Result<Option<Arc<str>>, RunError> {
    let token = match &args.admin_token_file {
        Some(path) => Some(std::fs::read_to_string(path).map_err(|e| {
            RunError::Config(format!(
                "--admin-token-file {}: cannot read it: {e}",
                path.display()
            ))
        })?),
        None => std::env::var("TASKSCOPE_ADMIN_TOKEN").ok(),
    };
    let token = token.map(|t| t.trim().to_string());
    if token.as_ref().is_some_and(|t| t.len() < 16) {
        return Err(RunError::Config(
            "the admin token is shorter than 16 characters: use a long random one (e.g. `openssl rand -hex 32`)".into(),
        ));
    }
    Ok(token.map(Arc::from))
}

/// Says at start-up who can read the JSON API (command lines, uids, cgroups, trace ids):
/// loudly when anyone who reaches a non-loopback address can.
fn warn_about_exposure(listen: SocketAddr, api_auth: bool, token: bool) {
    let open = !api_auth;
    if open && !listen.ip().is_loopback() {
        warn!(
            %listen,
            "THE JSON API IS OPEN TO THE NETWORK: anyone who reaches {listen} can read every \
             process's command line, uid and cgroup. Set api_auth = true with a token \
             (--admin-token-file or TASKSCOPE_ADMIN_TOKEN), or listen on 127.0.0.1 \
             (docs/security.md)"
        );
    } else if api_auth && !token {
        warn!(
            "api_auth is on but no token is set: the JSON API answers 403 to everyone \
             (/metrics and the health probes stay open). Set --admin-token-file or \
             TASKSCOPE_ADMIN_TOKEN to use it"
        );
    }
}

/// With `--kubernetes`, starts watching this node's pods; without, an empty directory.
#[cfg(feature = "kubernetes")]
async fn start_kubernetes(
    args: &RunArgs,
    shutdown: watch::Receiver<bool>,
) -> Result<SharedPods, RunError> {
    use crate::metadata::{kubernetes, SourceState};
    if !args.kubernetes {
        return Ok(PodDirectory::disabled());
    }
    let fail = |e: kubernetes::KubernetesError| RunError::Kubernetes(e.to_string());
    let node = args
        .node_name
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or(kubernetes::KubernetesError::NoNodeName)
        .map_err(fail)?;
    let client = kubernetes::client().await.map_err(fail)?;
    let pods: SharedPods = Arc::new(std::sync::RwLock::new(PodDirectory::new(
        args.kubernetes_max_pods,
        SourceState::Connecting,
    )));
    info!(node = %node, "watching this node's pods in the Kubernetes API");
    tokio::spawn(kubernetes::watch_pods(
        client,
        node,
        Arc::clone(&pods),
        args.kubernetes_max_pods,
        shutdown,
    ));
    Ok(pods)
}

/// Built without the Kubernetes client: `--kubernetes` is an error.
#[cfg(not(feature = "kubernetes"))]
async fn start_kubernetes(
    args: &RunArgs,
    _shutdown: watch::Receiver<bool>,
) -> Result<SharedPods, RunError> {
    if args.kubernetes {
        return Err(RunError::Kubernetes(
            "--kubernetes: this taskscope was built without the `kubernetes` cargo feature; rebuild with it".into(),
        ));
    }
    Ok(PodDirectory::disabled())
}

/// Follows the container runtimes whose sockets are configured (see `--docker-socket`,
/// `--podman-socket`); an empty path turns one off.
fn start_container_runtimes(args: &RunArgs, shutdown: watch::Receiver<bool>) -> SharedContainers {
    let sources: Vec<(&'static str, std::path::PathBuf)> = [
        ("docker", &args.docker_socket),
        ("podman", &args.podman_socket),
    ]
    .into_iter()
    .filter(|(_, socket)| !socket.as_os_str().is_empty())
    .map(|(runtime, socket)| (runtime, socket.clone()))
    .collect();
    let directory = Arc::new(std::sync::RwLock::new(ContainerDirectory::new(
        args.max_containers,
        &sources,
    )));
    for (runtime, socket) in sources {
        tokio::spawn(runtimes::watch_runtime(
            runtime,
            socket,
            Arc::clone(&directory),
            shutdown.clone(),
        ));
    }
    directory
}

/// What `run` sets up with its privileges.
pub struct Prepared {
    listener: std::net::TcpListener,
    probes: Probes,
    admin_token: Option<Arc<str>>,
    /// Where spans and metrics go over OTLP, if anywhere.
    traces_target: Option<otlp_target::SignalTarget>,
    metrics_target: Option<otlp_target::SignalTarget>,
    /// Held until the agent stops: statistics go off again with it (unless someone else on
    /// the host keeps them on).
    _bpf_stats: Option<BpfStatsGuard>,
}

/// One line per hook (attached how, or why not), then "runs, degraded: ..." when optional hooks
/// are missing: the same words as `taskscope check`, /health and /api/v1/status.
fn log_attachment(probes: &Probes) {
    for hook in &probes.hooks {
        match hook.attach_type {
            Some(attach_type) => info!(
                tracepoint = hook.tracepoint,
                group = ?hook.group,
                enabled = hook.enabled,
                %attach_type,
                fallback_reasons = ?hook.errors,
                "attached"
            ),
            None if !hook.replaced_by.is_empty() => info!(
                tracepoint = hook.tracepoint,
                group = ?hook.group,
                replaced_by = ?hook.replaced_by,
                errors = ?hook.errors,
                "not attached; its fallbacks give the same data"
            ),
            None => warn!(
                tracepoint = hook.tracepoint,
                group = ?hook.group,
                errors = ?hook.errors,
                "not attached"
            ),
        }
    }
    if let Some(summary) = degraded_summary(&probes.degraded) {
        warn!("{summary}");
    }
}

/// Malloc arenas the agent's threads share: one (glibc's per-thread caches keep them off its lock).
const MALLOC_ARENAS: libc::c_int = 1;

/// Allocations at least this large get pages of their own, returned when freed.
const MALLOC_MMAP_THRESHOLD: libc::c_int = 1 << 20;

/// Before any thread starts, two allocator settings, measured with `cargo xtask bench-scale`
/// (10,000 processes, then a storm of process starts):
/// - one arena: glibc gives each thread that allocates an arena of its own (up to eight per
///   core), and memory freed in one serves no other. The agent's threads take turns on its
///   tables: RSS 123 MiB with glibc's default, 103 MiB with one arena; 364 against 244 MiB after
///   the storm.
/// - a fixed mmap threshold of 1 MiB: each read of the kernel maps builds a few MiB of vectors.
///   glibc raises its threshold to the largest block freed, so from the second read on they came
///   from the heap, where the model's small allocations made between them pinned the pages:
///   106 MiB with 10,000 processes, 88 MiB with the threshold fixed; 247 against 220 MiB after
///   the storm.
///
/// `MALLOC_ARENA_MAX` and `MALLOC_MMAP_THRESHOLD_` in the environment still win.
fn tune_malloc() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter, before the runtime's threads exist.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS) };
    }
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
        // SAFETY: as above.
        unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD) };
    }
}

/// The privileged part of `run`, on the main thread before the async runtime starts:
/// capabilities belong to each thread, so they are dropped here, where they are held alone,
/// and the runtime's threads start with the reduced set.
pub fn prepare(args: &RunArgs) -> Result<Prepared, RunError> {
    tune_malloc();
    let admin_token = admin_token(args)?;
    warn_about_exposure(args.listen, args.api_auth, admin_token.is_some());
    // Settings checked before anything is loaded into the kernel.
    let otlp_flags = OtlpFlags {
        endpoint: args.otlp_endpoint.clone(),
        protocol: args.otlp_protocol,
        headers: args
            .otlp_headers
            .iter()
            .map(|h| otlp_target::parse_header(h))
            .collect::<Result<_, _>>()
            .map_err(|e| RunError::Config(format!("--otlp-header: {e}")))?,
        ca_file: args.otlp_ca_file.clone(),
        client_certificate: args.otlp_client_certificate.clone(),
        client_key: args.otlp_client_key.clone(),
    };
    let environment = |name: &str| std::env::var(name).ok();
    let otlp_target = |signal| {
        otlp_target::resolve(signal, &otlp_flags, &environment)
            .map_err(|e| RunError::Config(format!("OTLP export: {e}")))
    };
    let traces_target = otlp_target(Signal::Traces)?;
    let metrics_target = otlp_target(Signal::Metrics)?;

    let missing = missing_capabilities(effective_caps());
    if !missing.is_empty() {
        return Err(RunError::Capabilities {
            missing: missing.join(" and "),
        });
    }
    // Bind first: a port in use fails fast, before anything is loaded into the kernel.
    let listen = |source| RunError::Listen {
        addr: args.listen,
        source,
    };
    let listener = std::net::TcpListener::bind(args.listen).map_err(listen)?;
    listener.set_nonblocking(true).map_err(listen)?;
    let probes = Probes::load(&LoadOptions {
        agent_tgid: std::process::id(),
        thresholds: control::thresholds(args),
        disabled_groups: args.disable_probes.clone(),
        record_switches: false,
        max_tasks: args.max_tasks,
        max_syscall_entries: args.max_syscall_entries,
        max_syscall_entries_per_process: args.max_syscall_entries_per_process,
        max_workload_syscall_entries: args.max_workload_syscall_entries,
        max_io_requests: args.max_io_requests,
        ring_buffer_bytes: args.ring_buffer_kib * 1024,
        force_raw_tp: args.attach == AttachMode::RawTp,
        kernel_btf: args.kernel.kernel_btf.clone(),
    })?;
    log_attachment(&probes);
    let bpf_stats = if args.bpf_stats {
        match BpfStatsGuard::enable() {
            Ok(guard) => Some(guard),
            Err(err) => {
                warn!(%err, "cannot turn on BPF run statistics; taskscope_bpf_program_* stay at 0");
                None
            }
        }
    } else {
        None
    };
    // Attached: what is not needed any more goes.
    match drop_capabilities(args.uprobes) {
        Ok(dropped) => {
            info!(kept = ?effective_capability_names(), dropped = dropped.len(), "capabilities dropped after attaching")
        }
        Err(err) => warn!(%err, "cannot drop capabilities; running with those it was given"),
    }
    Ok(Prepared {
        listener,
        probes,
        admin_token,
        traces_target,
        metrics_target,
        _bpf_stats: bpf_stats,
    })
}

/// Runs the agent until SIGINT or SIGTERM; SIGHUP reloads the config file.
pub async fn run(config: RunConfig, log: LogControl, prepared: Prepared) -> Result<(), RunError> {
    let args = config.args.clone();
    let Prepared {
        listener,
        probes,
        admin_token,
        traces_target,
        metrics_target,
        _bpf_stats,
    } = prepared;
    let listener = TcpListener::from_std(listener).map_err(|source| RunError::Listen {
        addr: args.listen,
        source,
    })?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let names = Directories {
        pods: start_kubernetes(&args, shutdown_rx.clone()).await?,
        containers: start_container_runtimes(&args, shutdown_rx.clone()),
    };
    // Caught from here on: a stop asked for while starting still detaches cleanly.
    let mut signals = Signals {
        term: signal(SignalKind::terminate()).map_err(RunError::Signals)?,
        int: signal(SignalKind::interrupt()).map_err(RunError::Signals)?,
        hup: signal(SignalKind::hangup()).map_err(RunError::Signals)?,
    };

    let span_sink = start_span_export(traces_target, &args, &names, &shutdown_rx)?;
    let health: SharedHealth = Arc::default();
    let live = control::live_settings(&args, args.debug);
    if args.debug {
        let _ = log.set_filter(crate::logging::DEBUG_FILTER);
    }
    let cgroup_root = cgroup2_mount();
    let cgroup_v2 = cgroup_root.is_some();
    let collector = new_collector(&args, probes, &live, span_sink.clone(), cgroup_root)?;
    let (queries_tx, queries_rx) = mpsc::channel(64);
    let heartbeat = collector.heartbeat();
    let mut collector = tokio::spawn(collector.run(queries_rx, shutdown_rx.clone()));
    let exposition_config = exposition_config(&args);
    let otlp_metrics = start_metrics_export(
        metrics_target,
        &args,
        exposition_config,
        &queries_tx,
        &names,
        &health,
        &shutdown_rx,
    );
    let (thresholds_tx, thresholds_rx) = watch::channel(control::health_thresholds(&args));
    tokio::spawn(health::monitor(
        MonitorSources {
            queries: queries_tx.clone(),
            names: names.clone(),
            otlp_traces: span_sink,
            otlp_metrics: otlp_metrics.clone(),
            cgroup_v2,
        },
        args.health_interval,
        thresholds_rx,
        Arc::clone(&health),
        log.clone(),
        shutdown_rx.clone(),
    ));
    let control = Arc::new(tokio::sync::Mutex::new(Control::new(
        config,
        queries_tx.clone(),
        log,
        thresholds_tx,
    )));

    let dashboard = Dashboard::start(&queries_tx, &health, &names, &shutdown_rx);
    let refusals = Arc::new(HttpRefusals::default());
    let state = ApiState {
        queries: queries_tx,
        exposition: Arc::new(Mutex::new(
            Exposition::new(CgroupMemoryReader::from_mounts(&mountinfo()), names.clone())
                .with_health(Arc::clone(&health))
                .with_http_refusals(Arc::clone(&refusals), Arc::clone(&dashboard.live_stats)),
        )),
        names,
        exposition_config,
        otlp_metrics,
        health,
        control: Arc::clone(&control),
        admin_token,
        api_auth: args.api_auth,
        heartbeat,
        poll_interval: args.poll_interval,
        health_interval: args.health_interval,
        refusals,
        max_concurrent: args.api_max_concurrent,
        dashboard,
    };
    let server = serve(listener, state, args.http_max_connections, shutdown_rx);
    info!(listen = %args.listen, "taskscope is running");

    let stopped_early = wait_for_stop(&mut signals, &control, &mut collector).await;
    shut_down(shutdown_tx, stopped_early, collector, server).await
}

/// Tells every task to stop and waits for the collector (which detaches the programs) and the
/// server; an error when the collector had stopped on its own.
async fn shut_down<T>(
    shutdown: watch::Sender<bool>,
    stopped_early: bool,
    collector: tokio::task::JoinHandle<T>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
) -> Result<(), RunError> {
    let _ = shutdown.send(true);
    if !stopped_early {
        // The collector owns the programs: when it returns, they are detached and unloaded.
        let _ = collector.await;
    }
    if let Ok(Err(err)) = server.await {
        return Err(RunError::Serve(err));
    }
    info!("stopped; nothing is left attached");
    if stopped_early {
        return Err(RunError::CollectorStopped);
    }
    Ok(())
}

/// Serves the API until `shutdown` says stop.
fn serve(
    listener: TcpListener,
    state: ApiState,
    max_connections: usize,
    shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<std::io::Result<()>> {
    let refusals = Arc::clone(&state.refusals);
    let router = api::router(state);
    tokio::spawn(api::server::serve(
        listener,
        router,
        max_connections,
        refusals,
        shutdown,
    ))
}

/// Starts the OTLP span exporter when an endpoint is configured.
fn start_span_export(
    traces_target: Option<otlp_target::SignalTarget>,
    args: &RunArgs,
    names: &Directories,
    shutdown: &watch::Receiver<bool>,
) -> Result<Option<SpanSink>, RunError> {
    let sink = match traces_target {
        Some(target) => {
            info!(url = %crate::model::redact::redact_url_userinfo(&target.url), protocol = ?target.protocol, headers = target.headers.len(), "exporting task spans over OTLP");
            let sink = otlp::start(
                OtlpConfig {
                    target,
                    queue: args.otlp_queue,
                    batch: 512,
                    retry_for: args.otlp_retry_for,
                    passwd_file: args.passwd_file.clone(),
                },
                names.clone(),
                shutdown.clone(),
            )
            .map_err(|e| RunError::Otlp(e.to_string()))?;
            Some(sink)
        }
        None => None,
    };
    Ok(sink)
}

/// What a scrape (and an OTLP metrics export) holds.
fn exposition_config(args: &RunArgs) -> ExpositionConfig {
    ExpositionConfig {
        max_series: args.max_series,
        top_syscalls: args.top_syscalls,
        histogram_buckets: args.histogram_buckets,
    }
}

/// The task model and the collector that owns it, with the probes loaded.
fn new_collector(
    args: &RunArgs,
    probes: Probes,
    live: &LiveSettings,
    span_sink: Option<SpanSink>,
    cgroup_root: Option<std::path::PathBuf>,
) -> Result<Collector, RunError> {
    let model = TaskModel::new(
        ModelConfig {
            exited_retention: args.exited_retention,
            max_exited: args.max_exited,
            max_live: args.max_tasks as usize * 2,
            cpu_window: args.poll_interval,
            idle_fragment_threshold: args.idle_fragment_threshold,
            redactor: Redactor::new(&args.redact_patterns),
            join_traceparent: args.join_traceparent,
            series_ttl: args.series_ttl,
            ..ModelConfig::default()
        },
        Box::new(SystemHost::new(CgroupResolver::new(cgroup_root))),
    );
    let mut collector = Collector::new(
        probes,
        model,
        CollectorConfig {
            poll_interval: args.poll_interval,
            max_staleness: args.max_staleness,
            drain_interval: args.drain_interval,
            process_selectors: live.process_selectors.clone(),
            span_sink: span_sink.clone(),
            sampling: live.sampling,
            record_switches: false,
            slow_task: live.slow_task,
        },
    )?;
    collector
        .define_custom_metrics(args.custom_metrics.clone())
        .map_err(|e| RunError::Config(format!("{e} (config file, [[custom_metrics]])")))?;
    Ok(collector)
}

/// Starts the OTLP metrics exporter when an endpoint and an interval are configured.
fn start_metrics_export(
    metrics_target: Option<otlp_target::SignalTarget>,
    args: &RunArgs,
    exposition_config: ExpositionConfig,
    queries: &mpsc::Sender<Query>,
    names: &Directories,
    health: &SharedHealth,
    shutdown: &watch::Receiver<bool>,
) -> Option<Arc<MetricsExportStats>> {
    match metrics_target {
        Some(target) if !args.otlp_metrics_interval.is_zero() => {
            info!(url = %crate::model::redact::redact_url_userinfo(&target.url), protocol = ?target.protocol, interval = ?args.otlp_metrics_interval, "exporting metrics over OTLP");
            Some(otlp_metrics::start(
                OtlpMetricsConfig {
                    target,
                    interval: args.otlp_metrics_interval,
                    exposition: exposition_config,
                },
                queries.clone(),
                Exposition::new(CgroupMemoryReader::from_mounts(&mountinfo()), names.clone())
                    .with_health(Arc::clone(health)),
                shutdown.clone(),
            ))
        }
        _ => None,
    }
}

/// Waits for SIGTERM or SIGINT (reloading the config file on SIGHUP), or for the collector to
/// stop on its own: then `true`.
async fn wait_for_stop<T>(
    signals: &mut Signals,
    control: &tokio::sync::Mutex<Control>,
    collector: &mut tokio::task::JoinHandle<T>,
) -> bool {
    let stopped_early = loop {
        tokio::select! {
            _ = signals.term.recv() => {
                info!(signal = "SIGTERM", "shutting down");
                break false;
            }
            _ = signals.int.recv() => {
                info!(signal = "SIGINT", "shutting down");
                break false;
            }
            _ = signals.hup.recv() => {
                // An invalid file changes nothing; the reason is logged.
                if let Err(reason) = control.lock().await.reload_file().await {
                    warn!(%reason, "reload (SIGHUP) refused; the running configuration is unchanged");
                }
            }
            // The collector stops on its own only when it cannot go on (its reason is
            // logged): an agent that no longer collects must not look healthy.
            _ = &mut *collector => break true,
        }
    };
    stopped_early
}

/// The signals `run` answers: SIGTERM and SIGINT stop it, SIGHUP reloads the config file.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}
