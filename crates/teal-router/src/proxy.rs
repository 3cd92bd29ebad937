//! Proxying one request: choose the color and endpoint, forward, stream back.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use teal_core::Color;

use crate::body::{ConnActivity, ConnGuard, Guards, InFlightGuard, ProxyBody};
use crate::headers::{add_forwarded, strip_hop_by_hop, wants_upgrade};
use crate::health::{self, Health};
use crate::upstream::{Pool, Pooled, SendError};
use crate::{RouteTable, Router, Shared, format_duration, idx};

/// One upstream address; its outstanding count survives table swaps.
pub(crate) struct Endpoint {
    pub(crate) addr: SocketAddr,
    pub(crate) outstanding: AtomicU64,
    pub(crate) health: Health,
}

impl Endpoint {
    pub(crate) fn new(addr: SocketAddr) -> Endpoint {
        Endpoint {
            addr,
            outstanding: AtomicU64::new(0),
            health: Health::default(),
        }
    }
}

pub(crate) struct CompiledPreview {
    pub(crate) color: Color,
    pub(crate) header: Option<(HeaderName, HeaderValue)>,
    pub(crate) cookie: Option<(String, String)>,
}

/// A validated table in the form the request path uses.
pub(crate) struct Compiled {
    pub(crate) generation: u64,
    pub(crate) table: RouteTable,
    pub(crate) preview: Option<CompiledPreview>,
    pools: [Vec<Arc<Endpoint>>; 2],
}

impl Compiled {
    /// `table` must be validated. Endpoints already known to `old` are reused
    /// so their outstanding counts carry over.
    pub(crate) fn new(generation: u64, table: RouteTable, old: Option<&Compiled>) -> Compiled {
        let pool = |color: Color| -> Vec<Arc<Endpoint>> {
            table
                .endpoints_of(color)
                .iter()
                .map(|addr| {
                    old.and_then(|o| o.pools[idx(color)].iter().find(|e| e.addr == *addr))
                        .cloned()
                        .unwrap_or_else(|| Arc::new(Endpoint::new(*addr)))
                })
                .collect()
        };
        let pools = [pool(Color::Blue), pool(Color::Green)];
        let preview = table.preview.as_ref().map(|p| CompiledPreview {
            color: p.color,
            header: p.header.as_ref().and_then(|h| {
                Some((
                    HeaderName::from_bytes(h.name.as_bytes()).ok()?,
                    HeaderValue::from_str(&h.value).ok()?,
                ))
            }),
            cookie: p.cookie.as_ref().map(|c| (c.name.clone(), c.value.clone())),
        });
        Compiled {
            generation,
            table,
            preview,
            pools,
        }
    }

    /// Endpoints of `color`.
    pub(crate) fn pool(&self, color: Color) -> &[Arc<Endpoint>] {
        &self.pools[idx(color)]
    }

    /// The color for a request with these headers.
    pub(crate) fn route(&self, headers: &HeaderMap) -> Color {
        if let Some(p) = &self.preview {
            if let Some((name, value)) = &p.header
                && headers.get_all(name).iter().any(|v| v == value)
            {
                return p.color;
            }
            if let Some((name, value)) = &p.cookie
                && has_cookie(headers, name, value)
            {
                return p.color;
            }
        }
        self.table.active
    }
}

fn has_cookie(headers: &HeaderMap, name: &str, value: &str) -> bool {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .any(|(n, v)| n == name && v == value)
}

pub(crate) fn plain(status: StatusCode, message: String) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::full(message));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// The innermost cause of an error, which names what actually happened
/// (e.g. "Connection refused (os error 111)").
pub(crate) fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = err;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// True when a client error came from the request body we were forwarding
/// (the client sent malformed or truncated body data).
fn is_client_body_error(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(h) = e.downcast_ref::<hyper::Error>()
            && h.is_user()
        {
            return true;
        }
        cur = e.source();
    }
    false
}

pub(crate) struct Outcome<'a> {
    pub(crate) shared: &'a Shared,
    pub(crate) color: Color,
    /// Sent to `color` by the preview route rather than as production.
    pub(crate) preview: bool,
    pub(crate) start: Instant,
}

impl Outcome<'_> {
    pub(crate) fn record(&self, status: StatusCode, router_error: bool) {
        let state = &self.shared.colors[idx(self.color)];
        let counters = if self.preview {
            &state.preview_stats
        } else {
            &state.stats
        };
        counters.record(status.as_u16(), self.start.elapsed(), router_error);
    }

    fn fail(&self, status: StatusCode, message: String) -> Response<ProxyBody> {
        self.record(status, true);
        let mut resp = plain(status, message);
        add_color_header(self.shared, &mut resp, self.color);
        resp
    }
}

fn add_color_header(shared: &Shared, resp: &mut Response<ProxyBody>, color: Color) {
    if let Some(name) = &shared.config.color_header {
        resp.headers_mut()
            .insert(name.clone(), HeaderValue::from_static(color.as_str()));
    }
}

pub(crate) async fn handle(
    router: Router,
    mut req: Request<Incoming>,
    client: SocketAddr,
    conn: Arc<ConnActivity>,
) -> Result<Response<ProxyBody>, Infallible> {
    let tls = conn.tls;
    let conn_guard = ConnGuard::new(conn);
    let start = Instant::now();
    let shared = &router.shared;
    if req.method() == Method::CONNECT {
        return Ok(plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "405 method not allowed: CONNECT is not proxied\n".into(),
        ));
    }

    let (color, preview, endpoint, flight) =
        match route_and_count(&router, |t| t.route(req.headers())) {
            Routed::NoTable => {
                return Ok(plain(StatusCode::SERVICE_UNAVAILABLE, NO_TABLE.into()));
            }
            Routed::NoEndpoints(color, preview) => {
                let outcome = Outcome {
                    shared,
                    color,
                    preview,
                    start,
                };
                return Ok(outcome.fail(StatusCode::SERVICE_UNAVAILABLE, no_endpoints(color)));
            }
            Routed::To(color, preview, endpoint, flight) => (color, preview, endpoint, flight),
        };
    let outcome = Outcome {
        shared,
        color,
        preview,
        start,
    };

    let upgrade = req.version() == Version::HTTP_11 && wants_upgrade(req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let websocket = upgrade && crate::websocket::is_websocket(req.headers());
    let req = upstream_request(req, client, tls, upgrade);
    let sent = send_with_retries(&router, &outcome, req, upgrade, endpoint, flight).await;
    let (mut resp, upstream_conn, endpoint, flight) = match sent {
        Ok(sent) => sent,
        Err(failed) => return Ok(failed),
    };
    let status = resp.status();
    outcome.record(status, false);

    if status == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade else {
            let message = switched_unasked(color, endpoint.addr);
            return Ok(outcome.fail(StatusCode::BAD_GATEWAY, message));
        };
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        let tunnel = Tunnel {
            client: client_upgrade,
            upstream: upstream_upgrade,
            websocket,
            flight,
        };
        return Ok(switch_protocols(&router, color, resp, tunnel, conn_guard));
    }

    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers, false);
    let mut out = Response::from_parts(
        parts,
        ProxyBody::upstream(
            body,
            upstream_conn,
            Guards {
                _flight: Some(flight),
                _conn: Some(conn_guard),
            },
            shared.config.upstream_body_timeout,
        ),
    );
    add_color_header(shared, &mut out, color);
    Ok(out)
}

/// The request as sent upstream: hop-by-hop headers dropped, forwarding
/// headers added, the Host kept, an origin-form target, HTTP/1.1.
fn upstream_request(
    req: Request<Incoming>,
    client: SocketAddr,
    tls: bool,
    upgrade: bool,
) -> Request<Incoming> {
    let (mut parts, body) = req.into_parts();
    let host = parts.headers.get(header::HOST).cloned().or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    strip_hop_by_hop(&mut parts.headers, upgrade);
    add_forwarded(&mut parts.headers, client.ip(), host.as_ref(), tls);
    if let Some(h) = host {
        parts.headers.insert(header::HOST, h);
    }
    // Upstream connections are to the endpoint itself: origin-form target.
    parts.uri = Uri::from(
        parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    );
    parts.version = Version::HTTP_11;
    Request::from_parts(parts, body)
}

/// What an upstream answered, on which connection, from which endpoint
/// (and the request counted in flight there).
type Answered = (
    Response<Incoming>,
    Option<Pooled>,
    Arc<Endpoint>,
    InFlightGuard,
);

/// Sends `req` to `endpoint`, or to the color's next endpoints while
/// connecting fails (the request was not sent on a failed connect, so it
/// may go elsewhere whatever its method). `Err` is the answer to give the
/// client.
async fn send_with_retries(
    router: &Router,
    outcome: &Outcome<'_>,
    mut req: Request<Incoming>,
    upgrade: bool,
    mut endpoint: Arc<Endpoint>,
    mut flight: InFlightGuard,
) -> Result<Answered, Response<ProxyBody>> {
    let shared = &router.shared;
    let color = outcome.color;
    let timeout = shared.config.upstream_timeout;
    // Connects that failed, in order.
    let mut failed: Vec<(SocketAddr, std::io::Error)> = Vec::new();
    loop {
        let addr = endpoint.addr;
        let pool = shared.colors[idx(color)].pool.load_full();
        let sent = tokio::time::timeout(timeout, send(&pool, addr, req, upgrade)).await;
        drop(pool);
        match sent {
            Err(_) => {
                let message = upstream_timed_out(shared, color, addr);
                return Err(outcome.fail(StatusCode::GATEWAY_TIMEOUT, message));
            }
            Ok(Err(SendError::Connect(e, unsent))) => {
                failed.push((addr, e));
                if let Some(next) = after_connect_failure(router, color, &endpoint, &failed) {
                    endpoint = next;
                    // Counted on the next endpoint before the failed one is
                    // released, so the color never looks idle to a drain.
                    flight =
                        InFlightGuard::new(router.shared.clone(), idx(color), endpoint.clone());
                    req = *unsent;
                    continue;
                }
                let message = connect_failed_message(color, &failed);
                return Err(outcome.fail(StatusCode::BAD_GATEWAY, message));
            }
            Ok(Err(SendError::Http(e))) if is_client_body_error(&e) => {
                tracing::debug!(error = %e, "client request body failed");
                let mut resp =
                    outcome.fail(StatusCode::BAD_REQUEST, bad_request_body(&root_cause(&e)));
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                return Err(resp);
            }
            Ok(Err(SendError::Http(e))) => {
                let message = failed_before_answering(color, addr, &root_cause(&e));
                return Err(outcome.fail(StatusCode::BAD_GATEWAY, message));
            }
            Ok(Err(SendError::Closed)) => {
                let message = closed_before_answering(color, addr);
                return Err(outcome.fail(StatusCode::BAD_GATEWAY, message));
            }
            Ok(Ok((resp, conn))) => {
                endpoint.health.succeeded();
                return Ok((resp, conn, endpoint, flight));
            }
        }
    }
}

/// Both halves of a switched connection, and the request in flight it
/// keeps counted until the tunnel ends.
struct Tunnel {
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    websocket: bool,
    flight: InFlightGuard,
}

/// Answers a 101 to the client and joins the two upgraded connections in
/// the background, registered with the color so a drain can close it.
fn switch_protocols(
    router: &Router,
    color: Color,
    resp: Response<Incoming>,
    t: Tunnel,
    conn_guard: ConnGuard,
) -> Response<ProxyBody> {
    let (parts, _) = resp.into_parts();
    let mut out = Response::from_parts(
        parts,
        ProxyBody::empty_with(Guards {
            _flight: None,
            _conn: Some(conn_guard),
        }),
    );
    strip_hop_by_hop(out.headers_mut(), true);
    add_color_header(&router.shared, &mut out, color);
    let (id, close) = router.shared.colors[idx(color)]
        .upgrades
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .register();
    let shared = router.shared.clone();
    tokio::spawn(async move {
        tunnel(t.client, t.upstream, close, t.websocket).await;
        shared.colors[idx(color)]
            .upgrades
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        drop(t.flight);
    });
    out
}

/// Sends `req` to `addr`: an upgrade on a connection of its own, anything
/// else on a pooled connection.
async fn send(
    pool: &Arc<Pool>,
    addr: SocketAddr,
    req: Request<Incoming>,
    upgrade: bool,
) -> Result<(Response<Incoming>, Option<Pooled>), SendError> {
    if upgrade {
        pool.send_upgrade(addr, req).await.map(|r| (r, None))
    } else {
        pool.send(addr, req).await
    }
}

/// Copies bytes both ways between an upgraded client connection and its
/// upstream until either side closes or `close` fires (drain timeout); a
/// WebSocket is then ended with close frames where it can be (see
/// [`crate::websocket`]).
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    close: tokio::sync::oneshot::Receiver<()>,
    websocket: bool,
) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade did not complete");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    if websocket {
        return crate::websocket::relay(client, upstream, close).await;
    }
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "upgraded connection ended with an error");
            }
        }
        _ = close => {
            tracing::info!("closing an upgraded connection of a drained color");
        }
    }
}

pub(crate) const NO_TABLE: &str = "503 service unavailable: no route table installed yet\n";

pub(crate) fn no_endpoints(color: Color) -> String {
    format!("503 service unavailable: no endpoints for color {color}\n")
}

pub(crate) fn closed_before_answering(color: Color, addr: SocketAddr) -> String {
    format!("502 bad gateway: upstream {color} {addr} closed the connection before answering\n")
}

pub(crate) fn failed_before_answering(color: Color, addr: SocketAddr, cause: &str) -> String {
    format!("502 bad gateway: upstream {color} {addr} failed before answering: {cause}\n")
}

pub(crate) fn switched_unasked(color: Color, addr: SocketAddr) -> String {
    format!("502 bad gateway: upstream {color} {addr} switched protocols unasked\n")
}

pub(crate) fn bad_request_body(cause: &str) -> String {
    format!("400 bad request: the request body was malformed or cut off: {cause}\n")
}

/// A request to `addr` of `color` got no response head within the upstream
/// timeout. Its connection is dropped by the caller; the endpoint's idle
/// ones may be as dead (its link gone), so they are closed: later requests
/// connect anew, which fails fast into a retry if the path is gone. Returns
/// the 504 message.
pub(crate) fn upstream_timed_out(shared: &Shared, color: Color, addr: SocketAddr) -> String {
    let closed = shared.colors[idx(color)].pool.load().close_idle(addr);
    if closed > 0 {
        tracing::debug!(endpoint = %addr, closed, "upstream timeout; idle connections to the endpoint closed");
    }
    let timeout = shared.config.upstream_timeout;
    format!(
        "504 gateway timeout: upstream {color} {addr} did not answer within {}\n",
        format_duration(timeout)
    )
}

/// The connect to `endpoint` of `color` just failed (last of `failed`, the
/// failed connects of this request in order): counted, the endpoint ejected
/// as its failure streak says, its idle connections closed (they have most
/// likely lost their path too, and a request sent on one would wait for the
/// upstream timeout). Returns the endpoint to try next while attempts are
/// left; the request was not sent, so it may go there whatever its method.
pub(crate) fn after_connect_failure(
    router: &Router,
    color: Color,
    endpoint: &Arc<Endpoint>,
    failed: &[(SocketAddr, std::io::Error)],
) -> Option<Arc<Endpoint>> {
    let shared = &router.shared;
    let config = &shared.config;
    let state = &shared.colors[idx(color)];
    state.stats.connect_error();
    let now = shared.now_ms();
    let table = shared.table.load_full();
    let endpoints = table.as_deref().map_or(&[][..], |t| t.pool(color));
    health::connect_failed(
        endpoint,
        endpoints,
        now,
        config.ejection_base,
        config.ejection_max,
        &state.health,
    );
    let addr = endpoint.addr;
    let closed = state.pool.load().close_idle(addr);
    if closed > 0 {
        tracing::debug!(endpoint = %addr, closed, "connect failed; idle connections to the endpoint closed");
    }
    let tried: Vec<SocketAddr> = failed.iter().map(|(a, _)| *a).collect();
    let next = (failed.len() < config.connect_attempts)
        .then(|| health::next_untried(endpoints, &tried, now))
        .flatten()?;
    tracing::debug!(color = %color, from = %addr, to = %next.addr, "connect failed; trying another endpoint");
    state.health.retries.fetch_add(1, Ordering::Relaxed);
    Some(next.clone())
}

/// The 502 message after every connect of a request failed.
pub(crate) fn connect_failed_message(
    color: Color,
    failed: &[(SocketAddr, std::io::Error)],
) -> String {
    let mut message = String::from("502 bad gateway:");
    for (i, (a, e)) in failed.iter().enumerate() {
        let sep = if i == 0 { "" } else { ";" };
        let _ = write!(message, "{sep} cannot connect to upstream {color} {a}: {e}");
    }
    message.push('\n');
    message
}

/// Where a request goes.
pub(crate) enum Routed {
    NoTable,
    /// Its color, and whether the preview route sent it there.
    NoEndpoints(Color, bool),
    /// Its color, whether the preview route sent it there (to a color other
    /// than the live one), its endpoint, and its count as in flight there.
    To(Color, bool, Arc<Endpoint>, InFlightGuard),
}

/// Routes a request (`color_of` picks its color in the installed table),
/// counts it as in flight on the chosen endpoint, then checks that no swap
/// happened in between: a drain that starts after a swap returned
/// therefore sees every request routed by the old table.
pub(crate) fn route_and_count(router: &Router, color_of: impl Fn(&Compiled) -> Color) -> Routed {
    let shared = &router.shared;
    loop {
        let installed = shared.table.load();
        let Some(table) = installed.as_ref() else {
            return Routed::NoTable;
        };
        let color = color_of(table);
        let preview = color != table.table.active;
        let Some(endpoint) = router.pick(table.pool(color)).cloned() else {
            return Routed::NoEndpoints(color, preview);
        };
        let flight = InFlightGuard::new(shared.clone(), idx(color), endpoint.clone());
        if shared
            .table
            .load()
            .as_ref()
            .is_some_and(|now| Arc::ptr_eq(now, table))
        {
            return Routed::To(color, preview, endpoint, flight);
        }
    }
}
