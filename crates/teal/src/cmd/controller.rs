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
    /// Seconds that reconciles may be due with none finishing before
    /// /healthz fails (the liveness probe then restarts a wedged controller).
    #[arg(long, default_value_t = teal_controller::liveness::DEFAULT_STALL_AFTER.as_secs(),
          value_parser = clap::value_parser!(u64).range(5..=86400))]
    stall_seconds: u64,
    /// Seconds a SIGTERM or SIGINT leaves the running reconciles to finish
    /// before the process exits anyway (keep it below the pod's
    /// terminationGracePeriodSeconds). A second signal exits at once.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(0..=3600))]
    shutdown_timeout: u64,
    /// Hosts that webhooks, notifications, Prometheus queries and web metrics may reach,
    /// comma-separated: host names, domains (`*.example.com`), IP addresses
    /// and CIDR blocks. Empty: any host but link-local addresses (cloud
    /// metadata services), which must be listed to be reached. The API
    /// server's own address is never called.
    #[arg(long, env = "TEAL_EGRESS_ALLOW", value_delimiter = ',')]
    egress_allow: Vec<String>,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    match teal_router::raise_open_file_limit() {
        Ok(f) => tracing::info!(
            open_files = f.soft,
            raised_from = f.before,
            "open-file limit"
        ),
        Err(e) => tracing::warn!(error = %e, "cannot read the open-file limit"),
    }
    let config = kube::Config::infer()
        .await
        .context("cannot reach the Kubernetes API (in-cluster config or KUBECONFIG)")?;
    let egress = teal_controller::Egress {
        allow: args
            .egress_allow
            .iter()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .collect(),
        deny: teal_controller::api_server_addrs(&config.cluster_url).await,
    };
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
    let stop = on_signal(Duration::from_secs(args.shutdown_timeout))?;
    teal_controller::run_until(
        client,
        teal_controller::Options {
            metrics_addr: args.metrics_addr,
            namespace: args.namespace,
            lease,
            router_image: None,
            concurrency: args.concurrency,
            stall_after: Duration::from_secs(args.stall_seconds),
            egress,
        },
        async move {
            let _ = stop.await;
        },
    )
    .await?;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// Watches for SIGTERM and SIGINT on a thread of its own, so that a signal
/// is seen whatever the controller's runtime is doing. The first signal
/// completes the returned receiver (a graceful stop); if the process is
/// still there `timeout` later, or on a second signal, it exits with
/// status 1.
fn on_signal(timeout: Duration) -> anyhow::Result<tokio::sync::oneshot::Receiver<()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let (tx, rx) = tokio::sync::oneshot::channel();
    let (registered_tx, registered) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    let _ = registered_tx.send(Err(e));
                    return;
                }
            };
            runtime.block_on(async move {
                let handlers = signal(SignalKind::terminate())
                    .and_then(|t| Ok((t, signal(SignalKind::interrupt())?)));
                let (mut term, mut int) = match handlers {
                    Ok(h) => {
                        let _ = registered_tx.send(Ok(()));
                        h
                    }
                    Err(e) => {
                        let _ = registered_tx.send(Err(e));
                        return;
                    }
                };
                let name = tokio::select! {
                    _ = term.recv() => "SIGTERM",
                    _ = int.recv() => "SIGINT",
                };
                tracing::info!(
                    "{name}: stopping; running reconciles get {}s to finish",
                    timeout.as_secs()
                );
                let _ = tx.send(());
                let again = tokio::select! {
                    _ = tokio::time::sleep(timeout) => false,
                    _ = term.recv() => true,
                    _ = int.recv() => true,
                };
                if again {
                    tracing::error!("second signal: exiting now");
                } else {
                    tracing::error!(
                        "still running {}s after {name}: exiting without waiting further",
                        timeout.as_secs()
                    );
                }
                std::process::exit(1);
            })
        })
        .context("cannot start the signal thread")?;
    // Registered before this returns: a signal from now on is ours.
    registered
        .recv()
        .context("the signal thread ended")?
        .context("cannot watch for SIGTERM and SIGINT")?;
    Ok(rx)
}
