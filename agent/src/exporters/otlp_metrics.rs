//! The /metrics families over OTLP: every `--otlp-metrics-interval`, the scrape /metrics
//! would get (same families, labels, series cap; `families.rs`) is exposed straight into an
//! OTLP `ExportMetricsServiceRequest` (the official protobuf types, `opentelemetry-proto`) and
//! sent over HTTP/protobuf or gRPC. Values are cumulative, so a failed send loses nothing but that
//! point in time: nothing is queued or retried, and failures are counted.

use std::{
    fmt,
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
    families::{Exposer, Exposition, ExpositionConfig, FamilyType, Number, Samples, Scrape},
    otlp_target::{grpc_channel, grpc_metadata, http_client, SignalTarget},
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

fn key_value(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_string())),
        }),
        ..KeyValue::default()
    }
}

fn attributes(labels: &[(&'static str, String)]) -> Vec<KeyValue> {
    labels.iter().map(|(k, v)| key_value(k, v)).collect()
}

/// A scrape as OTLP metrics: counters as cumulative monotonic sums, gauges (and info) as
/// gauges, histograms as explicit-bucket histograms. `start_ns` is when the counters started
/// (the agent's start).
pub(crate) fn to_otlp(scrape: &Scrape, start_ns: u64, now_ns: u64) -> Vec<Metric> {
    let mut exposer = OtlpExposer {
        metrics: Vec::new(),
        start_ns,
        now_ns,
    };
    // Nothing here can fail: the converter's methods always succeed.
    let _ = scrape.expose(&mut exposer);
    exposer.metrics
}

/// Families into OTLP metrics, one `Metric` each.
struct OtlpExposer {
    metrics: Vec<Metric>,
    start_ns: u64,
    now_ns: u64,
}

impl Exposer for OtlpExposer {
    fn family(
        &mut self,
        name: &str,
        help: &'static str,
        family_type: FamilyType,
        samples: &mut dyn FnMut(&mut dyn Samples) -> fmt::Result,
    ) -> fmt::Result {
        let mut data = match family_type {
            FamilyType::Counter => Data::Sum(Sum {
                data_points: Vec::new(),
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
                is_monotonic: true,
            }),
            FamilyType::Gauge | FamilyType::Info => Data::Gauge(Gauge {
                data_points: Vec::new(),
            }),
            FamilyType::Histogram => Data::Histogram(Histogram {
                data_points: Vec::new(),
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
            }),
        };
        samples(&mut OtlpSamples {
            data: &mut data,
            start_ns: self.start_ns,
            now_ns: self.now_ns,
        })?;
        self.metrics.push(Metric {
            name: name.to_string(),
            description: help.to_string(),
            data: Some(data),
            ..Metric::default()
        });
        Ok(())
    }
}

/// The points of one metric.
struct OtlpSamples<'a> {
    data: &'a mut Data,
    start_ns: u64,
    now_ns: u64,
}

impl Samples for OtlpSamples<'_> {
    fn number(&mut self, labels: &[(&'static str, String)], value: Number) -> fmt::Result {
        let point = NumberDataPoint {
            attributes: attributes(labels),
            start_time_unix_nano: self.start_ns,
            time_unix_nano: self.now_ns,
            value: Some(number_data_point::Value::AsDouble(value.as_f64())),
            ..NumberDataPoint::default()
        };
        match self.data {
            Data::Sum(sum) => sum.data_points.push(point),
            Data::Gauge(gauge) => gauge.data_points.push(point),
            _ => return Err(fmt::Error),
        }
        Ok(())
    }

    fn histogram(
        &mut self,
        labels: &[(&'static str, String)],
        buckets: &[(f64, u64)],
        sum: f64,
        count: u64,
    ) -> fmt::Result {
        let Data::Histogram(histogram) = self.data else {
            return Err(fmt::Error);
        };
        histogram.data_points.push(HistogramDataPoint {
            attributes: attributes(labels),
            start_time_unix_nano: self.start_ns,
            time_unix_nano: self.now_ns,
            count,
            sum: Some(sum),
            bucket_counts: buckets.iter().map(|b| b.1).collect(),
            explicit_bounds: buckets
                .iter()
                .map(|b| b.0)
                .filter(|b| b.is_finite())
                .collect(),
            ..HistogramDataPoint::default()
        });
        Ok(())
    }

    fn info(&mut self, labels: &[(&'static str, String)]) -> fmt::Result {
        self.number(labels, Number::Unsigned(1))
    }
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
        let metrics = tokio::task::spawn_blocking(move || {
            exposition
                .lock()
                .map(|mut e| {
                    let started = std::time::Instant::now();
                    let scrape = e.scrape(snapshot, exposition_config);
                    let metrics = to_otlp(&scrape, start_ns, unix_now_ns());
                    e.previous_scrape_seconds = started.elapsed().as_secs_f64();
                    metrics
                })
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
                    metrics,
                    ..ScopeMetrics::default()
                }],
                ..ResourceMetrics::default()
            }],
        };
        let result = send(&mut client, target, &metadata, request).await;
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

/// Sends one request to the collector.
async fn send(
    client: &mut Client,
    target: &SignalTarget,
    metadata: &tonic::metadata::MetadataMap,
    request: ExportMetricsServiceRequest,
) -> Result<(), String> {
    match client {
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        cli::HistogramBuckets,
        exporters::families::ExpositionConfig,
        model::{aggregate::WorkloadTotals, snapshot::MetricsSnapshot, workload::Workload},
    };

    #[test]
    fn families_become_sums_gauges_and_histograms() {
        let mut totals = WorkloadTotals::default();
        totals.sched.on_cpu_ns = 3_000_000_000;
        totals.sched.runqueue_hist[11] = 2; // below 4.096 µs
        totals.sched.runqueue_hist[20] = 3; // below 1.048576 ms
        totals.sched.runqueue_wait_ns = 9_500;
        let mut snapshot = MetricsSnapshot::default();
        snapshot
            .workloads
            .push((Workload::from_cgroup("/w"), totals));
        let config = ExpositionConfig {
            max_series: 10_000,
            top_syscalls: 5,
            histogram_buckets: HistogramBuckets::Log4,
        };
        let scrape = Exposition::default().scrape(snapshot, config);
        let metrics = to_otlp(&scrape, 1, 2);
        let find = |name: &str| {
            metrics
                .iter()
                .find(|m| m.name == name)
                .unwrap_or_else(|| panic!("{name} missing"))
        };
        let cpu = find("taskscope_cpu_seconds");
        let Some(Data::Sum(sum)) = &cpu.data else {
            panic!("sum")
        };
        assert!(sum.is_monotonic);
        assert!(cpu
            .description
            .starts_with("Time the workload's tasks spent on a CPU"));
        assert_eq!(
            sum.data_points[0].value,
            Some(number_data_point::Value::AsDouble(3.0))
        );
        assert_eq!(sum.data_points[0].attributes.len(), 5);
        let runq = find("taskscope_runqueue_latency_seconds");
        let Some(Data::Histogram(h)) = &runq.data else {
            panic!("histogram")
        };
        let point = &h.data_points[0];
        assert_eq!(point.explicit_bounds.len(), point.bucket_counts.len() - 1);
        assert_eq!(point.bucket_counts[1], 2); // (1.024 µs, 4.096 µs]
        assert_eq!(point.bucket_counts[5], 3); // (262 µs, 1.048576 ms]
        assert_eq!(point.count, 5);
        assert!(
            (point.sum.unwrap_or(0.0) - 9.5e-6).abs() < 1e-15,
            "{:?}",
            point.sum
        );
        let Some(Data::Gauge(build)) = &find("taskscope_build").data else {
            panic!("gauge")
        };
        assert_eq!(build.data_points[0].attributes[0].key, "version");
    }
}
