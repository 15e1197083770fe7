//! The userspace half of the ring-buffer contract: records decoded into typed events.
//!
//! A record is an [`EventHeader`] followed by its payload; the header's `kind` says which. The
//! bytes come from the kernel, so every length is checked and nothing here can panic.

use core::mem::size_of;
use std::{boxed::Box, string::String, vec::Vec};

use crate::{
    event_kind, CgroupMoveEvent, EventHeader, ExecEvent, ExitEvent, ForkEvent, SlowIoEvent,
    SlowRunqueueWaitEvent, SlowSyscallEvent, SwitchEvent, TaskCounters, ARGS_LEN, FILENAME_LEN,
};

/// A decoded lifecycle or over-threshold event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Fork(ForkEvent),
    Exec(Box<Exec>),
    Exit(ExitEvent),
    SlowSyscall(SlowSyscallEvent),
    SlowRunqueueWait(SlowRunqueueWaitEvent),
    SlowIo(SlowIoEvent),
    Switch(SwitchEvent),
    CgroupMove(CgroupMoveEvent),
}

/// An exec with its strings extracted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exec {
    pub header: EventHeader,
    pub old_pid: u32,
    pub uid: u32,
    pub cgroup_id: u64,
    pub comm: String,
    pub filename: String,
    pub args: Vec<String>,
    pub args_truncated: bool,
    /// The exec'ing thread's counters at the exec.
    pub sched_at_exec: TaskCounters,
}

impl Event {
    /// The event's kind (one of [`event_kind`]).
    pub fn kind(&self) -> u32 {
        match self {
            Event::Fork(_) => event_kind::FORK,
            Event::Exec(_) => event_kind::EXEC,
            Event::Exit(_) => event_kind::EXIT,
            Event::SlowSyscall(_) => event_kind::SLOW_SYSCALL,
            Event::SlowRunqueueWait(_) => event_kind::SLOW_RUNQUEUE_WAIT,
            Event::SlowIo(_) => event_kind::SLOW_IO,
            Event::Switch(_) => event_kind::SWITCH,
            Event::CgroupMove(_) => event_kind::CGROUP_MOVE,
        }
    }

    /// The kind's stable name (metrics' `kind` label, logs).
    pub fn name(&self) -> &'static str {
        event_kind::name(self.kind()).unwrap_or("unknown")
    }
}

/// Why a record could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The record is shorter than the layout its kind names.
    Short {
        what: &'static str,
        len: usize,
        needed: usize,
    },
    /// The header names no known kind.
    UnknownKind(u32),
}

impl core::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            DecodeError::Short { what, len, needed } => write!(
                f,
                "record of {len} bytes is shorter than its {needed}-byte {what}"
            ),
            DecodeError::UnknownKind(kind) => write!(f, "unknown event kind {kind}"),
        }
    }
}

impl std::error::Error for DecodeError {}

impl DecodeError {
    /// Stable label for counting decode errors.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::Short { .. } => "short_record",
            DecodeError::UnknownKind(_) => "unknown_kind",
        }
    }
}

/// Reads a `T` from the start of `bytes`, which must be long enough.
fn read<T: Copy>(bytes: &[u8], what: &'static str) -> Result<T, DecodeError> {
    if bytes.len() < size_of::<T>() {
        return Err(DecodeError::Short {
            what,
            len: bytes.len(),
            needed: size_of::<T>(),
        });
    }
    // SAFETY: length checked above; T is a repr(C) integer-only type from taskscope-common
    // (every bit pattern valid) and read_unaligned needs no alignment.
    Ok(unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// A NUL-terminated (or full-length) kernel string as lossy UTF-8.
pub fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(bytes.get(..end).unwrap_or(bytes)).into_owned()
}

/// Splits a NUL-separated argument vector (as in `/proc/<pid>/cmdline`).
pub fn split_args(bytes: &[u8]) -> Vec<String> {
    let bytes = bytes.strip_suffix(&[0]).unwrap_or(bytes);
    if bytes.is_empty() {
        return Vec::new();
    }
    bytes
        .split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// Decodes one ring-buffer record.
pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
    let header: EventHeader = read(bytes, "event header")?;
    match header.kind {
        event_kind::FORK => Ok(Event::Fork(read(bytes, "fork event")?)),
        event_kind::EXIT => Ok(Event::Exit(read(bytes, "exit event")?)),
        event_kind::SLOW_SYSCALL => Ok(Event::SlowSyscall(read(bytes, "slow syscall event")?)),
        event_kind::SLOW_RUNQUEUE_WAIT => Ok(Event::SlowRunqueueWait(read(
            bytes,
            "slow run-queue event",
        )?)),
        event_kind::SLOW_IO => Ok(Event::SlowIo(read(bytes, "slow IO event")?)),
        event_kind::SWITCH => Ok(Event::Switch(read(bytes, "switch event")?)),
        event_kind::CGROUP_MOVE => Ok(Event::CgroupMove(read(bytes, "cgroup move event")?)),
        event_kind::EXEC => {
            let raw: ExecEvent = read(bytes, "exec event")?;
            let filename_len = (raw.filename_len as usize).min(FILENAME_LEN);
            let args_len = (raw.args_len as usize).min(ARGS_LEN);
            Ok(Event::Exec(Box::new(Exec {
                header: raw.header,
                old_pid: raw.old_pid,
                uid: raw.uid,
                cgroup_id: raw.cgroup_id,
                comm: c_string(&raw.comm),
                filename: c_string(&raw.filename[..filename_len]),
                args: split_args(&raw.args[..args_len]),
                args_truncated: raw.args_truncated != 0,
                sched_at_exec: raw.counters,
            })))
        }
        other => Err(DecodeError::UnknownKind(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::COMM_LEN;
    use std::vec;

    fn bytes_of<T: Copy>(value: &T) -> Vec<u8> {
        // SAFETY: T is a padding-free repr(C) type.
        unsafe { core::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }
            .to_vec()
    }

    fn header(kind: u32) -> EventHeader {
        EventHeader {
            kind,
            cpu: 1,
            ts_ns: 42,
            pid: 100,
            tgid: 99,
        }
    }

    fn comm(s: &str) -> [u8; COMM_LEN] {
        let mut c = [0; COMM_LEN];
        c[..s.len()].copy_from_slice(s.as_bytes());
        c
    }

    #[test]
    fn round_trips_every_event_kind() {
        let fork = ForkEvent {
            header: header(event_kind::FORK),
            parent_pid: 7,
            parent_tgid: 7,
            is_thread: 0,
            uid: 1000,
            start_boottime_ns: 123,
            cgroup_id: 9,
            comm: comm("sh"),
        };
        assert_eq!(decode(&bytes_of(&fork)), Ok(Event::Fork(fork)));

        let exit = ExitEvent {
            header: header(event_kind::EXIT),
            exit_code: 3 << 8,
            group_dead: 1,
            start_boottime_ns: 5,
            comm: comm("false"),
        };
        assert_eq!(decode(&bytes_of(&exit)), Ok(Event::Exit(exit)));

        let slow = SlowSyscallEvent {
            header: header(event_kind::SLOW_SYSCALL),
            nr: 35,
            _pad: 0,
            ret: -4,
            duration_ns: 1_000_000,
        };
        assert_eq!(decode(&bytes_of(&slow)), Ok(Event::SlowSyscall(slow)));

        let moved = CgroupMoveEvent {
            header: header(event_kind::CGROUP_MOVE),
            whole_process: 1,
            _pad: 0,
            cgroup_id: 4242,
            counters: TaskCounters {
                on_cpu_ns: 1,
                runqueue_wait_ns: 2,
                voluntary_switches: 3,
                involuntary_switches: 4,
            },
        };
        assert_eq!(decode(&bytes_of(&moved)), Ok(Event::CgroupMove(moved)));

        let mut exec = ExecEvent {
            header: header(event_kind::EXEC),
            old_pid: 100,
            uid: 0,
            cgroup_id: 77,
            filename_len: 7,
            args_len: 12,
            args_truncated: 0,
            _pad: 0,
            counters: TaskCounters::default(),
            comm: comm("ls"),
            filename: [0; FILENAME_LEN],
            args: [0; ARGS_LEN],
        };
        exec.filename[..7].copy_from_slice(b"/bin/ls");
        exec.args[..12].copy_from_slice(b"ls\0-l\0/tmp\0\0");
        let Ok(Event::Exec(decoded)) = decode(&bytes_of(&exec)) else {
            panic!("exec did not decode");
        };
        assert_eq!(decoded.filename, "/bin/ls");
        assert_eq!(decoded.args, vec!["ls", "-l", "/tmp", ""]);
        assert_eq!(decoded.comm, "ls");
        assert_eq!(decoded.cgroup_id, 77);
    }

    #[test]
    fn rejects_short_and_unknown_records() {
        assert!(matches!(decode(&[0; 3]), Err(DecodeError::Short { .. })));
        let fork_header = bytes_of(&header(event_kind::FORK));
        assert!(matches!(
            decode(&fork_header),
            Err(DecodeError::Short {
                what: "fork event",
                ..
            })
        ));
        assert_eq!(
            decode(&bytes_of(&header(99))),
            Err(DecodeError::UnknownKind(99))
        );
    }

    #[test]
    fn lengths_from_the_kernel_are_clamped() {
        let mut exec = ExecEvent {
            header: header(event_kind::EXEC),
            old_pid: 1,
            uid: 0,
            cgroup_id: 0,
            filename_len: u32::MAX,
            args_len: u32::MAX,
            args_truncated: 1,
            _pad: 0,
            counters: TaskCounters::default(),
            comm: [b'x'; COMM_LEN],
            filename: [b'a'; FILENAME_LEN],
            args: [b'b'; ARGS_LEN],
        };
        exec.args[0] = b'b';
        let Ok(Event::Exec(decoded)) = decode(&bytes_of(&exec)) else {
            panic!("exec did not decode");
        };
        assert_eq!(decoded.filename.len(), FILENAME_LEN);
        assert_eq!(decoded.comm.len(), COMM_LEN);
        assert!(decoded.args_truncated);
    }
}
