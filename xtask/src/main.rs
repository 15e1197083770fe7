//! Orchestration: `cargo xtask setup | build | run | test | layers | bench`.
//!
//! Everything a fresh machine needs is installed here, idempotently: the nightly toolchain's
//! `rust-src` (for `-Z build-std=core` on the BPF target), `bpf-linker` built against the
//! nightly's own LLVM, and, for tests and benchmarks, Debian's bpftool, libbpf-tools and
//! rt-tests.

mod bench;
mod floor;
mod fuzz;
mod kernels;
mod layers;
mod live;
mod scale;
mod soak;

use std::{
    env,
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the eBPF toolchain (and, with --for-tests, the test and benchmark tools).
    Setup {
        #[arg(long)]
        for_tests: bool,
    },
    /// Build the agent (release) with its kernel programs.
    Build,
    /// Build and run the agent as root: `cargo xtask run -- --listen 0.0.0.0:9720`.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build and run every test (unit tests, then end-to-end tests against the kernel), then
    /// the format and lint checks.
    Test,
    /// Check the structure rules of docs/architecture.md (layers, cycles, function length).
    Layers,
    /// Measure per-program BPF cost, agent CPU and memory against libbpf-tools.
    Bench(bench::BenchArgs),
    /// Measure /metrics scrape time and size with many workloads.
    BenchScrape(bench::ScrapeArgs),
    /// The bench's scale run alone: many live processes, then a storm of process starts.
    BenchScale(scale::ScaleArgs),
    /// What the dashboard's live feed costs: agent CPU with and without clients, frame sizes.
    BenchLive(live::LiveArgs),
    /// The bench's custom-metrics part alone: a uprobe/uretprobe latency metric per call,
    /// next to libbpf-tools' funclatency.
    BenchCustom,
    /// Run every fuzz target (cargo-fuzz, libFuzzer) for --seconds each; print the figures.
    Fuzz(fuzz::FuzzArgs),
    /// The agent under sustained abuse for --seconds: process churn, cgroup churn, made-up
    /// syscalls, scrapes and 64 API clients; RSS, CPU, losses and /livez latency.
    Soak(soak::SoakArgs),
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Task::Setup { for_tests } => setup(for_tests),
        Task::Build => {
            setup(false)?;
            build()
        }
        Task::Run { args } => {
            setup(false)?;
            build()?;
            require_root("taskscope run loads programs into the kernel")?;
            let mut cmd = Command::new(agent_binary());
            cmd.arg("run").args(args);
            println!("xtask: {cmd:?}");
            // exec() so that signals reach the agent directly.
            use std::os::unix::process::CommandExt;
            Err(cmd.exec()).context("cannot exec the agent")
        }
        Task::Test => {
            setup(true)?;
            build()?;
            test()
        }
        Task::Layers => layers::check(&root()),
        Task::Fuzz(args) => {
            setup(false)?;
            fuzz::run(&args)
        }
        Task::Soak(args) => {
            setup(false)?;
            build()?;
            require_root("the soak loads programs into the kernel and makes cgroups")?;
            soak::run(&args, &agent_binary())
        }
        Task::BenchScrape(args) => {
            setup(false)?;
            build()?;
            require_root("the benchmark loads programs into the kernel")?;
            bench::scrape(&args, &agent_binary())
        }
        Task::BenchLive(args) => {
            setup(false)?;
            build()?;
            require_root("the benchmark loads programs into the kernel and makes cgroups")?;
            live::run(&args, &agent_binary())
        }
        Task::BenchCustom => {
            setup(true)?;
            build()?;
            require_root("the benchmark loads programs into the kernel")?;
            bench::custom(&agent_binary())
        }
        Task::BenchScale(args) => {
            setup(true)?;
            build()?;
            require_root("the benchmark loads programs into the kernel")?;
            scale::run(&args, &agent_binary())
        }
        Task::Bench(args) => {
            setup(true)?;
            build()?;
            require_root("the benchmark loads programs into the kernel")?;
            bench::run(&args, &agent_binary())
        }
    }
}

/// The repository root (xtask lives one level down).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn agent_binary() -> PathBuf {
    root().join("target/release/taskscope")
}

/// Where the tools this project builds for itself live (bpf-linker and its LLVM link).
fn tools_dir() -> PathBuf {
    if let Some(dir) = env::var_os("TASKSCOPE_TOOLS") {
        return PathBuf::from(dir);
    }
    let home = env::var_os("HOME").unwrap_or_else(|| OsString::from("/root"));
    PathBuf::from(home).join(".cache/taskscope")
}

/// PATH with the project's tools first.
fn tool_path() -> OsString {
    let mut paths = vec![tools_dir().join("bin")];
    if let Some(existing) = env::var_os("PATH") {
        paths.extend(env::split_paths(&existing));
    }
    env::join_paths(paths).unwrap_or_default()
}

fn run(cmd: &mut Command) -> Result<()> {
    println!("xtask: {cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("{:?} failed: {status}", cmd.get_program());
    }
    Ok(())
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot start {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{:?} failed: {}",
            cmd.get_program(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions. (Avoids a libc dependency for one call.)
    unsafe extern "C" {
        fn geteuid() -> u32;
    }
    unsafe { geteuid() == 0 }
}

fn require_root(why: &str) -> Result<()> {
    if !is_root() {
        bail!("{why}: run this as root (for example with sudo -E)");
    }
    Ok(())
}

fn setup(for_tests: bool) -> Result<()> {
    let sysroot = PathBuf::from(
        output(Command::new("rustup").args(["run", "nightly", "rustc", "--print", "sysroot"]))
            .context("the nightly toolchain is needed to build the kernel programs")?,
    );

    if !sysroot.join("lib/rustlib/src/rust/library/core").exists() {
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }

    let tools = tools_dir();
    let linker = tools.join("bin/bpf-linker");
    let works = Command::new(&linker)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !works {
        // bpf-linker must use the same LLVM as the nightly that emits the bitcode: link it
        // against the nightly's own libLLVM (its file name varies with the toolchain).
        let lib = std::fs::read_dir(sysroot.join("lib"))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .find(|name| name.starts_with("libLLVM.so."))
            .context("the nightly toolchain has no libLLVM.so.* to build bpf-linker against")?;
        let prefix = tools.join("llvm");
        std::fs::create_dir_all(prefix.join("lib"))?;
        // Under the name the linker is built against, and under the name bpf-linker asks the
        // dynamic loader for (its rpath points here): without the second, running it outside
        // rustc (which adds its own library path) fails, and this check reinstalled it each time.
        for name in ["libLLVM.so", lib.as_str()] {
            let link = prefix.join("lib").join(name);
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(sysroot.join("lib").join(&lib), &link)?;
        }
        let llvm_major = lib
            .trim_start_matches("libLLVM.so.")
            .split('.')
            .next()
            .unwrap_or("22")
            .to_string();
        run(Command::new("cargo")
            .args(["install", "bpf-linker", "--version", "=0.13.0", "--locked"])
            .args(["--no-default-features", "--features"])
            .arg(format!("llvm-{llvm_major}"))
            .arg("--root")
            .arg(&tools)
            .env("LLVM_PREFIX", &prefix))?;
    }

    ui_packages(for_tests)?;

    if for_tests {
        let needed = [
            ("bpftool", "bpftool"),
            ("runqlat", "libbpf-tools"),
            ("syscount", "libbpf-tools"),
            ("hackbench", "rt-tests"),
            ("prometheus", "prometheus"),
            ("promtool", "prometheus"),
            // deploy/ tests: kustomize rendering and the systemd unit's verification.
            ("kubectl", "kubernetes-client"),
            ("systemd-analyze", "systemd"),
            // Real containers: Docker and Podman (with runc: crun refuses hybrid cgroups), run
            // from a root filesystem of Debian's static busybox (no registry is reachable).
            ("dockerd", "docker.io"),
            ("podman", "podman"),
            ("runc", "runc"),
            ("busybox", "busybox-static"),
            // The agent image's Debian base, made locally.
            ("debootstrap", "debootstrap"),
            // The kernel matrix: other kernels booted under TCG, with an initramfs.
            ("qemu-system-x86_64", "qemu-system-x86"),
            ("cpio", "cpio"),
            ("xz", "xz-utils"),
            ("depmod", "kmod"),
            // The dashboard's browser tests.
            ("chromium", "chromium"),
            // `taskscope top` driven in a terminal.
            ("tmux", "tmux"),
            // Custom metrics: a C program compiled by the test, Debian's Python 3.11 and
            // PostgreSQL 15 (with pg_stat_statements, in postgresql-contrib), both with USDT.
            ("cc", "gcc"),
            ("strip", "binutils"),
            // (Absolute paths: another python3.11 may come first on PATH.)
            ("/usr/bin/python3.11", "python3.11"),
            ("/usr/lib/postgresql/15/bin/postgres", "postgresql-15"),
            (
                "/usr/lib/postgresql/15/lib/pg_stat_statements.so",
                "postgresql-contrib",
            ),
        ];
        let mut missing: Vec<&str> = needed
            .iter()
            .filter(|(cmd, _)| !on_path(cmd))
            .map(|(_, package)| *package)
            .collect();
        missing.dedup();
        if !missing.is_empty() {
            require_root("installing test tools with apt-get")?;
            run(Command::new("apt-get")
                .arg("update")
                .env("DEBIAN_FRONTEND", "noninteractive"))?;
            run(Command::new("apt-get")
                .args(["install", "-y", "--no-install-recommends"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"))?;
        }
        // The OTLP test receiver decodes with the official OpenTelemetry protobuf definitions
        // (PyPI opentelemetry-proto) and serves gRPC with grpcio, kept in the tools
        // directory, not in the system Python.
        let python_lib = python_lib_dir();
        if !python_lib.join("opentelemetry/proto").exists() || !python_lib.join("grpc").exists() {
            run(Command::new("python3")
                .args(["-m", "pip", "install", "--quiet", "--upgrade", "--target"])
                .arg(&python_lib)
                .arg(format!("opentelemetry-proto=={OTEL_PROTO_VERSION}"))
                .arg(format!("grpcio=={GRPCIO_VERSION}")))?;
        }
        debian_rootfs()?;
        kernels::prepare()?;
        // The deploy/ tests validate manifests against the Kubernetes schemas and lint them;
        // a directory of their own (checkov's dependencies are many).
        let deploy_lib = python_deploy_lib_dir();
        if !deploy_lib.join("kubernetes_validate").exists() || !deploy_lib.join("checkov").exists()
        {
            run(Command::new("python3")
                .args(["-m", "pip", "install", "--quiet", "--upgrade", "--target"])
                .arg(&deploy_lib)
                .arg(format!(
                    "kubernetes-validate=={KUBERNETES_VALIDATE_VERSION}"
                ))
                .arg(format!("checkov=={CHECKOV_VERSION}")))?;
        }
    }
    Ok(())
}

/// The dashboard's directory: its npm packages (package-lock.json pins them).
fn ui_dir() -> PathBuf {
    root().join("agent/ui")
}

/// Installs the dashboard's npm packages (uPlot, embedded by the agent's build; for the tests
/// also playwright-core, which drives Debian's Chromium), with Debian's Node.js where the
/// machine has none.
fn ui_packages(for_tests: bool) -> Result<()> {
    if !on_path("npm") {
        require_root("installing Node.js and npm with apt-get")?;
        run(Command::new("apt-get")
            .arg("update")
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends", "nodejs", "npm"])
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    let modules = ui_dir().join("node_modules");
    let needed: &[&str] = if for_tests {
        &["uplot", "playwright-core"]
    } else {
        &["uplot"]
    };
    if needed.iter().all(|package| modules.join(package).exists()) {
        return Ok(());
    }
    let mut npm = Command::new("npm");
    npm.current_dir(ui_dir())
        .args(["ci", "--no-audit", "--no-fund"]);
    if !for_tests {
        npm.args(["--omit", "dev"]);
    }
    run(&mut npm)
}

/// The PyPI `opentelemetry-proto` the OTLP test receiver uses.
const OTEL_PROTO_VERSION: &str = "1.45.2";
/// The PyPI `grpcio` the OTLP/gRPC test receiver uses.
const GRPCIO_VERSION: &str = "1.76.0";

/// The PyPI `kubernetes-validate` (offline Kubernetes schemas) the deploy tests use.
const KUBERNETES_VALIDATE_VERSION: &str = "1.31.0";
/// The PyPI `checkov` (security linter) the deploy tests use.
const CHECKOV_VERSION: &str = "3.2.334";

/// The Debian release the agent image is based on (deploy/Dockerfile's BASE_IMAGE).
const DEBIAN_RELEASE: &str = "bookworm";

/// A Debian root filesystem (a tar), the local stand-in for the `debian:bookworm-slim` base of
/// deploy/Dockerfile: no image registry can be reached here, Debian's mirror can.
fn debian_rootfs_tar() -> PathBuf {
    tools_dir().join(format!("debian-{DEBIAN_RELEASE}-rootfs.tar"))
}

/// Makes [`debian_rootfs_tar`] with debootstrap, once.
fn debian_rootfs() -> Result<()> {
    let tar = debian_rootfs_tar();
    if tar.exists() {
        return Ok(());
    }
    require_root("making the Debian base image with debootstrap")?;
    let dir = tools_dir().join(format!("debian-{DEBIAN_RELEASE}-rootfs"));
    let _ = std::fs::remove_dir_all(&dir);
    run(Command::new("debootstrap")
        .args(["--variant=minbase", DEBIAN_RELEASE])
        .arg(&dir)
        .arg("http://deb.debian.org/debian"))?;
    let partial = tar.with_extension("tar.partial");
    run(Command::new("tar")
        .arg("-C")
        .arg(&dir)
        .arg("-cf")
        .arg(&partial)
        .arg("."))?;
    std::fs::rename(&partial, &tar)?;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// Where the deploy tests' Python packages are installed.
fn python_deploy_lib_dir() -> PathBuf {
    tools_dir().join("python-deploy")
}

/// Where Python packages for the tests are installed.
fn python_lib_dir() -> PathBuf {
    tools_dir().join("python")
}

fn on_path(command: &str) -> bool {
    env::var_os("PATH")
        .map(|p| {
            env::split_paths(&p)
                .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
                .any(|dir| dir.join(command).is_file())
        })
        .unwrap_or(false)
}

fn cargo() -> Command {
    let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root()).env("PATH", tool_path());
    cmd
}

fn build() -> Result<()> {
    run(cargo().args(["build", "--release", "--package", "taskscope"]))
}

/// Seconds each fuzz target runs in `cargo xtask test`, at most.
const FUZZ_SECONDS_IN_TESTS: u64 = 20;
/// Inputs each fuzz target tries in `cargo xtask test`, from a fixed seed: a run that can only
/// fail the same way everywhere (new crashes are found by `cargo xtask fuzz`, not by CI luck).
const FUZZ_RUNS_IN_TESTS: u64 = 3000;

fn test() -> Result<()> {
    require_root("the end-to-end tests load programs into the kernel")?;
    // Structure first: it takes a second and names what moved to the wrong place.
    layers::check(&root())?;
    // The dashboard's own logic (Node's test runner).
    run(Command::new("npm").current_dir(ui_dir()).args(["test"]))?;
    // Unit tests: pure logic, no privileges needed.
    run(cargo().args([
        "test",
        "--release",
        "--workspace",
        "--exclude",
        "taskscope-e2e",
    ]))?;
    // End-to-end: one at a time, so that no test's agent or workload disturbs another's
    // numbers; --nocapture so that every compared pair of numbers is in the log.
    run(cargo()
        .args(["test", "--release", "--package", "taskscope-e2e", "--"])
        .args(["--test-threads=1", "--nocapture"])
        .env("TASKSCOPE_BIN", agent_binary())
        .env("TASKSCOPE_PYTHON_LIB", python_lib_dir())
        .env("TASKSCOPE_PYTHON_DEPLOY_LIB", python_deploy_lib_dir())
        .env("TASKSCOPE_DEBIAN_ROOTFS", debian_rootfs_tar())
        .env("TASKSCOPE_KERNELS", env::join_paths(kernels::prepare()?)?))?;
    // A minute of the soak: its assertions are on liveness and loss accounting, not speed.
    soak::run(&soak::SoakArgs { seconds: 60 }, &agent_binary())?;
    // Every fuzz target for a short time (`cargo xtask fuzz --seconds 600` for a real run):
    // a parser that panics on its first odd input is caught here.
    fuzz::run(&fuzz::FuzzArgs {
        seconds: FUZZ_SECONDS_IN_TESTS,
        targets: Vec::new(),
        runs: Some(FUZZ_RUNS_IN_TESTS),
    })?;
    run(cargo().args(["fmt", "--all", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--release",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The kernel programs as the BPF target sees them (the host build of ebpf/ is a stub).
    run(Command::new("rustup")
        .args([
            "run",
            "nightly",
            "cargo",
            "clippy",
            "--release",
            "-Z",
            "build-std=core",
        ])
        .args(["--target", "bpfel-unknown-none", "--bins"])
        .args(["--", "-D", "warnings"])
        .current_dir(root().join("ebpf"))
        .env("PATH", tool_path()))?;
    Ok(())
}
