//! Controller metrics (Prometheus text on `/metrics`) and health endpoints.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use teal_core::release::Event;
use tokio::net::TcpListener;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    event: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    verb: String,
}

/// Requests this process sent to the Kubernetes API, by verb; one family
/// for the process, since the client that counts is built before the
/// controller's [`Metrics`].
fn api_requests() -> &'static Family<RequestLabels, Counter> {
    static REQUESTS: std::sync::OnceLock<Family<RequestLabels, Counter>> =
        std::sync::OnceLock::new();
    REQUESTS.get_or_init(Family::default)
}

/// Counts a request to the Kubernetes API: by HTTP method, or `WATCH`.
pub fn count_request<B>(req: &http::Request<B>) {
    let watch = req
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|p| p == "watch=true"));
    let verb = if watch {
        "WATCH"
    } else {
        req.method().as_str()
    };
    api_requests()
        .get_or_create(&RequestLabels { verb: verb.into() })
        .inc();
}

/// The kinds of `teal_controller_reconcile_errors_total` (see
/// `reconcile::Error::metric_label`).
pub const ERROR_KINDS: [&str; 4] = ["kube", "finalizer", "state", "conflict"];

/// The controller's metrics. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    reconciles: Counter,
    errors: Family<ErrorLabels, Counter>,
    events: Family<EventLabels, Counter>,
    duration: Histogram,
    releases: Family<EventLabels, Histogram>,
    /// Reconciles due and waiting for a turn (see `turns`).
    pub waiting: Gauge,
    pub ready: Arc<AtomicBool>,
    /// Whether reconciles make progress: `/healthz`.
    pub liveness: Arc<crate::liveness::Liveness>,
    /// The read-only dashboard on `/`, once the controller has a client.
    pub dashboard: Arc<std::sync::OnceLock<crate::dashboard::Dashboard>>,
}

fn release_histogram() -> Histogram {
    Histogram::new([5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0])
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new(crate::liveness::DEFAULT_STALL_AFTER)
    }
}

impl Metrics {
    /// Metrics whose `/healthz` fails once reconciles are due and none
    /// finished for `stall_after`.
    pub fn new(stall_after: Duration) -> Self {
        let mut registry = Registry::with_prefix("teal_controller");
        let reconciles = Counter::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        // Every kind exists from the start (at 0), so dashboards and rate()
        // see the series before the first failure.
        for kind in ERROR_KINDS {
            let _ = errors.get_or_create(&ErrorLabels { kind: kind.into() });
        }
        let events = Family::<EventLabels, Counter>::default();
        let duration = Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]);
        registry.register("reconciles", "Reconciles of BlueGreens", reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Failed reconciles by kind",
            errors.clone(),
        );
        registry.register(
            "release_events",
            "Release events by kind (ReleaseStarted, Switched, Succeeded, RolledBack, Failed…)",
            events.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconcile took",
            duration.clone(),
        );
        registry.register(
            "api_requests",
            "Requests sent to the Kubernetes API by verb (the HTTP method; WATCH for watches)",
            api_requests().clone(),
        );
        let releases = Family::<EventLabels, Histogram>::new_with_constructor(
            release_histogram as fn() -> Histogram,
        );
        registry.register(
            "release_duration_seconds",
            "Duration of finished releases by how they ended (Succeeded, RolledBack, Aborted, Failed, Superseded)",
            releases.clone(),
        );
        let waiting = Gauge::default();
        registry.register(
            "reconciles_waiting",
            "Reconciles due and waiting for one of the --concurrency turns",
            waiting.clone(),
        );
        Metrics {
            registry: Arc::new(registry),
            waiting,
            reconciles,
            errors,
            events,
            duration,
            releases,
            ready: Arc::new(AtomicBool::new(false)),
            liveness: Arc::new(crate::liveness::Liveness::new(stall_after)),
            dashboard: Arc::default(),
        }
    }

    pub fn reconciled(&self, took: Duration) {
        self.reconciles.inc();
        self.duration.observe(took.as_secs_f64());
    }

    pub fn failed(&self, kind: &str) {
        self.errors
            .get_or_create(&ErrorLabels { kind: kind.into() })
            .inc();
    }

    pub fn event(&self, e: &Event) {
        self.events
            .get_or_create(&EventLabels {
                event: format!("{:?}", e.kind),
            })
            .inc();
    }

    /// A release ended with event `kind` after `seconds`.
    pub fn release_ended(&self, kind: &str, seconds: f64) {
        self.releases
            .get_or_create(&EventLabels { event: kind.into() })
            .observe(seconds);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Serves `/metrics`, `/healthz` (alive and not wedged, see
    /// [`crate::liveness`]), `/readyz` (leading and
    /// watching) and the dashboard (`/`, `/dashboard.json`) until the
    /// process ends.
    pub async fn serve(self, addr: SocketAddr) -> std::io::Result<SocketAddr> {
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let m = self.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let m = m.clone();
                        async move {
                            if let Some(d) = m.dashboard.get()
                                && let Some(page) = d.route(&req).await
                            {
                                return Ok::<_, Infallible>(page);
                            }
                            let (status, body) = match req.uri().path() {
                                "/metrics" => (StatusCode::OK, m.render()),
                                "/healthz" => match m.liveness.check(std::time::Instant::now()) {
                                    Ok(()) => (StatusCode::OK, "ok\n".to_string()),
                                    Err(e) => {
                                        tracing::error!("/healthz: {e}");
                                        (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n"))
                                    }
                                },
                                "/readyz" if m.ready.load(Ordering::SeqCst) => {
                                    (StatusCode::OK, "ready\n".into())
                                }
                                "/readyz" => {
                                    (StatusCode::SERVICE_UNAVAILABLE, "not leading\n".into())
                                }
                                _ => (StatusCode::NOT_FOUND, "not found\n".into()),
                            };
                            Ok::<_, Infallible>(
                                Response::builder()
                                    .status(status)
                                    .body(Full::new(Bytes::from(body)))
                                    .expect("static response"),
                            )
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(local)
    }
}

#[cfg(test)]
mod tests {
    use super::{Metrics, count_request};

    fn count(line: &str, text: &str) -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(line)?.trim().parse().ok())
            .unwrap_or(0)
    }

    #[test]
    fn api_requests_are_counted_by_verb_with_watches_apart() {
        let m = Metrics::default();
        let watch = r#"teal_controller_api_requests_total{verb="WATCH"}"#;
        let patch = r#"teal_controller_api_requests_total{verb="PATCH"}"#;
        let before = m.render();
        let req = |method: &str, uri: &str| {
            http::Request::builder()
                .method(method)
                .uri(uri)
                .body(())
                .unwrap()
        };
        count_request(&req("GET", "/api/v1/pods?labelSelector=a&watch=true"));
        count_request(&req("PATCH", "/api/v1/namespaces/n/services/s"));
        count_request(&req("PATCH", "/api/v1/namespaces/n/services/t"));
        let after = m.render();
        // Counters are per process and other tests may count too: at least.
        assert!(count(watch, &after) > count(watch, &before), "{after}");
        assert!(count(patch, &after) >= count(patch, &before) + 2, "{after}");
    }
}
