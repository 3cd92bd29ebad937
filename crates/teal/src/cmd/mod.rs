//! One file per subcommand.

pub mod router;
