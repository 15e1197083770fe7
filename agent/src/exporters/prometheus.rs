//! Prometheus exposition: a scrape (`families.rs`) as OpenMetrics text with the official
//! client (`prometheus-client`), or the classic text format for clients that ask for it.
//! Metric reference: docs/metrics.md.

use std::{collections::BTreeMap, fmt, fmt::Write as _};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder},
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
    registry::Registry,
};

use super::families::{Exposer, Exposition, ExpositionConfig, FamilyType, Number, Samples, Scrape};
use crate::model::snapshot::MetricsSnapshot;

impl Exposition {
    /// Encodes a snapshot as OpenMetrics text.
    pub(crate) fn encode(&mut self, snapshot: MetricsSnapshot, config: ExpositionConfig) -> String {
        let started = std::time::Instant::now();
        let scrape = self.scrape(snapshot, config);
        let mut registry = Registry::default();
        registry.register_collector(Box::new(TextScrape(scrape)));
        // About as long as the last one: no copying while the text grows.
        let mut text = String::with_capacity(self.previous_len + self.previous_len / 8);
        if prometheus_client::encoding::text::encode(&mut text, &registry).is_err() {
            text.clear();
            let _ = writeln!(text, "# taskscope: encoding failed\n# EOF");
        }
        self.previous_scrape_seconds = started.elapsed().as_secs_f64();
        self.previous_len = text.len();
        text
    }
}

/// A scrape as the client's registry takes it.
#[derive(Debug)]
struct TextScrape(Scrape);

impl Collector for TextScrape {
    fn encode(&self, encoder: DescriptorEncoder) -> fmt::Result {
        self.0.expose(&mut TextExposer(encoder))
    }
}

/// Families into the client's text encoder.
struct TextExposer<'e>(DescriptorEncoder<'e>);

impl Exposer for TextExposer<'_> {
    fn family(
        &mut self,
        name: &str,
        help: &'static str,
        family_type: FamilyType,
        samples: &mut dyn FnMut(&mut dyn Samples) -> fmt::Result,
    ) -> fmt::Result {
        let metric_type = match family_type {
            FamilyType::Counter => MetricType::Counter,
            FamilyType::Gauge => MetricType::Gauge,
            FamilyType::Histogram => MetricType::Histogram,
            FamilyType::Info => MetricType::Info,
        };
        let encoder = self.0.encode_descriptor(name, help, None, metric_type)?;
        samples(&mut TextSamples {
            encoder: Some(encoder),
            family_type,
        })
    }
}

/// The samples of one family, into the client's encoder.
struct TextSamples<'a> {
    /// Taken by a sample without labels (a family of one unlabelled sample).
    encoder: Option<MetricEncoder<'a>>,
    family_type: FamilyType,
}

/// Encodes a counter or gauge value into one sample's encoder.
fn encode_number(metric: MetricEncoder<'_>, counter: bool, value: Number) -> fmt::Result {
    match (counter, value) {
        (true, Number::Unsigned(v)) => ConstCounter::new(v).encode(metric),
        (true, Number::Signed(v)) => ConstCounter::new(v.max(0) as u64).encode(metric),
        (true, Number::Float(v)) => ConstCounter::new(v).encode(metric),
        (false, Number::Unsigned(v)) => {
            ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX)).encode(metric)
        }
        (false, Number::Signed(v)) => ConstGauge::new(v).encode(metric),
        (false, Number::Float(v)) => ConstGauge::new(v).encode(metric),
    }
}

impl Samples for TextSamples<'_> {
    fn number(&mut self, labels: &[(&'static str, String)], value: Number) -> fmt::Result {
        let counter = self.family_type == FamilyType::Counter;
        if labels.is_empty() {
            // Encoded into the family itself: an empty label set would print `{}`.
            let metric = self.encoder.take().ok_or(fmt::Error)?;
            return encode_number(metric, counter, value);
        }
        let family = self.encoder.as_mut().ok_or(fmt::Error)?;
        encode_number(family.encode_family(&labels)?, counter, value)
    }

    fn histogram(
        &mut self,
        labels: &[(&'static str, String)],
        buckets: &[(f64, u64)],
        sum: f64,
        count: u64,
    ) -> fmt::Result {
        if labels.is_empty() {
            let mut metric = self.encoder.take().ok_or(fmt::Error)?;
            return metric.encode_histogram::<Vec<(&str, String)>>(sum, count, buckets, None);
        }
        let family = self.encoder.as_mut().ok_or(fmt::Error)?;
        family
            .encode_family(&labels)?
            .encode_histogram::<Vec<(&str, String)>>(sum, count, buckets, None)
    }

    fn info(&mut self, labels: &[(&'static str, String)]) -> fmt::Result {
        self.encoder
            .as_mut()
            .ok_or(fmt::Error)?
            .encode_info(&labels)
    }
}

/// Content type of OpenMetrics text.
pub(crate) const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Content type of the classic Prometheus text format.
pub(crate) const CLASSIC_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether an `Accept` header asks for OpenMetrics (as Prometheus servers do).
pub(crate) fn wants_openmetrics(accept: &str) -> bool {
    accept.contains("application/openmetrics-text")
}

/// Rewrites OpenMetrics text into the classic text format (0.0.4): counter and info families
/// are named by their samples (`x_total`, `x_info`, info becoming a gauge), `# EOF` and
/// `# UNIT` lines go.
pub(crate) fn to_classic(openmetrics: &str) -> String {
    let mut types: BTreeMap<&str, &str> = BTreeMap::new();
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some((name, kind)) = rest.split_once(' ') {
                types.insert(name, kind);
            }
        }
    }
    let renamed = |name: &str| -> (String, Option<&'static str>) {
        match types.get(name) {
            Some(&"counter") => (format!("{name}_total"), None),
            Some(&"info") => (format!("{name}_info"), Some("gauge")),
            _ => (name.to_string(), None),
        }
    };
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let rewritten = if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            format!("# HELP {} {help}", renamed(name).0)
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let (name, new_kind) = renamed(name);
            format!("# TYPE {name} {}", new_kind.unwrap_or(kind))
        } else {
            line.to_string()
        };
        out.push_str(&rewritten);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::HistogramBuckets;
    use crate::model::{aggregate::WorkloadTotals, workload::Workload};
    use taskscope_common::{SyscallStats, HIST_BUCKETS};

    #[test]
    fn classic_format_names_families_by_their_samples() {
        let om = "# HELP a_seconds Time.\n# TYPE a_seconds counter\na_seconds_total{x=\"1\"} 2\n\
                  # HELP b Build.\n# TYPE b info\nb_info{version=\"1\"} 1\n\
                  # HELP c Gauge.\n# TYPE c gauge\nc 3\n# EOF\n";
        assert_eq!(
            to_classic(om),
            "# HELP a_seconds_total Time.\n# TYPE a_seconds_total counter\na_seconds_total{x=\"1\"} 2\n\
             # HELP b_info Build.\n# TYPE b_info gauge\nb_info{version=\"1\"} 1\n\
             # HELP c Gauge.\n# TYPE c gauge\nc 3\n"
        );
        assert!(wants_openmetrics(
            "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"
        ));
        assert!(!wants_openmetrics("*/*"));
    }

    fn synthetic(workloads: usize) -> MetricsSnapshot {
        let mut snapshot = MetricsSnapshot::default();
        for i in 0..workloads {
            let mut totals = WorkloadTotals::default();
            totals.sched.on_cpu_ns = i as u64;
            for nr in 0..(i % 13) as u32 {
                totals.syscalls.insert(
                    nr,
                    SyscallStats {
                        count: 1 + nr as u64,
                        errors: 0,
                        total_ns: 1,
                        latency_hist: [0; HIST_BUCKETS],
                    },
                );
                totals.errnos.insert((nr, 2), 1);
            }
            snapshot
                .workloads
                .push((Workload::from_cgroup(&format!("/w{i}")), totals));
        }
        snapshot
    }

    fn value(text: &str, sample: &str) -> f64 {
        text.lines()
            .find(|l| l.starts_with(sample))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(f64::NAN)
    }

    fn workload_series(text: &str) -> usize {
        text.lines()
            .filter(|l| !l.starts_with('#') && l.contains("cgroup=\""))
            .count()
    }

    #[test]
    fn the_cap_keeps_whole_workloads_and_counts_the_rest() {
        let config = |max_series| ExpositionConfig {
            max_series,
            top_syscalls: 5,
            histogram_buckets: HistogramBuckets::Log4,
        };
        let all = Exposition::default().encode(synthetic(60), config(usize::MAX));
        let total = workload_series(&all);
        let mut capped = Exposition::default();
        let text = capped.encode(synthetic(60), config(1000));
        let kept = workload_series(&text);
        let dropped = value(&text, "taskscope_series_dropped_total");
        assert!(kept <= 1000, "{kept}");
        assert_eq!(
            kept as f64 + dropped,
            total as f64,
            "kept {kept} + dropped {dropped} = all {total}"
        );
        // The counter adds up over scrapes.
        let again = capped.encode(synthetic(60), config(1000));
        assert_eq!(
            value(&again, "taskscope_series_dropped_total"),
            2.0 * dropped
        );
        assert_eq!(value(&all, "taskscope_series_dropped_total"), 0.0);
    }
}
