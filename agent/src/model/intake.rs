//! What the task model takes in from the kernel maps, and what it gives back to forget.
//!
//! The poller (collector layer) fills a [`KernelSnapshot`] from the maps and removes what a
//! [`Forget`] lists; the model only sees these plain values.

use taskscope_common::{
    CpuStats, DeviceIo, DeviceIoKey, ErrnoKey, ProcessIo, ProcessIoKey, SyscallKey, SyscallStats,
    TaskSched, LOSS_KINDS,
};

/// Everything the kernel has accumulated, read in one pass.
#[derive(Debug, Clone, Default)]
pub struct KernelSnapshot {
    /// CLOCK_MONOTONIC when the read started (the kernel programs' clock).
    pub taken_at_ns: u64,
    pub tasks: Vec<(u32, TaskSched)>,
    pub syscalls: Vec<(SyscallKey, SyscallStats)>,
    pub errnos: Vec<(ErrnoKey, u64)>,
    pub process_io: Vec<(ProcessIoKey, ProcessIo)>,
    pub device_io: Vec<(DeviceIoKey, DeviceIo)>,
    /// One entry per possible CPU.
    pub cpus: Vec<CpuStats>,
    /// Lost data per [`taskscope_common::Loss`], summed over CPUs.
    pub losses: [u64; LOSS_KINDS as usize],
    /// Entries that could not be read (they vanished mid-iteration, usually).
    pub read_errors: u64,
}

/// Map entries the task model no longer needs.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Forget {
    /// Exited threads (tid, tgid): their `TASKS` and `SYSCALL_STARTS` entries.
    pub tids: Vec<(u32, u32)>,
    /// Entries of exited processes.
    pub syscalls: Vec<SyscallKey>,
    pub errnos: Vec<ErrnoKey>,
    pub process_io: Vec<ProcessIoKey>,
}
