//! The /metrics families over OTLP: every `--otlp-metrics-interval`, the exposition a scrape
//! would get (same families, labels, series cap) is converted sample by sample into an OTLP
//! `ExportMetricsServiceRequest` (the official protobuf types, `opentelemetry-proto`) and sent
//! over HTTP/protobuf or gRPC. Values are cumulative, so a failed send loses nothing but that
//! point in time: nothing is queued or retried, and failures are counted.

use std::{
    collections::BTreeMap,
    sync::{atomic::Ordering, Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use opentelemetry_proto::tonic::{
    collector::metrics::v1::{
        metrics_service_client::MetricsServiceClient, ExportMetricsServiceRequest,
    },
    common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue},
    metrics::v1::{
        metric::Data, number_data_point, AggregationTemporality, Gauge, Histogram,
        HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
    },
    resource::v1::Resource,
};
use prost::Message;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use super::{
    otlp_target::{grpc_channel, grpc_metadata, http_client, SignalTarget},
    prometheus::{Exposition, ExpositionConfig},
};
use crate::{
    cli::OtlpProtocol,
    collector::{export::MetricsExportStats, Query},
};

/// Where and how often.
#[derive(Debug, Clone)]
pub(crate) struct OtlpMetricsConfig {
    /// The collector, resolved from flags and environment (`otlp_target::resolve`).
    pub(crate) target: SignalTarget,
    pub(crate) interval: Duration,
    pub(crate) exposition: ExpositionConfig,
}

/// The connection to the collector, kept across intervals.
enum Client {
    Http(reqwest::Client),
    Grpc(MetricsServiceClient<tonic::transport::Channel>),
}

/// A label set as (name, value) pairs.
type Labels = Vec<(String, String)>;

/// One histogram series as read from the exposition: (upper bound, cumulative count) per
/// bucket, sum, count.
type HistogramParts = (Vec<(f64, f64)>, f64, f64);

/// One sample line of the exposition.
#[derive(Debug, PartialEq)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

/// Parses `name{k="v",...} value` (the label values escaped as OpenMetrics escapes them).
fn parse_sample(line: &str) -> Option<Sample> {
    let (head, value) = line.rsplit_once(' ')?;
    let value: f64 = value.parse().ok()?;
    let Some(open) = head.find('{') else {
        return Some(Sample {
            name: head.to_string(),
            labels: Vec::new(),
            value,
        });
    };
    let name = head[..open].to_string();
    let mut rest = head[open + 1..].strip_suffix('}')?;
    let mut labels = Vec::new();
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => {
                    end = Some(i);
                    break;
                }
                other => value.push(other),
            }
        }
        labels.push((key.trim_start_matches(',').to_string(), value));
        rest = after[end? + 1..].trim_start_matches(',');
    }
    Some(Sample {
        name,
        labels,
        value,
    })
}

fn key_value(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_string())),
        }),
        ..KeyValue::default()
    }
}

fn attributes(labels: &[(String, String)]) -> Vec<KeyValue> {
    labels.iter().map(|(k, v)| key_value(k, v)).collect()
}

/// Converts OpenMetrics text (as [`Exposition::encode`] makes it) into OTLP metrics: counters
/// as cumulative monotonic sums, gauges (and info) as gauges, histograms as explicit-bucket
/// histograms. `start_ns` is when the counters started (the agent's start).
pub(crate) fn to_otlp(text: &str, start_ns: u64, now_ns: u64) -> Vec<Metric> {
    let mut metrics = Vec::new();
    let mut family: Option<(String, String, String)> = None; // (name, type, help)
    let mut help: BTreeMap<String, String> = BTreeMap::new();
    let mut samples: Vec<Sample> = Vec::new();
    let mut flush = |family: &Option<(String, String, String)>, samples: &mut Vec<Sample>| {
        if let Some((name, kind, description)) = family {
            if let Some(metric) = build(name, kind, description, samples, start_ns, now_ns) {
                metrics.push(metric);
            }
        }
        samples.clear();
    };
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            if let Some((name, text)) = rest.split_once(' ') {
                help.insert(name.to_string(), text.to_string());
            }
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            flush(&family, &mut samples);
            let mut parts = rest.split_whitespace();
            if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                let description = help.get(name).cloned().unwrap_or_default();
                family = Some((name.to_string(), kind.to_string(), description));
            }
        } else if !line.starts_with('#') {
            if let Some(sample) = parse_sample(line) {
                samples.push(sample);
            }
        }
    }
    flush(&family, &mut samples);
    metrics
}

fn number_point(
    labels: &[(String, String)],
    value: f64,
    start_ns: u64,
    now_ns: u64,
) -> NumberDataPoint {
    NumberDataPoint {
        attributes: attributes(labels),
        start_time_unix_nano: start_ns,
        time_unix_nano: now_ns,
        value: Some(number_data_point::Value::AsDouble(value)),
        ..NumberDataPoint::default()
    }
}

fn build(
    name: &str,
    kind: &str,
    description: &str,
    samples: &[Sample],
    start_ns: u64,
    now_ns: u64,
) -> Option<Metric> {
    let data = match kind {
        "counter" => Data::Sum(Sum {
            data_points: samples
                .iter()
                .filter(|s| s.name == format!("{name}_total") || s.name == name)
                .map(|s| number_point(&s.labels, s.value, start_ns, now_ns))
                .collect(),
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
            is_monotonic: true,
        }),
        "gauge" | "info" => Data::Gauge(Gauge {
            data_points: samples
                .iter()
                .map(|s| number_point(&s.labels, s.value, start_ns, now_ns))
                .collect(),
        }),
        "histogram" => {
            // One point per label set (without `le`): cumulative buckets back to per-bucket.
            let mut points: BTreeMap<Labels, HistogramParts> = BTreeMap::new();
            for s in samples {
                let labels: Vec<(String, String)> = s
                    .labels
                    .iter()
                    .filter(|(k, _)| k != "le")
                    .cloned()
                    .collect();
                let point = points.entry(labels).or_default();
                if s.name.ends_with("_bucket") {
                    let le = s
                        .labels
                        .iter()
                        .find(|(k, _)| k == "le")
                        .and_then(|(_, v)| v.parse::<f64>().ok())
                        .unwrap_or(f64::INFINITY);
                    point.0.push((le, s.value));
                } else if s.name.ends_with("_sum") {
                    point.1 = s.value;
                } else if s.name.ends_with("_count") {
                    point.2 = s.value;
                }
            }
            Data::Histogram(Histogram {
                data_points: points
                    .into_iter()
                    .map(|(labels, (mut buckets, sum, count))| {
                        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
                        let mut previous = 0.0;
                        let bucket_counts = buckets
                            .iter()
                            .map(|(_, cumulative)| {
                                let n = (cumulative - previous).max(0.0) as u64;
                                previous = *cumulative;
                                n
                            })
                            .collect();
                        HistogramDataPoint {
                            attributes: attributes(&labels),
                            start_time_unix_nano: start_ns,
                            time_unix_nano: now_ns,
                            count: count as u64,
                            sum: Some(sum),
                            bucket_counts,
                            explicit_bounds: buckets
                                .iter()
                                .map(|b| b.0)
                                .filter(|b| b.is_finite())
                                .collect(),
                            ..HistogramDataPoint::default()
                        }
                    })
                    .collect(),
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
            })
        }
        _ => return None,
    };
    Some(Metric {
        name: name.to_string(),
        description: description.to_string(),
        data: Some(data),
        ..Metric::default()
    })
}

fn unix_now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Starts the periodic export; `exposition` is its own encoder (its dropped-series count is
/// this exporter's).
pub(crate) fn start(
    config: OtlpMetricsConfig,
    queries: mpsc::Sender<Query>,
    exposition: Exposition,
    shutdown: watch::Receiver<bool>,
) -> Arc<MetricsExportStats> {
    let stats = Arc::new(MetricsExportStats::default());
    tokio::spawn(export_loop(
        config,
        queries,
        Arc::new(Mutex::new(exposition)),
        Arc::clone(&stats),
        shutdown,
    ));
    stats
}

async fn export_loop(
    config: OtlpMetricsConfig,
    queries: mpsc::Sender<Query>,
    exposition: Arc<Mutex<Exposition>>,
    stats: Arc<MetricsExportStats>,
    mut shutdown: watch::Receiver<bool>,
) {
    let start_ns = unix_now_ns();
    let target = &config.target;
    // Both were checked when the agent started (the span exporter builds the same).
    let client = match target.protocol {
        OtlpProtocol::HttpProtobuf => http_client(&target.tls).map(Client::Http),
        OtlpProtocol::Grpc => {
            grpc_channel(target).map(|c| Client::Grpc(MetricsServiceClient::new(c)))
        }
    };
    let metadata = grpc_metadata(&target.headers).unwrap_or_default();
    let mut client = match client {
        Ok(client) => client,
        Err(err) => {
            warn!(error = %err, "OTLP metrics export cannot start");
            return;
        }
    };
    let resource = Resource {
        attributes: vec![
            key_value("service.name", "taskscope"),
            key_value(
                "host.name",
                std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .unwrap_or_default()
                    .trim(),
            ),
        ],
        ..Resource::default()
    };
    let mut tick = tokio::time::interval(config.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return,
            _ = tick.tick() => {}
        }
        let Some(snapshot) = crate::collector::ask(&queries, Query::Metrics).await else {
            return;
        };
        let exposition = Arc::clone(&exposition);
        let exposition_config = config.exposition;
        let text = tokio::task::spawn_blocking(move || {
            exposition
                .lock()
                .map(|mut e| e.encode(snapshot, exposition_config))
                .unwrap_or_default()
        })
        .await
        .unwrap_or_default();
        let request = ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(resource.clone()),
                scope_metrics: vec![ScopeMetrics {
                    scope: Some(InstrumentationScope {
                        name: "taskscope".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        ..InstrumentationScope::default()
                    }),
                    metrics: to_otlp(&text, start_ns, unix_now_ns()),
                    ..ScopeMetrics::default()
                }],
                ..ResourceMetrics::default()
            }],
        };
        let result: Result<(), String> = match &mut client {
            Client::Http(client) => {
                let mut post = client
                    .post(&target.url)
                    .header("content-type", "application/x-protobuf");
                for (name, value) in &target.headers {
                    post = post.header(name, value);
                }
                post.body(request.encode_to_vec())
                    .send()
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| {
                        r.status()
                            .is_success()
                            .then_some(())
                            .ok_or_else(|| format!("HTTP {}", r.status()))
                    })
            }
            Client::Grpc(client) => {
                let mut request = tonic::Request::new(request);
                *request.metadata_mut() = metadata.clone();
                client
                    .export(request)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        };
        match result {
            Ok(()) => {
                stats.exported_requests.fetch_add(1, Ordering::Relaxed);
                if !stats.up.swap(true, Ordering::Relaxed) {
                    info!("OTLP metrics export working");
                }
            }
            Err(err) => {
                stats.failed_requests.fetch_add(1, Ordering::Relaxed);
                if stats.up.swap(false, Ordering::Relaxed)
                    || stats.failed_requests.load(Ordering::Relaxed) == 1
                {
                    warn!(error = %err, "OTLP metrics export failing; the next interval sends the same cumulative totals");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_with_escaped_labels_parse() {
        assert_eq!(
            parse_sample(r#"taskscope_x_total{a="1",b="q\"uo\\te"} 2.5"#),
            Some(Sample {
                name: "taskscope_x_total".into(),
                labels: vec![("a".into(), "1".into()), ("b".into(), "q\"uo\\te".into())],
                value: 2.5
            })
        );
        assert_eq!(parse_sample("up 1").map(|s| s.value), Some(1.0));
        assert_eq!(parse_sample("garbage"), None);
    }

    #[test]
    fn families_become_sums_gauges_and_histograms() {
        let text = "# HELP c Things.\n# TYPE c counter\nc_total{w=\"a\"} 3\n# TYPE g gauge\ng 7\n# TYPE h histogram\nh_bucket{w=\"a\",le=\"1.0\"} 2\nh_bucket{w=\"a\",le=\"2.0\"} 5\nh_bucket{w=\"a\",le=\"+Inf\"} 6\nh_sum{w=\"a\"} 9.5\nh_count{w=\"a\"} 6\n# EOF\n";
        let metrics = to_otlp(text, 1, 2);
        assert_eq!(metrics.len(), 3);
        let Some(Data::Sum(sum)) = &metrics[0].data else {
            panic!("sum")
        };
        assert!(sum.is_monotonic);
        assert_eq!(metrics[0].description, "Things.");
        assert_eq!(
            sum.data_points[0].value,
            Some(number_data_point::Value::AsDouble(3.0))
        );
        let Some(Data::Histogram(h)) = &metrics[2].data else {
            panic!("histogram")
        };
        let point = &h.data_points[0];
        assert_eq!(point.explicit_bounds, vec![1.0, 2.0]);
        assert_eq!(point.bucket_counts, vec![2, 3, 1]);
        assert_eq!((point.count, point.sum), (6, Some(9.5)));
        assert_eq!(point.attributes.len(), 1);
    }
}
