//! Every way into a cgroup, charged from the moment it happens: a process that writes its own pid
//! to `cgroup.procs` (no exec after), a child made straight into a cgroup by
//! `clone3(CLONE_INTO_CGROUP)`, a thread moved alone into a threaded cgroup; and a move in a v1
//! hierarchy, which is none. Truth is the cgroup's own `cpu.stat` `usage_usec`.

use std::{path::PathBuf, time::Duration};

use taskscope_e2e::{
    assert_close, cgroup2_root, cgroup_usage_usec, http_get, monotonic_ns, sample, wait_for,
    wait_until_blocked, Agent, Workload,
};

/// A v2 cgroup of its own for one test, removed when dropped (its processes gone by then).
struct TestCgroup {
    dir: PathBuf,
    name: String,
}

impl TestCgroup {
    fn create(what: &str) -> TestCgroup {
        let name = format!("taskscope-{what}-{}", std::process::id());
        let dir = PathBuf::from(cgroup2_root()).join(&name);
        std::fs::create_dir(&dir).expect("create a cgroup");
        TestCgroup { dir, name }
    }

    /// A threaded child cgroup (`cgroup.type` threaded): threads of a process in this one can
    /// be moved there one by one.
    fn threaded_child(&self, name: &str) -> TestCgroup {
        let dir = self.dir.join(name);
        std::fs::create_dir(&dir).expect("create a child cgroup");
        std::fs::write(dir.join("cgroup.type"), "threaded").expect("make it threaded");
        TestCgroup {
            dir,
            name: format!("{}/{name}", self.name),
        }
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Checks, once the cgroup's work is done, that `pid` is in `cgroup` for the agent and that
/// the agent's CPU time of the cgroup is within 1% of its `cpu.stat`.
fn check_charged(agent: &Agent, pid: u32, cgroup: &TestCgroup, what: &str) {
    let truth = cgroup_usage_usec(&cgroup.dir);
    let after = monotonic_ns();
    let process = agent.process_after(pid, after);
    assert_eq!(
        process["cgroup"]["path"].as_str(),
        Some(format!("/{}", cgroup.name).as_str()),
        "{process}"
    );
    // That answer came from a kernel read after `after`: so does the next scrape.
    let (_, scrape) = http_get(&agent.addr, "/metrics").expect("GET /metrics");
    assert_close(
        &format!("CPU µs {what} (cpu.stat usage_usec)"),
        agent_cpu_usec(&scrape, cgroup),
        truth,
        0.01,
    );
}

/// The agent's CPU time of a cgroup in a scrape, in µs.
fn agent_cpu_usec(scrape: &str, cgroup: &TestCgroup) -> u64 {
    let label = format!("cgroup=\"/{}\"", cgroup.name);
    let seconds = sample(scrape, "taskscope_cpu_seconds_total", &[&label])
        .unwrap_or_else(|| panic!("no CPU series for {label}"));
    (seconds * 1e6) as u64
}

#[test]
fn a_process_that_moves_itself_is_charged_from_the_move() {
    let agent = Agent::start(&[]);
    let cgroup = TestCgroup::create("move");
    // 200 ms where it started, then 1 s after moving itself (it never execs).
    let workload = Workload::run(&["move-burn", cgroup.dir.to_str().unwrap(), "1000"]);
    wait_until_blocked(workload.pid());
    check_charged(
        &agent,
        workload.pid(),
        &cgroup,
        "in the cgroup a process moved itself into",
    );
    workload.finish();
}

#[test]
fn a_child_cloned_into_a_cgroup_is_charged_there() {
    let agent = Agent::start(&[]);
    let cgroup = TestCgroup::create("clone-into");
    let workload = Workload::run(&["clone-into-burn", cgroup.dir.to_str().unwrap(), "800"]);
    let child: u32 = workload.output.parse().expect("the child's pid");
    check_charged(&agent, child, &cgroup, "of a child cloned into a cgroup");
    workload.finish();
}

#[test]
fn a_thread_moved_alone_is_charged_to_its_threaded_cgroup() {
    let agent = Agent::start(&[]);
    let domain = TestCgroup::create("thread-domain");
    let threaded = domain.threaded_child("worker");
    // 200 ms by the main thread in the domain, then 1 s by a thread moved alone.
    let workload = Workload::run(&[
        "thread-move",
        domain.dir.to_str().unwrap(),
        threaded.dir.to_str().unwrap(),
        "1000",
    ]);
    wait_until_blocked(workload.pid());
    // cpu.stat is hierarchical: the domain's own share is its usage less its child's.
    let threaded_truth = cgroup_usage_usec(&threaded.dir);
    let domain_truth = cgroup_usage_usec(&domain.dir) - threaded_truth;
    let after = monotonic_ns();
    let process = agent.process_after(workload.pid(), after);
    assert_eq!(
        process["cgroup"]["path"].as_str(),
        Some(format!("/{}", domain.name).as_str()),
        "{process}"
    );
    let (_, scrape) = http_get(&agent.addr, "/metrics").expect("GET /metrics");
    assert_close(
        "CPU µs of a thread moved into a threaded cgroup (its cpu.stat usage_usec)",
        agent_cpu_usec(&scrape, &threaded),
        threaded_truth,
        0.01,
    );
    // Exact in practice (to the µs): the process moved itself into the domain before the
    // agent had read any of its counters, and its figures at the move are in the move event.
    assert_close(
        "CPU µs of the rest of its process, in the domain (usage_usec less the child's)",
        agent_cpu_usec(&scrape, &domain),
        domain_truth,
        0.01,
    );
    workload.finish();
}

/// A cgroup v1 hierarchy's mount point (hybrid hosts mount the controllers there); not the
/// cpuset one, where a new cgroup takes no task before its CPUs and memory nodes are set.
fn v1_hierarchy() -> PathBuf {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    mountinfo
        .lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let mount_point = left.split_whitespace().nth(4)?;
            let v1 = right.split_whitespace().next()? == "cgroup" && !right.contains("cpuset");
            v1.then(|| PathBuf::from(mount_point))
        })
        .expect("no cgroup v1 hierarchy mounted: this test needs a hybrid host, as this one is")
}

#[test]
fn a_move_in_a_v1_hierarchy_is_not_a_move() {
    let agent = Agent::start(&[]);
    let moves = || -> u64 {
        agent.get("/api/v1/status")["events"]["cgroup_move"]
            .as_u64()
            .unwrap_or(0)
    };
    let v1 = v1_hierarchy().join(format!("taskscope-v1-{}", std::process::id()));
    std::fs::create_dir(&v1).expect("create a v1 cgroup");
    let v2 = TestCgroup::create("v2-after-v1");
    let workload = Workload::run(&["sleep", "1"]);
    let pid = workload.pid().to_string();
    let before = moves();
    // A runtime on a hybrid host writes the pid into every v1 hierarchy too; then into v2.
    std::fs::write(v1.join("cgroup.procs"), &pid).expect("move in v1");
    std::fs::write(v2.dir.join("cgroup.procs"), &pid).expect("move in v2");
    // Events arrive in order: once the v2 move is in, a v1 one would have been too.
    let after = wait_for("the v2 move's event", Duration::from_secs(10), || {
        let now = moves();
        (now > before).then_some(now)
    });
    println!("cgroup_move events: {before} before, {after} after one v1 and one v2 move");
    assert_eq!(after - before, 1, "the v1 move was reported");
    let process = agent.process_after(workload.pid(), monotonic_ns());
    assert_eq!(
        process["cgroup"]["path"].as_str(),
        Some(format!("/{}", v2.name).as_str()),
    );
    workload.finish();
    let _ = std::fs::remove_dir(&v1);
}
