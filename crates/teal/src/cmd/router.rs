//! `teal router`: run the L7 router on its own, with its admin API.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use teal_router::{
    AdminListener, RouteTable, Router, RouterConfig, Tls, UpgradePolicy, UpstreamProtocol,
    parse_duration,
};

#[derive(clap::Args)]
pub struct Args {
    /// Address the router serves client traffic on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Admin API address: IP:PORT (needs --admin-token-file) or unix:PATH.
    #[arg(long, default_value = "127.0.0.1:9901")]
    admin: String,
    /// Probe port (IP:PORT): GET /readyz answers 200 once a route table is
    /// installed (503 before), /healthz while the process serves, /metrics;
    /// no token.
    #[arg(long)]
    probe: Option<SocketAddr>,
    /// On SIGTERM, keep serving this long with /readyz reporting not ready
    /// before closing the listener, so that load balancers (kube-proxy)
    /// stop sending new connections first; then, while new connections
    /// still arrive, until a second passes without one (at most this long
    /// again).
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    shutdown_delay: Duration,
    /// File holding the bearer token for the admin API on a TCP address.
    #[arg(long)]
    admin_token_file: Option<PathBuf>,
    /// Route table (JSON) to start with; without it the router answers 503
    /// until a table is installed with PUT /routes.
    #[arg(long)]
    routes: Option<PathBuf>,
    /// Add this response header naming the color that served each request.
    #[arg(long)]
    color_header: Option<String>,
    /// Timeout for connecting to an upstream endpoint.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    connect_timeout: Duration,
    /// Timeout from forwarding a request until its response headers arrive.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    upstream_timeout: Duration,
    /// Longest wait for the next part of an upstream response body; the
    /// response is then cut off (0s: no limit, for long silent streams).
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    upstream_body_timeout: Duration,
    /// Clients must send a whole request head within this time.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    header_read_timeout: Duration,
    /// Client connections with no request in progress are closed after this.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    idle_timeout: Duration,
    /// Client connections served at once; more wait in the accept backlog.
    /// Lowered at start to what the open-file limit allows (two descriptors
    /// per connection, 128 kept in reserve).
    #[arg(long, default_value_t = 10_000)]
    max_connections: usize,
    /// What a drain that times out does with upgraded (WebSocket) connections.
    #[arg(long, default_value = "close", value_parser = ["close", "keep"])]
    upgrades_after_drain: String,
    /// Threads serving client connections (0: one per CPU, or
    /// TOKIO_WORKER_THREADS when set).
    #[arg(long, default_value_t = 0)]
    workers: usize,
    /// Endpoints of its color a request tries when connects fail (1: no retry).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..))]
    connect_attempts: u16,
    /// Serve TLS (ALPN h2, http/1.1) with this PEM certificate chain, leaf
    /// first; reloaded with the key on SIGHUP.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Protocol to upstreams: http1, or h2c (HTTP/2 with prior knowledge).
    #[arg(long, default_value = "http1", value_parser = ["http1", "h2c"])]
    upstream_protocol: String,
    /// How plain HTTP/1.1 requests on cleartext connections are served:
    /// `lean` (one parse per head, bytes relayed) or `general` (the path
    /// every other request takes). Answers are the same; lean costs less CPU.
    #[arg(long, default_value = "lean", value_parser = ["lean", "general"])]
    http1_path: String,
    /// Follow this BlueGreen in Kubernetes (router type teal): routes come
    /// from its status and the EndpointSlices of its per-color Services.
    #[arg(long, conflicts_with = "routes")]
    kubernetes_bluegreen: Option<String>,
    /// Namespace of the BlueGreen (default: the kubeconfig's or in-cluster namespace).
    #[arg(long, env = "POD_NAMESPACE")]
    kubernetes_namespace: Option<String>,
    /// This replica's pod name: names the Lease it reports its route generation in.
    #[arg(long, env = "POD_NAME")]
    pod_name: Option<String>,
    /// This replica's pod uid: the Lease is owned by the pod.
    #[arg(long, env = "POD_UID")]
    pod_uid: Option<String>,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    // Each proxied connection holds two descriptors: raise the open-file
    // limit and cap the connections at what it allows.
    let max_connections = teal_router::size_max_connections(args.max_connections);
    let mut config = RouterConfig {
        connect_timeout: args.connect_timeout,
        upstream_timeout: args.upstream_timeout,
        upstream_body_timeout: args.upstream_body_timeout,
        header_read_timeout: args.header_read_timeout,
        idle_timeout: args.idle_timeout,
        max_connections,
        workers: args.workers,
        connect_attempts: args.connect_attempts.into(),
        upstream_protocol: if args.upstream_protocol == "h2c" {
            UpstreamProtocol::H2c
        } else {
            UpstreamProtocol::Http1
        },
        lean_http1: args.http1_path == "lean",
        upgrade_policy: if args.upgrades_after_drain == "keep" {
            UpgradePolicy::Keep
        } else {
            UpgradePolicy::Close
        },
        ..RouterConfig::default()
    };
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        let tls = Tls::from_pem_files(cert, key).context("--tls-cert/--tls-key")?;
        reload_tls_on_sighup(tls.clone())?;
        config.tls = Some(tls);
    }
    if let Some(name) = &args.color_header {
        config.color_header =
            Some(http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                anyhow::anyhow!("--color-header: {name:?} is not a valid HTTP header name")
            })?);
    }
    let router = match &args.routes {
        Some(path) => {
            let bytes = std::fs::read(path)
                .with_context(|| format!("--routes: cannot read {}", path.display()))?;
            let table = RouteTable::from_json(&bytes).with_context(|| {
                format!("--routes: {} is not a valid route table", path.display())
            })?;
            Router::new(config, table)?
        }
        None => Router::unconfigured(config),
    };

    let admin = match args.admin.strip_prefix("unix:") {
        Some(path) => AdminListener::unix(path.as_ref())
            .with_context(|| format!("--admin: cannot listen on unix socket {path}"))?,
        None => {
            let addr: SocketAddr = args.admin.parse().map_err(|_| {
                anyhow::anyhow!("--admin: {:?} is neither IP:PORT nor unix:PATH", args.admin)
            })?;
            let Some(file) = &args.admin_token_file else {
                bail!(
                    "--admin-token-file is required when --admin is a TCP address (or use --admin unix:PATH)"
                );
            };
            let token = std::fs::read_to_string(file)
                .with_context(|| format!("--admin-token-file: cannot read {}", file.display()))?
                .trim()
                .to_string();
            if token.is_empty() {
                bail!(
                    "--admin-token-file: {} is empty; it must hold the bearer token",
                    file.display()
                );
            }
            let listener = teal_router::listen(addr)
                .with_context(|| format!("--admin: cannot listen on {addr}"))?;
            AdminListener::Tcp { listener, token }
        }
    };
    let admin_desc = match &admin {
        AdminListener::Tcp { listener, .. } => listener.local_addr()?.to_string(),
        AdminListener::Unix(_) => args.admin.clone(),
    };
    let probe = match args.probe {
        Some(addr) => Some(
            teal_router::listen(addr)
                .with_context(|| format!("--probe: cannot listen on {addr}"))?,
        ),
        None => None,
    };
    let listener = teal_router::listen(args.listen)
        .with_context(|| format!("--listen: cannot listen on {}", args.listen))?;
    let local = listener.local_addr()?;
    // Watched before the listening line: from then on a SIGTERM is a
    // graceful stop, never the default action that ends the process at once.
    let stop_signal = shutdown_signal();
    {
        let mut out = std::io::stdout().lock();
        match &probe {
            Some(p) => writeln!(
                out,
                "listening proxy={local} admin={admin_desc} probe={}",
                p.local_addr()?
            )?,
            None => writeln!(out, "listening proxy={local} admin={admin_desc}")?,
        }
        out.flush()?;
    }
    tracing::info!(%local, admin = %admin_desc, generation = router.try_current().0, "router started");

    let follow_task = match &args.kubernetes_bluegreen {
        Some(bg) => {
            let Some(pod_name) = args.pod_name.clone() else {
                bail!(
                    "--kubernetes-bluegreen needs --pod-name (or POD_NAME) to report the route generation it serves"
                );
            };
            let f = super::router_kube::Follow {
                namespace: args.kubernetes_namespace.clone(),
                bluegreen: bg.clone(),
                pod_name,
                pod_uid: args.pod_uid.clone(),
            };
            Some(tokio::spawn(super::router_kube::follow(router.clone(), f)))
        }
        None => None,
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let admin_task = {
        let router = router.clone();
        let stop = stopped(stop_rx.clone());
        tokio::spawn(async move { router.serve_admin(admin, stop).await })
    };
    let probe_task = probe.map(|listener| {
        let router = router.clone();
        let stop = stopped(stop_rx.clone());
        tokio::spawn(async move { router.serve_probes(listener, stop).await })
    });
    let proxy_task = {
        let router = router.clone();
        let stop = stopped(stop_rx);
        tokio::spawn(async move { router.serve(listener, stop).await })
    };
    match follow_task {
        Some(t) => tokio::select! {
            _ = stop_signal => {}
            r = t => {
                let r = r.context("following the BlueGreen")?;
                r?;
            }
        },
        None => stop_signal.await,
    }
    if !args.shutdown_delay.is_zero() {
        router.stop_ready();
        tracing::info!(delay = ?args.shutdown_delay, "stopping: not ready, still serving until the delay ends");
        tokio::select! {
            _ = async {
                tokio::time::sleep(args.shutdown_delay).await;
                until_quiet(&router, args.shutdown_delay).await;
            } => {}
            _ = shutdown_signal() => {}
        }
    }
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    proxy_task.await??;
    admin_task.await??;
    if let Some(t) = probe_task {
        t.await??;
    }
    if let Some(path) = args.admin.strip_prefix("unix:") {
        let _ = std::fs::remove_file(path);
    }
    Ok(ExitCode::SUCCESS)
}

/// After the shutdown delay: new connections still arriving mean the
/// Service has not let go of this replica yet (the endpoint update that
/// removes it can lag behind under load). Keep accepting until no new
/// connection came for [`QUIET`], for at most `longest` more.
async fn until_quiet(router: &Router, longest: Duration) {
    let end = tokio::time::Instant::now() + longest;
    loop {
        let since = router.since_last_accept().unwrap_or(QUIET);
        if since >= QUIET {
            return;
        }
        let now = tokio::time::Instant::now();
        if now >= end {
            tracing::info!("stopping although connections still arrive");
            return;
        }
        tokio::time::sleep((QUIET - since).min(end - now)).await;
    }
}

/// How long without a new connection counts as no longer being sent any.
const QUIET: Duration = Duration::from_secs(1);

/// Reloads the certificate and key on every SIGHUP; a failed reload keeps
/// serving the current certificate.
fn reload_tls_on_sighup(tls: Tls) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup()).context("cannot watch SIGHUP")?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            match tls.reload() {
                Ok(()) => tracing::info!("TLS certificate reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "TLS reload failed; serving the previous certificate")
                }
            }
        }
    });
    Ok(())
}

/// Completes on SIGTERM or SIGINT (Ctrl-C).
/// SIGTERM is watched from the call on (not from the first poll), so one
/// sent before the future is awaited is not missed.
pub(crate) fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    async move {
        match term {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM; stopping on Ctrl-C only");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}
