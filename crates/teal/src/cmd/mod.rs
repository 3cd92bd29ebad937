//! One file per subcommand.

pub mod demo;
pub mod local;
pub mod router;
pub mod sample_app;
