//! Kernel side: shared state (configuration globals, loss counters, scratch) and the hooks.

pub mod blockio;
pub mod custom;
pub mod kernel;
pub mod lifecycle;
pub mod ringbuf;
pub mod sched;
pub mod syscalls;

/// Entry points: a `tp_btf` and a `raw_tp` program per hook, sharing one handler.
macro_rules! hook {
    // A handler that reads task fields directly under tp_btf (`::<true>`) and through
    // bpf_probe_read_kernel under raw_tp (`::<false>`).
    ($tp:literal, $btf_name:ident, $raw_name:ident, $btf_handler:expr, $raw_handler:expr) => {
        #[aya_ebpf::macros::btf_tracepoint(function = $tp)]
        pub fn $btf_name(ctx: aya_ebpf::programs::BtfTracePointContext) -> i32 {
            $btf_handler(aya_ebpf::EbpfContext::as_ptr(&ctx) as *const u64);
            0
        }

        #[aya_ebpf::macros::raw_tracepoint(tracepoint = $tp)]
        pub fn $raw_name(ctx: aya_ebpf::programs::RawTracePointContext) -> i32 {
            // bpf_raw_tracepoint_args is `__u64 args[0]`: the same layout as tp_btf's context.
            $raw_handler(aya_ebpf::EbpfContext::as_ptr(&ctx) as *const u64);
            0
        }
    };
    ($tp:literal, $btf_name:ident, $raw_name:ident, $handler:path) => {
        hook!($tp, $btf_name, $raw_name, $handler, $handler);
    };
}

hook!(
    "sched_switch",
    ts_switch_btf,
    ts_switch_raw,
    sched::on_switch::<true>,
    sched::on_switch::<false>
);
hook!(
    "sched_wakeup",
    ts_wakeup_btf,
    ts_wakeup_raw,
    sched::on_wakeup::<true>,
    sched::on_wakeup::<false>
);
hook!(
    "sched_wakeup_new",
    ts_wakeup_new_btf,
    ts_wakeup_new_raw,
    sched::on_wakeup::<true>,
    sched::on_wakeup::<false>
);
hook!(
    "sched_process_fork",
    ts_fork_btf,
    ts_fork_raw,
    lifecycle::on_fork
);
hook!(
    "sched_process_exec",
    ts_exec_btf,
    ts_exec_raw,
    lifecycle::on_exec
);
hook!(
    "sched_process_exit",
    ts_exit_btf,
    ts_exit_raw,
    lifecycle::on_exit
);
hook!(
    "cgroup_attach_task",
    ts_cgroup_move_btf,
    ts_cgroup_move_raw,
    lifecycle::on_cgroup_move
);
hook!(
    "sys_enter",
    ts_sys_enter_btf,
    ts_sys_enter_raw,
    syscalls::on_enter
);
hook!(
    "sys_exit",
    ts_sys_exit_btf,
    ts_sys_exit_raw,
    syscalls::on_exit
);
hook!(
    "block_io_start",
    ts_io_start_btf,
    ts_io_start_raw,
    blockio::on_start
);
hook!(
    "block_rq_insert",
    ts_io_insert_btf,
    ts_io_insert_raw,
    blockio::on_first_sight
);
hook!(
    "block_rq_issue",
    ts_io_issue_btf,
    ts_io_issue_raw,
    blockio::on_first_sight
);
hook!(
    "block_rq_complete",
    ts_io_done_btf,
    ts_io_done_raw,
    blockio::on_complete
);
