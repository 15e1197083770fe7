//! Host-side stub of the kernel programs crate: the programs themselves are the
//! `taskscope-probes` binary, built for the BPF target by the agent's build script.
#![no_std]
