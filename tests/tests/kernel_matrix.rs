//! The kernels our users run, besides this host's: each kernel of the matrix (Debian's 6.1 with
//! its PREEMPT_RT and cloud builds, 6.12 and its PREEMPT_RT build, prepared by
//! `cargo xtask setup --for-tests` and named in `$TASKSCOPE_KERNELS`) boots in qemu (TCG) with the agent, the workloads and a virtio disk.
//! There `taskscope check` runs, then the same end-to-end tests as on the host, against that
//! kernel's own /proc: on-CPU time and run-queue wait vs schedstat, an exact syscall count and
//! errno (timed, and untimed from the registers), O_DIRECT block writes attributed to the writer, block requests whose start a full
//! table lost counted exactly, a process tree with exit codes and a
//! signal. Prints the table kernel x feature x result (also written to
//! `target/kernel-matrix.md`).

use std::{
    collections::BTreeSet,
    io::Read,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use taskscope_e2e::{agent_binary, workload_binary};

/// The host test executables run in the guest, and the tests of each, with the matrix
/// column each one fills.
const SUBSET: &[(&str, &str, &str)] = &[
    (
        "agent_cli",
        "check_and_run_agree_on_what_this_kernel_gives",
        "check and run agree",
    ),
    (
        "kernel_accounting",
        "on_cpu_time_of_a_cpu_bound_child_matches_schedstat_within_2_percent",
        "on-CPU vs schedstat",
    ),
    (
        "kernel_accounting",
        "runqueue_wait_and_switches_of_competing_processes_match_the_kernel",
        "run-queue wait, switches",
    ),
    (
        "kernel_accounting",
        "syscall_counts_and_errors_are_exact",
        "syscalls, errno",
    ),
    (
        "kernel_accounting",
        "syscall_counts_and_errors_are_exact_untimed",
        "syscalls untimed (pt_regs)",
    ),
    (
        "kernel_accounting",
        "direct_writes_are_attributed_to_the_writer_and_the_device_within_1_percent",
        "O_DIRECT block IO",
    ),
    (
        "kernel_accounting",
        "block_requests_whose_start_the_full_table_lost_are_counted",
        "block starts lost, counted",
    ),
    (
        "lifecycle",
        "a_known_process_tree_has_the_right_parents_exit_codes_signals_and_threads",
        "process tree, exit codes, signal",
    ),
];

/// A boot, the check and the tests take about two minutes under TCG; this is far above.
const VM_LIMIT: Duration = Duration::from_secs(600);

/// The newest executable of this package's integration test `name` (cargo builds them all
/// next to this one, in `deps/`, named `<name>-<hash>`).
fn test_executable(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let deps = exe.parent().expect("deps dir");
    std::fs::read_dir(deps)
        .expect("deps dir")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            let file = p.file_name().map(|n| n.to_string_lossy().into_owned());
            file.is_some_and(|f| {
                f.strip_prefix(name)
                    .and_then(|rest| rest.strip_prefix('-'))
                    .is_some_and(|hash| hash.chars().all(|c| c.is_ascii_hexdigit()))
            })
        })
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
        .unwrap_or_else(|| panic!("no test executable {name}-<hash> in {}", deps.display()))
}

/// The shared libraries `binary` loads, as `ldd` resolves them on this host (the guest gets
/// the same files at the same paths).
fn libraries(binary: &Path) -> Vec<PathBuf> {
    let out = Command::new("ldd").arg(binary).output().expect("ldd");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let path = match l.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

fn copy_into(root: &Path, source: &Path, target: &str) {
    let dest = root.join(target.trim_start_matches('/'));
    std::fs::create_dir_all(dest.parent().expect("parent")).expect("mkdir");
    std::fs::copy(source, &dest)
        .unwrap_or_else(|e| panic!("copy {} -> {}: {e}", source.display(), dest.display()));
}

/// Where a command of this host's PATH lives.
fn which(command: &str) -> PathBuf {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {command}")])
        .output()
        .expect("sh");
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        !path.is_empty(),
        "{command} is not installed (cargo xtask setup --for-tests)"
    );
    PathBuf::from(path)
}

/// The guest's /init: mounts, the virtio disk's modules, `taskscope check`, then each test of
/// the subset; every result on the serial console, marked `MATRIX`.
fn init_script() -> String {
    let mut tests = String::new();
    for (binary, test, _) in SUBSET {
        tests.push_str(&format!(
            "/t/deps/{binary} --exact {test} --test-threads=1 --nocapture\n\
             echo \"MATRIX test {test} exit $?\"\n"
        ));
    }
    format!(
        r#"#!/bin/busybox sh
B=/bin/busybox
$B mkdir -p /proc /sys /dev /tmp /run /root
$B mount -t proc proc /proc
$B mount -t sysfs sysfs /sys
$B mount -t devtmpfs devtmpfs /dev
$B mount -t tmpfs tmpfs /tmp
$B mount -t tmpfs tmpfs /run
$B mount -t cgroup2 cgroup2 /sys/fs/cgroup
$B mount -t securityfs securityfs /sys/kernel/security
for module in /modules/*.ko; do
    [ -e "$module" ] && $B insmod "$module"
done
$B ip link set lo up
export PATH=/bin:/usr/bin:/sbin HOME=/root
export TASKSCOPE_BIN=/opt/taskscope/taskscope TASKSCOPE_DIRECT_WRITE_TARGET=/dev/vda
i=0
while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do $B sleep 0.1; i=$((i+1)); done
echo "MATRIX kernel $($B uname -r)"
echo "MATRIX cpus $($B nproc)"
/opt/taskscope/taskscope check >/tmp/check.txt 2>&1
code=$?
while IFS= read -r line; do echo "MATRIX check $line"; done </tmp/check.txt
echo "MATRIX check-exit $code"
if $B grep -q lockdown=confidentiality /proc/cmdline; then
    # Nothing can be measured here: `run` must refuse, in the words of `check`.
    /opt/taskscope/taskscope run --listen 127.0.0.1:9720 >/tmp/run.txt 2>&1
    code=$?
    while IFS= read -r line; do echo "MATRIX run $line"; done </tmp/run.txt
    echo "MATRIX run-exit $code"
else
{tests}fi
echo "MATRIX done"
$B reboot -f
"#
    )
}

/// The initramfs: busybox for /init, the host's dash and coreutils for the tests' shell
/// scripts (busybox runs some applets without exec, which the process-tree test would see),
/// the agent, the test executables, the workload, and the shared libraries they load.
fn initramfs(dir: &Path, modules: &Path) -> PathBuf {
    let root = dir.join("root");
    let _ = std::fs::remove_dir_all(&root);
    let mut binaries: Vec<(PathBuf, String)> = vec![
        (which("busybox"), "/bin/busybox".into()),
        (which("dash"), "/bin/sh".into()),
        (which("sleep"), "/bin/sleep".into()),
        (agent_binary(), "/opt/taskscope/taskscope".into()),
        (workload_binary(), "/t/workload".into()),
    ];
    let names: BTreeSet<&str> = SUBSET.iter().map(|(binary, _, _)| *binary).collect();
    for name in names {
        binaries.push((test_executable(name), format!("/t/deps/{name}")));
    }
    for (source, target) in &binaries {
        copy_into(&root, source, target);
        for library in libraries(source) {
            copy_into(&root, &library, &library.to_string_lossy());
        }
    }
    if let Ok(entries) = std::fs::read_dir(modules) {
        for entry in entries.flatten() {
            let target = format!("/modules/{}", entry.file_name().to_string_lossy());
            copy_into(&root, &entry.path(), &target);
        }
    }
    let init = root.join("init");
    std::fs::write(&init, init_script()).expect("init");
    let chmod = |path: &Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    };
    chmod(&init);
    let image = dir.join("initramfs.cpio");
    let status = Command::new("sh")
        .arg("-c")
        .arg("find . | cpio --quiet -o -H newc > \"$0\"")
        .arg(&image)
        .current_dir(&root)
        .status()
        .expect("cpio");
    assert!(status.success(), "cpio failed");
    image
}

/// One boot of the matrix: a kernel and what is appended to its command line.
struct Boot {
    kernel: PathBuf,
    /// Extra kernel parameters (a lockdown mode).
    append: &'static str,
}

impl Boot {
    fn refuses(&self) -> bool {
        self.append.contains("lockdown=confidentiality")
    }
}

/// What one kernel's run printed.
struct KernelRun {
    name: String,
    release: String,
    append: &'static str,
    /// `taskscope run`'s output and exit code where it must refuse to start.
    run: Vec<String>,
    run_exit: Option<i32>,
    check: Vec<String>,
    check_exit: Option<i32>,
    /// Exit status of each test of [`SUBSET`], in order (None: it never reported).
    tests: Vec<Option<i32>>,
    seconds: u64,
}

/// One boot of `kernel` with `image` and a fresh virtio disk in `dir`: the serial console.
fn run_qemu(kernel: &Path, image: &Path, dir: &Path, append: &str) -> String {
    let disk = dir.join("disk.img");
    std::fs::File::create(&disk)
        .and_then(|f| f.set_len(64 << 20))
        .expect("disk image");
    let console = dir.join("console.log");
    let _ = std::fs::remove_file(&console);
    let started = Instant::now();
    // One TCG thread for both vCPUs: multi-threaded TCG races the kernel's text patching.
    let mut qemu = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg,thread=single", "-cpu", "max", "-smp", "2"])
        .args([
            "-m",
            "2048",
            "-display",
            "none",
            "-monitor",
            "none",
            "-no-reboot",
        ])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-kernel")
        .arg(kernel.join("vmlinuz"))
        .arg("-initrd")
        .arg(image)
        .arg("-append")
        .arg(format!("console=ttyS0 panic=-1 quiet {append}"))
        .arg("-drive")
        .arg(format!("file={},if=virtio,format=raw", disk.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("qemu-system-x86_64 (cargo xtask setup --for-tests installs it)");
    loop {
        if qemu.try_wait().expect("qemu").is_some() {
            break;
        }
        if started.elapsed() > VM_LIMIT {
            let _ = qemu.kill();
            let _ = qemu.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let mut stderr = String::new();
    if let Some(mut e) = qemu.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    let text = std::fs::read_to_string(&console).unwrap_or_default();
    if stderr.is_empty() {
        text
    } else {
        format!("{text}\n(qemu stderr) {stderr}")
    }
}

/// Boots `kernel` (a directory of `cargo xtask setup --for-tests`) and runs the subset there.
fn boot(boot: &Boot, work: &Path) -> KernelRun {
    let kernel = boot.kernel.as_path();
    let name = kernel
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
        + &boot.append.replace(['=', ' '], "-");
    let dir = work.join(&name);
    std::fs::create_dir_all(&dir).expect("work dir");
    let image = initramfs(&dir, &kernel.join("modules"));
    let started = Instant::now();
    let mut text = String::new();
    // A kernel that never reaches /init crashed in the emulator before anything of ours ran
    // (seen once: an int3 text-patching oops of 6.12 under multi-threaded TCG, which is why
    // the vCPUs now share one thread): it gets one more boot, said so in the log.
    for attempt in 1..=2 {
        text = run_qemu(kernel, &image, &dir, boot.append);
        println!("===== {name}: console (boot {attempt}) =====\n{text}");
        if text.contains("MATRIX kernel ") {
            break;
        }
        println!("===== {name}: the kernel did not reach /init =====");
    }
    let marked: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim_end_matches('\r').strip_prefix("MATRIX "))
        .collect();
    let value = |key: &str| {
        marked
            .iter()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
            .map(str::to_string)
    };
    let exit = |key: &str| value(key).and_then(|c| c.trim().parse().ok());
    let lines = |prefix: &str| -> Vec<String> {
        marked
            .iter()
            .filter_map(|l| l.strip_prefix(prefix)?.strip_prefix(' '))
            .map(str::to_string)
            .collect()
    };
    KernelRun {
        release: value("kernel").unwrap_or_else(|| "(did not boot)".into()),
        check: lines("check"),
        check_exit: exit("check-exit"),
        run: lines("run"),
        run_exit: exit("run-exit"),
        append: boot.append,
        tests: SUBSET
            .iter()
            .map(|(_, test, _)| exit(&format!("test {test} exit")))
            .collect(),
        seconds: started.elapsed().as_secs(),
        name,
    }
}

fn cell(exit: Option<i32>) -> &'static str {
    match exit {
        Some(0) => "pass",
        Some(_) => "FAIL",
        None => "no result",
    }
}

/// Where `run` must refuse (kernel lockdown in confidentiality mode): `check` says it cannot
/// work (exit 1) on its lockdown line, and `run` stops (exit 1) saying the same.
fn refused_in_agreement(run: &KernelRun) -> bool {
    let says = |lines: &[String], words: &str| lines.iter().any(|l| l.contains(words));
    run.check_exit == Some(1)
        && says(&run.check, "missing  kernel lockdown: confidentiality")
        && run.run_exit == Some(1)
        && says(&run.run, "kernel lockdown is in confidentiality mode")
}

/// The table, as Markdown: one row per boot, one column per feature.
fn table(runs: &[KernelRun]) -> String {
    let mut out = String::from("| kernel | `taskscope check` | hooks (tp_btf) |");
    for (_, _, column) in SUBSET {
        out.push_str(&format!(" {column} |"));
    }
    out.push_str("\n|---|---|---|");
    out.push_str(&"---|".repeat(SUBSET.len()));
    out.push('\n');
    for run in runs {
        let verdict = run
            .check
            .last()
            .map(|l| l.trim_start_matches("taskscope run ").to_string())
            .unwrap_or_default();
        let check = match run.check_exit {
            Some(code) => format!("exit {code}: {verdict}"),
            None => "no result".into(),
        };
        let hooks = run
            .check
            .iter()
            .find_map(|l| l.split_once("attach type tp_btf (optional): "))
            .map_or("", |(_, detail)| detail);
        out.push_str(&format!(
            "| {} {} | {check} | {hooks} |",
            run.release, run.append
        ));
        if run.run_exit.is_some() {
            // A refusal: agreement is the only column.
            let agreed = if refused_in_agreement(run) {
                "pass: run refuses with check's reason"
            } else {
                "FAIL"
            };
            out.push_str(&format!(" {agreed} |"));
            out.push_str(&" not run |".repeat(SUBSET.len() - 1));
        } else {
            for exit in &run.tests {
                out.push_str(&format!(" {} |", cell(*exit)));
            }
        }
        out.push('\n');
    }
    out
}

#[test]
fn every_kernel_of_the_matrix_passes_check_and_the_core_accuracy_subset() {
    let kernels: Vec<PathBuf> = std::env::var("TASKSCOPE_KERNELS")
        .expect("TASKSCOPE_KERNELS: run through `cargo xtask test`, which prepares the kernels")
        .split(':')
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .collect();
    assert!(
        kernels.len() >= 3,
        "the matrix needs at least 6.1, a PREEMPT_RT build and 6.12: {kernels:?}"
    );
    // Every kernel as it boots by default, then the first (Debian 12's) under kernel lockdown:
    // integrity, what Secure Boot sets, must change nothing; confidentiality forbids reading
    // kernel memory, so `check` and `run` must both refuse, for the same reason.
    let mut boots: Vec<Boot> = kernels
        .iter()
        .map(|kernel| Boot {
            kernel: kernel.clone(),
            append: "",
        })
        .collect();
    for append in ["lockdown=integrity", "lockdown=confidentiality"] {
        boots.push(Boot {
            kernel: kernels[0].clone(),
            append,
        });
    }
    let work = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("kernel-matrix");
    let runs: Vec<KernelRun> = boots.iter().map(|b| boot(b, &work)).collect();
    for run in &runs {
        println!(
            "{} ({} {}), {} s; taskscope check:\n  {}\n{}",
            run.name,
            run.release,
            run.append,
            run.seconds,
            run.check.join("\n  "),
            run.run.join("\n")
        );
    }
    let table = table(&runs);
    println!("{table}");
    let _ = std::fs::write(
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("../kernel-matrix.md"),
        &table,
    );
    for (run, boot) in runs.iter().zip(&boots) {
        if boot.refuses() {
            assert!(
                refused_in_agreement(run),
                "{} {}: check (exit {:?}) and run (exit {:?}) must both refuse for the lockdown (their output is above)",
                run.release,
                run.append,
                run.check_exit,
                run.run_exit,
            );
            continue;
        }
        assert_eq!(
            run.check_exit,
            Some(0),
            "{} {}: taskscope check did not say it can work",
            run.release,
            run.append
        );
        for ((_, test, _), exit) in SUBSET.iter().zip(&run.tests) {
            assert_eq!(*exit, Some(0), "{} {}: {test}", run.release, run.append);
        }
    }
}
