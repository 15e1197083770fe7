//! Log2 histograms as the kernel programs keep them (`[u64; HIST_BUCKETS]`, bucket `i` counting
//! values below 2^i ns; see `taskscope_common::log2_bucket`): the arithmetic every layer above
//! uses, written once. The exporters fold them into their own bounds
//! (`exporters::families::export_buckets`, `--histogram-buckets`).

use serde::Serialize;
use taskscope_common::{bucket_upper_bound_ns, HIST_BUCKETS};

/// A kernel log2 histogram.
pub(crate) type Log2Hist = [u64; HIST_BUCKETS];

/// Adds `from` into `into`, bucket by bucket.
pub(crate) fn add(into: &mut Log2Hist, from: &Log2Hist) {
    for (a, b) in into.iter_mut().zip(from) {
        *a += b;
    }
}

/// `now` less `before` (nothing when absent), bucket by bucket, never below zero: what was
/// added between two reads of the same histogram.
pub(crate) fn delta(now: &Log2Hist, before: Option<&Log2Hist>) -> Log2Hist {
    std::array::from_fn(|i| now[i].saturating_sub(before.map_or(0, |b| b[i])))
}

/// The upper bound of the bucket holding quantile `q` (ns); `None` when empty.
pub(crate) fn quantile_ns(hist: &Log2Hist, q: f64) -> Option<u64> {
    let total: u64 = hist.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = (q * total as f64).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, count) in hist.iter().enumerate() {
        seen += count;
        if seen >= rank {
            return Some(bucket_upper_bound_ns(i));
        }
    }
    Some(u64::MAX)
}

/// One non-empty bucket, as the JSON API shows it.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub(crate) struct Bucket {
    /// Exclusive upper bound; `null` for the last (unbounded) bucket.
    pub(crate) below_ns: Option<u64>,
    pub(crate) count: u64,
}

/// Exclusive upper bound of bucket `index`; `None` for the open-ended last one.
pub(crate) fn below_ns(index: usize) -> Option<u64> {
    Some(bucket_upper_bound_ns(index)).filter(|&b| b != u64::MAX)
}

/// The non-empty buckets.
pub(crate) fn buckets(hist: &Log2Hist) -> Vec<Bucket> {
    hist.iter()
        .enumerate()
        .filter(|(_, &count)| count > 0)
        .map(|(i, &count)| Bucket {
            below_ns: below_ns(i),
            count,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles() {
        let mut h = [0u64; HIST_BUCKETS];
        assert_eq!(quantile_ns(&h, 0.99), None);
        h[10] = 99; // [512, 1024) ns
        h[20] = 1; // [512 Ki, 1 Mi) ns
        assert_eq!(quantile_ns(&h, 0.99), Some(bucket_upper_bound_ns(10)));
        assert_eq!(quantile_ns(&h, 1.0), Some(bucket_upper_bound_ns(20)));
    }

    #[test]
    fn add_and_delta_are_inverse_and_delta_never_negative() {
        let mut a = [0u64; HIST_BUCKETS];
        a[3] = 5;
        let mut b = [0u64; HIST_BUCKETS];
        b[3] = 2;
        b[4] = 7;
        let mut sum = a;
        add(&mut sum, &b);
        assert_eq!(delta(&sum, Some(&b)), a);
        assert_eq!(delta(&a, None), a);
        assert_eq!(delta(&a, Some(&b))[4], 0);
    }

    #[test]
    fn only_non_empty_buckets_are_listed() {
        let mut hist = [0; HIST_BUCKETS];
        hist[0] = 1;
        hist[11] = 4;
        hist[HIST_BUCKETS - 1] = 2;
        assert_eq!(
            buckets(&hist),
            vec![
                Bucket {
                    below_ns: Some(1),
                    count: 1
                },
                Bucket {
                    below_ns: Some(2048),
                    count: 4
                },
                Bucket {
                    below_ns: None,
                    count: 2
                },
            ]
        );
    }
}
