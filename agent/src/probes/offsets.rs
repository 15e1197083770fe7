//! Kernel struct offsets the programs need, taken from the running kernel's BTF at start-up.

use super::btf::{Btf, BtfError};

/// Every offset the kernel programs read through, by the name of the global it sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KernelOffsets {
    /// (global name, value) pairs, in a fixed order.
    pub(crate) globals: Vec<(&'static str, u32)>,
    /// Whether `sched_process_exit` passes `group_dead` (Linux 6.16+).
    pub(crate) exit_has_group_dead: bool,
}

/// (global, struct, member) for every offset of a direct member.
const MEMBERS: &[(&str, &str, &str)] = &[
    ("OFF_TASK_NVCSW", "task_struct", "nvcsw"),
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
    ("OFF_RQ_START_TIME_NS", "request", "start_time_ns"),
    ("OFF_RQ_BIO", "request", "bio"),
    ("OFF_BIO_BDEV", "bio", "bi_bdev"),
    ("OFF_RQ_Q", "request", "q"),
    ("OFF_Q_DISK", "request_queue", "disk"),
    ("OFF_DISK_PART0", "gendisk", "part0"),
    ("OFF_BDEV_DEV", "block_device", "bd_dev"),
    ("OFF_TASK_CGROUPS", "task_struct", "cgroups"),
    ("OFF_CSS_SET_DFL_CGRP", "css_set", "dfl_cgrp"),
    ("OFF_CGROUP_KN", "cgroup", "kn"),
    ("OFF_KERNFS_NODE_ID", "kernfs_node", "id"),
];

/// Where `struct pt_regs` keeps the syscall number on this architecture (the kernel's
/// `syscall_get_nr()`); its low 32 bits are read.
#[cfg(target_arch = "x86_64")]
const PT_REGS_SYSCALL_NR: &str = "orig_ax";
#[cfg(target_arch = "aarch64")]
const PT_REGS_SYSCALL_NR: &str = "syscallno";

/// (global, struct, member, its struct type, member of that): offsets of nested members.
const NESTED: &[(&str, &str, &str, &str, &str)] = &[
    (
        "OFF_TASK_SUM_EXEC_RUNTIME",
        "task_struct",
        "se",
        "sched_entity",
        "sum_exec_runtime",
    ),
    (
        "OFF_TASK_RUN_DELAY",
        "task_struct",
        "sched_info",
        "sched_info",
        "run_delay",
    ),
];

/// Members older kernels lack, with the release that added each: named in the error there.
const ADDED_IN: &[(&str, &str, &str)] = &[
    ("task_struct", "start_boottime", "5.5"),
    ("bio", "bi_bdev", "5.12"),
    ("request_queue", "disk", "5.15"),
];

/// Why the offsets could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum OffsetsError {
    #[error(transparent)]
    Btf(#[from] BtfError),
    #[error("this kernel lacks {what}, which Linux {since} added; taskscope needs Linux {}.{} or newer (or a distribution kernel with it backported; docs/install.md#kernels)", taskscope_common::contract::MIN_KERNEL.0, taskscope_common::contract::MIN_KERNEL.1)]
    Missing { what: String, since: &'static str },
    #[error("task_struct.{second} is not right after task_struct.{first} (at {first_at} and {second_at}); this kernel layout is not supported")]
    NotAdjacent {
        first: &'static str,
        second: &'static str,
        first_at: u32,
        second_at: u32,
    },
}

/// A BTF error, or the kernel feature it shows missing and the release that added it.
fn explain(err: BtfError) -> OffsetsError {
    match &err {
        BtfError::NoMember { strukt, member } => ADDED_IN
            .iter()
            .find(|(s, m, _)| s == strukt && m == member)
            .map_or(OffsetsError::Btf(err.clone()), |(s, m, since)| {
                OffsetsError::Missing {
                    what: format!("{s}.{m}"),
                    since,
                }
            }),
        BtfError::NoTypedef(name) if name.starts_with("btf_trace_") => OffsetsError::Missing {
            what: format!("tracepoint types in its BTF ({name}), which tp_btf programs need"),
            since: "5.5",
        },
        _ => OffsetsError::Btf(err),
    }
}

/// `sched_switch`'s BTF prototype has `prev_state` (5 parameters with `void *__data`).
fn check_switch_params(params: u32) -> Result<(), OffsetsError> {
    if params >= 5 {
        return Ok(());
    }
    Err(OffsetsError::Missing {
        what: "the prev_state argument of the sched_switch tracepoint".into(),
        since: "5.18",
    })
}

impl KernelOffsets {
    /// The offsets, and the kernel features the programs need that BTF shows (each missing
    /// one named with the release that added it).
    pub(crate) fn from_btf(btf: &Btf) -> Result<Self, OffsetsError> {
        // The BPF ring buffer's own struct: its map type came with it.
        btf.member_offset("bpf_ringbuf", "consumer_pos")
            .map_err(|_| OffsetsError::Missing {
                what: "the BPF ring buffer (BPF_MAP_TYPE_RINGBUF)".into(),
                since: "5.8",
            })?;
        check_switch_params(
            btf.func_typedef_params("btf_trace_sched_switch")
                .map_err(explain)?,
        )?;
        let mut globals = Vec::with_capacity(MEMBERS.len() + NESTED.len() + 1);
        for (global, strukt, member) in MEMBERS {
            globals.push((*global, btf.member_offset(strukt, member).map_err(explain)?));
        }
        globals.push((
            "OFF_PT_REGS_SYSCALL_NR",
            btf.member_offset("pt_regs", PT_REGS_SYSCALL_NR)?,
        ));
        for (global, outer, member, inner, field) in NESTED {
            let offset = btf.member_offset(outer, member)? + btf.member_offset(inner, field)?;
            globals.push((*global, offset));
        }
        // The programs read these pairs with one access each.
        for (first, second, size) in [("pid", "tgid", 4), ("nvcsw", "nivcsw", 8)] {
            let first_at = btf.member_offset("task_struct", first)?;
            let second_at = btf.member_offset("task_struct", second)?;
            if second_at != first_at + size {
                return Err(OffsetsError::NotAdjacent {
                    first,
                    second,
                    first_at,
                    second_at,
                });
            }
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
    fn a_kernel_missing_a_feature_is_told_which_release_added_it() {
        let old_bio = explain(BtfError::NoMember {
            strukt: "bio".into(),
            member: "bi_bdev".into(),
        })
        .to_string();
        println!("{old_bio}");
        assert!(old_bio.starts_with("this kernel lacks bio.bi_bdev, which Linux 5.12 added"));
        assert!(old_bio.contains("Linux 5.18 or newer"));
        let unknown = explain(BtfError::NoMember {
            strukt: "task_struct".into(),
            member: "nvcsw".into(),
        });
        assert!(matches!(unknown, OffsetsError::Btf(_)), "{unknown}");
        let no_tp_btf = explain(BtfError::NoTypedef("btf_trace_sched_switch".into())).to_string();
        assert!(no_tp_btf.contains("which Linux 5.5 added"), "{no_tp_btf}");
        let before_5_18 = check_switch_params(4).unwrap_err().to_string();
        assert!(
            before_5_18.starts_with(
                "this kernel lacks the prev_state argument of the sched_switch tracepoint, which Linux 5.18 added"
            ),
            "{before_5_18}"
        );
        assert!(check_switch_params(5).is_ok());
    }

    #[test]
    fn running_kernel_offsets_are_complete() {
        let data = std::fs::read("/sys/kernel/btf/vmlinux").expect("kernel BTF");
        let offsets = KernelOffsets::from_btf(&Btf::parse(&data).unwrap()).unwrap();
        assert_eq!(offsets.globals.len(), MEMBERS.len() + NESTED.len() + 1);
        println!("{offsets:?}");
    }
}
