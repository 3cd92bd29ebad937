//! teal-serve: what teal's long-running servers share, whichever process
//! runs them (`teal router`, local mode's daemon, the Kubernetes
//! controller's metrics port, the sample app).
//!
//! - [`listen`]: a listener with the deepest accept backlog, the open-file
//!   limit raised, a connection cap that fits it, and an accept loop that
//!   backs off when the process is out of descriptors.
//! - [`page`]: the stylesheet and script both dashboards (local mode's and
//!   the controller's) are built from, and their response helper.

#![forbid(unsafe_code)]

pub mod listen;
pub mod page;

pub use listen::{
    AcceptBackoff, DEFAULT_BACKLOG, MAX_ACCEPT_BACKOFF, OpenFiles, RESERVED_FILES,
    connections_for_open_files, is_resource_error, listen, listen_backlog, raise_open_file_limit,
    size_max_connections,
};
