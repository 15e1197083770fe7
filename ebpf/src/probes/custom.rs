//! Custom metrics: one uprobe program for every point an operator names (a USDT probe, a
//! function's entry or return). The attachment's cookie says which metric it is and whether
//! it counts, starts a latency or ends one (see `taskscope_common::custom`).
//!
//! A latency's start is kept per thread (`CUSTOM_STARTS`); its end on the same thread
//! measures it. The entry is deleted when no latency is in progress on the thread any more,
//! or when the thread exits ([`forget_thread`]), so the table holds threads inside a timed
//! region, nothing else.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_attach_cookie, bpf_get_current_cgroup_id, bpf_ktime_get_ns},
    macros::{map, uprobe},
    maps::HashMap,
    programs::ProbeContext,
    EbpfContext,
};
use taskscope_common::{custom, log2_bucket, CustomKey, CustomStarts, CustomStat, Loss};

use super::kernel::{add, agent_tgid, count_loss, current_ids, get_or_init};

/// Per (process, metric); sized by the agent.
#[map]
static CUSTOM_STATS: HashMap<CustomKey, CustomStat> = HashMap::with_max_entries(8192, 0);

/// Per thread inside a timed region; sized by the agent.
#[map]
static CUSTOM_STARTS: HashMap<u32, CustomStarts> = HashMap::with_max_entries(8192, 0);

#[uprobe]
pub fn ts_custom(ctx: ProbeContext) -> u32 {
    // SAFETY: the helper reads the cookie of the link this run came through.
    let cookie = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    on_hit(cookie);
    0
}

#[inline(always)]
fn on_hit(cookie: u64) {
    let (pid, tgid) = current_ids();
    if tgid == agent_tgid() {
        return;
    }
    let metric = (cookie >> custom::COOKIE_METRIC_SHIFT) as u32;
    if metric >= custom::MAX_METRICS {
        return;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    if cookie & custom::COOKIE_LATENCY == 0 {
        record(tgid, metric, None);
    } else if cookie & custom::COOKIE_END == 0 {
        start(pid, metric, now);
    } else {
        end(pid, tgid, metric, now);
    }
}

/// Keeps `now` as metric `metric`'s start on thread `pid` (a nested start replaces it).
#[inline(always)]
fn start(pid: u32, metric: u32, now: u64) {
    let starts = match CUSTOM_STARTS.get_ptr_mut(pid) {
        Some(starts) => starts,
        None => {
            let mut fresh = CustomStarts::default();
            if let Some(slot) = fresh.ts_ns.get_mut(metric as usize) {
                *slot = now;
            }
            if let Err(err) = CUSTOM_STARTS.insert(pid, fresh, BPF_NOEXIST as u64) {
                // -EEXIST: the thread's entry appeared meanwhile (it cannot: a thread runs
                // on one CPU); anything else is a full table.
                if err != -17 {
                    count_loss(Loss::CustomStartsMapFull);
                }
            }
            return;
        }
    };
    // SAFETY: the thread's own entry; only this thread writes it.
    if let Some(slot) = unsafe { &mut *starts }.ts_ns.get_mut(metric as usize) {
        *slot = now;
    }
}

/// Measures metric `metric` on thread `pid` from its start, if it has one.
#[inline(always)]
fn end(pid: u32, tgid: u32, metric: u32, now: u64) {
    let Some(starts) = CUSTOM_STARTS.get_ptr_mut(pid) else {
        count_loss(Loss::CustomEndWithoutStart);
        return;
    };
    // SAFETY: the thread's own entry; only this thread writes it (and its exit deletes it).
    let starts = unsafe { &mut *starts };
    let Some(slot) = starts.ts_ns.get_mut(metric as usize) else {
        return;
    };
    let started = *slot;
    if started == 0 {
        count_loss(Loss::CustomEndWithoutStart);
        return;
    }
    *slot = 0;
    record(tgid, metric, Some(now.saturating_sub(started)));
    if starts.ts_ns.iter().all(|&ts| ts == 0) {
        let _ = CUSTOM_STARTS.remove(pid);
    }
}

/// Counts one occurrence of `metric` in process `tgid`, with its latency if it has one.
#[inline(always)]
fn record(tgid: u32, metric: u32, latency_ns: Option<u64>) {
    let key = CustomKey {
        tgid,
        metric,
        // SAFETY: a helper without arguments.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
    };
    let Some(stat) = get_or_init(&CUSTOM_STATS, &key, Loss::CustomStatsMapFull) else {
        return;
    };
    // SAFETY: a live map value; shared between CPUs, hence the atomic adds.
    let stat = unsafe { &mut *stat };
    add(&mut stat.count, 1);
    if let Some(latency) = latency_ns {
        add(&mut stat.total_ns, latency);
        if let Some(slot) = stat.hist.get_mut(log2_bucket(latency)) {
            add(slot, 1);
        }
    }
}

/// Drops the custom latencies in progress on exiting thread `pid`.
#[inline(always)]
pub fn forget_thread(pid: u32) {
    let _ = CUSTOM_STARTS.remove(pid);
}
