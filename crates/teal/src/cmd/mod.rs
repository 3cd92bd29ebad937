//! One file per subcommand.

pub mod completion;
pub mod controller;
pub mod crd;
pub mod demo;
pub mod kube;
pub mod local;
pub mod router;
pub mod router_kube;
pub mod sample_app;
