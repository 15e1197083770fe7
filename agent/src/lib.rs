//! taskscope: a zero-instrumentation observability agent for Linux nodes.
//!
//! Data flows one way: [`probes`] (kernel programs) → [`collector`] (ring buffer reader and map
//! poller) → [`model`] (the task model, one owner) → [`api`] (HTTP JSON API). [`procfs`] supplies
//! metadata the kernel programs do not carry.

pub mod agent;
pub mod api;
pub mod check;
pub mod cli;
pub mod collector;
pub mod model;
pub mod probes;
pub mod procfs;
pub mod syscall_names;
