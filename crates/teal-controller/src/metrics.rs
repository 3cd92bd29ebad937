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
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use teal_core::release::Event;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    event: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    map: String,
}

/// Counts the entries of each per-BlueGreen map, read when `/metrics` is
/// served.
pub type StateSizes = Box<dyn Fn() -> Vec<(&'static str, usize)> + Send + Sync>;

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
pub use crate::reconcile::ERROR_KINDS;

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
    state: Family<StateLabels, Gauge>,
    /// What `teal_controller_bluegreen_state_entries` shows, once the
    /// controller runs.
    pub state_sizes: Arc<std::sync::OnceLock<StateSizes>>,
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
        let state = Family::<StateLabels, Gauge>::default();
        registry.register(
            "bluegreen_state_entries",
            "Entries kept in memory per BlueGreen, by map (hook answers, hook rounds, notifiers with their resolved URLs, analysis checks, write sequence numbers, recent Events); they go when the BlueGreen is deleted",
            state.clone(),
        );
        Metrics {
            registry: Arc::new(registry),
            state,
            state_sizes: Arc::default(),
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
        if let Some(sizes) = self.state_sizes.get() {
            for (map, n) in sizes() {
                self.state
                    .get_or_create(&StateLabels { map: map.into() })
                    .set(n as i64);
            }
        }
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Serves `/metrics`, `/healthz` (alive and not wedged, see
    /// [`crate::liveness`]), `/readyz` (leading and
    /// watching) and the dashboard (`/`, `/dashboard.json`) until the
    /// process ends, with the [`ServeLimits`] defaults.
    pub async fn serve(self, addr: SocketAddr) -> std::io::Result<SocketAddr> {
        self.serve_with(addr, ServeLimits::default()).await
    }

    /// [`Metrics::serve`] with these limits: at most `max_connections`
    /// clients at once (the others wait in the accept backlog), each cut
    /// off when it does not send a request head within
    /// `header_read_timeout`; a failed accept is retried after a pause
    /// (longer each time while out of descriptors), never in a busy loop.
    pub async fn serve_with(
        self,
        addr: SocketAddr,
        limits: ServeLimits,
    ) -> std::io::Result<SocketAddr> {
        let listener = teal_serve::listen(addr)?;
        let local = listener.local_addr()?;
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout);
        builder
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(Some(limits.header_read_timeout))
            .keep_alive_timeout(limits.header_read_timeout);
        let builder = Arc::new(builder);
        let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
        tokio::spawn(async move {
            let mut backoff = teal_serve::AcceptBackoff::new("metrics");
            loop {
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    return;
                };
                let stream = match listener.accept().await {
                    Ok((stream, _)) => {
                        backoff.accepted();
                        stream
                    }
                    Err(e) => {
                        tokio::time::sleep(backoff.failed(&e)).await;
                        continue;
                    }
                };
                let m = self.clone();
                let builder = builder.clone();
                tokio::spawn(async move {
                    let _permit = permit;
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
                    let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        Ok(local)
    }
}

/// Limits of the metrics, health and dashboard port.
#[derive(Clone, Copy, Debug)]
pub struct ServeLimits {
    /// Clients served at once.
    pub max_connections: usize,
    /// A client must send a whole request head within this time.
    pub header_read_timeout: Duration,
}

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits {
            max_connections: 256,
            header_read_timeout: Duration::from_secs(10),
        }
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

    async fn served(limits: super::ServeLimits) -> std::net::SocketAddr {
        Metrics::default()
            .serve_with("127.0.0.1:0".parse().unwrap(), limits)
            .await
            .unwrap()
    }

    /// Reads until the server closes; the guard only keeps a broken server
    /// from hanging the test.
    async fn read_to_close(s: &mut tokio::net::TcpStream) -> Result<Vec<u8>, &'static str> {
        use tokio::io::AsyncReadExt;
        let mut out = Vec::new();
        match tokio::time::timeout(std::time::Duration::from_secs(20), s.read_to_end(&mut out))
            .await
        {
            Ok(_) => Ok(out),
            Err(_) => Err("the server never closed the connection"),
        }
    }

    #[tokio::test]
    async fn a_client_slow_with_its_headers_is_cut_off() {
        use tokio::io::AsyncWriteExt;
        let addr = served(super::ServeLimits {
            max_connections: 4,
            header_read_timeout: std::time::Duration::from_millis(300),
        })
        .await;
        let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let got = read_to_close(&mut slow).await.unwrap();
        assert!(
            !String::from_utf8_lossy(&got).contains("teal_controller"),
            "served a request it never finished: {got:?}"
        );
    }

    #[tokio::test]
    async fn connections_over_the_cap_wait_for_a_free_slot() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = served(super::ServeLimits {
            max_connections: 1,
            header_read_timeout: std::time::Duration::from_secs(60),
        })
        .await;
        let holder = tokio::net::TcpStream::connect(addr).await.unwrap();
        // Let the server accept the first connection before the second.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let mut next = tokio::net::TcpStream::connect(addr).await.unwrap();
        next.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        let early =
            tokio::time::timeout(std::time::Duration::from_millis(500), next.read(&mut buf)).await;
        assert!(
            early.is_err(),
            "served a second client while the only slot was taken: {early:?}"
        );
        drop(holder);
        let got = read_to_close(&mut next).await.unwrap();
        let got = String::from_utf8_lossy(&got);
        assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    }
}
