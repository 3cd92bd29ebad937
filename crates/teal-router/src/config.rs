//! Router settings.

use std::time::Duration;

use http::HeaderName;

use crate::Tls;

/// What happens to upgraded (e.g. WebSocket) connections of a color whose
/// drain timed out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum UpgradePolicy {
    /// Close them when the drain timeout passes (the default): after a
    /// release no client stays on the old color.
    #[default]
    Close,
    /// Leave them open until either side closes them.
    Keep,
}

/// The protocol the router speaks to upstream endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 with pooled keep-alive connections (the default).
    #[default]
    Http1,
    /// HTTP/2 over cleartext with prior knowledge: one multiplexed
    /// connection per worker thread and endpoint.
    H2c,
}

/// Timeouts and limits of the router. `Default` gives settings fit for
/// production on loopback and behind a load balancer.
#[derive(Clone, Debug)]
pub struct RouterConfig {
    /// Connecting to an upstream endpoint.
    pub connect_timeout: Duration,
    /// From sending a request upstream until its response headers arrive.
    pub upstream_timeout: Duration,
    /// Longest wait for the next part of an upstream response body once its
    /// head arrived (between two reads, like nginx's `proxy_read_timeout`):
    /// the response is then cut off and the client connection closed, so a
    /// stalled upstream cannot hold a client and a drain forever. Zero: no
    /// limit (for streams that may stay silent longer).
    pub upstream_body_timeout: Duration,
    /// A client must send a complete request head within this time.
    pub header_read_timeout: Duration,
    /// A client connection with no request in progress is closed after this.
    pub idle_timeout: Duration,
    /// Accepted client connections at once; further clients wait in the
    /// listen backlog.
    pub max_connections: usize,
    /// Largest request head accepted (HTTP/1.1 buffer, HTTP/2 header list).
    pub max_header_bytes: usize,
    /// Concurrent HTTP/2 streams per client connection.
    pub max_concurrent_streams: u32,
    /// Idle upstream connections kept per endpoint.
    pub pool_max_idle_per_endpoint: usize,
    /// Idle upstream connections are closed after this.
    pub pool_idle_timeout: Duration,
    /// When set, responses carry this header naming the color that served.
    pub color_header: Option<HeaderName>,
    /// Upgraded connections of a color whose drain timed out.
    pub upgrade_policy: UpgradePolicy,
    /// On shutdown, how long open connections get to finish.
    pub shutdown_grace: Duration,
    /// Threads serving client connections, each running its own
    /// single-threaded runtime (a connection and its upstream requests stay
    /// on one thread). 0: `TOKIO_WORKER_THREADS` when set, else one per CPU.
    pub workers: usize,
    /// Endpoints of the color a request tries when connects fail (refused,
    /// unreachable, connect timeout), counting the first; at least 1.
    pub connect_attempts: usize,
    /// Cooldown of an endpoint after its first failed connect; doubled for
    /// every further consecutive failure.
    pub ejection_base: Duration,
    /// Longest cooldown of an endpoint whose connects keep failing.
    pub ejection_max: Duration,
    /// TLS on the client listener (ALPN h2 and http/1.1); cleartext when
    /// unset.
    pub tls: Option<Tls>,
    /// Protocol to upstream endpoints, for both colors. Upgrades (e.g.
    /// WebSocket) always use HTTP/1.1 connections of their own.
    pub upstream_protocol: UpstreamProtocol,
    /// Serve plain HTTP/1.1 requests on cleartext connections on the lean
    /// path (one parse per head, bytes relayed, upstream connections per
    /// worker); anything else, and everything when false, takes the general
    /// path. Only applies with [`UpstreamProtocol::Http1`].
    pub lean_http1: bool,
}

impl RouterConfig {
    /// The number of worker threads `workers` asks for.
    pub fn worker_threads(&self) -> usize {
        if self.workers > 0 {
            return self.workers;
        }
        std::env::var("TOKIO_WORKER_THREADS")
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|n| *n > 0)
            .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
            .unwrap_or(1)
    }
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            connect_timeout: Duration::from_secs(2),
            upstream_timeout: Duration::from_secs(30),
            upstream_body_timeout: Duration::from_secs(300),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            max_header_bytes: 64 * 1024,
            max_concurrent_streams: 256,
            pool_max_idle_per_endpoint: 512,
            pool_idle_timeout: Duration::from_secs(30),
            color_header: None,
            upgrade_policy: UpgradePolicy::Close,
            shutdown_grace: Duration::from_secs(10),
            workers: 0,
            connect_attempts: 3,
            ejection_base: Duration::from_secs(1),
            ejection_max: Duration::from_secs(30),
            tls: None,
            upstream_protocol: UpstreamProtocol::Http1,
            lean_http1: true,
        }
    }
}
