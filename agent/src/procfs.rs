//! Metadata from /proc and cgroupfs: what the kernel programs do not carry (or could not see
//! for processes that were running before the agent started).

use std::{
    collections::HashMap,
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use taskscope_common::decode::split_args;

/// Clock ticks per second of `/proc/<pid>/stat` times (`USER_HZ`, 100 on every Linux ABI).
pub(crate) const USER_HZ: u64 = 100;
/// Nanoseconds per clock tick, as the kernel converts `start_boottime` for procfs.
pub(crate) const NS_PER_TICK: u64 = 1_000_000_000 / USER_HZ;

/// Fields of `/proc/<pid>/stat` the task model uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stat {
    pub(crate) pid: u32,
    pub(crate) comm: String,
    pub(crate) state: char,
    pub(crate) ppid: u32,
    /// Start time in clock ticks since boot (field 22).
    pub(crate) start_ticks: u64,
    /// Threads in its group, a zombie leader included (field 20).
    pub(crate) num_threads: u32,
    /// `task_struct.exit_code` (field 52, Linux 3.5+; 0 while it runs).
    pub(crate) exit_code: u32,
}

impl Stat {
    /// The whole process has exited and waits to be reaped: a zombie leader with no thread
    /// left. (A leader that exited alone while its threads run is a zombie too.)
    pub(crate) fn exited(&self) -> bool {
        matches!(self.state, 'Z' | 'X') && self.num_threads <= 1
    }
}

/// Parses `/proc/<pid>/stat`. The comm (field 2) may hold spaces and parentheses, so fields are
/// counted from the last `)`.
pub(crate) fn parse_stat(text: &str) -> Option<Stat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let pid = text.get(..open)?.trim().parse().ok()?;
    let comm = text.get(open + 1..close)?.to_string();
    let rest: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    // rest[0] is field 3 (state), so field N is rest[N - 3].
    Some(Stat {
        pid,
        comm,
        state: rest.first()?.chars().next()?,
        ppid: rest.get(1)?.parse().ok()?,
        start_ticks: rest.get(19)?.parse().ok()?,
        num_threads: rest.get(17)?.parse().ok()?,
        exit_code: rest.get(49).and_then(|v| v.parse().ok()).unwrap_or(0),
    })
}

pub(crate) fn read_stat(pid: u32) -> Option<Stat> {
    parse_stat(&read_text(format!("/proc/{pid}/stat"))?)
}

/// Real uid from the `Uid:` line of `/proc/<pid>/status`.
pub(crate) fn parse_status_uid(text: &str) -> Option<u32> {
    text.lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// The `Seccomp:` mode of this process (0 none, 1 strict, 2 filter), from `/proc/self/status`.
pub(crate) fn own_seccomp_mode() -> Option<u32> {
    fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))?
        .trim()
        .parse()
        .ok()
}

/// A /proc file as text. What processes name (their comm, cgroups, mount points) need not be
/// UTF-8: one bad byte must not make the whole file unreadable, so it is replaced instead.
fn read_text(path: impl AsRef<Path>) -> Option<String> {
    fs::read(path)
        .ok()
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
}

/// A numeric field of this process's `/proc/self/fdinfo/<fd>` (for a BPF map: `max_entries`,
/// and `memlock`, the memory the kernel charges for it).
pub(crate) fn fdinfo_field(fd: i32, field: &str) -> Option<u64> {
    parse_fdinfo_field(&read_text(format!("/proc/self/fdinfo/{fd}"))?, field)
}

pub(crate) fn parse_fdinfo_field(text: &str, field: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
}

pub(crate) fn read_uid(pid: u32) -> Option<u32> {
    parse_status_uid(&read_text(format!("/proc/{pid}/status"))?)
}

/// At most `max` bytes of a file, and whether it had more: what a process controls (its
/// argument vector, its environment) can be megabytes.
fn read_prefix(path: &str, max: usize) -> std::io::Result<(Vec<u8>, bool)> {
    use std::io::Read;
    let mut bytes = Vec::new();
    fs::File::open(path)?
        .take(max as u64 + 1)
        .read_to_end(&mut bytes)?;
    let truncated = bytes.len() > max;
    bytes.truncate(max);
    Ok((bytes, truncated))
}

/// The argument vector, cut as the kernel programs cut it at exec
/// ([`taskscope_common::ARGS_LEN`] bytes), so a process looks the same whether it started
/// before the agent or after; the flag says whether it was cut. `None`: unreadable.
pub(crate) fn read_cmdline(pid: u32) -> Option<(Vec<String>, bool)> {
    read_prefix(&format!("/proc/{pid}/cmdline"), taskscope_common::ARGS_LEN)
        .ok()
        .map(|(bytes, truncated)| (split_args(&bytes), truncated))
}

pub(crate) fn read_exe(pid: u32) -> Option<String> {
    fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

/// The cgroup v2 path of a process, from the `0::` line of `/proc/<pid>/cgroup`.
pub(crate) fn parse_cgroup_v2(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_string)
}

/// The cgroup v2 path of a process from the root of the hierarchy, also when the agent runs
/// in a cgroup namespace of its own (a container), where `/proc/<pid>/cgroup` is relative to
/// that namespace's root (`/../../kubepods.slice/...`).
pub(crate) fn read_cgroup_v2(pid: u32) -> Option<String> {
    let path = parse_cgroup_v2(&read_text(format!("/proc/{pid}/cgroup"))?)?;
    Some(match cgroup_namespace_root() {
        Some(root) => resolve_in_namespace(root, &path),
        None => path,
    })
}

/// Where the agent's cgroup namespace is rooted in the hierarchy; `None` when the agent sees
/// the hierarchy as it is (no namespace of its own), or when that cannot be told. Found once.
fn cgroup_namespace_root() -> Option<&'static str> {
    static ROOT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    ROOT.get_or_init(find_cgroup_namespace_root).as_deref()
}

/// Cgroup directories searched at most for the agent's own (once, at start).
const MAX_CGROUP_DIRS_SEARCHED: usize = 100_000;

fn find_cgroup_namespace_root() -> Option<String> {
    let own = parse_cgroup_v2(&read_text("/proc/self/cgroup")?)?;
    let mount = cgroup2_mount()?;
    let me = std::process::id().to_string();
    let lists_me = |dir: &Path| {
        fs::read_to_string(dir.join("cgroup.procs"))
            .map(|procs| procs.lines().any(|l| l == me))
            .unwrap_or(false)
    };
    // The usual case: the path /proc gives is the path in the hierarchy.
    if lists_me(&mount.join(own.trim_start_matches('/'))) {
        return None;
    }
    // In a namespace: find the directory that lists this process; the namespace's root is it
    // less the part /proc shows.
    let mut pending = vec![mount.clone()];
    let mut searched = 0;
    while let Some(dir) = pending.pop() {
        searched += 1;
        if searched > MAX_CGROUP_DIRS_SEARCHED {
            return None;
        }
        if lists_me(&dir) {
            let real = format!("/{}", dir.strip_prefix(&mount).ok()?.to_string_lossy());
            let root = real.strip_suffix(own.trim_end_matches('/'))?;
            return Some(if root.is_empty() {
                "/".into()
            } else {
                root.to_string()
            });
        }
        if let Ok(entries) = fs::read_dir(&dir) {
            pending.extend(
                entries
                    .filter_map(Result::ok)
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    None
}

/// `path`, as `/proc` shows it inside a cgroup namespace rooted at `root`, as a path from the
/// root of the hierarchy.
pub(crate) fn resolve_in_namespace(root: &str, path: &str) -> String {
    let mut parts: Vec<&str> = root.split('/').filter(|p| !p.is_empty()).collect();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        match part {
            ".." => {
                parts.pop();
            }
            "." => {}
            name => parts.push(name),
        }
    }
    format!("/{}", parts.join("/"))
}

/// Thread group ids of every process (numeric entries of /proc).
pub(crate) fn list_pids() -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// Roots at most [`mount_namespace_roots`] returns.
const MAX_MOUNT_NAMESPACES: usize = 4096;

/// One way into each distinct root filesystem on the node: `/` for the agent's own, then
/// `/proc/<pid>/root` of one process per other (mount namespace, root directory) pair: a
/// container's root filesystem, a chroot, or the host's when the agent runs in a container.
pub(crate) fn mount_namespace_roots() -> Vec<PathBuf> {
    let identity = |pid: &str| {
        let namespace = fs::read_link(format!("/proc/{pid}/ns/mnt")).ok()?;
        let root = fs::read_link(format!("/proc/{pid}/root")).ok()?;
        Some((namespace, root))
    };
    let mut seen = std::collections::HashSet::new();
    let mut roots = vec![PathBuf::from("/")];
    if let Some(own) = identity("self") {
        seen.insert(own);
    }
    for pid in list_pids() {
        if roots.len() >= MAX_MOUNT_NAMESPACES {
            break;
        }
        if identity(&pid.to_string()).is_some_and(|id| seen.insert(id)) {
            roots.push(PathBuf::from(format!("/proc/{pid}/root")));
        }
    }
    roots
}

/// Opens `path` (absolute) the way the processes under `root` see it: every symbolic link,
/// of the last component or of a directory on the way, is resolved inside that root
/// (`openat2` with `RESOLVE_IN_ROOT`), so that a link planted in a container cannot point the
/// agent at a file outside it, and `..` cannot climb out (a kernel before 5.6 has no
/// `openat2`: there the path is opened as this process resolves it). `None` when it is not a
/// regular file there.
pub(crate) fn open_in_root(root: &Path, path: &Path) -> Option<fs::File> {
    use std::os::{
        fd::{AsRawFd, FromRawFd},
        unix::ffi::OsStrExt,
    };
    let directory = fs::File::open(root).ok()?;
    let relative = path.strip_prefix("/").unwrap_or(path);
    let name = std::ffi::CString::new(relative.as_os_str().as_bytes()).ok()?;
    // SAFETY: `open_how` is plain integers; all-zero is its default.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: the name and `how` outlive the call; the kernel reads `size` bytes of `how`.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            directory.as_raw_fd(),
            name.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    let file = if fd >= 0 {
        // SAFETY: a descriptor the kernel just returned, owned by nothing else.
        unsafe { fs::File::from_raw_fd(fd as i32) }
    } else if std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS) {
        // Before 5.6: the path as this process resolves it (links inside the root that point
        // out of it are followed out of it).
        fs::File::open(root.join(relative)).ok()?
    } else {
        return None;
    };
    file.metadata().ok()?.is_file().then_some(file)
}

/// A W3C trace context (`TRACEPARENT`) from the environment text of `/proc/<pid>/environ`:
/// (trace id, parent span id). Invalid or all-zero ids are ignored, as the spec says.
pub(crate) fn parse_traceparent(environ: &[u8]) -> Option<(u128, u64)> {
    let value = environ.split(|&b| b == 0).find_map(|var| {
        var.strip_prefix(b"TRACEPARENT=")
            .or_else(|| var.strip_prefix(b"traceparent="))
    })?;
    let text = std::str::from_utf8(value).ok()?.trim();
    let mut parts = text.split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    };
    if !hex(version, 2) || version == "ff" || !hex(trace, 32) || !hex(parent, 16) || !hex(flags, 2)
    {
        return None;
    }
    if version == "00" && parts.next().is_some() {
        return None;
    }
    let trace = u128::from_str_radix(trace, 16).ok().filter(|&t| t != 0)?;
    let parent = u64::from_str_radix(parent, 16).ok().filter(|&p| p != 0)?;
    Some((trace, parent))
}

/// Bytes of a process's environment searched for `TRACEPARENT`: a variable past them is not
/// seen (environments are a few KiB; the kernel allows megabytes).
pub(crate) const ENVIRON_SCAN_BYTES: usize = 256 * 1024;

/// The W3C trace context in a process's environment, if any (see [`parse_traceparent`]).
/// Reads the environment in pieces and keeps only the start of each variable, so a process
/// with a huge environment costs the agent no more memory than one with none.
pub(crate) fn read_traceparent(pid: u32) -> Option<(u128, u64)> {
    let file = fs::File::open(format!("/proc/{pid}/environ")).ok()?;
    find_traceparent(file, ENVIRON_SCAN_BYTES)
}

/// [`parse_traceparent`] over a stream of `NAME=VALUE\0` variables, reading at most `limit`
/// bytes and keeping at most 128 bytes of any one variable.
pub(crate) fn find_traceparent(environ: impl std::io::Read, limit: usize) -> Option<(u128, u64)> {
    use std::io::Read;
    // "TRACEPARENT=" and a version-00 value are 67 bytes; a longer variable is not one.
    const KEEP: usize = 128;
    let mut var: Vec<u8> = Vec::with_capacity(KEEP);
    let mut too_long = false;
    let mut chunk = [0u8; 8192];
    let mut environ = environ.take(limit as u64);
    loop {
        let read = environ.read(&mut chunk).ok()?;
        // The end of the text ends its last variable.
        let bytes = chunk.get(..read)?;
        for &byte in bytes.iter().chain((read == 0).then_some(&0)) {
            if byte == 0 {
                if !too_long {
                    if let Some(found) = parse_traceparent(&var) {
                        return Some(found);
                    }
                }
                var.clear();
                too_long = false;
            } else if var.len() < KEEP {
                var.push(byte);
            } else {
                too_long = true;
            }
        }
        if read == 0 {
            return None;
        }
    }
}

/// Where the first filesystem of type `fstype` is mounted, from `/proc/self/mountinfo` text.
pub(crate) fn mount_point(mountinfo: &str, fstype: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != fstype {
            return None;
        }
        left.split_whitespace().nth(4).map(PathBuf::from)
    })
}

/// This process's view of the mounts (empty when unreadable).
pub(crate) fn mountinfo() -> String {
    read_text("/proc/self/mountinfo").unwrap_or_default()
}

/// Where cgroup v2 is mounted: `/sys/fs/cgroup` on unified hosts, `/sys/fs/cgroup/unified` on
/// hybrid ones; read from mountinfo rather than guessed.
pub(crate) fn cgroup2_mount() -> Option<PathBuf> {
    mount_point(&mountinfo(), "cgroup2")
}

/// Where the cgroup v1 hierarchy holding `controller` is mounted, from mountinfo text.
pub(crate) fn cgroup_v1_mount(mountinfo: &str, controller: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mut fields = right.split_whitespace();
        if fields.next()? != "cgroup" {
            return None;
        }
        let super_options = fields.nth(1)?;
        if !super_options.split(',').any(|o| o == controller) {
            return None;
        }
        left.split_whitespace().nth(4).map(PathBuf::from)
    })
}

/// The cgroup v2 mount when its root offers `controller` (on hybrid hosts the controllers are
/// bound to v1).
fn cgroup2_root_with(mountinfo: &str, controller: &str) -> Option<PathBuf> {
    mount_point(mountinfo, "cgroup2").filter(|root| {
        fs::read_to_string(root.join("cgroup.controllers"))
            .is_ok_and(|c| c.split_whitespace().any(|c| c == controller))
    })
}

/// Memory charged to a cgroup and its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CgroupMemory {
    /// `memory.current` (v2) or `memory.usage_in_bytes` (v1): page cache included, as the
    /// kernel charges it.
    pub(crate) usage_bytes: u64,
    /// `memory.max` (v2) or `memory.limit_in_bytes` (v1); `None` when unlimited.
    pub(crate) limit_bytes: Option<u64>,
}

/// v1 writes "unlimited" as the largest page-aligned `i64`; anything this large is no limit.
const V1_UNLIMITED: u64 = 1 << 62;

/// Reads the memory of cgroups by their v2 path: from cgroup v2 where the memory controller
/// is enabled there, else from the v1 memory hierarchy at the same path (hybrid hosts, where
/// systemd and runc create the same path in every hierarchy).
#[derive(Debug, Clone, Default)]
pub(crate) struct CgroupMemoryReader {
    v2_root: Option<PathBuf>,
    v1_memory_root: Option<PathBuf>,
}

impl CgroupMemoryReader {
    /// A reader for the hierarchies mounted on this host. Cgroup v2 is asked only when its
    /// root offers the memory controller (on hybrid hosts it is bound to v1).
    pub(crate) fn from_mounts(mountinfo: &str) -> Self {
        Self {
            v2_root: cgroup2_root_with(mountinfo, "memory"),
            v1_memory_root: cgroup_v1_mount(mountinfo, "memory"),
        }
    }

    /// Memory of the cgroup at `path` (relative to the v2 root, as in `/proc/<pid>/cgroup`);
    /// `None` when no hierarchy accounts memory for it, and for the root cgroup (v2 keeps no
    /// figure for it; v1's is the whole host's, not its own processes').
    pub(crate) fn read(&self, path: &str) -> Option<CgroupMemory> {
        let relative = path.trim_start_matches('/');
        if relative.is_empty() {
            return None;
        }
        let read_u64 =
            |file: PathBuf| -> Option<u64> { fs::read_to_string(file).ok()?.trim().parse().ok() };
        if let Some(dir) = self.v2_root.as_ref().map(|root| root.join(relative)) {
            if let Some(usage_bytes) = read_u64(dir.join("memory.current")) {
                // "max" (no limit) does not parse as a number.
                let limit_bytes = read_u64(dir.join("memory.max"));
                return Some(CgroupMemory {
                    usage_bytes,
                    limit_bytes,
                });
            }
        }
        let dir = self.v1_memory_root.as_ref()?.join(relative);
        let usage_bytes = read_u64(dir.join("memory.usage_in_bytes"))?;
        let limit_bytes = read_u64(dir.join("memory.limit_in_bytes")).filter(|&l| l < V1_UNLIMITED);
        Some(CgroupMemory {
            usage_bytes,
            limit_bytes,
        })
    }
}

/// A cgroup's CPU limit and share of the CPUs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct CgroupCpu {
    /// CPUs' worth of time it may use: `cpu.max` (v2) or `cpu.cfs_quota_us / cpu.cfs_period_us`
    /// (v1); `None` when unlimited.
    pub(crate) limit_cores: Option<f64>,
    /// Its weight as v1 `cpu.shares` (v2's `cpu.weight` converted back as Kubernetes sets it:
    /// shares are a pod's CPU request in milli-CPUs x 1.024).
    pub(crate) shares: Option<u64>,
}

/// Reads the CPU limits of cgroups by their v2 path, from cgroup v2 where the cpu controller
/// is enabled there, else from the v1 cpu hierarchy at the same path.
#[derive(Debug, Clone, Default)]
pub(crate) struct CgroupCpuReader {
    v2_root: Option<PathBuf>,
    v1_cpu_root: Option<PathBuf>,
}

impl CgroupCpuReader {
    /// A reader for the hierarchies mounted on this host.
    pub(crate) fn from_mounts(mountinfo: &str) -> Self {
        Self {
            v2_root: cgroup2_root_with(mountinfo, "cpu"),
            v1_cpu_root: cgroup_v1_mount(mountinfo, "cpu"),
        }
    }

    /// The limits of the cgroup at `path`; `None` for the root and where no hierarchy has them.
    pub(crate) fn read(&self, path: &str) -> Option<CgroupCpu> {
        let relative = path.trim_start_matches('/');
        if relative.is_empty() {
            return None;
        }
        let read = |file: PathBuf| fs::read_to_string(file).ok();
        if let Some(dir) = self.v2_root.as_ref().map(|root| root.join(relative)) {
            if let Some(max) = read(dir.join("cpu.max")) {
                let weight = read(dir.join("cpu.weight")).and_then(|w| w.trim().parse().ok());
                return Some(CgroupCpu {
                    limit_cores: parse_cpu_max(&max),
                    shares: weight.map(shares_of_weight),
                });
            }
        }
        let dir = self.v1_cpu_root.as_ref()?.join(relative);
        let quota: i64 = read(dir.join("cpu.cfs_quota_us"))?.trim().parse().ok()?;
        let period: u64 = read(dir.join("cpu.cfs_period_us"))?.trim().parse().ok()?;
        Some(CgroupCpu {
            limit_cores: (quota > 0 && period > 0).then(|| quota as f64 / period as f64),
            shares: read(dir.join("cpu.shares")).and_then(|s| s.trim().parse().ok()),
        })
    }
}

/// CPUs' worth of v2 `cpu.max` (`"max 100000"`: none; `"50000 100000"`: half a CPU).
pub(crate) fn parse_cpu_max(text: &str) -> Option<f64> {
    let mut fields = text.split_whitespace();
    let quota: u64 = fields.next()?.parse().ok()?;
    let period: u64 = fields.next()?.parse().ok()?;
    (period > 0).then(|| quota as f64 / period as f64)
}

/// v1 `cpu.shares` from v2 `cpu.weight`, the inverse of the kernel's and Kubernetes'
/// conversion (`weight = 1 + (shares - 2) * 9999 / 262142`).
pub(crate) fn shares_of_weight(weight: u64) -> u64 {
    2 + weight.saturating_sub(1).saturating_mul(262_142) / 9_999
}

/// Free blocks of one zone, per order, from `/proc/buddyinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ZoneFreeBlocks {
    pub(crate) node: u32,
    pub(crate) zone: String,
    /// Free blocks of 2^order pages, by order.
    pub(crate) free_blocks: Vec<u64>,
}

/// Parses `/proc/buddyinfo` (`Node 0, zone   Normal   7610   3476 ...`).
pub(crate) fn parse_buddyinfo(text: &str) -> Vec<ZoneFreeBlocks> {
    text.lines()
        .filter_map(|line| {
            let (node_part, rest) = line.split_once(',')?;
            let node = node_part.trim().strip_prefix("Node")?.trim().parse().ok()?;
            let mut fields = rest.split_whitespace();
            if fields.next()? != "zone" {
                return None;
            }
            let zone = fields.next()?.to_string();
            let free_blocks = fields
                .map(|f| f.parse().ok())
                .collect::<Option<Vec<u64>>>()?;
            Some(ZoneFreeBlocks {
                node,
                zone,
                free_blocks,
            })
        })
        .collect()
}

pub(crate) fn read_buddyinfo() -> Vec<ZoneFreeBlocks> {
    fs::read_to_string("/proc/buddyinfo")
        .map(|t| parse_buddyinfo(&t))
        .unwrap_or_default()
}

/// Total stall time (µs) of one `/proc/pressure/<resource>` file: (`some`, `full`).
pub(crate) fn parse_pressure(text: &str) -> (Option<u64>, Option<u64>) {
    let total = |kind: &str| {
        text.lines()
            .find(|l| l.starts_with(kind))?
            .split_whitespace()
            .find_map(|f| f.strip_prefix("total="))?
            .parse()
            .ok()
    };
    (total("some"), total("full"))
}

/// Stall totals in µs per resource (`cpu`, `memory`, `io`) where the kernel has PSI enabled.
pub(crate) fn read_pressure() -> Vec<(&'static str, Option<u64>, Option<u64>)> {
    ["cpu", "memory", "io"]
        .into_iter()
        .filter_map(|resource| {
            let text = fs::read_to_string(format!("/proc/pressure/{resource}")).ok()?;
            let (some, full) = parse_pressure(&text);
            Some((resource, some, full))
        })
        .collect()
}

/// Maps cgroup v2 ids (the inode numbers of cgroup directories, as `bpf_get_current_cgroup_id`
/// returns them) to paths. Unknown ids trigger a rescan of the hierarchy, at most once per
/// `min_rescan`; the cache is capped.
pub(crate) struct CgroupResolver {
    root: Option<PathBuf>,
    by_id: HashMap<u64, String>,
    last_scan: Option<Instant>,
    min_rescan: Duration,
    max_entries: usize,
}

impl CgroupResolver {
    pub(crate) fn new(root: Option<PathBuf>) -> Self {
        Self {
            root,
            by_id: HashMap::new(),
            last_scan: None,
            min_rescan: Duration::from_secs(1),
            max_entries: 65536,
        }
    }

    /// The cgroup id of a path relative to the cgroup v2 root (as in `/proc/<pid>/cgroup`).
    pub(crate) fn id_of(&mut self, path: &str) -> Option<u64> {
        let root = self.root.as_ref()?;
        let ino = fs::metadata(root.join(path.trim_start_matches('/')))
            .ok()?
            .ino();
        if self.by_id.len() < self.max_entries {
            self.by_id.insert(ino, path.to_string());
        }
        Some(ino)
    }

    /// The path of cgroup `id`, which process `pid` was seen in: from the cache, else from
    /// `/proc/<pid>/cgroup` if the process is still there (one stat to confirm the id), else by
    /// a rescan. A burst of new cgroups (containers starting) is thus resolved one process at
    /// a time without waiting out the rescan rate limit.
    pub(crate) fn path_of_process(&mut self, id: u64, pid: u32) -> Option<String> {
        if id == 0 {
            return None;
        }
        if let Some(path) = self.by_id.get(&id) {
            return Some(path.clone());
        }
        if let Some(path) = read_cgroup_v2(pid) {
            if self.id_of(&path) == Some(id) {
                return Some(path);
            }
        }
        self.path_of(id)
    }

    /// The path of cgroup `id`, rescanning the hierarchy when it is unknown.
    fn path_of(&mut self, id: u64) -> Option<String> {
        if id == 0 {
            return None;
        }
        if let Some(path) = self.by_id.get(&id) {
            return Some(path.clone());
        }
        let due = self
            .last_scan
            .is_none_or(|t| t.elapsed() >= self.min_rescan);
        if due {
            self.rescan();
        }
        self.by_id.get(&id).cloned()
    }

    fn rescan(&mut self) {
        self.last_scan = Some(Instant::now());
        let Some(root) = self.root.clone() else {
            return;
        };
        self.by_id.clear();
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            if self.by_id.len() >= self.max_entries {
                break;
            }
            let Ok(meta) = fs::metadata(&dir) else {
                continue;
            };
            let relative = dir.strip_prefix(&root).unwrap_or(Path::new(""));
            self.by_id
                .insert(meta.ino(), format!("/{}", relative.to_string_lossy()));
            if let Ok(entries) = fs::read_dir(&dir) {
                for entry in entries.flatten() {
                    if entry.file_type().is_ok_and(|t| t.is_dir()) {
                        stack.push(entry.path());
                    }
                }
            }
        }
    }
}

/// The active mode of `/sys/kernel/security/lockdown` (`none [integrity] confidentiality`).
pub(crate) fn parse_lockdown(text: &str) -> Option<&str> {
    text.split_whitespace()
        .find_map(|word| word.strip_prefix('[')?.strip_suffix(']'))
}

/// The kernel's lockdown mode, when securityfs shows it.
pub(crate) fn kernel_lockdown() -> Option<String> {
    let text = std::fs::read_to_string("/sys/kernel/security/lockdown").ok()?;
    parse_lockdown(&text).map(str::to_string)
}

/// The running kernel's release (`/proc/sys/kernel/osrelease`), empty when unreadable.
pub(crate) fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Parses `major.minor` from a kernel release string such as `6.18.44-fc-v657`.
pub(crate) fn parse_kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// The agent's own CPU time (user + system, ns) and resident memory (bytes), from /proc/self.
pub(crate) fn own_usage() -> Option<(u64, u64)> {
    let stat = fs::read_to_string("/proc/self/stat").ok()?;
    let rest: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = rest.get(11)?.parse::<u64>().ok()? + rest.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(0) as u64;
    let pages: u64 = fs::read_to_string("/proc/self/statm")
        .ok()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some((ticks * NS_PER_TICK, pages * page))
}

/// `MemTotal` and `MemAvailable` of `/proc/meminfo`, in bytes.
pub(crate) fn parse_meminfo(text: &str) -> Option<(u64, u64)> {
    let kib = |key: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(key))?;
        line[key.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse::<u64>()
            .ok()
    };
    Some((kib("MemTotal:")? * 1024, kib("MemAvailable:")? * 1024))
}

/// [`parse_meminfo`] of this host.
pub(crate) fn read_meminfo() -> Option<(u64, u64)> {
    parse_meminfo(&fs::read_to_string("/proc/meminfo").ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_in_another_root_is_resolved_inside_it() {
        let root = std::env::temp_dir().join(format!("taskscope-root-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("bin")).expect("root");
        fs::write(root.join("bin/app"), b"inside").expect("file");
        // Absolute links: the root's own file, and one naming a file of ours it does not have.
        std::os::unix::fs::symlink("/bin/app", root.join("app")).expect("link");
        std::os::unix::fs::symlink("/proc/self/exe", root.join("escape")).expect("link");
        std::os::unix::fs::symlink("../../../../../../proc/self/exe", root.join("up"))
            .expect("link");
        let read = |path: &str| {
            open_in_root(&root, Path::new(path)).map(|mut f| {
                let mut text = String::new();
                let _ = std::io::Read::read_to_string(&mut f, &mut text);
                text
            })
        };
        assert_eq!(read("/app").as_deref(), Some("inside"));
        assert_eq!(read("/bin/app").as_deref(), Some("inside"));
        assert!(read("/escape").is_none(), "an absolute link left the root");
        assert!(read("/up").is_none(), "`..` climbed out of the root");
        assert!(read("/bin").is_none(), "a directory is not a binary");
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn fdinfo_fields_of_a_bpf_map() {
        let text = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\nmap_type:\t1\nkey_size:\t4\nvalue_size:\t352\nmax_entries:\t32768\nmap_flags:\t0x0\nmap_extra:\t0x0\nmemlock:\t13107712\nmap_id:\t77\nfrozen:\t0\n";
        assert_eq!(parse_fdinfo_field(text, "memlock"), Some(13_107_712));
        assert_eq!(parse_fdinfo_field(text, "max_entries"), Some(32768));
        assert_eq!(parse_fdinfo_field(text, "map_flags"), None); // not a number
        assert_eq!(parse_fdinfo_field(text, "memlock_extra"), None);
    }

    #[test]
    fn lockdown_mode() {
        assert_eq!(
            parse_lockdown("none [integrity] confidentiality\n"),
            Some("integrity")
        );
        assert_eq!(
            parse_lockdown("[none] integrity confidentiality"),
            Some("none")
        );
        assert_eq!(parse_lockdown(""), None);
    }

    #[test]
    fn stat_with_awkward_comm() {
        let text = "1234 (my (odd) prog) S 1 1234 1234 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 1 0 98765 1000 10 18446744073709551615";
        let stat = parse_stat(text).unwrap();
        assert_eq!(stat.pid, 1234);
        assert_eq!(stat.comm, "my (odd) prog");
        assert_eq!(stat.state, 'S');
        assert_eq!(stat.ppid, 1);
        assert_eq!(stat.start_ticks, 98765);
        assert_eq!((stat.num_threads, stat.exit_code), (1, 0));
        assert!(!stat.exited());
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) S"), None);
    }

    #[test]
    fn stat_of_a_zombie() {
        // A child that called _exit(3), not yet reaped (read on Linux 6.18).
        let text = "4748 (python3) Z 4707 4705 14823 0 -1 4227148 228 0 0 0 0 0 0 0 20 0 1 0 6212207 0 0 18446744073709551615 0 0 0 0 0 0 0 16781312 2 1 0 0 17 0 0 0 0 0 0 0 0 0 0 0 0 0 768\n";
        let stat = parse_stat(text).unwrap();
        assert_eq!(
            (stat.state, stat.num_threads, stat.exit_code),
            ('Z', 1, 3 << 8)
        );
        assert!(stat.exited());
        // Its leader gone, its threads still running: not exited.
        let leader_only = Stat {
            num_threads: 2,
            ..stat
        };
        assert!(!leader_only.exited());
    }

    #[test]
    fn status_uid_cgroup_and_mount() {
        assert_eq!(
            parse_status_uid("Name:\tbash\nUid:\t1000\t1000\t1000\t1000\n"),
            Some(1000)
        );
        assert_eq!(parse_status_uid("Name: x\n"), None);
        assert_eq!(
            parse_cgroup_v2("12:memory:/foo\n0::/system.slice/ssh.service\n"),
            Some("/system.slice/ssh.service".into())
        );
        let mountinfo = "30 25 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n\
                         35 30 0:31 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw\n";
        assert_eq!(
            mount_point(mountinfo, "cgroup2"),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(mount_point(mountinfo, "bpf"), None);
        let hybrid = "32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n\
                      35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
                      40 31 0:37 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd\n";
        assert_eq!(
            cgroup_v1_mount(hybrid, "memory"),
            Some(PathBuf::from("/sys/fs/cgroup/memory"))
        );
        assert_eq!(cgroup_v1_mount(hybrid, "blkio"), None);
        assert_eq!(cgroup_v1_mount(mountinfo, "memory"), None);
    }

    #[test]
    fn traceparent_from_the_environment() {
        let env = b"PATH=/bin\0TRACEPARENT=00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\0HOME=/\0";
        assert_eq!(
            parse_traceparent(env),
            Some((0x4bf92f3577b34da6a3ce929d0e0e4736, 0x00f067aa0ba902b7))
        );
        for bad in [
            &b"TRACEPARENT=00-00000000000000000000000000000000-00f067aa0ba902b7-01"[..],
            b"TRACEPARENT=00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"TRACEPARENT=ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"TRACEPARENT=00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"TRACEPARENT=00-4bf92f3577b34da6-00f067aa0ba902b7-01",
            b"TRACEPARENT=garbage",
            b"OTHER=1",
        ] {
            assert_eq!(
                parse_traceparent(bad),
                None,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn traceparent_in_a_huge_environment_costs_no_memory() {
        let traceparent = b"TRACEPARENT=00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let expected = Some((0x4bf92f3577b34da6a3ce929d0e0e4736, 0x00f067aa0ba902b7));
        let huge = vec![b'x'; 3 << 20];
        // Before a 3 MiB variable, after small ones, last without its NUL.
        let mut before = b"A=1\0".to_vec();
        before.extend_from_slice(traceparent);
        before.push(0);
        before.extend_from_slice(&huge);
        assert_eq!(find_traceparent(&before[..], ENVIRON_SCAN_BYTES), expected);
        let mut last = b"A=1\0B=2\0".to_vec();
        last.extend_from_slice(traceparent);
        assert_eq!(find_traceparent(&last[..], ENVIRON_SCAN_BYTES), expected);
        // Past the scanned bytes, or inside a longer variable: not seen.
        let mut after = huge.clone();
        after.push(0);
        after.extend_from_slice(traceparent);
        assert_eq!(find_traceparent(&after[..], ENVIRON_SCAN_BYTES), None);
        let mut glued = traceparent.to_vec();
        glued.extend_from_slice(&huge[..200]);
        assert_eq!(find_traceparent(&glued[..], ENVIRON_SCAN_BYTES), None);
        assert_eq!(find_traceparent(&b""[..], ENVIRON_SCAN_BYTES), None);
    }

    #[test]
    fn buddyinfo_and_pressure() {
        let zones = parse_buddyinfo(
            "Node 0, zone      DMA      0      0      1\nNode 1, zone   Normal   7610   3476 2\ngarbage\n",
        );
        assert_eq!(zones.len(), 2);
        assert_eq!(zones[1].node, 1);
        assert_eq!(zones[1].zone, "Normal");
        assert_eq!(zones[1].free_blocks, vec![7610, 3476, 2]);
        assert_eq!(
            parse_pressure("some avg10=0.05 avg60=1.35 avg300=1.61 total=316723093\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"),
            (Some(316723093), Some(0))
        );
        assert_eq!(parse_pressure("some avg10=0.05 total=5\n"), (Some(5), None));
    }

    #[test]
    fn own_process_is_readable() {
        let me = std::process::id();
        let stat = read_stat(me).unwrap();
        assert_eq!(stat.pid, me);
        assert!(read_cmdline(me).is_some_and(|(args, _)| !args.is_empty()));
        assert!(read_cgroup_v2(me).is_some());
    }

    #[test]
    fn paths_from_inside_a_cgroup_namespace_become_paths_from_the_root() {
        let root = "/kubepods.slice/kubepods-pod1.slice/cri-containerd-abc.scope";
        assert_eq!(resolve_in_namespace(root, "/"), root);
        assert_eq!(
            resolve_in_namespace(root, "/../../kubepods-pod2.slice/cri-containerd-def.scope"),
            "/kubepods.slice/kubepods-pod2.slice/cri-containerd-def.scope"
        );
        assert_eq!(resolve_in_namespace(root, "/../../../.."), "/");
        assert_eq!(resolve_in_namespace("/", "/system.slice"), "/system.slice");
    }

    #[test]
    fn meminfo_gives_total_and_available_bytes() {
        let text = "MemTotal:       24607604 kB\nMemFree:        20000000 kB\nMemAvailable:   23000000 kB\n";
        assert_eq!(
            parse_meminfo(text),
            Some((24_607_604 * 1024, 23_000_000 * 1024))
        );
        assert_eq!(parse_meminfo("MemTotal: 1 kB\n"), None);
    }

    #[test]
    fn cpu_limits_parse_from_either_hierarchy_format() {
        assert_eq!(parse_cpu_max("50000 100000\n"), Some(0.5));
        assert_eq!(parse_cpu_max("max 100000\n"), None);
        // Kubernetes: a 500m request is 512 shares, weight 20 in v2.
        assert_eq!(1 + (512 - 2) * 9999 / 262_142, 20);
        let shares = shares_of_weight(20);
        assert!((shares as i64 - 512).abs() <= 14, "{shares}");
        assert_eq!(shares_of_weight(1), 2);
    }
}
