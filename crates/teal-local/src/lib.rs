//! teal-local: the embedded runtime.
#![forbid(unsafe_code)]
