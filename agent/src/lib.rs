//! taskscope: a zero-instrumentation observability agent for Linux nodes.
//!
//! Data flows one way and the modules are layered the same way; each imports only from its own
//! layer or those below (checked by `cargo xtask layers`; docs/architecture.md):
//!
//! 1. OS access: [`procfs`] (`/proc`, cgroupfs, mounts), [`clock`], [`bpf_sys`],
//!    [`syscall_names`].
//! 2. [`probes`]: the kernel programs loaded and attached; their maps.
//! 3. [`metadata`]: names from the Kubernetes API and the passwd file.
//! 4. [`model`]: the task model with its input types (`intake`, decoded events from
//!    `taskscope_common::decode`) and output types (`snapshot`, `view`, `span`).
//! 5. [`collector`]: the one task that owns the model and the kernel maps and answers queries;
//!    span sampling and the span queue to the exporters.
//! 6. Configuration: [`cli`], [`config`] (flags, environment, config file), [`logging`].
//! 7. [`health`]: judges the agent and the node's workloads.
//! 8. [`exporters`]: Prometheus exposition and OTLP export, from snapshots.
//! 9. Commands: [`check`], [`control`] (live reload), [`record`], [`top`] (the terminal
//!    client of the live feed).
//! 10. [`api`]: HTTP (JSON, /metrics, health probes, admin).
//! 11. [`agent`]: `taskscope run`, wiring it all together; `fuzzing`: the fuzz targets'
//!     entry points (agent/fuzz).

pub mod agent;
pub(crate) mod api;
pub(crate) mod bpf_sys;
pub mod check;
pub mod cli;
pub(crate) mod clock;
pub(crate) mod collector;
pub mod config;
pub(crate) mod control;
pub(crate) mod exporters;
#[doc(hidden)]
pub mod fuzzing;
pub(crate) mod health;
pub mod logging;
pub(crate) mod metadata;
pub(crate) mod model;
pub(crate) mod probes;
pub(crate) mod procfs;
pub mod record;
pub(crate) mod syscall_names;
pub mod top;
pub(crate) mod viz;
