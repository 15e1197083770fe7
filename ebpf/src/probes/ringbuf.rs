//! The ring buffer: the one way events reach userspace. Every event is reserved, filled and
//! submitted by [`send_with`] (or [`send`]), which counts a full buffer as a loss.

use core::mem::MaybeUninit;

use aya_ebpf::{
    helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns},
    macros::map,
    maps::RingBuf,
    Global,
};
use taskscope_common::{EventHeader, Loss};

use super::kernel::count_loss;

/// Lifecycle and over-threshold events. Its size is set by the loader. Private: every event
/// goes through [`send_with`].
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

/// Pending bytes from which a submit wakes the reader (set by the loader to a fraction of the
/// ring). Below it the reader is not woken: it drains on its own timer. A wakeup is an
/// irq_work self-IPI, which costs microseconds (far more in a VM) on the submitting task.
#[unsafe(no_mangle)]
static WAKEUP_BYTES: Global<u64> = Global::new(0);

/// `BPF_RB_NO_WAKEUP`, `BPF_RB_FORCE_WAKEUP`, `BPF_RB_AVAIL_DATA` (uapi/linux/bpf.h).
const RB_NO_WAKEUP: u64 = 1;
const RB_FORCE_WAKEUP: u64 = 2;
const RB_AVAIL_DATA: u64 = 0;

/// Flags for submitting an event: wake the reader only when enough is pending.
#[inline(always)]
fn submit_flags() -> u64 {
    if EVENTS.query(RB_AVAIL_DATA) >= WAKEUP_BYTES.load() {
        RB_FORCE_WAKEUP
    } else {
        RB_NO_WAKEUP
    }
}

/// The header of an event of `kind` about task `pid` of process `tgid`, seen now on this CPU.
#[inline(always)]
pub fn header(kind: u32, pid: u32, tgid: u32) -> EventHeader {
    EventHeader {
        kind,
        cpu: unsafe { bpf_get_smp_processor_id() },
        ts_ns: unsafe { bpf_ktime_get_ns() },
        pid,
        tgid,
    }
}

/// Reserves an entry for a `T`, lets `fill` write all of it in place (for events larger than
/// the BPF stack), and submits it; a full buffer is counted as [`Loss::RingBufFull`].
#[inline(always)]
pub fn send_with<T: 'static>(fill: impl FnOnce(&mut MaybeUninit<T>)) {
    let Some(mut entry) = EVENTS.reserve::<T>(0) else {
        count_loss(Loss::RingBufFull);
        return;
    };
    fill(&mut entry);
    entry.submit(submit_flags());
}

/// Sends a small event built on the stack.
#[inline(always)]
pub fn send<T: 'static>(event: T) {
    send_with(|entry: &mut MaybeUninit<T>| {
        entry.write(event);
    });
}
