//! The raw `bpf(2)` calls the agent makes itself (OS access): everything else goes through
//! aya's typed API. aya's `ProgramInfo` gives run time and run count, not `recursion_misses`
//! (runs the kernel skipped because the program was already running on that CPU: events the
//! program never saw, so they are counted as losses). And a call that tells a seccomp filter's
//! refusal from the kernel's own. And uprobes with a USDT semaphore: aya's `UProbe` cannot
//! pass the kernel a reference counter (`ref_ctr_offset`), so [`attach_uprobe`] opens the
//! perf event and creates the link itself.

use std::{
    ffi::CString,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    path::Path,
};

/// `BPF_OBJ_GET_INFO_BY_FD` (uapi/linux/bpf.h).
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
/// Offset of `recursion_misses` in `struct bpf_prog_info` (UAPI, append-only: stable; 5.12+).
const RECURSION_MISSES_AT: usize = 208;

/// `BPF_OBJ_GET_INFO_BY_FD` of the BPF object behind `fd` into `info` (the kernel writes at
/// most its length).
fn object_info(fd: i32, info: &mut [u8]) -> std::io::Result<()> {
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let attr = InfoAttr {
        bpf_fd: fd as u32,
        info_len: info.len() as u32,
        info: info.as_mut_ptr() as u64,
    };
    // SAFETY: attr and the info buffer outlive the call; the kernel writes at most info_len.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &attr as *const InfoAttr,
            std::mem::size_of::<InfoAttr>(),
        )
    };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// `recursion_misses` of the loaded program behind `fd`.
pub(crate) fn recursion_misses(fd: BorrowedFd<'_>) -> std::io::Result<u64> {
    let mut info = [0u8; RECURSION_MISSES_AT + 8];
    object_info(fd.as_raw_fd(), &mut info)?;
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&info[RECURSION_MISSES_AT..]);
    Ok(u64::from_ne_bytes(bytes))
}

/// A `bpf(2)` command no kernel knows: the kernel itself answers EINVAL to it, whatever the
/// caller's capabilities.
const UNKNOWN_BPF_COMMAND: libc::c_long = 0xffff;

/// True when something in front of the kernel refuses `bpf(2)` outright: a seccomp filter (a
/// container runtime's default profile refuses it without CAP_SYS_ADMIN) or a security module.
/// The kernel answers an unknown command with EINVAL; a filter answers EPERM (or ENOSYS) before
/// the kernel sees the command.
pub(crate) fn bpf_refused_before_the_kernel() -> bool {
    // SAFETY: no pointer is passed (size 0); the kernel reads nothing.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            UNKNOWN_BPF_COMMAND,
            std::ptr::null::<u8>(),
            0,
        )
    };
    let errno = std::io::Error::last_os_error().raw_os_error();
    ret < 0 && matches!(errno, Some(libc::EPERM) | Some(libc::ENOSYS))
}

/// `BPF_LINK_CREATE` and its attach type for perf events (uapi/linux/bpf.h).
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PERF_EVENT: u32 = 41;
/// The `ref_ctr_offset` field of a uprobe event's `config` (bits 32-63: the kernel's
/// `PERF_UPROBE_REF_CTR_OFFSET_SHIFT`, published in .../uprobe/format/ref_ctr_offset).
const REF_CTR_OFFSET_SHIFT: u32 = 32;
/// `perf_event_open` flag (uapi/linux/perf_event.h).
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 8;
/// The kernel's uprobe PMU (5.x+: no tracefs needed).
const UPROBE_PMU: &str = "/sys/bus/event_source/devices/uprobe";

/// A uprobe attached with a BPF program: both descriptors closed on drop detaches it.
#[derive(Debug)]
pub(crate) struct UprobeLink {
    link: OwnedFd,
    _event: OwnedFd,
}

impl UprobeLink {
    /// The kernel's id of the link (as `bpftool link` lists it).
    pub(crate) fn id(&self) -> Option<u32> {
        link_id(self.link.as_raw_fd())
    }
}

/// Where a uprobe goes and what it tells the program.
#[derive(Debug, Clone, Copy)]
pub(crate) struct UprobeTarget<'a> {
    /// The file, as this process can open it (through `/proc/<pid>/root` for a container's).
    pub(crate) path: &'a Path,
    /// File offset of the instruction.
    pub(crate) offset: u64,
    /// On the function's return instead of at the instruction.
    pub(crate) retprobe: bool,
    /// File offset of a USDT semaphore the kernel raises while the probe is attached (0: none).
    pub(crate) ref_ctr_offset: u64,
    /// What `bpf_get_attach_cookie` returns in the program.
    pub(crate) cookie: u64,
}

/// The number in a PMU's sysfs file (`type`), or the bit of a `config:N` format.
fn pmu_number(file: &str) -> std::io::Result<u32> {
    let text = std::fs::read_to_string(format!("{UPROBE_PMU}/{file}"))?;
    let number = text.trim().trim_start_matches("config:");
    number.parse().map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{UPROBE_PMU}/{file}: {text:?}"),
        )
    })
}

/// Attaches program `prog` at `target` for every process that maps the file (pid -1).
pub(crate) fn attach_uprobe(
    prog: BorrowedFd<'_>,
    target: UprobeTarget<'_>,
) -> std::io::Result<UprobeLink> {
    use std::os::unix::ffi::OsStrExt as _;
    let path = CString::new(target.path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let mut config = target.ref_ctr_offset << REF_CTR_OFFSET_SHIFT;
    if target.retprobe {
        config |= 1 << pmu_number("format/retprobe")?;
    }
    // struct perf_event_attr up to PERF_ATTR_SIZE_VER5 (112 bytes), as u64 words: type and
    // size, config, ..., config1 (uprobe_path) at byte 56, config2 (probe_offset) at 64.
    let mut attr = [0u64; 14];
    attr[0] = u64::from(pmu_number("type")?) | (112 << 32);
    attr[1] = config;
    attr[7] = path.as_ptr() as u64;
    attr[8] = target.offset;
    // SAFETY: attr and the path it points to outlive the call; the kernel reads `size` bytes.
    let event = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            attr.as_ptr(),
            -1 as libc::c_int,
            0 as libc::c_int,
            -1 as libc::c_int,
            PERF_FLAG_FD_CLOEXEC,
        )
    };
    if event < 0 {
        let e = std::io::Error::last_os_error();
        let hint = if matches!(e.raw_os_error(), Some(libc::EACCES | libc::EPERM)) {
            ": uprobe perf events need CAP_SYS_ADMIN (grant it, and start the agent with --uprobes or custom metrics in its config file)"
        } else {
            ""
        };
        return Err(std::io::Error::new(
            e.kind(),
            format!("perf_event_open: {e}{hint}"),
        ));
    }
    // SAFETY: a descriptor the kernel just returned, owned by nothing else.
    let event = unsafe { OwnedFd::from_raw_fd(event as i32) };
    // union bpf_attr, link_create: prog_fd, target_fd, attach_type, flags, perf_event.bpf_cookie.
    #[repr(C)]
    struct LinkCreate {
        prog_fd: u32,
        target_fd: u32,
        attach_type: u32,
        flags: u32,
        bpf_cookie: u64,
        _rest: [u64; 4],
    }
    let attr = LinkCreate {
        prog_fd: prog.as_raw_fd() as u32,
        target_fd: event.as_raw_fd() as u32,
        attach_type: BPF_PERF_EVENT,
        flags: 0,
        bpf_cookie: target.cookie,
        _rest: [0; 4],
    };
    // SAFETY: attr outlives the call; the kernel reads its size.
    let link = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_CREATE,
            &attr as *const LinkCreate,
            std::mem::size_of::<LinkCreate>(),
        )
    };
    if link < 0 {
        let e = std::io::Error::last_os_error();
        return Err(std::io::Error::new(
            e.kind(),
            format!("BPF_LINK_CREATE: {e}"),
        ));
    }
    Ok(UprobeLink {
        // SAFETY: a descriptor the kernel just returned, owned by nothing else.
        link: unsafe { OwnedFd::from_raw_fd(link as i32) },
        _event: event,
    })
}

/// The id of the link behind `fd` (`struct bpf_link_info`: type, then id, both u32).
fn link_id(fd: i32) -> Option<u32> {
    let mut info = [0u8; 128];
    object_info(fd, &mut info).ok()?;
    Some(u32::from_ne_bytes([info[4], info[5], info[6], info[7]]))
}

#[cfg(test)]
mod tests {
    #[test]
    fn bpf_is_not_refused_here() {
        // The test machine runs no seccomp filter on bpf(2).
        assert!(!super::bpf_refused_before_the_kernel());
    }
}
