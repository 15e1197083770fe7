//! Block IO: bytes, requests and latency per issuing process and per device, by operation.
//!
//! A request is attributed when it starts (`block_io_start`, in the submitter's context), not at
//! completion, which runs in interrupt context on behalf of nobody in particular.
//!
//! Kernels before 6.5 have no `block_io_start`. There the start is the first of
//! `block_rq_insert` (into the scheduler or a dispatch list, from the submitter's plug) and
//! `block_rq_issue` (to the driver: directly from the submitter when nothing queues it; from a
//! kblockd worker only after an insert already claimed the request). A request seen again
//! (requeued, or inserted then issued) keeps its first start.
//!
//! A request whose start was not kept (the LRU map evicted it, or the insert failed) is found
//! out when it completes: its latency is lost, and counted (`io_starts_map/map_full`).

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::bpf_ktime_get_ns,
    macros::map,
    maps::{Array, HashMap, LruHashMap},
};
use taskscope_common::{
    block_op, event_kind, log2_bucket, DeviceIo, DeviceIoKey, IoStart, Loss, ProcessIo,
    ProcessIoKey, SlowIoEvent,
};

use super::kernel::{
    add, arg, count_loss, current_ids, get_or_init, off_bdev_dev, off_bio_bdev, off_disk_part0,
    off_q_disk, off_rq_bio, off_rq_cmd_flags, off_rq_data_len, off_rq_q, off_rq_start_time_ns,
    read, thresholds,
};
use super::ringbuf::{header, send};

/// Requests in flight, keyed by `struct request *` (sized by the agent, `--max-io-requests`).
/// LRU: a request that never completes (merged into another, or lost on a driver's error path)
/// must not pin an entry forever.
#[map]
static IO_STARTS: LruHashMap<u64, IoStart> = LruHashMap::with_max_entries(16384, 0);

/// How starts are seen: [`SINCE`], when a start hook first ran (ns since boot): a request the
/// kernel stamped after it has had its start seen, so a completion that finds no start is a
/// start the map did not keep; [`BY_FIRST_SIGHT`], 1 when starts come from insert or issue.
#[map]
static IO_STARTS_SEEN: Array<u64> = Array::with_max_entries(2, 0);
const SINCE: u32 = 0;
const BY_FIRST_SIGHT: u32 = 1;

#[map]
pub static PROCESS_IO: HashMap<ProcessIoKey, ProcessIo> = HashMap::with_max_entries(8192, 0);

#[map]
pub static DEVICE_IO: HashMap<DeviceIoKey, DeviceIo> = HashMap::with_max_entries(1024, 0);

/// Sends one slow block request, attributed to the process that issued it, to userspace.
#[inline(always)]
fn report_slow_io(start: &IoStart, latency_ns: u64) {
    send(SlowIoEvent {
        header: header(event_kind::SLOW_IO, 0, start.tgid),
        dev: start.dev,
        op: start.op,
        bytes: start.bytes as u64,
        latency_ns,
    });
}

/// `REQ_OP_MASK`: the operation is the low 8 bits of `cmd_flags`.
const REQ_OP_MASK: u32 = 0xff;

/// The block device (partition) a request is for. `rq->part` is set only after the
/// `block_io_start` tracepoint, so take it where the kernel will: the first bio's `bi_bdev`, or
/// the disk's whole-device `part0` for a request without a bio (a flush).
#[inline(always)]
fn request_bdev(rq: u64) -> u64 {
    if let Some(bio) = read::<u64>(rq, off_rq_bio()).filter(|&b| b != 0) {
        return read::<u64>(bio, off_bio_bdev()).unwrap_or(0);
    }
    let queue = read::<u64>(rq, off_rq_q()).unwrap_or(0);
    let disk = read::<u64>(queue, off_q_disk()).unwrap_or(0);
    read::<u64>(disk, off_disk_part0()).unwrap_or(0)
}

/// `block_io_start(struct request *rq)`.
#[inline(always)]
pub fn on_start(ctx: *const u64) {
    start_request(arg(ctx, 0), false);
}

/// `block_rq_insert(struct request *rq)` and `block_rq_issue(struct request *rq)` (5.11+), on
/// kernels without `block_io_start`: whichever sees a request first starts it.
#[inline(always)]
pub fn on_first_sight(ctx: *const u64) {
    start_request(arg(ctx, 0), true);
}

/// `-EEXIST`, from a `BPF_NOEXIST` insert of a key that is there.
const EEXIST: i32 = 17;

/// Records the start of request `rq` and charges its bytes to the current process. With
/// `first_only`, a request already started is left as it is.
#[inline(always)]
fn start_request(rq: u64, first_only: bool) {
    let (_, tgid) = current_ids();
    let op = read::<u32>(rq, off_rq_cmd_flags()).unwrap_or(0) & REQ_OP_MASK;
    let bytes = read::<u32>(rq, off_rq_data_len()).unwrap_or(0) as u64;
    let dev = read::<u32>(request_bdev(rq), off_bdev_dev()).unwrap_or(0);
    let now = unsafe { bpf_ktime_get_ns() };
    // Before 6.5 the kernel stamps a request when it allocates it (`start_time_ns`, with IO
    // statistics on), the start /proc/diskstats measures from, and insert or issue come later
    // (the request may wait in the submitter's plug). `block_io_start` is that moment itself,
    // and fires before newer kernels stamp the request: there the field is still the last
    // user's.
    let allocated = if first_only {
        read::<u64>(rq, off_rq_start_time_ns()).unwrap_or(0)
    } else {
        0
    };
    let start = IoStart {
        ts_ns: if allocated != 0 && allocated <= now {
            allocated
        } else {
            now
        },
        tgid,
        dev,
        op,
        bytes: bytes as u32,
    };
    if let Some(since) = IO_STARTS_SEEN.get_ptr_mut(SINCE) {
        // SAFETY: an entry of the array; racing first starts write near-equal times.
        unsafe {
            if *since == 0 {
                *since = now;
                if let Some(by_first_sight) = IO_STARTS_SEEN.get_ptr_mut(BY_FIRST_SIGHT) {
                    *by_first_sight = u64::from(first_only);
                }
            }
        }
    }
    let flags = if first_only { BPF_NOEXIST as u64 } else { 0 };
    if let Err(e) = IO_STARTS.insert(rq, start, flags) {
        // Any other failure is counted when the request completes without its start.
        if first_only && e == -EEXIST {
            // Seen before, unless the entry is a previous user's of this `struct request`
            // that never completed (it was merged away): started before this one was made.
            // SAFETY: the entry is copied out.
            let earlier = unsafe { IO_STARTS.get(rq) }.map_or(0, |s| s.ts_ns);
            if allocated == 0 || earlier >= allocated {
                return;
            }
            let _ = IO_STARTS.insert(rq, start, 0);
        }
    }
    let key = ProcessIoKey {
        tgid,
        op,
        dev,
        _pad: 0,
    };
    if let Some(io) = get_or_init(&PROCESS_IO, &key, Loss::ProcessIoMapFull) {
        let io = unsafe { &mut *io };
        add(&mut io.bytes, bytes);
        add(&mut io.requests, 1);
    }
    let key = DeviceIoKey { dev, op };
    if let Some(io) = get_or_init(&DEVICE_IO, &key, Loss::DeviceIoMapFull) {
        let io = unsafe { &mut *io };
        add(&mut io.bytes, bytes);
        add(&mut io.requests, 1);
    }
}

/// A request in flight when the start hook first ran completes within the block layer's
/// timeout (30 s by default); one the kernel did not stamp is judged after twice that.
const UNSTAMPED_GRACE_NS: u64 = 60_000_000_000;
/// Margin after the first start for a request the hook attached as it started.
const STAMPED_GRACE_NS: u64 = 1_000_000;

/// Whether request `rq` (of `bytes`), completing with no start kept, must have been started
/// under the hooks: then its start was evicted (or not inserted) and its latency is lost.
#[inline(always)]
fn start_was_lost(rq: u64, bytes: u32, now: u64) -> bool {
    let op = read::<u32>(rq, off_rq_cmd_flags()).unwrap_or(0) & REQ_OP_MASK;
    // The flush machinery's own flushes and passthrough commands have no `block_io_start`.
    if op == block_op::FLUSH || op >= block_op::DRV_IN {
        return false;
    }
    // Nor, before it, is a request without data always inserted or issued: an empty
    // preflush write is ended by the flush machinery once its flush is done.
    if bytes == 0 && IO_STARTS_SEEN.get(BY_FIRST_SIGHT).copied().unwrap_or(0) != 0 {
        return false;
    }
    let since = IO_STARTS_SEEN.get(SINCE).copied().unwrap_or(0);
    if since == 0 {
        return false;
    }
    // Set at allocation or at the start itself, with IO statistics on (otherwise 0, or the
    // previous user's, which is earlier still).
    match read::<u64>(rq, off_rq_start_time_ns()).unwrap_or(0) {
        0 => now > since.saturating_add(UNSTAMPED_GRACE_NS),
        stamped => stamped > since.saturating_add(STAMPED_GRACE_NS),
    }
}

/// `block_rq_complete(struct request *rq, blk_status_t error, unsigned int nr_bytes)`: fires
/// for each part a driver completes; the request ends with the part that covers the rest.
#[inline(always)]
pub fn on_complete(ctx: *const u64) {
    let rq = arg(ctx, 0);
    let remaining = read::<u32>(rq, off_rq_data_len()).unwrap_or(0);
    if (arg(ctx, 2) as u32) < remaining {
        return;
    }
    // SAFETY: the entry is copied out before it is removed.
    let Some(start) = (unsafe { IO_STARTS.get(rq) }).copied() else {
        if start_was_lost(rq, remaining, unsafe { bpf_ktime_get_ns() }) {
            count_loss(Loss::IoStartsMapFull);
        }
        return;
    };
    let _ = IO_STARTS.remove(rq);
    let latency = unsafe { bpf_ktime_get_ns() }.saturating_sub(start.ts_ns);
    // Requests at least this long (issue to completion) go to userspace one by one.
    if latency >= thresholds().slow_io_ns {
        report_slow_io(&start, latency);
    }
    let key = DeviceIoKey {
        dev: start.dev,
        op: start.op,
    };
    if let Some(io) = DEVICE_IO.get_ptr_mut(key) {
        let io = unsafe { &mut *io };
        add(&mut io.total_latency_ns, latency);
        if let Some(slot) = io.latency_hist.get_mut(log2_bucket(latency)) {
            add(slot, 1);
        }
    }
    let key = ProcessIoKey {
        tgid: start.tgid,
        op: start.op,
        dev: start.dev,
        _pad: 0,
    };
    if let Some(io) = PROCESS_IO.get_ptr_mut(key) {
        let io = unsafe { &mut *io };
        add(&mut io.total_latency_ns, latency);
        if let Some(slot) = io.latency_hist.get_mut(log2_bucket(latency)) {
            add(slot, 1);
        }
    }
}
