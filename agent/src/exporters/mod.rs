//! Exporters: they read snapshots the collector builds and never touch the kernel or the model.

pub(crate) mod families;
pub(crate) mod otlp;
pub(crate) mod otlp_metrics;
pub(crate) mod otlp_target;
pub(crate) mod prometheus;
