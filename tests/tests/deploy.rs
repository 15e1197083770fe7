//! What ships in deploy/ is tested like code: the Prometheus rules (promtool), the Kubernetes
//! manifests (rendered with kustomize, validated against the Kubernetes schemas with PyPI
//! kubernetes-validate, linted with checkov), the systemd unit (systemd-analyze), and every
//! metric the rules and dashboards use is one the agent exports (from a live scrape).

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use taskscope_e2e::{agent_binary, http_get, wait_for, Agent};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn tmp(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{}-{name}", std::process::id()))
}

/// Where `cargo xtask setup --for-tests` puts kubernetes-validate and checkov.
fn python_deploy_lib() -> String {
    std::env::var("TASKSCOPE_PYTHON_DEPLOY_LIB").unwrap_or_else(|_| {
        format!(
            "{}/.cache/taskscope/python-deploy",
            std::env::var("HOME").unwrap_or_default()
        )
    })
}

/// Runs a command, prints what it said, and returns its output.
fn run(command: &mut Command) -> Output {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e} (run `cargo xtask setup --for-tests`)"));
    println!(
        "{command:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn alert_names() -> Vec<String> {
    std::fs::read_to_string(repo().join("deploy/prometheus/rules.yaml"))
        .expect("rules.yaml")
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .map(str::to_string)
        .collect()
}

#[test]
fn prometheus_rules_pass_promtool_and_every_alert_has_tests_and_a_runbook_entry() {
    let dir = repo().join("deploy/prometheus");
    let check = run(Command::new("promtool")
        .args(["check", "rules", "rules.yaml"])
        .current_dir(&dir));
    assert!(check.status.success());
    let test = run(Command::new("promtool")
        .args(["test", "rules", "tests.yaml"])
        .current_dir(&dir));
    assert!(test.status.success());
    let tests = std::fs::read_to_string(dir.join("tests.yaml")).expect("tests.yaml");
    let runbook = std::fs::read_to_string(repo().join("docs/runbook.md")).expect("runbook");
    let alerts = alert_names();
    println!("alerts: {alerts:?}");
    assert!(alerts.len() >= 12, "{alerts:?}");
    for alert in &alerts {
        assert!(
            tests.contains(&format!("alertname: {alert}\n")),
            "{alert} has no promtool test"
        );
        assert!(
            runbook.contains(&format!("\n## {alert}\n")),
            "{alert} has no runbook entry"
        );
        let anchor = format!("docs/runbook.md#{}", alert.to_lowercase());
        let rules = std::fs::read_to_string(dir.join("rules.yaml")).expect("rules");
        assert!(
            rules.contains(&anchor),
            "{alert}'s runbook_url is not {anchor}"
        );
    }
}

#[test]
fn kubernetes_manifests_render_validate_against_the_schemas_and_pass_the_linter() {
    let rendered = tmp("taskscope-kubernetes.yaml");
    let out = run(Command::new("kubectl")
        .args(["kustomize", "deploy/kubernetes"])
        .current_dir(repo()));
    assert!(out.status.success(), "kubectl kustomize failed");
    std::fs::write(&rendered, &out.stdout).expect("rendered manifests");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    for kind in [
        "DaemonSet",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Service",
        "ConfigMap",
        "NetworkPolicy",
    ] {
        assert!(
            text.contains(&format!("kind: {kind}\n")),
            "no {kind} rendered"
        );
    }
    assert!(
        !text.contains("privileged: true"),
        "the DaemonSet is privileged"
    );
    for probe in ["path: /livez", "path: /readyz"] {
        assert!(text.contains(probe), "no probe on {probe}");
    }
    assert!(
        text.contains("fieldPath: spec.nodeName"),
        "NODE_NAME not from the downward API"
    );
    // Closed to strangers: only Prometheus reaches the port, the JSON API wants the token,
    // the ClusterRole reads no more than the agent does (list and watch its node's pods).
    let document = |kind: &str| {
        text.split("\n---\n")
            .find(|doc| doc.contains(&format!("\nkind: {kind}\n")))
            .unwrap_or_else(|| panic!("no {kind}"))
    };
    let policy = document("NetworkPolicy");
    println!("{policy}");
    assert!(
        policy.contains("- from:") && policy.contains("app.kubernetes.io/name: prometheus"),
        "the NetworkPolicy admits every pod"
    );
    assert!(
        text.contains("api_auth = true"),
        "the shipped config leaves the JSON API open"
    );
    let role = document("ClusterRole");
    let verbs: Vec<&str> = role
        .lines()
        .skip_while(|l| l.trim() != "verbs:")
        .skip(1)
        .map_while(|l| l.trim().strip_prefix("- "))
        .collect();
    assert!(
        verbs == ["list", "watch"],
        "the ClusterRole asks for more than list and watch: {role}"
    );
    let rendered = rendered.to_str().expect("path");
    let validate = run(Command::new("python3")
        .args(["-m", "kubernetes_validate", "--strict", "--quiet", rendered])
        .env("PYTHONPATH", python_deploy_lib()));
    assert!(validate.status.success(), "schema validation failed");
    let lint = run(Command::new("python3")
        .args([
            "-m",
            "checkov.main",
            "-f",
            rendered,
            "--framework",
            "kubernetes",
        ])
        .args(["--compact", "--quiet", "--skip-download"])
        .env("PYTHONPATH", python_deploy_lib())
        // No network: checkov must not try to reach its SaaS.
        .env("BC_SKIP_MAPPING", "TRUE"));
    assert!(lint.status.success(), "checkov found failing checks");
    assert!(String::from_utf8_lossy(&lint.stdout).contains("Failed checks: 0"));
    let _ = std::fs::remove_file(rendered);
}

#[test]
fn the_seccomp_overlay_renders_validates_and_its_profile_allows_what_the_agent_needs() {
    let out = run(Command::new("kubectl")
        .args(["kustomize", "deploy/seccomp/kubernetes"])
        .current_dir(repo()));
    assert!(out.status.success(), "kubectl kustomize failed");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let localhost = text.matches("localhostProfile: taskscope.json").count();
    assert_eq!(
        localhost, 2,
        "the pod and its container use the Localhost profile"
    );
    assert!(!text.contains("RuntimeDefault"), "a RuntimeDefault is left");
    let rendered = tmp("taskscope-seccomp.yaml");
    std::fs::write(&rendered, &out.stdout).expect("rendered manifests");
    let validate = run(Command::new("python3")
        .args(["-m", "kubernetes_validate", "--strict", "--quiet"])
        .arg(&rendered)
        .env("PYTHONPATH", python_deploy_lib()));
    assert!(validate.status.success(), "schema validation failed");
    let _ = std::fs::remove_file(rendered);
    // The profile: an allowlist (anything else answers ENOSYS), with bpf() for the programs and
    // no way to make namespaces. That it is enough to run is the agent_image test's to show.
    let profile: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("deploy/seccomp/taskscope.json")).expect("profile"),
    )
    .expect("the profile is JSON");
    assert_eq!(profile["defaultAction"], "SCMP_ACT_ERRNO");
    let allowed: Vec<&str> = profile["syscalls"]
        .as_array()
        .expect("syscalls")
        .iter()
        .filter(|rule| rule["action"] == "SCMP_ACT_ALLOW" && rule.get("args").is_none())
        .flat_map(|rule| rule["names"].as_array().expect("names").iter())
        .filter_map(|name| name.as_str())
        .collect();
    println!("{} syscalls allowed without conditions", allowed.len());
    assert!(allowed.contains(&"bpf") && allowed.contains(&"perf_event_open"));
    for never in [
        "unshare",
        "setns",
        "mount",
        "clone3",
        "init_module",
        "kexec_load",
        "ptrace",
    ] {
        assert!(!allowed.contains(&never), "{never} is allowed");
    }
}

#[test]
fn the_systemd_unit_verifies() {
    let unit =
        std::fs::read_to_string(repo().join("deploy/systemd/taskscope.service")).expect("unit");
    assert!(unit.contains("AmbientCapabilities=CAP_BPF CAP_PERFMON CAP_SYS_PTRACE"));
    // systemd-analyze checks that ExecStart exists: point it at the binary just built.
    let path = tmp("taskscope.service");
    let binary = agent_binary();
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/taskscope", binary.to_str().expect("path")),
    )
    .expect("unit copy");
    let out = run(Command::new("systemd-analyze").arg("verify").arg(&path));
    assert!(out.status.success());
    // It reports unknown keys and bad values as warnings, exit code 0: none allowed.
    assert!(
        out.stdout.is_empty() && out.stderr.is_empty(),
        "systemd-analyze has warnings"
    );
    let _ = std::fs::remove_file(&path);
}

/// Metric names a file uses: tokens `taskscope_*` and `process_*` (recording rules, which
/// contain `:`, are not metrics the agent exports).
fn metric_names_in(path: &Path) -> BTreeSet<String> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|t| (t.starts_with("taskscope_") || t.starts_with("process_")) && !t.contains(':'))
        .map(str::to_string)
        .collect()
}

#[test]
fn every_metric_in_the_rules_and_dashboards_is_one_the_agent_exports() {
    // Families that exist only with a setting: --bpf-stats, --kubernetes (an API that is not
    // there still gives taskscope_kubernetes_synced 0).
    let kubeconfig = tmp("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: none\n  cluster:\n    server: http://127.0.0.1:1\ncontexts:\n- name: none\n  context:\n    cluster: none\n    user: none\nusers:\n- name: none\n  user: {}\ncurrent-context: none\n",
    )
    .expect("kubeconfig");
    let agent = Agent::start_with_env(
        &["--bpf-stats", "--kubernetes", "--health-interval", "1s"],
        &[
            ("KUBECONFIG", kubeconfig.to_str().expect("path")),
            ("NODE_NAME", "test-node"),
        ],
    );
    let scrape = wait_for("a scrape with health", Duration::from_secs(20), || {
        let (code, body) = http_get(&agent.addr, "/metrics").ok()?;
        (code == 200 && body.contains("taskscope_ready")).then_some(body)
    });
    let mut exported = BTreeSet::new();
    for line in scrape.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split(' ').next().unwrap_or_default();
            for suffix in ["", "_total", "_bucket", "_sum", "_count", "_info"] {
                exported.insert(format!("{name}{suffix}"));
            }
        } else if !line.starts_with('#') {
            let name = line.split(['{', ' ']).next().unwrap_or_default();
            exported.insert(name.to_string());
        }
    }
    let mut used = metric_names_in(&repo().join("deploy/prometheus/rules.yaml"));
    for dashboard in std::fs::read_dir(repo().join("deploy/grafana")).expect("dashboards") {
        let path = dashboard.expect("entry").path();
        if path.extension().is_some_and(|e| e == "json") {
            let names = metric_names_in(&path);
            println!("{}: {names:?}", path.display());
            assert!(!names.is_empty());
            used.extend(names);
        }
    }
    let missing: Vec<&String> = used.iter().filter(|n| !exported.contains(*n)).collect();
    println!(
        "used by rules and dashboards: {} names; exported: {}; not exported: {missing:?}",
        used.len(),
        exported.len()
    );
    assert!(
        missing.is_empty(),
        "rules or dashboards use metrics the agent does not export: {missing:?}"
    );
    let _ = std::fs::remove_file(&kubeconfig);
}
