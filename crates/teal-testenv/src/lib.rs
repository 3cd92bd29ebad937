//! teal-testenv: real control plane for tests.
#![forbid(unsafe_code)]
