//! teal-core: the pure heart of teal.
//!
//! Plain data in, decisions out. Nothing here performs I/O, reads a clock or
//! spawns a task; the local runtime and the Kubernetes controller feed
//! observations in and carry out the actions that come back.

#![forbid(unsafe_code)]

pub mod analysis;
pub mod color;
pub mod hooks;
pub mod release;
pub mod stats;

pub use color::Color;
pub use stats::{ColorStats, LATENCY_BUCKETS_SECONDS};
