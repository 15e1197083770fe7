//! Loading and attaching the kernel programs.
//!
//! Each hook has a `tp_btf` program (cheapest: direct BTF-typed arguments, no tracefs) and a
//! `raw_tp` fallback (no tracefs either). The loader tries them in that order and records which
//! one it used, or why neither worked.

pub(crate) mod btf;
pub(crate) mod coverage;
pub(crate) mod offsets;
pub(crate) mod points;

use std::{fmt, os::fd::AsFd, path::PathBuf};

use aya::{
    programs::{BtfTracePoint, ProgramError, RawTracePoint, UProbe},
    Ebpf, EbpfLoader,
};
use serde::Serialize;
pub(crate) use taskscope_common::contract::{Hook, ProbeGroup, HOOKS};
use taskscope_common::{
    contract::{globals, maps, CUSTOM_PROGRAM},
    Thresholds,
};

use crate::clock;

use self::{btf::Btf, coverage::Degradation, offsets::KernelOffsets};

/// The compiled kernel programs.
pub(crate) static PROBES_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/taskscope-probes"));

/// Where the running kernel publishes its BTF.
pub(crate) const KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";

/// How a hook got attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) enum AttachType {
    #[serde(rename = "tp_btf")]
    TpBtf,
    #[serde(rename = "raw_tp")]
    RawTp,
}

impl fmt::Display for AttachType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AttachType::TpBtf => "tp_btf",
            AttachType::RawTp => "raw_tp",
        })
    }
}

/// The outcome of attaching one hook.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct HookStatus {
    pub(crate) tracepoint: &'static str,
    pub(crate) group: ProbeGroup,
    #[serde(skip)]
    pub(crate) btf_program: &'static str,
    #[serde(skip)]
    pub(crate) raw_program: &'static str,
    /// The attach type used, or `None` when the hook could not be attached.
    pub(crate) attach_type: Option<AttachType>,
    /// False while its group is switched off (`--disable-probes`): loaded, not attached.
    pub(crate) enabled: bool,
    /// Why the cheaper type (or every type) failed, if it did.
    pub(crate) errors: Vec<String>,
    /// For a fallback: the hook it stands in for (see [`Hook::instead_of`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) instead_of: Option<&'static str>,
    /// For a hook that did not attach: the fallbacks that attached in its place.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) replaced_by: Vec<&'static str>,
    /// The kernel release that added the tracepoint, when later than the oldest supported.
    #[serde(skip)]
    pub(crate) since: Option<(u32, u32)>,
}

impl HookStatus {
    /// `hook`, not attached yet.
    pub(crate) fn new(hook: &Hook) -> Self {
        HookStatus {
            tracepoint: hook.tracepoint,
            group: hook.group,
            btf_program: hook.btf_program,
            raw_program: hook.raw_program,
            attach_type: None,
            enabled: true,
            errors: Vec::new(),
            instead_of: hook.instead_of,
            replaced_by: Vec::new(),
            since: hook.since,
        }
    }
}

/// Whether `hook` is a fallback whose primary, among those `tried`, attached: then it is not
/// loaded at all.
pub(crate) fn fallback_not_needed(tried: &[HookStatus], hook: &Hook) -> bool {
    hook.instead_of.is_some_and(|primary| {
        tried
            .iter()
            .any(|h| h.tracepoint == primary && h.attach_type.is_some())
    })
}

/// Notes, on each hook that did not attach, the fallbacks that did (all of them, or none).
pub(crate) fn mark_replaced(hooks: &mut [HookStatus]) {
    for index in 0..hooks.len() {
        if hooks[index].attach_type.is_some() {
            continue;
        }
        let primary = hooks[index].tracepoint;
        let fallbacks: Vec<&HookStatus> = hooks
            .iter()
            .filter(|h| h.instead_of == Some(primary))
            .collect();
        if !fallbacks.is_empty() && fallbacks.iter().all(|h| h.attach_type.is_some()) {
            hooks[index].replaced_by = fallbacks.iter().map(|h| h.tracepoint).collect();
        }
    }
}

/// clone, clone3, fork and vfork on this architecture (`u32::MAX` for one it lacks): the new
/// task returns from them too, and that return is not a syscall of its own.
fn fork_syscalls() -> [u32; 4] {
    let nr = |n: libc::c_long| u32::try_from(n).unwrap_or(u32::MAX);
    #[cfg(target_arch = "x86_64")]
    let (fork, vfork) = (nr(libc::SYS_fork), nr(libc::SYS_vfork));
    #[cfg(not(target_arch = "x86_64"))]
    let (fork, vfork) = (u32::MAX, u32::MAX);
    [nr(libc::SYS_clone), nr(libc::SYS_clone3), fork, vfork]
}

/// Settings the kernel programs are loaded with.
#[derive(Debug, Clone)]
pub(crate) struct LoadOptions {
    /// Thread group whose activity is not accounted (the agent itself).
    pub(crate) agent_tgid: u32,
    /// Syscalls, run-queue waits and block requests at least this long are reported one by
    /// one (changed later with [`Probes::set_thresholds`]).
    pub(crate) thresholds: Thresholds,
    /// Groups loaded but left detached (see [`ProbeGroup::can_be_disabled`]).
    pub(crate) disabled_groups: Vec<ProbeGroup>,
    /// Send every context switch to userspace (`taskscope record` only: it costs a ring-buffer
    /// record per switch).
    pub(crate) record_switches: bool,
    /// Capacity of the per-task map.
    pub(crate) max_tasks: u32,
    /// Capacity of the per-(process, syscall) map; the errno map gets a quarter.
    pub(crate) max_syscall_entries: u32,
    /// Capacity of the per-(cgroup, syscall) map.
    pub(crate) max_workload_syscall_entries: u32,
    /// Entries one process may have in the syscall tables (both together).
    pub(crate) max_syscall_entries_per_process: u32,
    /// Capacity of the map of block requests in flight.
    pub(crate) max_io_requests: u32,
    /// Ring buffer size in bytes (a power of two, multiple of the page size).
    pub(crate) ring_buffer_bytes: u32,
    /// Try only raw tracepoints (for testing the fallback).
    pub(crate) force_raw_tp: bool,
    /// The running kernel's BTF ([`KERNEL_BTF`] unless the kernel publishes it elsewhere).
    pub(crate) kernel_btf: PathBuf,
}

/// Why the programs could not be loaded or attached.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read kernel BTF at {path}: {source}. The kernel needs CONFIG_DEBUG_INFO_BTF=y, or pass its BTF file with --kernel-btf (run `taskscope check`)")]
    NoBtf {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot parse kernel BTF at {path}: {source}")]
    BadBtf {
        path: PathBuf,
        #[source]
        source: btf::BtfError,
    },
    #[error("cannot take kernel struct offsets from BTF: {0}")]
    Offsets(#[from] offsets::OffsetsError),
    #[error("cannot load the kernel programs' maps: {0}. Is the agent running as root, or with CAP_BPF and CAP_PERFMON? (run `taskscope check`)")]
    Object(#[source] aya::EbpfError),
    #[error("cannot load the kernel programs' maps: {source}. A {filter} refuses the bpf() system call before the kernel sees it, whatever the capabilities: a container runtime's default seccomp profile allows bpf() only with CAP_SYS_ADMIN. Run the agent with the seccomp profile deploy/seccomp/taskscope.json (see docs/install.md, \"Seccomp\")")]
    Refused {
        #[source]
        source: aya::EbpfError,
        /// `seccomp filter` or, without one, `security module or seccomp filter`.
        filter: &'static str,
    },
    #[error("cannot switch off the {group:?} probes: {reason}")]
    Toggle { group: ProbeGroup, reason: String },
    #[error("the program {program} is missing from the kernel object")]
    MissingProgram { program: &'static str },
    #[error("kernel lockdown is in confidentiality mode (/sys/kernel/security/lockdown): BPF programs may not read kernel memory, which every taskscope program does. Boot with lockdown=integrity (what Secure Boot sets) or none")]
    Lockdown,
    #[error("cannot attach {tracepoint} ({group:?}), which the agent needs: {}\n{}", errors.last().and_then(|e| e.lines().next()).unwrap_or("no error given"), errors.join("\n"))]
    Required {
        tracepoint: &'static str,
        group: ProbeGroup,
        errors: Vec<String>,
    },
}

/// One kernel map of the programs, as the kernel sized it.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct MapMemory {
    pub(crate) name: String,
    /// The kernel's id of the map (`bpftool map show id N`).
    pub(crate) id: u64,
    pub(crate) max_entries: u64,
    /// What the kernel charges for it (`memlock` in its fdinfo): all of it from the start for
    /// a preallocated map; what is in use for one that allocates as it goes.
    pub(crate) bytes: u64,
    /// This process's descriptor of the map, to read `memlock` again.
    #[serde(skip)]
    fd: i32,
}

/// Every map of `ebpf`, read before the collector takes any.
fn maps_of(ebpf: &Ebpf) -> Vec<MapMemory> {
    use std::os::fd::{AsFd, AsRawFd};
    ebpf.maps()
        .filter_map(|(name, map)| {
            let data = match map {
                aya::maps::Map::Array(d)
                | aya::maps::Map::PerCpuArray(d)
                | aya::maps::Map::HashMap(d)
                | aya::maps::Map::LruHashMap(d)
                | aya::maps::Map::PerCpuHashMap(d)
                | aya::maps::Map::RingBuf(d)
                // Task-local storage (`SYSCALL_STARTS`): its values live with the tasks.
                | aya::maps::Map::Unsupported(d) => d,
                _ => return None,
            };
            let fd = data.fd().as_fd().as_raw_fd();
            Some(MapMemory {
                fd,
                name: name.to_string(),
                id: crate::procfs::fdinfo_field(fd, "map_id")?,
                max_entries: crate::procfs::fdinfo_field(fd, "max_entries")?,
                bytes: crate::procfs::fdinfo_field(fd, "memlock")?,
            })
        })
        // Global variables (.rodata, .bss) are arrays too, of a few bytes: not tables.
        .filter(|m| !m.name.starts_with('.'))
        .collect()
}

/// The loaded programs and maps. Dropping it detaches and unloads everything.
pub(crate) struct Probes {
    pub(crate) ebpf: Ebpf,
    /// The kernel maps and their memory at load.
    maps: Vec<MapMemory>,
    /// Every hook tried, in attach order (a fallback only where its primary failed).
    pub(crate) hooks: Vec<HookStatus>,
    /// What the optional hooks that did not attach leave out (see [`coverage`]).
    pub(crate) degraded: Vec<Degradation>,
    /// The link of each hook (same order as `hooks`), while attached.
    links: Vec<Option<HookLink>>,
    /// The thresholds last given (their `timed_since_ns` is the one below).
    thresholds: Thresholds,
    /// When `sys_enter` was last attached (CLOCK_MONOTONIC ns); 0 while it is not.
    syscalls_timed_since_ns: u64,
    /// Every context switch goes to userspace (`Thresholds::record_switches`).
    switches_recorded: bool,
    /// Why the custom metrics' uprobe program could not be loaded, once it was tried.
    custom_program_error: Option<String>,
}

/// An attached hook's link, to detach it.
#[derive(Debug)]
enum HookLink {
    Btf(aya::programs::tp_btf::BtfTracePointLinkId),
    Raw(aya::programs::raw_trace_point::RawTracePointLinkId),
}

/// Renders a program error; for a verifier rejection, the verifier's last lines.
pub(crate) fn describe_program_error(program: &str, err: &ProgramError) -> String {
    match err {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(12)..];
            // Kernel lockdown (confidentiality) withdraws the helpers that read kernel memory.
            let hint = if log.contains("unknown func bpf_probe_read") {
                ": the kernel withholds bpf_probe_read_kernel; is kernel lockdown in confidentiality mode?"
            } else {
                ""
            };
            format!(
                "the verifier rejected program {program} ({io_error}){hint}; its last lines:\n    {}",
                tail.join("\n    ")
            )
        }
        other => format!("program {program}: {other}"),
    }
}

/// A load error, told apart: refused in front of the kernel (seccomp), or the kernel's own.
fn refused_or_object(source: aya::EbpfError) -> LoadError {
    if !crate::bpf_sys::bpf_refused_before_the_kernel() {
        return LoadError::Object(source);
    }
    let filter = if crate::procfs::own_seccomp_mode() == Some(2) {
        "seccomp filter (Seccomp: 2 in /proc/self/status)"
    } else {
        "security module or seccomp filter"
    };
    LoadError::Refused { source, filter }
}

impl Probes {
    /// Loads the kernel object with offsets from the running kernel and attaches every hook.
    pub(crate) fn load(options: &LoadOptions) -> Result<Self, LoadError> {
        if crate::procfs::kernel_lockdown().as_deref() == Some("confidentiality") {
            return Err(LoadError::Lockdown);
        }
        let path = &options.kernel_btf;
        let btf_bytes = std::fs::read(path).map_err(|source| LoadError::NoBtf {
            path: path.clone(),
            source,
        })?;
        let btf = Btf::parse(&btf_bytes).map_err(|source| LoadError::BadBtf {
            path: path.clone(),
            source,
        })?;
        let offsets = KernelOffsets::from_btf(&btf)?;
        drop((btf, btf_bytes));
        let aya_btf = aya::Btf::parse_file(path, aya::Endianness::default())
            .map_err(|e| LoadError::Object(e.into()))?;

        let exit_has_group_dead = u32::from(offsets.exit_has_group_dead);
        // Wake the reader when an eighth of the ring is pending; below that it drains on its
        // own timer (see collector::CollectorConfig::drain_interval).
        let wakeup_bytes = u64::from(options.ring_buffer_bytes / 8);
        let max_syscall_entries_per_process = u64::from(options.max_syscall_entries_per_process);
        let fork_syscalls = fork_syscalls();
        let mut loader = EbpfLoader::new();
        loader
            // aya has no type for task-local storage (`SYSCALL_STARTS`); only the programs use it.
            .allow_unsupported_maps()
            .btf(Some(&aya_btf))
            .override_global(globals::AGENT_TGID, &options.agent_tgid, true)
            .override_global(globals::EXIT_HAS_GROUP_DEAD, &exit_has_group_dead, true)
            .override_global(globals::WAKEUP_BYTES, &wakeup_bytes, true)
            .override_global(
                globals::MAX_SYSCALL_ENTRIES_PER_PROCESS,
                &max_syscall_entries_per_process,
                true,
            )
            .override_global(globals::FORK_SYSCALLS, &fork_syscalls, true)
            .map_max_entries(maps::TASKS, options.max_tasks)
            .map_max_entries(maps::SYSCALL_ENTRY_COUNTS, options.max_tasks)
            .map_max_entries(maps::SYSCALLS, options.max_syscall_entries)
            .map_max_entries(maps::SYSCALL_ERRNOS, options.max_syscall_entries / 4)
            .map_max_entries(
                maps::WORKLOAD_SYSCALLS,
                options.max_workload_syscall_entries,
            )
            .map_max_entries(maps::IO_STARTS, options.max_io_requests)
            .map_max_entries(maps::EVENTS, options.ring_buffer_bytes);
        for (name, value) in &offsets.globals {
            loader.override_global(name, value, true);
        }
        let ebpf = loader.load(PROBES_OBJECT).map_err(refused_or_object)?;
        let mut probes = Probes {
            maps: maps_of(&ebpf),
            ebpf,
            hooks: Vec::with_capacity(HOOKS.len()),
            degraded: Vec::new(),
            links: Vec::with_capacity(HOOKS.len()),
            thresholds: options.thresholds,
            syscalls_timed_since_ns: 0,
            switches_recorded: options.record_switches,
            custom_program_error: None,
        };
        probes
            .set_thresholds(options.thresholds)
            .map_err(LoadError::Object)?;
        for hook in HOOKS {
            if fallback_not_needed(&probes.hooks, hook) {
                continue;
            }
            let (mut status, link) =
                attach(&mut probes.ebpf, hook, &aya_btf, options.force_raw_tp)?;
            if status.attach_type.is_none() && hook.required {
                return Err(LoadError::Required {
                    tracepoint: hook.tracepoint,
                    group: hook.group,
                    errors: status.errors,
                });
            }
            status.enabled = true;
            probes.hooks.push(status);
            probes.links.push(link);
        }
        probes.note_what_attached();
        for group in ProbeGroup::ALL {
            if !group.enabled_unless(&options.disabled_groups) {
                probes
                    .set_group_enabled(group, false)
                    .map_err(|reason| LoadError::Toggle { group, reason })?;
            }
        }
        // Written before the attach (the programs must not see zero thresholds), untimed while
        // `sys_enter` was not yet attached; now with the hooks as they are.
        probes
            .set_thresholds(options.thresholds)
            .map_err(LoadError::Object)?;
        Ok(probes)
    }

    /// Once every hook was tried: which fallbacks stand in, what is degraded.
    fn note_what_attached(&mut self) {
        mark_replaced(&mut self.hooks);
        let kernel = crate::procfs::parse_kernel_version(&crate::procfs::kernel_release());
        self.degraded = coverage::degradations(&self.hooks, kernel);
    }

    fn load_custom_program(&mut self) -> Result<(), String> {
        let program: &mut UProbe = self
            .ebpf
            .program_mut(CUSTOM_PROGRAM)
            .ok_or_else(|| {
                format!("the program {CUSTOM_PROGRAM} is missing from the kernel object")
            })?
            .try_into()
            .map_err(|e: ProgramError| describe_program_error(CUSTOM_PROGRAM, &e))?;
        program
            .load()
            .map_err(|e| describe_program_error(CUSTOM_PROGRAM, &e))
    }

    /// The uprobe program of custom metrics, loaded at the first call (nothing is loaded for
    /// them until a custom metric is defined), or why it cannot be.
    pub(crate) fn custom_program(&mut self) -> Result<std::os::fd::BorrowedFd<'_>, String> {
        if let Some(error) = &self.custom_program_error {
            return Err(error.clone());
        }
        let loaded = self
            .ebpf
            .program(CUSTOM_PROGRAM)
            .is_some_and(|p| p.fd().is_ok());
        if !loaded {
            if let Err(error) = self.load_custom_program() {
                self.custom_program_error = Some(error.clone());
                return Err(error);
            }
        }
        let program = self
            .ebpf
            .program(CUSTOM_PROGRAM)
            .ok_or_else(|| format!("the program {CUSTOM_PROGRAM} is missing"))?;
        program
            .fd()
            .map(|fd| fd.as_fd())
            .map_err(|e| describe_program_error(CUSTOM_PROGRAM, &e))
    }

    /// Writes the reporting thresholds the programs read on every event. Syscalls are timed
    /// exactly while `sys_enter` is attached, whatever `thresholds` says.
    pub(crate) fn set_thresholds(&mut self, thresholds: Thresholds) -> Result<(), aya::EbpfError> {
        self.thresholds = thresholds;
        self.write_thresholds(self.syscall_starts_attached())
    }

    /// Whether `sys_enter` is attached: it records the starts that time a syscall.
    fn syscall_starts_attached(&self) -> bool {
        self.hooks
            .iter()
            .any(|h| h.group == ProbeGroup::SyscallLatency && h.enabled && h.attach_type.is_some())
    }

    /// Starts or stops sending every context switch to userspace (the switch recorder).
    pub(crate) fn set_switch_recording(&mut self, on: bool) -> Result<(), aya::EbpfError> {
        self.switches_recorded = on;
        self.write_thresholds(self.syscall_starts_attached())
    }

    /// Whether every context switch goes to userspace now.
    pub(crate) fn switch_recording(&self) -> bool {
        self.switches_recorded
    }

    /// Writes the thresholds, with syscalls timed (while `timed`) from when `sys_enter` was
    /// attached: the starts it left before a detach are stale.
    fn write_thresholds(&mut self, timed: bool) -> Result<(), aya::EbpfError> {
        if !timed {
            self.syscalls_timed_since_ns = 0;
        } else if self.syscalls_timed_since_ns == 0 {
            self.syscalls_timed_since_ns = clock::monotonic_ns();
        }
        let thresholds = Thresholds {
            timed_since_ns: self.syscalls_timed_since_ns,
            record_switches: u64::from(self.switches_recorded),
            ..self.thresholds
        };
        let map = self
            .ebpf
            .map_mut(maps::THRESHOLDS)
            .ok_or(aya::EbpfError::MapError(aya::maps::MapError::InvalidName {
                name: maps::THRESHOLDS.into(),
            }))?;
        let mut array: aya::maps::Array<_, Thresholds> = aya::maps::Array::try_from(map)?;
        array.set(0, thresholds, 0)?;
        Ok(())
    }

    /// Attaches or detaches every hook of `group`, leaving the others as they are. Returns
    /// whether anything changed.
    pub(crate) fn set_group_enabled(
        &mut self,
        group: ProbeGroup,
        enabled: bool,
    ) -> Result<bool, String> {
        if !group.can_be_disabled() {
            return Err(format!(
                "the {group:?} probes cannot be switched off: the task model needs them"
            ));
        }
        // Timing follows `sys_enter`: off before it is detached, on once it is attached again,
        // so that no exit looks for a start that cannot come (one without is counted untimed).
        let thresholds_error = |e: aya::EbpfError| format!("cannot write the thresholds: {e}");
        if group == ProbeGroup::SyscallLatency && !enabled {
            self.write_thresholds(false).map_err(thresholds_error)?;
        }
        let mut changed = false;
        for (index, status) in self.hooks.iter_mut().enumerate() {
            if status.group != group || status.enabled == enabled {
                continue;
            }
            let Some(attach_type) = status.attach_type else {
                // Never attached on this kernel: nothing to switch.
                status.enabled = enabled;
                continue;
            };
            let program_name = match attach_type {
                AttachType::TpBtf => status.btf_program,
                AttachType::RawTp => status.raw_program,
            };
            let program = self
                .ebpf
                .program_mut(program_name)
                .ok_or_else(|| format!("program {program_name} is missing"))?;
            let link = &mut self.links[index];
            match (enabled, attach_type) {
                (false, AttachType::TpBtf) => {
                    let p: &mut BtfTracePoint = program.try_into().map_err(|e| format!("{e}"))?;
                    if let Some(HookLink::Btf(id)) = link.take() {
                        p.detach(id)
                            .map_err(|e| format!("detach {program_name}: {e}"))?;
                    }
                }
                (false, AttachType::RawTp) => {
                    let p: &mut RawTracePoint = program.try_into().map_err(|e| format!("{e}"))?;
                    if let Some(HookLink::Raw(id)) = link.take() {
                        p.detach(id)
                            .map_err(|e| format!("detach {program_name}: {e}"))?;
                    }
                }
                (true, AttachType::TpBtf) => {
                    let p: &mut BtfTracePoint = program.try_into().map_err(|e| format!("{e}"))?;
                    let id = p
                        .attach()
                        .map_err(|e| format!("attach {program_name}: {e}"))?;
                    *link = Some(HookLink::Btf(id));
                }
                (true, AttachType::RawTp) => {
                    let p: &mut RawTracePoint = program.try_into().map_err(|e| format!("{e}"))?;
                    let id = p
                        .attach(status.tracepoint)
                        .map_err(|e| format!("attach {program_name}: {e}"))?;
                    *link = Some(HookLink::Raw(id));
                }
            }
            status.enabled = enabled;
            changed = true;
        }
        if group == ProbeGroup::SyscallLatency {
            self.write_thresholds(self.syscall_starts_attached())
                .map_err(thresholds_error)?;
        }
        Ok(changed)
    }
}

/// Kernel run statistics of one attached program.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ProgramStats {
    /// Runs, counted only while BPF statistics are enabled.
    pub(crate) run_cnt: u64,
    /// Time spent running, likewise.
    pub(crate) run_time_ns: u64,
    /// Times the kernel skipped the program because it was already running on that CPU.
    pub(crate) recursion_misses: u64,
}

impl Probes {
    /// The kernel maps and the memory the kernel charges for each now, largest first.
    pub(crate) fn map_memory(&self) -> Vec<MapMemory> {
        let mut maps: Vec<MapMemory> = self
            .maps
            .iter()
            .map(|m| MapMemory {
                bytes: crate::procfs::fdinfo_field(m.fd, "memlock").unwrap_or(m.bytes),
                ..m.clone()
            })
            .collect();
        maps.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.name.cmp(&b.name)));
        maps
    }

    /// Run statistics of every attached program, by program name.
    pub(crate) fn program_stats(&self) -> Vec<(&'static str, ProgramStats)> {
        self.hooks
            .iter()
            .filter_map(|hook| {
                let name = match hook.attach_type? {
                    AttachType::TpBtf => hook.btf_program,
                    AttachType::RawTp => hook.raw_program,
                };
                Some((name, prog_stats(self.ebpf.program(name)?)?))
            })
            .collect()
    }
}

/// Keeps the kernel's BPF run statistics on while it lives (`BPF_ENABLE_STATS`): they cost
/// about 20 ns per program run, so they are on only when asked for.
#[derive(Debug)]
pub(crate) struct BpfStatsGuard {
    /// Statistics stay on while this fd is open.
    _enabled: std::os::fd::OwnedFd,
}

impl BpfStatsGuard {
    /// Turns the statistics on (`BPF_ENABLE_STATS`); they go off when the guard is dropped.
    pub(crate) fn enable() -> std::io::Result<Self> {
        let enabled = aya::sys::enable_stats(aya::sys::Stats::RunTime).map_err(|e| e.io_error)?;
        Ok(BpfStatsGuard { _enabled: enabled })
    }
}

/// Run statistics of one loaded program: aya's for run time and count, one raw call for the
/// recursion misses aya does not expose.
fn prog_stats(program: &aya::programs::Program) -> Option<ProgramStats> {
    let info = program.info().ok()?;
    let fd = program.fd().ok()?;
    Some(ProgramStats {
        run_cnt: info.run_count(),
        run_time_ns: u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX),
        recursion_misses: crate::bpf_sys::recursion_misses(fd.as_fd()).ok()?,
    })
}

fn attach(
    ebpf: &mut Ebpf,
    hook: &Hook,
    btf: &aya::Btf,
    force_raw_tp: bool,
) -> Result<(HookStatus, Option<HookLink>), LoadError> {
    let mut errors = Vec::new();
    if !force_raw_tp {
        let program = ebpf
            .program_mut(hook.btf_program)
            .ok_or(LoadError::MissingProgram {
                program: hook.btf_program,
            })?;
        let attached = <&mut BtfTracePoint>::try_from(program)
            .map_err(|e| format!("program {}: {e}", hook.btf_program))
            .and_then(|p| {
                p.load(hook.tracepoint, btf)
                    .map_err(|e| describe_program_error(hook.btf_program, &e))?;
                p.attach()
                    .map_err(|e| format!("tp_btf attach to {}: {e}", hook.tracepoint))
            });
        match attached {
            Ok(id) => {
                return Ok((
                    HookStatus {
                        attach_type: Some(AttachType::TpBtf),
                        errors,
                        ..HookStatus::new(hook)
                    },
                    Some(HookLink::Btf(id)),
                ))
            }
            Err(e) => errors.push(e),
        }
    }
    let program = ebpf
        .program_mut(hook.raw_program)
        .ok_or(LoadError::MissingProgram {
            program: hook.raw_program,
        })?;
    let attached = <&mut RawTracePoint>::try_from(program)
        .map_err(|e| format!("program {}: {e}", hook.raw_program))
        .and_then(|p| {
            p.load()
                .map_err(|e| describe_program_error(hook.raw_program, &e))?;
            p.attach(hook.tracepoint)
                .map_err(|e| format!("raw_tp attach to {}: {e}", hook.tracepoint))
        });
    let (attach_type, link) = match attached {
        Ok(id) => (Some(AttachType::RawTp), Some(HookLink::Raw(id))),
        Err(e) => {
            errors.push(e);
            (None, None)
        }
    };
    Ok((
        HookStatus {
            attach_type,
            errors,
            ..HookStatus::new(hook)
        },
        link,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verifier_rejection_names_the_program_and_shows_the_log_tail() {
        let log: String = (1..=30).map(|i| format!("line {i}\n")).collect();
        let err = ProgramError::LoadError {
            io_error: std::io::Error::from_raw_os_error(libc::EACCES),
            verifier_log: aya_obj::VerifierLog::new(log),
        };
        let text = describe_program_error("ts_switch_btf", &err);
        println!("{text}");
        assert!(text.starts_with("the verifier rejected program ts_switch_btf"));
        assert!(text.contains("line 30"));
        assert!(text.contains("line 19"));
        assert!(!text.contains("line 18\n"));
    }

    #[test]
    fn the_object_matches_the_contract() {
        let object = aya_obj::Object::parse(PROBES_OBJECT).expect("kernel object");
        let mut declared = Vec::new();
        for hook in HOOKS {
            declared.extend([hook.btf_program, hook.raw_program]);
        }
        declared.push(CUSTOM_PROGRAM);
        for name in &declared {
            assert!(object.programs.contains_key(*name), "{name} missing");
        }
        for name in object.programs.keys() {
            assert!(
                declared.contains(&name.as_str()),
                "program {name} is in no hook of taskscope_common::contract::HOOKS"
            );
        }
        for name in [
            maps::EVENTS,
            maps::TASKS,
            maps::CPUS,
            maps::SYSCALLS,
            maps::WORKLOAD_SYSCALLS,
            maps::SYSCALL_ERRNOS,
            maps::SYSCALL_STARTS,
            maps::SYSCALL_ENTRY_COUNTS,
            maps::IO_STARTS,
            maps::PROCESS_IO,
            maps::DEVICE_IO,
            maps::LOSSES,
            maps::THRESHOLDS,
            maps::CUSTOM_STATS,
            maps::CUSTOM_STARTS,
        ] {
            assert!(object.maps.contains_key(name), "map {name} missing");
        }
        for name in [
            globals::AGENT_TGID,
            globals::EXIT_HAS_GROUP_DEAD,
            globals::WAKEUP_BYTES,
            globals::MAX_SYSCALL_ENTRIES_PER_PROCESS,
            globals::FORK_SYSCALLS,
        ] {
            // A symbol of the ELF string table: the name, NUL-terminated.
            let symbol = format!("\0{name}\0");
            assert!(
                PROBES_OBJECT
                    .windows(symbol.len())
                    .any(|w| w == symbol.as_bytes()),
                "global {name} missing"
            );
        }
    }
}
