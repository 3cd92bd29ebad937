//! `teal controller`: the Kubernetes controller for BlueGreen resources.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

#[derive(clap::Args)]
pub struct Args {
    /// Where /metrics, /healthz and /readyz listen.
    #[arg(long, default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Watch only this namespace (namespaced install).
    #[arg(long, env = "TEAL_WATCH_NAMESPACE")]
    namespace: Option<String>,
    /// Run without leader election (only ever one replica!).
    #[arg(long)]
    no_leader_election: bool,
    /// Namespace of the leader Lease (default: the pod's namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// Name of the leader Lease.
    #[arg(long, default_value = "teal-controller")]
    lease_name: String,
    /// Seconds a leader's lease lasts without renewal. A leader that could
    /// not renew it for two thirds of that stops (exits) so that another
    /// replica can take over.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(3..=300))]
    lease_seconds: u64,
    /// This replica's identity in the Lease (default: pod name, else host and pid).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// BlueGreens reconciled at once (1 to 1024). Bounds the requests a
    /// burst sends to the apiserver at the same time.
    #[arg(long, default_value_t = teal_controller::DEFAULT_CONCURRENCY,
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    concurrency: u16,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = kube::Config::infer()
        .await
        .context("cannot reach the Kubernetes API (in-cluster config or KUBECONFIG)")?;
    let client = teal_controller::client(config).context("cannot build a Kubernetes client")?;
    let identity = args.identity.unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    });
    let lease = (!args.no_leader_election).then(|| teal_controller::LeaseConfig {
        namespace: args.lease_namespace,
        name: args.lease_name,
        identity,
        duration: Duration::from_secs(args.lease_seconds),
    });
    teal_controller::run(
        client,
        teal_controller::Options {
            metrics_addr: args.metrics_addr,
            namespace: args.namespace,
            lease,
            router_image: None,
            concurrency: args.concurrency,
        },
    )
    .await?;
    Ok(ExitCode::SUCCESS)
}
