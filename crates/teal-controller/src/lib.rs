//! teal-controller: the Kubernetes controller for `BlueGreen` resources.
//!
//! Shape: a kube-runtime `Controller` over BlueGreens, also woken by the
//! Deployments and Services it owns and by changes to each BlueGreen's
//! workload; a finalizer that hands traffic back to the workload on delete;
//! state kept in status; leader election on a Lease; metrics and health on
//! their own port.

#![forbid(unsafe_code)]

pub mod autoscaling;
pub mod builtin;
pub mod cache;
pub mod checkpoint;
pub mod checks;
pub mod dashboard;
pub mod events;
pub mod hooks;
pub mod index;
pub mod jobs;
pub mod leader;
pub mod liveness;
pub mod metrics;
pub mod objects;
pub mod reconcile;
pub mod retry;
pub mod routers;
pub mod templates;
pub mod turns;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::Controller;
use kube::runtime::events::Reporter;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client};
use teal_api::BlueGreen;

pub use leader::LeaseConfig;
pub use metrics::Metrics;
pub use teal_notify::client::Egress;

/// One reconcile of `bg`, run once the caches are filled and its turn has
/// come, on the latest cached copy (it may have waited). Under a backlog every
/// due BlueGreen holds one of these futures while it waits, so the
/// reconcile's own, much larger, state is boxed and allocated only when it
/// starts.
async fn in_turn(
    bg: Arc<BlueGreen>,
    ctx: Arc<reconcile::Context>,
    turns: Arc<turns::Turns>,
    latest: kube::runtime::reflector::Store<BlueGreen>,
) -> Result<kube::runtime::controller::Action, reconcile::Error> {
    let liveness = ctx.metrics.liveness.clone();
    let _running = liveness.start();
    if !ctx.cache.is_ready() {
        Box::pin(cache_ready(&bg, &ctx, &turns)).await;
    }
    let _turn = turns.take().await;
    match latest.get(&ObjectRef::from_obj(&*bg)) {
        Some(bg) => Box::pin(reconcile::reconcile(bg, ctx)).await,
        // Deleted (its finalizer's clean-up forgets it too, but a
        // BlueGreen may go without one).
        None => {
            reconcile::forget(&bg, &ctx);
            Ok(kube::runtime::controller::Action::await_change())
        }
    }
}

/// Waits until the caches are filled. A watch that fails meanwhile (a
/// missing permission…) is reported in `bg`'s status every
/// [`WATCH_PATIENCE`], in a turn of its own, rather than waited on in
/// silence.
async fn cache_ready(bg: &BlueGreen, ctx: &reconcile::Context, turns: &turns::Turns) {
    loop {
        tokio::select! {
            _ = ctx.cache.ready() => return,
            _ = tokio::time::sleep(WATCH_PATIENCE) => {
                let errors = ctx.cache.watch_errors();
                if !errors.is_empty() {
                    let _turn = turns.take().await;
                    reconcile::watch_failed(bg, ctx, &errors).await;
                }
            }
        }
    }
}

/// How long a reconcile waits for the caches before it reports the
/// watches that fail.
pub const WATCH_PATIENCE: Duration = Duration::from_secs(5);

/// How the controller runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where `/metrics`, `/healthz` and `/readyz` listen.
    pub metrics_addr: SocketAddr,
    /// Watch only this namespace (a namespaced install); all when `None`.
    pub namespace: Option<String>,
    /// Leader election; `None` runs without it (one replica only).
    pub lease: Option<LeaseConfig>,
    /// The image of router type `teal`'s router pods; `None` reads it from
    /// the environment variable `TEAL_ROUTER_IMAGE`.
    pub router_image: Option<String>,
    /// Reconciles running at once (at least 1), the others waiting their
    /// turn first come, first served. A bound keeps a slow apiserver from
    /// being sent one request per BlueGreen at a time.
    pub concurrency: u16,
    /// `/healthz` fails once reconciles are due and none has finished for
    /// this long (see [`liveness`]).
    pub stall_after: Duration,
    /// Which hosts webhooks, notifications, Prometheus queries and web metrics may
    /// reach (link-local addresses only when allowed explicitly; see
    /// [`api_server_addrs`] for what to deny).
    pub egress: Egress,
}

/// The socket addresses of the Kubernetes API server at `url` (as a
/// client's configuration names it), for [`Options::egress`]'s deny list:
/// a BlueGreen's author must not make the controller call its own API
/// server with the controller's network position.
pub async fn api_server_addrs(url: &http::Uri) -> Vec<SocketAddr> {
    let Some(host) = url.host() else {
        return Vec::new();
    };
    let port = url
        .port_u16()
        .unwrap_or(if url.scheme_str() == Some("http") {
            80
        } else {
            443
        });
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match tokio::net::lookup_host((bare, port)).await {
        Ok(addrs) => addrs.collect(),
        Err(e) => {
            tracing::warn!("cannot resolve the API server's host {host}: {e}");
            Vec::new()
        }
    }
}

/// The default of [`Options::concurrency`].
pub const DEFAULT_CONCURRENCY: u16 = 16;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
    #[error("metrics listener: {0}")]
    Io(#[from] std::io::Error),
    #[error("lost the leader lease {0}: stopping so that only one controller acts")]
    LostLease(String),
    #[error(
        "could not renew the leader lease {0} in time (is the apiserver or etcd down?): stopping so that only one controller acts"
    )]
    LeaseNotRenewed(String),
}

fn api<K>(client: &Client, ns: &Option<String>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    match ns {
        Some(n) => Api::namespaced(client.clone(), n),
        None => Api::all(client.clone()),
    }
}

/// A client for `config` whose requests are counted in
/// `teal_controller_api_requests_total`.
pub fn client(config: kube::Config) -> Result<Client, kube::Error> {
    let count = tower::util::MapRequestLayer::new(|req: http::Request<kube::client::Body>| {
        metrics::count_request(&req);
        req
    });
    Ok(kube::client::ClientBuilder::try_from(config)?
        .with_layer(&count)
        .build())
}

/// Runs until leadership is lost (or forever).
pub async fn run(client: Client, opts: Options) -> Result<(), RunError> {
    run_until(client, opts, std::future::pending()).await
}

/// Waits until this replica holds the lease (`None`: asked to stop first);
/// returns until when it leads unless renewed.
async fn acquire_lease(
    client: &Client,
    cfg: &leader::LeaseConfig,
    shutdown: impl std::future::Future<Output = ()> + Clone,
) -> Option<tokio::time::Instant> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), &cfg.namespace);
    let mut observed = leader::Observed::default();
    tracing::info!(identity = %cfg.identity, "waiting to lead (lease {}/{})", cfg.namespace, cfg.name);
    loop {
        if futures_util::FutureExt::now_or_never(shutdown.clone()).is_some() {
            tracing::info!("stopping before leading");
            return None;
        }
        let attempt = tokio::time::Instant::now();
        match leader::try_acquire(&leases, cfg, &mut observed).await {
            Ok(true) => {
                tracing::info!(identity = %cfg.identity, "leading");
                return Some(attempt + leader::renew_deadline(cfg.duration));
            }
            Ok(false) => {}
            Err(e) => tracing::warn!("acquiring the lease: {e}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.clone() => {}
        }
    }
}

/// Renews the lease for as long as it can; returns why it stopped leading.
async fn keep_leading(
    client: &Client,
    cfg: &leader::LeaseConfig,
    mut valid_until: tokio::time::Instant,
) -> Result<(), RunError> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), &cfg.namespace);
    let mut observed = leader::Observed::default();
    loop {
        let renewal = async {
            tokio::time::sleep(leader::renew_interval(cfg.duration)).await;
            let attempt = tokio::time::Instant::now();
            (
                attempt,
                leader::try_acquire(&leases, cfg, &mut observed).await,
            )
        };
        tokio::select! {
            // Unrenewed, the lease may be another replica's soon: stop
            // acting before it can be (an apiserver or etcd outage).
            _ = tokio::time::sleep_until(valid_until) => {
                return Err(RunError::LeaseNotRenewed(cfg.name.clone()));
            }
            (attempt, renewed) = renewal => match renewed {
                Ok(true) => valid_until = attempt + leader::renew_deadline(cfg.duration),
                Ok(false) => return Err(RunError::LostLease(cfg.name.clone())),
                Err(e) => tracing::warn!("renewing the lease: {e}"),
            },
        }
    }
}

/// Exports the sizes of what the controller keeps per BlueGreen
/// (`teal_controller_bluegreen_state_entries`).
fn export_state_sizes(metrics: &Metrics, ctx: &Arc<reconcile::Context>) {
    // Weak: the context holds the metrics.
    let weak = Arc::downgrade(ctx);
    let _ = metrics.state_sizes.set(Box::new(move || {
        let mut sizes = crate::hooks::sizes().to_vec();
        sizes.push(("analysis_checks", crate::checks::tracked()));
        if let Some(ctx) = weak.upgrade() {
            sizes.push(("write_sequences", ctx.written.entries()));
            sizes.push(("recent_events", ctx.recorder.entries()));
            sizes.push(("workload_index", ctx.workloads.len()));
        }
        sizes
    }));
}

/// Runs until `shutdown` completes or leadership is lost. On `shutdown` a
/// standby stops at once; a leader starts no new reconcile, lets the
/// running ones finish and hands the lease over. Bounding how long that may
/// take is the caller's (see `teal controller --shutdown-timeout`).
pub async fn run_until(
    client: Client,
    opts: Options,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let shutdown = futures_util::FutureExt::shared(Box::pin(shutdown));
    teal_notify::client::set_egress(Some(opts.egress.clone()));
    let metrics = Metrics::new(opts.stall_after);
    let _ = metrics.dashboard.set(dashboard::Dashboard::new(
        client.clone(),
        opts.namespace.clone(),
    ));
    let addr = metrics.clone().serve(opts.metrics_addr).await?;
    tracing::info!("metrics, health and dashboard on http://{addr}");

    // Leading lasts until `valid_until`, moved on by every renewal.
    let mut valid_until = None;
    if let Some(cfg) = &opts.lease {
        match acquire_lease(&client, cfg, shutdown.clone()).await {
            Some(until) => valid_until = Some(until),
            None => return Ok(()),
        }
    }
    let leading = async {
        match (opts.lease.clone(), valid_until) {
            (Some(cfg), Some(until)) => keep_leading(&client, &cfg, until).await,
            _ => std::future::pending::<Result<(), RunError>>().await,
        }
    };
    metrics.ready.store(true, Ordering::SeqCst);

    let reporter = Reporter {
        controller: "teal-controller".into(),
        instance: opts.lease.as_ref().map(|l| l.identity.clone()),
    };
    let bgs: Api<BlueGreen> = api(&client, &opts.namespace);
    // kube-runtime starts every due reconcile (its own bound would start
    // them in no fair order under a backlog); each waits for its turn.
    let (bluegreens, bluegreen_feed) = cache::bluegreens(bgs);
    let controller = Controller::for_stream(bluegreen_feed, bluegreens);
    let turns = Arc::new(turns::Turns::new(
        opts.concurrency.into(),
        metrics.waiting.clone(),
    ));
    let store = controller.store();
    let latest = store.clone();
    let probe_store = store.clone();
    let (mut cache, feeds) = cache::Cache::new(
        api(&client, &opts.namespace),
        api(&client, &opts.namespace),
        api(&client, &opts.namespace),
        api(&client, &opts.namespace),
    );
    // Router objects of types istio, gatewayAPI and teal: watched once a
    // router uses their kind, waking the BlueGreens they concern.
    let router_wakes = cache.routers(client.clone(), opts.namespace.clone(), store);
    let router_image = opts
        .router_image
        .clone()
        .or_else(|| std::env::var(routers::teal::IMAGE_ENV).ok());
    let ctx = Arc::new(reconcile::Context {
        client: client.clone(),
        recorder: events::Recorder::new(client.clone(), reporter),
        metrics: metrics.clone(),
        cache,
        written: Default::default(),
        workloads: Default::default(),
        router_image,
    });
    export_state_sizes(&metrics, &ctx);
    let workloads = ctx.workloads.clone();
    let controller = controller
        .trigger_backoff(retry::WatchBackoff::default())
        // Color Deployments, their ReplicaSets, Services, Pods and
        // workloads: one watch
        // each, filling the caches reconciles read (see cache.rs) and
        // waking their BlueGreen.
        .owns_stream(feeds.deployments)
        .owns_stream(feeds.services)
        .watches_stream(feeds.pods, |p: Pod| cache::Cache::owner_of(&p))
        .watches_stream(feeds.replica_sets, |r: ReplicaSet| {
            cache::Cache::owner_of(&r)
        })
        .watches_stream(feeds.workloads, move |d: Deployment| {
            // A workload changed: wake the BlueGreens that release it.
            let ns = d.metadata.namespace.unwrap_or_default();
            workloads.releasing(&ns, d.metadata.name.as_deref().unwrap_or_default())
        })
        .reconcile_on(hooks::finished())
        .reconcile_on(router_wakes)
        .reconcile_on(liveness::probes(
            probe_store,
            metrics.liveness.clone(),
            liveness::PROBE_EVERY,
        ))
        .graceful_shutdown_on(shutdown)
        .run(
            move |bg, ctx| in_turn(bg, ctx, turns.clone(), latest.clone()),
            reconcile::error_policy,
            ctx,
        )
        .for_each(|r| async move {
            match r {
                // The BlueGreens' own watch (reconcile errors are logged
                // by the error policy).
                Err(kube::runtime::controller::Error::QueueError(e)) => {
                    tracing::warn!("watching bluegreens: {e}")
                }
                Err(e) => tracing::debug!("reconcile: {e}"),
                Ok(_) => {}
            }
        });
    let result = tokio::select! {
        _ = controller => Ok(()),
        r = leading => r,
    };

    // Handed over on a clean stop only: a lease lost or not renewed is not
    // ours to release (and the apiserver may not answer).
    if let (Some(cfg), Ok(())) = (&opts.lease, &result) {
        let leases: Api<Lease> = Api::namespaced(client.clone(), &cfg.namespace);
        leader::release(&leases, cfg).await;
    }
    result
}

#[cfg(test)]
mod tests {
    /// The size of what `f` returns, without calling it.
    fn size_of_return<A, B, F>(_: impl Fn(A, B) -> F) -> usize {
        std::mem::size_of::<F>()
    }
    fn size_of_return4<A, B, C, D, F>(_: impl Fn(A, B, C, D) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    #[test]
    fn a_reconcile_waiting_for_its_turn_holds_a_fraction_of_a_reconcile() {
        let reconcile = size_of_return(super::reconcile::reconcile);
        let waiting = size_of_return4(super::in_turn);
        println!("reconcile future {reconcile} bytes, waiting one {waiting} bytes");
        assert!(waiting * 8 < reconcile, "{waiting} vs {reconcile} bytes");
    }
}
