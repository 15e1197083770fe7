//! taskscope: a zero-instrumentation observability agent for Linux nodes.
//!
//! Data flows one way: [`probes`] (kernel programs) → [`collector`] (ring buffer reader and map
//! poller) → [`model`] (the task model, one owner) → [`api`] (HTTP JSON API).

pub mod probes;
