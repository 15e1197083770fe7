//! Exporters: they read snapshots the collector builds and never touch the kernel or the model.

pub mod otlp;
pub mod otlp_metrics;
pub mod otlp_target;
pub mod prometheus;
