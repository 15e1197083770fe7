//! Kernel struct offsets the programs need, taken from the running kernel's BTF at start-up.

use super::btf::{Btf, BtfError};

/// Every offset the kernel programs read through, by the name of the global it sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelOffsets {
    /// (global name, value) pairs, in a fixed order.
    pub globals: Vec<(&'static str, u32)>,
    /// Whether `sched_process_exit` passes `group_dead` (Linux 6.16+).
    pub exit_has_group_dead: bool,
}

/// (global, struct, member) for every offset.
const MEMBERS: &[(&str, &str, &str)] = &[
    ("OFF_TASK_PID", "task_struct", "pid"),
    ("OFF_TASK_EXIT_CODE", "task_struct", "exit_code"),
    ("OFF_TASK_START_BOOTTIME", "task_struct", "start_boottime"),
    ("OFF_TASK_SIGNAL", "task_struct", "signal"),
    ("OFF_SIGNAL_LIVE", "signal_struct", "live"),
    ("OFF_TASK_MM", "task_struct", "mm"),
    ("OFF_MM_ARG_START", "mm_struct", "arg_start"),
    ("OFF_MM_ARG_END", "mm_struct", "arg_end"),
    ("OFF_BPRM_FILENAME", "linux_binprm", "filename"),
    ("OFF_RQ_CMD_FLAGS", "request", "cmd_flags"),
    ("OFF_RQ_DATA_LEN", "request", "__data_len"),
    ("OFF_RQ_BIO", "request", "bio"),
    ("OFF_BIO_BDEV", "bio", "bi_bdev"),
    ("OFF_RQ_Q", "request", "q"),
    ("OFF_Q_DISK", "request_queue", "disk"),
    ("OFF_DISK_PART0", "gendisk", "part0"),
    ("OFF_BDEV_DEV", "block_device", "bd_dev"),
];

/// Why the offsets could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum OffsetsError {
    #[error(transparent)]
    Btf(#[from] BtfError),
    #[error("task_struct.tgid is not right after task_struct.pid (pid at {pid}, tgid at {tgid}); this kernel layout is not supported")]
    PidTgidNotAdjacent { pid: u32, tgid: u32 },
}

impl KernelOffsets {
    pub fn from_btf(btf: &Btf) -> Result<Self, OffsetsError> {
        let mut globals = Vec::with_capacity(MEMBERS.len());
        for (global, strukt, member) in MEMBERS {
            globals.push((*global, btf.member_offset(strukt, member)?));
        }
        let pid = btf.member_offset("task_struct", "pid")?;
        let tgid = btf.member_offset("task_struct", "tgid")?;
        if tgid != pid + 4 {
            return Err(OffsetsError::PidTgidNotAdjacent { pid, tgid });
        }
        // The typedef's first parameter is the tracepoint's `void *__data`.
        let exit_params = btf.func_typedef_params("btf_trace_sched_process_exit")?;
        Ok(Self {
            globals,
            exit_has_group_dead: exit_params >= 3,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_kernel_offsets_are_complete() {
        let data = std::fs::read("/sys/kernel/btf/vmlinux").expect("kernel BTF");
        let offsets = KernelOffsets::from_btf(&Btf::parse(&data).unwrap()).unwrap();
        assert_eq!(offsets.globals.len(), MEMBERS.len());
        println!("{offsets:?}");
    }
}
