//! Node figures: CPU busy share and idle fragmentation over the latest poll window, memory
//! fragmentation from the buddy allocator's free lists.

use serde::Serialize;
use taskscope_common::{CpuStats, HIST_BUCKETS};

use crate::procfs::ZoneFreeBlocks;

/// Busy and idle time of one CPU up to a read, the current period included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CpuTotals {
    pub(crate) busy_ns: u64,
    pub(crate) idle_ns: u64,
    /// Idle time in closed idle periods, by log2 length bucket.
    pub(crate) idle_ns_by_bucket: [u64; HIST_BUCKETS],
}

impl Default for CpuTotals {
    fn default() -> Self {
        Self {
            busy_ns: 0,
            idle_ns: 0,
            idle_ns_by_bucket: [0; HIST_BUCKETS],
        }
    }
}

impl CpuTotals {
    /// `read_at_ns`: CLOCK_MONOTONIC of the kernel read.
    pub(crate) fn of(cpu: &CpuStats, read_at_ns: u64) -> Self {
        let since = |start: u64| {
            if start == 0 {
                0
            } else {
                read_at_ns.saturating_sub(start)
            }
        };
        CpuTotals {
            busy_ns: cpu.busy_ns + since(cpu.busy_since_ns),
            idle_ns: cpu.idle_ns + since(cpu.idle_since_ns),
            idle_ns_by_bucket: cpu.idle_ns_by_bucket,
        }
    }
}

/// One CPU over a window.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub(crate) struct CpuWindow {
    pub(crate) cpu: usize,
    /// Share of the window the CPU ran something other than its idle task.
    pub(crate) busy_ratio: f64,
    /// Share of the idle time closed in the window that came in periods shorter than the
    /// threshold; `None` when no idle period closed.
    pub(crate) idle_fragmentation_ratio: Option<f64>,
    /// Idle time in periods that closed in the window, and the part in short ones.
    pub(crate) idle_closed_ns: u64,
    pub(crate) idle_short_ns: u64,
}

/// Highest log2 bucket whose periods are all shorter than `threshold_ns`, rounded to the
/// nearest power of two (1 ms counts periods below 2^20 ns = 1.049 ms).
pub(crate) fn short_idle_buckets(threshold_ns: u64) -> usize {
    let log2 = 63 - threshold_ns.max(1).leading_zeros() as usize;
    let nearest = if threshold_ns >= (3u64 << log2) >> 1 {
        log2 + 1
    } else {
        log2
    };
    nearest.min(HIST_BUCKETS - 1)
}

/// Busy share and idle fragmentation per CPU between two reads.
pub(crate) fn cpu_windows(
    before: &[CpuTotals],
    after: &[CpuTotals],
    threshold_ns: u64,
) -> Vec<CpuWindow> {
    let short = short_idle_buckets(threshold_ns);
    before
        .iter()
        .zip(after)
        .enumerate()
        .map(|(cpu, (b, a))| {
            let busy = a.busy_ns.saturating_sub(b.busy_ns) as f64;
            let idle = a.idle_ns.saturating_sub(b.idle_ns) as f64;
            let closed =
                |t: &CpuTotals, upto: usize| -> u64 { t.idle_ns_by_bucket[..=upto].iter().sum() };
            let closed_all =
                closed(a, HIST_BUCKETS - 1).saturating_sub(closed(b, HIST_BUCKETS - 1));
            let closed_short = closed(a, short).saturating_sub(closed(b, short));
            CpuWindow {
                cpu,
                busy_ratio: if busy + idle > 0.0 {
                    busy / (busy + idle)
                } else {
                    0.0
                },
                idle_fragmentation_ratio: (closed_all > 0)
                    .then(|| closed_short as f64 / closed_all as f64),
                idle_closed_ns: closed_all,
                idle_short_ns: closed_short,
            }
        })
        .collect()
}

/// Node-wide idle fragmentation over CPU windows: short idle time over all closed idle time.
pub(crate) fn node_idle_fragmentation(windows: &[CpuWindow]) -> Option<f64> {
    let all: u64 = windows.iter().map(|w| w.idle_closed_ns).sum();
    let short: u64 = windows.iter().map(|w| w.idle_short_ns).sum();
    (all > 0).then(|| short as f64 / all as f64)
}

/// Share of a zone's free memory that cannot serve an allocation of each order: the kernel's
/// unusable free space index (1.0 when nothing is free).
pub(crate) fn memory_fragmentation(zone: &ZoneFreeBlocks) -> Vec<f64> {
    let pages = |from: usize| -> u64 {
        zone.free_blocks
            .iter()
            .enumerate()
            .skip(from)
            .map(|(order, &blocks)| blocks << order)
            .sum()
    };
    let total = pages(0);
    (0..zone.free_blocks.len())
        .map(|order| {
            if total == 0 {
                1.0
            } else {
                1.0 - pages(order) as f64 / total as f64
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_round_to_the_nearest_power_of_two() {
        assert_eq!(short_idle_buckets(1_000_000), 20);
        assert_eq!(short_idle_buckets(1 << 20), 20);
        assert_eq!(short_idle_buckets(100_000), 17);
        assert_eq!(short_idle_buckets(0), 0);
    }

    #[test]
    fn windows_of_busy_and_fragmented_idle() {
        let before = CpuTotals {
            busy_ns: 100,
            ..CpuTotals::default()
        };
        let mut after = before;
        after.busy_ns = 100 + 250;
        after.idle_ns = 750;
        after.idle_ns_by_bucket[10] = 600; // short periods
        after.idle_ns_by_bucket[25] = 150; // long ones
        let w = cpu_windows(&[before], &[after], 1_000_000);
        assert_eq!(w[0].busy_ratio, 0.25);
        assert_eq!(w[0].idle_fragmentation_ratio, Some(0.8));
        let w = cpu_windows(&[before], &[before], 1_000_000);
        assert_eq!(w[0].idle_fragmentation_ratio, None);
    }

    #[test]
    fn fragmentation_of_a_zone() {
        // 4 free single pages and 1 free block of 4 pages: 8 pages free.
        let zone = ZoneFreeBlocks {
            node: 0,
            zone: "Normal".into(),
            free_blocks: vec![4, 0, 1],
        };
        assert_eq!(memory_fragmentation(&zone), vec![0.0, 0.5, 0.5]);
        let empty = ZoneFreeBlocks {
            free_blocks: vec![0, 0],
            ..zone
        };
        assert_eq!(memory_fragmentation(&empty), vec![1.0, 1.0]);
    }
}
