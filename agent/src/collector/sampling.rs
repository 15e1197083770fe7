//! Which task spans are exported: every span of a trace, or none of it. A trace with a failed
//! process or a slow one is always kept; ordinary traces are kept at `ratio` (decided from the
//! trace id, so every agent decides the same); a rate limit caps spans per second. What is not
//! exported is counted.
//!
//! Children usually end before their parent, so spans wait (bounded) until the trace's root
//! span ends; the decision is then remembered for stragglers (children that outlive it).

use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};

use crate::model::span::TaskSpan;

/// Sampling settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SamplingConfig {
    /// Share of ordinary traces kept, 0.0 to 1.0.
    pub(crate) ratio: f64,
    /// A span at least this long keeps its whole trace.
    pub(crate) slow_span: Duration,
    /// Spans exported per second at most (token bucket, one second of burst); 0: no limit.
    pub(crate) max_per_second: u32,
    /// Spans waiting for their trace's root at most; beyond, the oldest trace is decided now.
    pub(crate) max_pending: usize,
    /// A trace whose root has not ended after this long is decided with what is known.
    pub(crate) max_wait: Duration,
}

/// Spans not exported, by reason.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SamplingCounts {
    pub(crate) sampled_out: u64,
    pub(crate) rate_limited: u64,
}

#[derive(Debug)]
struct Pending {
    first_seen: Instant,
    spans: Vec<TaskSpan>,
}

/// The sampler; owned by the collector.
#[derive(Debug)]
pub(crate) struct Sampler {
    config: SamplingConfig,
    pending: HashMap<u128, Pending>,
    pending_spans: usize,
    /// Decisions of recent traces, for spans that end after their root (bounded, FIFO).
    decided: HashMap<u128, bool>,
    decided_order: VecDeque<u128>,
    tokens: f64,
    refilled: Instant,
    pub(crate) counts: SamplingCounts,
}

const MAX_DECISIONS: usize = 65_536;

/// The first span of its trace on this node: no parent, or a parent elsewhere (TRACEPARENT).
fn is_root(span: &TaskSpan) -> bool {
    span.parent_span_id.is_none() || span.parent_is_remote
}

impl Sampler {
    /// Applies new settings (a reload); the token bucket keeps its level.
    pub(crate) fn set_config(&mut self, config: SamplingConfig) {
        self.config = config;
    }

    pub(crate) fn new(config: SamplingConfig) -> Self {
        Self {
            config,
            pending: HashMap::new(),
            pending_spans: 0,
            decided: HashMap::new(),
            decided_order: VecDeque::new(),
            tokens: f64::from(config.max_per_second),
            refilled: Instant::now(),
            counts: SamplingCounts::default(),
        }
    }

    fn keeps_all(&self) -> bool {
        self.config.ratio >= 1.0
    }

    /// Whether an ordinary trace is kept: its id, as a fraction of the id space, below ratio.
    fn head_sampled(&self, trace_id: u128) -> bool {
        let position = (trace_id >> 64) as f64 / u64::MAX as f64;
        position < self.config.ratio
    }

    fn must_keep(&self, span: &TaskSpan) -> bool {
        span.error || span.duration_ns >= self.config.slow_span.as_nanos() as u64
    }

    /// Takes the spans finished since the last call (in any order) and returns the spans to
    /// export now. Roots go last, so a root retired in the same poll as its children finds
    /// them waiting.
    pub(crate) fn offer_batch(&mut self, mut spans: Vec<TaskSpan>, now: Instant) -> Vec<TaskSpan> {
        spans.sort_by_key(is_root);
        let mut out = Vec::new();
        for span in spans {
            out.extend(self.offer(span, now));
        }
        out.extend(self.expire(now));
        out
    }

    /// Takes a finished span; returns the spans to export now.
    pub(crate) fn offer(&mut self, span: TaskSpan, now: Instant) -> Vec<TaskSpan> {
        let mut out = Vec::new();
        if self.keeps_all() {
            out.push(span);
        } else if let Some(&keep) = self.decided.get(&span.trace_id) {
            // A straggler of a decided trace; a failure still gets its own span out.
            if keep || self.must_keep(&span) {
                out.push(span);
            } else {
                self.counts.sampled_out += 1;
            }
        } else {
            let is_root = is_root(&span);
            let trace_id = span.trace_id;
            let entry = self.pending.entry(trace_id).or_insert_with(|| Pending {
                first_seen: now,
                spans: Vec::new(),
            });
            entry.spans.push(span);
            self.pending_spans += 1;
            if is_root {
                self.decide(trace_id, &mut out);
            }
            while self.pending_spans > self.config.max_pending {
                let Some(oldest) = self
                    .pending
                    .iter()
                    .min_by_key(|(_, p)| p.first_seen)
                    .map(|(id, _)| *id)
                else {
                    break;
                };
                self.decide(oldest, &mut out);
            }
        }
        self.rate_limit(out, now)
    }

    /// Decides traces that waited longer than `max_wait`; returns the spans to export.
    pub(crate) fn expire(&mut self, now: Instant) -> Vec<TaskSpan> {
        let due: Vec<u128> = self
            .pending
            .iter()
            .filter(|(_, p)| now.duration_since(p.first_seen) >= self.config.max_wait)
            .map(|(id, _)| *id)
            .collect();
        let mut out = Vec::new();
        for id in due {
            self.decide(id, &mut out);
        }
        self.rate_limit(out, now)
    }

    fn decide(&mut self, trace_id: u128, out: &mut Vec<TaskSpan>) {
        let Some(pending) = self.pending.remove(&trace_id) else {
            return;
        };
        self.pending_spans -= pending.spans.len();
        let keep = pending.spans.iter().any(|s| self.must_keep(s)) || self.head_sampled(trace_id);
        if keep {
            out.extend(pending.spans);
        } else {
            self.counts.sampled_out += pending.spans.len() as u64;
        }
        self.decided.insert(trace_id, keep);
        self.decided_order.push_back(trace_id);
        while self.decided_order.len() > MAX_DECISIONS {
            if let Some(old) = self.decided_order.pop_front() {
                self.decided.remove(&old);
            }
        }
    }

    fn rate_limit(&mut self, spans: Vec<TaskSpan>, now: Instant) -> Vec<TaskSpan> {
        let limit = f64::from(self.config.max_per_second);
        if limit == 0.0 {
            return spans;
        }
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * limit).min(limit);
        self.refilled = now;
        let mut out = Vec::with_capacity(spans.len());
        for span in spans {
            if self.tokens >= 1.0 {
                self.tokens -= 1.0;
                out.push(span);
            } else {
                self.counts.rate_limited += 1;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{exit::ExitStatus, span::SpanTime};

    fn span(trace_id: u128, span_id: u64, parent: Option<u64>, error: bool) -> TaskSpan {
        TaskSpan {
            trace_id,
            span_id,
            parent_span_id: parent,
            parent_is_remote: false,
            name: "x".into(),
            start_unix_ns: 0,
            end_unix_ns: 1_000,
            duration_ns: 1_000,
            exec_unix_ns: None,
            pid: 1,
            ppid: 0,
            exe: None,
            command_line: Vec::new(),
            uid: None,
            workload: None,
            exit: if error {
                ExitStatus::Exited { code: 1 }
            } else {
                ExitStatus::Exited { code: 0 }
            },
            error,
            status_message: String::new(),
            time: SpanTime::default(),
            slow_syscalls: Vec::new(),
            slow_waits: Vec::new(),
        }
    }

    fn config(ratio: f64) -> SamplingConfig {
        SamplingConfig {
            ratio,
            slow_span: Duration::from_secs(10),
            max_per_second: 0,
            max_pending: 100,
            max_wait: Duration::from_secs(60),
        }
    }

    #[test]
    fn a_failed_child_keeps_its_whole_trace_and_ordinary_ones_go() {
        let mut s = Sampler::new(config(0.0));
        let now = Instant::now();
        // Children end first: they wait for the root.
        assert!(s.offer(span(7 << 64, 2, Some(1), true), now).is_empty());
        assert!(s.offer(span(7 << 64, 3, Some(1), false), now).is_empty());
        let out = s.offer(span(7 << 64, 1, None, false), now);
        assert_eq!(out.len(), 3, "the failed trace, whole");
        // An ordinary trace at ratio 0: counted, not exported.
        assert!(s.offer(span(9 << 64, 5, Some(4), false), now).is_empty());
        assert!(s.offer(span(9 << 64, 4, None, false), now).is_empty());
        assert_eq!(s.counts.sampled_out, 2);
        // A straggler of a dropped trace goes too; a failing one is still exported.
        assert!(s.offer(span(9 << 64, 6, Some(4), false), now).is_empty());
        assert_eq!(s.offer(span(9 << 64, 8, Some(4), true), now).len(), 1);
        assert_eq!(s.counts.sampled_out, 3);
    }

    #[test]
    fn a_root_retired_with_its_children_in_one_batch_is_decided_last() {
        let mut s = Sampler::new(config(0.0));
        let batch = vec![
            span(7 << 64, 1, None, false),
            span(7 << 64, 2, Some(1), false),
            span(7 << 64, 3, Some(1), true),
        ];
        assert_eq!(s.offer_batch(batch, Instant::now()).len(), 3);
    }

    #[test]
    fn head_sampling_keeps_about_the_ratio_and_bounds_hold() {
        let mut s = Sampler::new(config(0.25));
        let now = Instant::now();
        let mut kept = 0;
        for i in 0..4000u128 {
            // Spread ids over the space like the real (hashed) ones.
            let id = (i.wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835)) | 1;
            kept += s.offer(span(id, 1, None, false), now).len();
        }
        assert!((800..1200).contains(&kept), "{kept} of 4000 at 0.25");
        // Roots that never end: pending stays bounded, then expires.
        let mut s = Sampler::new(config(1.0 / 1e9));
        for i in 0..500u128 {
            let _ = s.offer(span((i + 1) << 64, 2, Some(1), true), now);
        }
        assert!(s.pending_spans <= 100);
        let out = s.expire(now + Duration::from_secs(61));
        assert_eq!(s.pending_spans, 0);
        assert!(!out.is_empty());
    }

    #[test]
    fn the_rate_limit_caps_spans_per_second_and_counts_the_rest() {
        let mut s = Sampler::new(SamplingConfig {
            max_per_second: 10,
            ..config(1.0)
        });
        let now = Instant::now();
        let exported: usize = (0..25)
            .map(|i| s.offer(span(i << 64 | 1, 1, None, false), now).len())
            .sum();
        assert_eq!(exported, 10);
        assert_eq!(s.counts.rate_limited, 15);
        // A second later, ten more.
        let later = now + Duration::from_secs(1);
        let exported: usize = (0..25)
            .map(|i| s.offer(span(i << 64 | 1, 1, None, false), later).len())
            .sum();
        assert_eq!(exported, 10);
    }
}
