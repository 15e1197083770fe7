//! Real container runtimes for the tests: a private Docker daemon and a private Podman (runc,
//! cgroupfs manager, its own storage and API service), and a root filesystem of Debian's static
//! busybox to run containers from (no registry is reachable).

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

use crate::wait_for;

/// A scratch directory for one test, removed when dropped.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(what: &str) -> Scratch {
        // Short: dockerd puts unix sockets under it (at most 108 bytes a path).
        let dir = PathBuf::from(format!("/tmp/ts-{what}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch directory");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A root filesystem of Debian's busybox-static, with the applets the tests use.
pub fn busybox_rootfs(dir: &Path) {
    std::fs::create_dir_all(dir.join("bin")).expect("rootfs/bin");
    std::fs::copy("/bin/busybox", dir.join("bin/busybox"))
        .expect("copy /bin/busybox (busybox-static)");
    for applet in ["sh", "sleep"] {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet)).expect("applet link");
    }
}

/// Runs a command that must succeed; its output.
pub fn run(command: &mut Command) -> Output {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Its standard output, trimmed.
pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// The host pid of a container's main process, from the runtime's `inspect`.
fn container_pid(mut cli: Command, id: &str) -> u32 {
    stdout(&run(cli.args(["inspect", "-f", "{{.State.Pid}}", id])))
        .parse()
        .expect("the container's pid")
}

/// A private Docker daemon (cgroupfs driver, no networking set-up), stopped when dropped.
pub struct Dockerd {
    child: Child,
    pub socket: PathBuf,
    _scratch: Scratch,
}

impl Dockerd {
    pub fn start() -> Dockerd {
        let scratch = Scratch::new("docker");
        let dir = &scratch.0;
        let socket = dir.join("docker.sock");
        let log = std::fs::File::create(dir.join("dockerd.log")).expect("dockerd log");
        let child = Command::new("dockerd")
            .arg("-H")
            .arg(format!("unix://{}", socket.display()))
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("docker.pid"))
            .args(["--iptables=false", "--bridge=none"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start dockerd (docker.io)");
        let dockerd = Dockerd {
            child,
            socket,
            _scratch: scratch,
        };
        wait_for("dockerd to answer", Duration::from_secs(60), || {
            dockerd
                .cli()
                .arg("version")
                .output()
                .ok()?
                .status
                .success()
                .then_some(())
        });
        dockerd
    }

    /// The `docker` client on PATH, talking to this daemon.
    pub fn cli(&self) -> Command {
        self.cli_at("docker")
    }

    /// Starts a detached container `name` (no network) of `image` running `command`: its id
    /// and its main process's (host) pid.
    pub fn run_container(&self, name: &str, image: &str, command: &[&str]) -> (String, u32) {
        let id = stdout(&run(self
            .cli()
            .args(["run", "-d", "--name", name, "--network", "none", image])
            .args(command)));
        (id.clone(), container_pid(self.cli(), &id))
    }

    /// Imports a root filesystem directory as image `tag` (no registry: `docker import`).
    pub fn import_rootfs(&self, rootfs: &Path, tag: &str) {
        let mut tar = Command::new("tar")
            .arg("-C")
            .arg(rootfs)
            .args(["-c", "."])
            .stdout(Stdio::piped())
            .spawn()
            .expect("tar");
        let stream = tar.stdout.take().expect("tar output");
        run(self.cli().args(["import", "-", tag]).stdin(stream));
        assert!(
            tar.wait().expect("tar").success(),
            "tar of {}",
            rootfs.display()
        );
    }

    /// A given `docker` client binary, talking to this daemon.
    pub fn cli_at(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command
            .arg("-H")
            .arg(format!("unix://{}", self.socket.display()));
        command
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        // Its containers are the test's own (a private daemon).
        if let Ok(ids) = self.cli().args(["ps", "-aq"]).output() {
            for id in String::from_utf8_lossy(&ids.stdout).split_whitespace() {
                let _ = self.cli().args(["rm", "-f", id]).output();
            }
        }
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// Podman with runc and the cgroupfs manager (crun refuses hybrid cgroups), its storage and
/// its API service private to the test; the service stopped when dropped.
pub struct Podman {
    service: Option<Child>,
    pub socket: PathBuf,
    scratch: Scratch,
}

impl Default for Podman {
    fn default() -> Self {
        Self::new()
    }
}

impl Podman {
    pub fn new() -> Podman {
        let scratch = Scratch::new("podman");
        // The default ulimits exceed this machine's hard limit of open files.
        std::fs::write(
            scratch.0.join("containers.conf"),
            "[containers]\ndefault_ulimits = [\"nofile=20000:20000\", \"nproc=4096:4096\"]\n",
        )
        .expect("containers.conf");
        let socket = scratch.0.join("podman.sock");
        Podman {
            service: None,
            socket,
            scratch,
        }
    }

    pub fn cli(&self) -> Command {
        let dir = &self.scratch.0;
        let mut command = Command::new("podman");
        command
            .env("CONTAINERS_CONF", dir.join("containers.conf"))
            .arg("--root")
            .arg(dir.join("storage"))
            .arg("--runroot")
            .arg(dir.join("run"))
            .args([
                "--runtime",
                "/usr/sbin/runc",
                "--cgroup-manager",
                "cgroupfs",
            ]);
        command
    }

    /// Starts a detached container `name` (no network) from the root filesystem `rootfs`,
    /// running `command`: its id and its main process's (host) pid.
    pub fn run_container(&self, name: &str, rootfs: &Path, command: &[&str]) -> (String, u32) {
        let id = stdout(&run(self
            .cli()
            .args(["run", "-d", "--name", name, "--network", "none", "--rootfs"])
            .arg(rootfs)
            .args(command)));
        (id.clone(), container_pid(self.cli(), &id))
    }

    /// Serves Podman's API (Docker-compatible container endpoints) on `self.socket`.
    pub fn serve(&mut self) {
        let child = self
            .cli()
            .args(["system", "service", "--time=0"])
            .arg(format!("unix://{}", self.socket.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("podman system service");
        self.service = Some(child);
        wait_for("Podman's API socket", Duration::from_secs(30), || {
            self.socket.exists().then_some(())
        });
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        // Its containers are the test's own (private storage).
        let _ = self.cli().args(["rm", "-af"]).output();
        if let Some(child) = &mut self.service {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
