use std::path::PathBuf;
use std::time::Duration;

/// Why the test environment could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `scripts/control-plane` was not found.
    #[error(
        "scripts/control-plane not found at {0}; set TEAL_CONTROL_PLANE to its path \
         (`eval \"$(scripts/control-plane env)\"` does)"
    )]
    ScriptMissing(PathBuf),
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A supervised process exited or timed out before it was ready.
    #[error("{what} did not start: {reason}\n--- last lines of {log} ---\n{tail}")]
    Start {
        what: &'static str,
        reason: String,
        log: PathBuf,
        tail: String,
    },
    /// A fault command to the control plane's supervisor failed.
    #[error(
        "control plane command `{command}` failed: {reason}\n--- last lines of the supervisor log ---\n{tail}"
    )]
    Command {
        command: String,
        reason: String,
        tail: String,
    },
    /// The kubeconfig written by the control plane could not be used.
    #[error("kubeconfig {path}: {message}")]
    Kubeconfig { path: PathBuf, message: String },
    /// A Kubernetes API call failed.
    #[error("{what}: {source}")]
    Kube {
        what: String,
        #[source]
        source: kube::Error,
    },
    /// A condition was not met in time.
    #[error("timed out after {after:?} waiting for {what}; last seen: {last}")]
    Timeout {
        what: String,
        after: Duration,
        last: String,
    },
    /// A network namespace could not be created, used or deleted.
    #[error("network namespace {name}: {message}")]
    NetNs { name: String, message: String },
    /// A request to etcd failed or its answer was not understood.
    #[error("etcd: {0}")]
    Etcd(String),
    /// A request to Prometheus failed or its answer was not understood.
    #[error("prometheus: {0}")]
    Prometheus(String),
    /// The external metrics API of the test's own could not be started.
    #[error("external metrics API: {0}")]
    MetricsApi(String),
    /// Building or loading an image for the real node, or reading its host state, failed.
    #[error("real node: {0}")]
    RealNode(String),
}

impl Error {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}
