//! Real containers: Docker (a private dockerd) and Podman (runc, cgroupfs manager), each
//! container started with a name from a root filesystem of Debian's static busybox. Truth is
//! each container cgroup's own `cpu.stat`, the name and image the runtime was given, and the
//! exit code the runtime reports.

use std::{path::Path, process::Command, time::Duration};

use serde_json::Value;
use taskscope_e2e::{
    assert_close, cgroup2_root, cgroup_usage_usec, http_get, monotonic_ns,
    runtimes::{busybox_rootfs, run, stdout, Dockerd, Podman, Scratch},
    sample, wait_for, wait_until_blocked, Agent,
};

/// What every container runs: about a second and a half of CPU in its main process, then a
/// few seconds blocked (while the test compares), then exit code 3.
const BURN_THEN_EXIT_3: &str = "i=0; while [ $i -lt 600000 ]; do i=$((i+1)); done; sleep 4; exit 3";

/// A container's main process and cgroup v2 path, from `/proc/<pid>/cgroup`.
fn container_process(pid: u32) -> (u32, String) {
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup");
    let path = cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("a cgroup v2 line")
        .to_string();
    (pid, path)
}

/// Checks one running container against the kernel and the runtime: CPU within 1% of its
/// cgroup's `cpu.stat`, its name in `container`, the info series with image and runtime.
fn check_container(agent: &Agent, pid: u32, id: &str, name: &str, image: &str, runtime: &str) {
    let (pid, cgroup) = container_process(pid);
    println!("{runtime} container {name}: pid {pid}, cgroup {cgroup}");
    wait_until_blocked(pid);
    let truth = cgroup_usage_usec(&Path::new(&cgroup2_root()).join(cgroup.trim_start_matches('/')));
    let after = monotonic_ns();
    let process = agent.process_after(pid, after);
    let workload = &process["workload"];
    assert_eq!(workload["container_id"].as_str(), Some(id), "{process}");
    assert_eq!(workload["runtime"].as_str(), Some(runtime), "{process}");
    assert_eq!(workload["container"].as_str(), Some(name), "{process}");
    let (_, scrape) = http_get(&agent.addr, "/metrics").expect("GET /metrics");
    let id_label = format!("container_id=\"{id}\"");
    let cpu = sample(&scrape, "taskscope_cpu_seconds_total", &[&id_label])
        .unwrap_or_else(|| panic!("no CPU series for container {id}"));
    assert_close(
        &format!("{runtime} container {name}: CPU µs (cpu.stat usage_usec)"),
        (cpu * 1e6) as u64,
        truth,
        0.01,
    );
    let info = sample(
        &scrape,
        "taskscope_workload_info",
        &[
            &id_label,
            &format!("container=\"{name}\""),
            &format!("image=\"{image}\""),
            &format!("runtime=\"{runtime}\""),
        ],
    );
    assert_eq!(
        info,
        Some(1.0),
        "no info series naming {name}, {image}, {runtime}"
    );
}

/// After the container exited: its main process is a task exit with code 3.
fn check_exit(agent: &Agent, pid: u32, runtime_says: &str) {
    assert_eq!(runtime_says, "3", "the runtime's exit code");
    let process = wait_for("the container's exit", Duration::from_secs(20), || {
        let p = agent.get(&format!("/api/v1/processes/{pid}"))["processes"][0].clone();
        (p["state"] == "exited").then_some(p)
    });
    println!("exit as taskscope saw it: {}", process["exit"]);
    assert_eq!(process["exit"]["code"].as_i64(), Some(3), "{process}");
}

#[test]
fn docker_containers_are_named_and_charged_like_their_cgroups() {
    let scratch = Scratch::new("docker-image");
    busybox_rootfs(&scratch.0.join("rootfs"));
    let dockerd = Dockerd::start();
    dockerd.import_rootfs(&scratch.0.join("rootfs"), "taskscope-busybox:test");
    let agent = Agent::start(&["--docker-socket", dockerd.socket.to_str().unwrap()]);
    let (id, pid) = dockerd.run_container(
        "ts-web",
        "taskscope-busybox:test",
        &["sh", "-c", BURN_THEN_EXIT_3],
    );
    check_container(
        &agent,
        pid,
        &id,
        "ts-web",
        "taskscope-busybox:test",
        "docker",
    );
    let code = stdout(&run(dockerd.cli().args(["wait", &id])));
    check_exit(&agent, pid, &code);
}

#[test]
fn podman_containers_are_named_and_charged_like_their_cgroups() {
    let scratch = Scratch::new("podman-rootfs");
    let rootfs = scratch.0.join("rootfs");
    busybox_rootfs(&rootfs);
    let mut podman = Podman::new();
    podman.serve();
    let agent = Agent::start(&["--podman-socket", podman.socket.to_str().unwrap()]);
    let (id, pid) = podman.run_container("ts-db", &rootfs, &["sh", "-c", BURN_THEN_EXIT_3]);
    let (_, cgroup) = container_process(pid);
    assert_eq!(cgroup, format!("/libpod_parent/libpod-{id}"));
    // A container run from a root filesystem has no image.
    check_container(&agent, pid, &id, "ts-db", "", "podman");
    let code = stdout(&run(podman.cli().args(["wait", &id])));
    check_exit(&agent, pid, &code);
}

#[test]
fn a_lookalike_in_a_users_subtree_is_not_merged_into_the_container() {
    let scratch = Scratch::new("lookalike");
    busybox_rootfs(&scratch.0.join("rootfs"));
    let mut podman = Podman::new();
    podman.serve();
    let agent = Agent::start(&["--podman-socket", podman.socket.to_str().unwrap()]);
    let (id, _) = podman.run_container("ts-db", &scratch.0.join("rootfs"), &["sleep", "60"]);
    // What a user could make in their own delegated subtree, named for that container.
    let user_subtree = "user.slice/user-4242.slice/user@4242.service/app.slice";
    let lookalike = Path::new(&cgroup2_root()).join(format!("{user_subtree}/libpod-{id}.scope"));
    std::fs::create_dir_all(&lookalike).expect("lookalike cgroup");
    let mut impostor = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {}/cgroup.procs && exec sleep 60",
            lookalike.display()
        ))
        .spawn()
        .expect("impostor");
    let id_label = format!("container_id=\"{id}\"");
    let scrape = wait_for("both cgroups in /metrics", Duration::from_secs(20), || {
        let (_, body) = http_get(&agent.addr, "/metrics").ok()?;
        (body.contains(&format!("{user_subtree}/libpod-{id}.scope")) && body.contains(&id_label))
            .then_some(body)
    });
    let _ = impostor.kill();
    let _ = impostor.wait();
    let mut dir = lookalike.clone();
    while dir != Path::new(&cgroup2_root()) {
        let _ = std::fs::remove_dir(&dir);
        dir.pop();
    }
    let real = format!("cgroup=\"/libpod_parent/libpod-{id}\"");
    let running = sample(&scrape, "taskscope_tasks_running", &[&id_label, &real]);
    let fake = format!("cgroup=\"/{user_subtree}/libpod-{id}.scope\"");
    let impostor_series = sample(
        &scrape,
        "taskscope_tasks_running",
        &[&fake, "container_id=\"\""],
    );
    println!("the container's tasks_running {running:?}; the lookalike's, with no container_id: {impostor_series:?}");
    assert_eq!(
        running,
        Some(1.0),
        "the container counts only its own process"
    );
    assert_eq!(
        impostor_series,
        Some(1.0),
        "the lookalike is a plain cgroup"
    );
    assert!(
        !scrape
            .lines()
            .any(|l| l.contains(&fake) && l.contains(&id_label)),
        "no series joins the lookalike to the container"
    );
}

#[test]
fn a_runtime_socket_that_refuses_leaves_labels_to_the_cgroup_and_health_says_why() {
    let scratch = Scratch::new("refusing");
    // A socket file nobody listens on: connections are refused.
    let socket = scratch.0.join("docker.sock");
    drop(std::os::unix::net::UnixListener::bind(&socket).expect("bind"));
    let agent = Agent::start(&["--docker-socket", socket.to_str().unwrap()]);
    let component = wait_for("the runtime's health", Duration::from_secs(30), || {
        // 503 while starting or unhealthy: the body says why either way.
        let (_, body) = http_get(&agent.addr, "/health").ok()?;
        let health: Value = serde_json::from_str(&body).ok()?;
        let c = health["components"]["metadata_docker"].clone();
        (c["status"] == "degraded").then_some(c)
    });
    println!("metadata_docker: {component}");
    let message = component["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(socket.to_str().unwrap()) && message.contains("fall back"),
        "{message}"
    );
    assert_eq!(http_get(&agent.addr, "/livez").expect("livez").0, 200);
    let status = agent.get("/api/v1/status");
    assert_eq!(
        status["container_runtimes"][0]["state"], "failing",
        "{status}"
    );
}
