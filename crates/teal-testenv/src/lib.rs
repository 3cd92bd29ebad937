//! Test support for teal: a real Kubernetes control plane and a real Prometheus.
//!
//! The control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok
//! simulating the nodes) is built from source and started by `scripts/control-plane`; this
//! crate starts it once per test binary, on free loopback ports, and it stops by itself when
//! the test binary exits (its supervisor watches a pipe that closes with the test process).
//!
//! ```no_run
//! # async fn example() {
//! use teal_testenv::{TestEnv, wait_for};
//! use std::time::Duration;
//!
//! let env = TestEnv::shared();
//! let client = env.client();
//! let ns = env.namespace("rollout").await;
//! let seen = wait_for("the namespace to be listed", Duration::from_secs(10), || {
//!     let client = client.clone();
//!     let ns = ns.clone();
//!     async move {
//!         let api: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(client);
//!         api.get(&ns).await.map(|n| n.metadata.name)
//!     }
//! })
//! .await;
//! # }
//! ```
//!
//! A fault test that kills, restarts or pauses components (kube-apiserver, etcd, ...) gets a
//! control plane of its own from [`faults::ControlPlane::start`]; see [`faults`].
//!
//! Pod IPs in this cluster are made up by kwok: nothing listens on them on the host, so never
//! send traffic to them there; to serve real traffic on them, run the processes in a network
//! namespace of the test's own ([`netns::NetNs`]). Pod behaviour (readiness delay, never
//! ready, crash loop) is steered by annotations on the pod template, see [`sim`].
//!
//! A test that needs containers to really run (teal's image, traffic through ClusterIPs,
//! cluster DNS) asks for the real node with [`real_node::RealNode::start`]: a kubelet,
//! kube-proxy, containerd and CoreDNS on this machine, next to the kwok nodes. It is opt-in,
//! needs root, and there is one per machine at a time.
//!
//! When a test panics the state directory (with every component's log) is kept and its path
//! printed; otherwise it is removed at exit. Set `TEAL_TESTENV_KEEP=1` to always keep it.
#![forbid(unsafe_code)]

mod env;
mod error;
pub mod faults;
mod http;
pub mod metrics_api;
pub mod netns;
pub mod prometheus;
pub mod real_node;
pub mod receiver;
mod supervisor;
mod wait;

pub use env::TestEnv;
pub use error::Error;
pub use wait::{try_wait_for, wait_for};

/// Annotations understood by the simulated nodes (kwok stages in `scripts/cp/kwok`). Put them
/// on a pod template; each applies to every pod made from it.
pub mod sim {
    /// Containers start at once and become Ready only after this Go duration (`"10s"`).
    pub const READY_AFTER: &str = "sim.teal.dev/ready-after";
    /// `"true"`: containers run but never become Ready.
    pub const NEVER_READY: &str = "sim.teal.dev/never-ready";
    /// `"true"`: containers exit with code 1 shortly after starting, wait in
    /// `CrashLoopBackOff`, start again, and so on; the pod is never Ready.
    pub const CRASH_LOOP: &str = "sim.teal.dev/crash-loop";
    /// How long a crash-looping container runs before it exits (Go duration, default `2s`).
    pub const CRASH_AFTER: &str = "sim.teal.dev/crash-after";
    /// How long a crash-looping container stays in back-off (Go duration, default `3s`).
    pub const RESTART_AFTER: &str = "sim.teal.dev/restart-after";
    /// How long a deleted pod lingers before it is gone (Go duration, default: at once).
    pub const TERMINATE_AFTER: &str = "sim.teal.dev/terminate-after";
}
