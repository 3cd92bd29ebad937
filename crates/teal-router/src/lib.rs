//! teal-router: the data plane.
#![forbid(unsafe_code)]
