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

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::bpf_ktime_get_ns,
    macros::map,
    maps::{HashMap, LruHashMap},
};
use taskscope_common::{
    event_kind, log2_bucket, DeviceIo, DeviceIoKey, IoStart, Loss, ProcessIo, ProcessIoKey,
    SlowIoEvent,
};

use super::kernel::{
    add, arg, count_loss, current_ids, get_or_init, off_bdev_dev, off_bio_bdev, off_disk_part0,
    off_q_disk, off_rq_bio, off_rq_cmd_flags, off_rq_data_len, off_rq_q, off_rq_start_time_ns,
    read, thresholds,
};
use super::ringbuf::{header, send};

/// Requests in flight, keyed by `struct request *`. LRU: a request whose completion is never
/// seen (a driver error path) must not pin an entry forever.
#[map]
static IO_STARTS: LruHashMap<u64, IoStart> = LruHashMap::with_max_entries(16384, 0);

#[map]
pub static PROCESS_IO: HashMap<ProcessIoKey, ProcessIo> = HashMap::with_max_entries(8192, 0);

#[map]
pub static DEVICE_IO: HashMap<DeviceIoKey, DeviceIo> = HashMap::with_max_entries(1024, 0);

/// Sends one slow block request, attributed to the process that issued it, to userspace.
#[inline(always)]
fn report_slow_io(start: &IoStart, bytes: u64, latency_ns: u64) {
    send(SlowIoEvent {
        header: header(event_kind::SLOW_IO, 0, start.tgid),
        dev: start.dev,
        op: start.op,
        bytes,
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
        _pad: 0,
    };
    let flags = if first_only { BPF_NOEXIST as u64 } else { 0 };
    match IO_STARTS.insert(rq, start, flags) {
        Ok(()) => {}
        Err(e) if first_only && e == -EEXIST => return,
        Err(_) => count_loss(Loss::IoStartsMapFull),
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

/// `block_rq_complete(struct request *rq, blk_status_t error, unsigned int nr_bytes)`.
#[inline(always)]
pub fn on_complete(ctx: *const u64) {
    let rq = arg(ctx, 0);
    // SAFETY: the entry is copied out before it is removed.
    let Some(start) = (unsafe { IO_STARTS.get(rq) }).copied() else {
        return;
    };
    let _ = IO_STARTS.remove(rq);
    let latency = unsafe { bpf_ktime_get_ns() }.saturating_sub(start.ts_ns);
    // Requests at least this long (issue to completion) go to userspace one by one.
    if latency >= thresholds().slow_io_ns {
        report_slow_io(&start, arg(ctx, 2) as u32 as u64, latency);
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
