//! teal-api: the types users write — spec fields shared by the Kubernetes
//! `BlueGreen` resource and by local mode's configuration.

#![forbid(unsafe_code)]

pub mod duration;
pub mod spec;

pub use duration::{Duration, InvalidDuration};
pub use spec::*;
