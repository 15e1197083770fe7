//! taskscope: a zero-instrumentation observability agent for Linux nodes.
//!
//! Data flows one way: [`probes`] (kernel programs) → [`collector`] (ring buffer reader and map
//! poller) → [`model`] (the task model, one owner) → [`exporters`] and [`api`] (HTTP: JSON and /metrics). [`procfs`] and [`metadata`]
//! (the Kubernetes API) supply what the kernel programs do not carry. [`config`] merges flags,
//! environment and the config file; [`health`] judges the agent and the node's workloads.

pub mod agent;
pub mod api;
pub mod bpf_sys;
pub mod check;
pub mod cli;
pub mod clock;
pub mod collector;
pub mod config;
pub mod control;
pub mod exporters;
pub mod health;
pub mod logging;
pub mod metadata;
pub mod model;
pub mod probes;
pub mod procfs;
pub mod record;
pub mod syscall_names;
