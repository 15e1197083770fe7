//! The raw `bpf(2)` calls the agent makes itself (OS access): everything else goes through
//! aya's typed API. aya's `ProgramInfo` gives run time and run count, not `recursion_misses`
//! (runs the kernel skipped because the program was already running on that CPU: events the
//! program never saw, so they are counted as losses). And a call that tells a seccomp filter's
//! refusal from the kernel's own.

use std::os::fd::{AsRawFd, BorrowedFd};

/// `BPF_OBJ_GET_INFO_BY_FD` (uapi/linux/bpf.h).
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
/// Offset of `recursion_misses` in `struct bpf_prog_info` (UAPI, append-only: stable; 5.12+).
const RECURSION_MISSES_AT: usize = 208;

/// `recursion_misses` of the loaded program behind `fd`.
pub(crate) fn recursion_misses(fd: BorrowedFd<'_>) -> std::io::Result<u64> {
    let mut info = [0u8; RECURSION_MISSES_AT + 8];
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let attr = InfoAttr {
        bpf_fd: fd.as_raw_fd() as u32,
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

#[cfg(test)]
mod tests {
    #[test]
    fn bpf_is_not_refused_here() {
        // The test machine runs no seccomp filter on bpf(2).
        assert!(!super::bpf_refused_before_the_kernel());
    }
}
