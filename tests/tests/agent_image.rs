//! The agent's own image (deploy/Dockerfile), built with Docker from a local Debian base (no
//! registry here) and run with Podman the way the DaemonSet runs it: host pid namespace, its own
//! cgroup namespace, every capability dropped but CAP_BPF, CAP_PERFMON and CAP_SYS_PTRACE, no
//! new privileges, read-only root filesystem, the shipped seccomp profile
//! (deploy/seccomp/taskscope.json), the same read-only host mounts. Docker 20.10 cannot run it
//! that way: it does not know CAP_BPF or CAP_PERFMON.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use serde_json::Value;
use taskscope_e2e::{
    agent_binary, free_port, http_get, http_request,
    runtimes::{busybox_rootfs, run, stdout, Dockerd, Podman, Scratch},
    sample, wait_for,
};

/// The token the image's agent is given (`api_auth = true` in the shipped config).
const IMAGE_TOKEN: &str = "image-test-token-0123456789abcdef";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The Debian 12 root filesystem `cargo xtask setup --for-tests` makes with debootstrap.
fn debian_rootfs_tar() -> PathBuf {
    let path = std::env::var_os("TASKSCOPE_DEBIAN_ROOTFS").expect(
        "TASKSCOPE_DEBIAN_ROOTFS is not set: run the tests with `cargo xtask test`, which makes the Debian base image's root filesystem",
    );
    PathBuf::from(path)
}

/// Builds deploy/Dockerfile with the agent binary under test; returns the saved image.
fn build_image(dockerd: &Dockerd, scratch: &Path) -> PathBuf {
    run(dockerd
        .cli()
        .args(["import"])
        .arg(debian_rootfs_tar())
        .arg("taskscope-test/debian:bookworm"));
    // The context is the repository; its .dockerignore lets only this binary in from target/.
    let binary = repo().join("target/release/taskscope");
    assert_eq!(
        std::fs::canonicalize(&binary).ok(),
        std::fs::canonicalize(agent_binary()).ok(),
        "the image packages target/release/taskscope, which must be the binary under test"
    );
    // Debian's Docker client: its BuildKit builds only the stages the image uses.
    let mut build = dockerd.cli_at("/usr/bin/docker");
    run(build
        .env("DOCKER_BUILDKIT", "1")
        .args(["build", "--network", "host", "-f", "deploy/Dockerfile"])
        .args(["--build-arg", "BASE_IMAGE=taskscope-test/debian:bookworm"])
        .args(["--build-arg", "AGENT_FROM=prebuilt"])
        .args(["-t", "taskscope:test", "."])
        .current_dir(repo()));
    let saved = scratch.join("taskscope-image.tar");
    run(dockerd
        .cli()
        .args(["save", "-o"])
        .arg(&saved)
        .arg("taskscope:test"));
    saved
}

#[test]
fn the_image_runs_as_the_daemonset_runs_it_and_sees_the_host() {
    let scratch = Scratch::new("image");
    let dockerd = Dockerd::start();
    let image = build_image(&dockerd, &scratch.0);
    let podman = Podman::new();
    run(podman.cli().args(["load", "-i"]).arg(&image));

    // A container beside the agent, which the agent must name.
    busybox_rootfs(&scratch.0.join("rootfs"));
    dockerd.import_rootfs(&scratch.0.join("rootfs"), "taskscope-busybox:test");
    let beside = stdout(&run(dockerd.cli().args([
        "run",
        "-d",
        "--name",
        "ts-beside",
        "--network",
        "none",
        "taskscope-busybox:test",
        "sleep",
        "120",
    ])));

    let port = free_port();
    let seccomp = repo().join("deploy/seccomp/taskscope.json");
    let mut agent = podman
        .cli()
        .args(["run", "--rm", "--name", "taskscope-agent"])
        .args([
            "--pid",
            "host",
            "--cgroupns",
            "private",
            "--network",
            "host",
        ])
        .args([
            "--cap-drop",
            "ALL",
            "--cap-add",
            "CAP_BPF,CAP_PERFMON,CAP_SYS_PTRACE",
        ])
        .args([
            "--user",
            "0",
            "--read-only",
            "--security-opt",
            "no-new-privileges",
        ])
        .arg("--security-opt")
        .arg(format!("seccomp={}", seccomp.display()))
        .args(["-v", "/sys/kernel/btf:/sys/kernel/btf:ro"])
        .args(["-v", "/sys/fs/cgroup:/sys/fs/cgroup:ro"])
        .args(["-v", "/etc/passwd:/host/etc/passwd:ro"])
        .arg("-v")
        .arg(format!("{}:/run/docker.sock", dockerd.socket.display()))
        // The JSON API's token, as the DaemonSet gives it (the image's config wants one).
        .args(["-e", &format!("TASKSCOPE_ADMIN_TOKEN={IMAGE_TOKEN}")])
        .arg("taskscope:test")
        .args(["run", "--config", "/etc/taskscope/taskscope.toml"])
        .args(["--passwd-file", "/host/etc/passwd"])
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(scratch.0.join("agent.log")).expect("log"))
        .spawn()
        .expect("podman run");
    let addr = format!("127.0.0.1:{port}");
    let log = || std::fs::read_to_string(scratch.0.join("agent.log")).unwrap_or_default();
    wait_for(
        "the agent in its container to be ready",
        Duration::from_secs(90),
        || {
            if let Ok(Some(status)) = agent.try_wait() {
                panic!("the agent's container exited with {status}: {}", log());
            }
            http_get(&addr, "/readyz").ok().filter(|(s, _)| *s == 200)
        },
    );
    println!("/readyz is 200 from inside the container");

    // The image's config closes the JSON API to callers without the token.
    let own = format!("/api/v1/processes/{}", std::process::id());
    assert_eq!(http_get(&addr, &own).expect("GET").0, 401);
    let auth = format!("Bearer {IMAGE_TOKEN}");
    let with_token = |path: &str| {
        http_request(&addr, "GET", path, &[("Authorization", &auth)], b"").expect(path)
    };
    // It sees the host's processes: this test's own, by pid.
    let (status, body) = with_token(&own);
    assert_eq!(status, 200, "the test process is not seen: {body}");
    let test_process: Value = serde_json::from_str(&body).expect("JSON");
    println!(
        "the test process as the agent sees it: comm {}",
        test_process["processes"][0]["comm"]
    );

    // It names the container started beside it, from the Docker socket.
    let label = format!("container_id=\"{beside}\"");
    let scrape = wait_for(
        "the container beside it, named",
        Duration::from_secs(30),
        || {
            let (_, body) = http_get(&addr, "/metrics").ok()?;
            body.contains(&format!("container=\"ts-beside\",{label}"))
                .then_some(body)
        },
    );
    let info = sample(
        &scrape,
        "taskscope_workload_info",
        &[
            &label,
            "image=\"taskscope-busybox:test\"",
            "runtime=\"docker\"",
        ],
    );
    assert_eq!(info, Some(1.0), "{}", log());
    let health: Value =
        serde_json::from_str(&http_get(&addr, "/health").expect("health").1).expect("JSON");
    println!("health from inside: {}", health["status"]);
    let capabilities: Value = serde_json::from_str(&with_token("/api/v1/status").1).expect("JSON");
    println!("capabilities effective: {}", capabilities["capabilities"]);
    assert_eq!(
        capabilities["capabilities"],
        serde_json::json!(["CAP_BPF", "CAP_PERFMON", "CAP_SYS_PTRACE"])
    );
    let _ = podman
        .cli()
        .args(["stop", "-t", "5", "taskscope-agent"])
        .output();
    let _ = agent.wait();
}
