//! Reading the kernel's accumulator maps, and removing the entries of tasks and processes the
//! task model has finished with.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use aya::maps::{HashMap, IterableMap, MapData, PerCpuArray};
use taskscope_common::{
    contract::maps, CpuStats, DeviceIo, DeviceIoKey, ErrnoKey, Loss, ProcessIo, ProcessIoKey,
    SyscallCounts, SyscallKey, SyscallStats, TaskSched, WorkloadSyscallKey, LOSS_KINDS,
};

use crate::{
    clock::monotonic_ns,
    model::intake::{Forget, KernelSnapshot},
    probes::Probes,
};

/// Why the maps could not be taken from the loaded object.
#[derive(Debug, thiserror::Error)]
#[error("kernel map {name}: {source}")]
pub struct MapsError {
    name: &'static str,
    #[source]
    source: aya::maps::MapError,
}

/// Typed handles to the accumulator maps.
pub(crate) struct KernelMaps {
    tasks: HashMap<MapData, u32, TaskSched>,
    syscalls: HashMap<MapData, SyscallKey, SyscallCounts>,
    workload_syscalls: HashMap<MapData, WorkloadSyscallKey, SyscallStats>,
    errnos: HashMap<MapData, ErrnoKey, u64>,
    syscall_entry_counts: HashMap<MapData, u32, u64>,
    process_io: HashMap<MapData, ProcessIoKey, ProcessIo>,
    device_io: HashMap<MapData, DeviceIoKey, DeviceIo>,
    cpus: PerCpuArray<MapData, CpuStats>,
    losses: PerCpuArray<MapData, u64>,
}

fn take<T>(probes: &mut Probes, name: &'static str) -> Result<T, MapsError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = probes.ebpf.take_map(name).ok_or(MapsError {
        name,
        source: aya::maps::MapError::InvalidName {
            name: name.to_string(),
        },
    })?;
    T::try_from(map).map_err(|source| MapsError { name, source })
}

/// Every entry of a hash map: in batches where the kernel can (one syscall per few thousand
/// entries), else one entry at a time (two syscalls per entry).
fn collect<K: aya::Pod, V: aya::Pod>(
    map: &HashMap<MapData, K, V>,
    errors: &mut u64,
) -> Vec<(K, V)> {
    if let Ok(entries) = lookup_batch(map.map().fd().as_fd()) {
        return entries;
    }
    map.iter()
        .filter_map(|entry| entry.map_err(|_| *errors += 1).ok())
        .collect()
}

/// `bpf_attr` for the `BPF_MAP_*_BATCH` commands (`include/uapi/linux/bpf.h`).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// Reads a whole hash map with `BPF_MAP_LOOKUP_BATCH` (Linux 5.6). Entries inserted or removed
/// meanwhile may or may not be seen, as with one-at-a-time iteration.
fn lookup_batch<K: aya::Pod, V: aya::Pod>(fd: BorrowedFd<'_>) -> std::io::Result<Vec<(K, V)>> {
    const CHUNK: usize = 4096;
    let mut keys: Vec<K> = Vec::with_capacity(CHUNK);
    let mut values: Vec<V> = Vec::with_capacity(CHUNK);
    let mut out = Vec::new();
    // The hash map's batch token is a bucket index (u32); 8 bytes leave room.
    let mut token_in = 0u64;
    let mut token_out = 0u64;
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { &raw mut token_in as u64 },
            out_batch: &raw mut token_out as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: CHUNK as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        // SAFETY: the attr points at buffers of CHUNK keys and values of the map's own key and
        // value types (aya checked their sizes against the map's when it typed it), and at
        // two 8-byte tokens; the kernel writes at most `count` entries.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &raw mut attr,
                std::mem::size_of::<BatchAttr>(),
            )
        };
        let err = (ret < 0).then(std::io::Error::last_os_error);
        let done = match &err {
            None => false,
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
            Some(e) => return Err(std::io::Error::new(e.kind(), e.to_string())),
        };
        let filled = (attr.count as usize).min(CHUNK);
        // SAFETY: the kernel initialised the first `filled` entries of both buffers.
        unsafe {
            keys.set_len(filled);
            values.set_len(filled);
        }
        out.extend(keys.drain(..).zip(values.drain(..)));
        if done {
            return Ok(out);
        }
        token_in = token_out;
        first = false;
    }
}

impl KernelMaps {
    pub(crate) fn take(probes: &mut Probes) -> Result<Self, MapsError> {
        Ok(Self {
            tasks: take(probes, maps::TASKS)?,
            syscalls: take(probes, maps::SYSCALLS)?,
            workload_syscalls: take(probes, maps::WORKLOAD_SYSCALLS)?,
            errnos: take(probes, maps::SYSCALL_ERRNOS)?,
            syscall_entry_counts: take(probes, maps::SYSCALL_ENTRY_COUNTS)?,
            process_io: take(probes, maps::PROCESS_IO)?,
            device_io: take(probes, maps::DEVICE_IO)?,
            cpus: take(probes, maps::CPUS)?,
            losses: take(probes, maps::LOSSES)?,
        })
    }

    /// Reads every accumulator map.
    pub(crate) fn read(&self) -> KernelSnapshot {
        let mut errors = 0;
        let taken_at_ns = monotonic_ns();
        let cpus = match self.cpus.get(&0, 0) {
            Ok(values) => values.iter().copied().collect(),
            Err(_) => {
                errors += 1;
                Vec::new()
            }
        };
        let mut losses = [0; LOSS_KINDS as usize];
        for loss in Loss::ALL {
            match self.losses.get(&(loss as u32), 0) {
                Ok(values) => losses[loss as usize] = values.iter().sum(),
                Err(_) => errors += 1,
            }
        }
        KernelSnapshot {
            taken_at_ns,
            tasks: collect(&self.tasks, &mut errors),
            syscalls: collect(&self.syscalls, &mut errors),
            workload_syscalls: collect(&self.workload_syscalls, &mut errors),
            errnos: collect(&self.errnos, &mut errors),
            process_io: collect(&self.process_io, &mut errors),
            device_io: collect(&self.device_io, &mut errors),
            cpus,
            losses,
            read_errors: errors,
        }
    }

    /// Removes what the model has finished with.
    pub(crate) fn forget(&mut self, forget: &Forget) {
        // A missing entry is fine: a task may never have been scheduled while attached.
        for (tid, tgid) in &forget.tids {
            // The tid may already belong to a new task (the kernel resets entries at fork).
            if self.tasks.get(tid, 0).is_ok_and(|task| task.tgid != *tgid) {
                continue;
            }
            let _ = self.tasks.remove(tid);
        }
        for key in &forget.syscalls {
            let _ = self.syscalls.remove(key);
        }
        for key in &forget.workload_syscalls {
            let _ = self.workload_syscalls.remove(key);
        }
        for key in &forget.errnos {
            let _ = self.errnos.remove(key);
        }
        for tgid in &forget.processes {
            let _ = self.syscall_entry_counts.remove(tgid);
        }
        for key in &forget.process_io {
            let _ = self.process_io.remove(key);
        }
    }
}
