//! One file per subcommand.

pub mod router;
pub mod sample_app;
