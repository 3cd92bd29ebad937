//! A client connection on the lean path: request heads read and routed,
//! each request exchanged with an upstream (failover after failed
//! connects, one resend on a fresh connection when a pooled one was found
//! closed), its response relayed; failures answered and logged by whose
//! fault they were ([`Error`]). The connection goes to the general path at
//! the first request the lean path does not take.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use http::StatusCode;
use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;
use teal_core::Color;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use super::error::{Error, Fault};
use super::framing::Framing;
use super::io::{Deadline, Prefixed, write_all, write_body};
use super::parse::{
    self, MAX_HEADERS, ParsedResponse, ReqInfo, RequestParse, ResponseError, ResponseHead, plain,
    visible_ascii,
};
use crate::body::InFlightGuard;
use crate::proxy::{self, Compiled, Endpoint, Outcome, Routed};
use crate::upstream::{Pool, RawConn};
use crate::{Router, Shared, format_duration, idx};

/// Largest response head accepted from an upstream.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Bytes read from a socket at a time.
const READ_CHUNK: usize = 16 * 1024;

/// A request head that the lean path forwards.
pub(crate) struct Plan {
    head_len: usize,
    body_len: usize,
    /// The client asked to close the connection after this response.
    close: bool,
    /// A HEAD request: the response has no body whatever its headers say.
    head: bool,
    /// Safe to send again when a reused connection closed without an answer.
    idempotent: bool,
    pub(crate) color: Color,
    /// Sent to `color` by the preview route.
    preview: bool,
    endpoint: Arc<Endpoint>,
    flight: InFlightGuard,
}

/// A request the router answers itself, having nowhere to send it; its
/// body is skipped.
pub(crate) struct Refusal {
    head_len: usize,
    body_len: usize,
    close: bool,
    error: Error,
    /// The color and whether the preview route chose it.
    color: Option<(Color, bool)>,
}

pub(crate) enum Parsed {
    /// More bytes are needed.
    Partial,
    /// For the general path.
    Handoff,
    Reply(Refusal),
    Forward(Plan),
}

/// The color for a request with these headers (as `Compiled::route`).
fn route(table: &Compiled, headers: &[httparse::Header<'_>]) -> Color {
    if let Some(p) = &table.preview {
        if let Some((name, value)) = &p.header
            && headers
                .iter()
                .any(|h| h.name.eq_ignore_ascii_case(name.as_str()) && h.value == value.as_bytes())
        {
            return p.color;
        }
        if let Some((name, value)) = &p.cookie
            && headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case("cookie") && visible_ascii(h.value))
                .filter_map(|h| std::str::from_utf8(h.value).ok())
                .flat_map(|v| v.split(';'))
                .filter_map(|pair| pair.trim().split_once('='))
                .any(|(n, v)| n == name && v == value)
        {
            return p.color;
        }
    }
    table.table.active
}

/// Parses the request head at the start of `buf`; for a request the lean
/// path forwards, routes it and writes the upstream head into `out`.
pub(crate) fn prepare(router: &Router, buf: &[u8], peer: SocketAddr, out: &mut Vec<u8>) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let head = match parse::request_head(&mut headers, buf) {
        RequestParse::Partial => return Parsed::Partial,
        RequestParse::Handoff => return Parsed::Handoff,
        RequestParse::Complete(head) => head,
    };
    let refuse = |error, color| {
        Parsed::Reply(Refusal {
            head_len: head.head_len,
            body_len: head.body_len,
            close: head.close,
            error,
            color,
        })
    };
    let (color, preview, endpoint, flight) =
        match proxy::route_and_count(router, |t| route(t, head.headers)) {
            Routed::NoTable => return refuse(Error::NoTable, None),
            Routed::NoEndpoints(color, preview) => {
                return refuse(Error::NoEndpoints(color), Some((color, preview)));
            }
            Routed::To(color, preview, endpoint, flight) => (color, preview, endpoint, flight),
        };
    head.write_upstream(peer.ip(), out);
    Parsed::Forward(Plan {
        head_len: head.head_len,
        body_len: head.body_len,
        close: head.close,
        head: head.is_head(),
        idempotent: head.idempotent(),
        color,
        preview,
        endpoint,
        flight,
    })
}

/// What the client is told of a failure, worded as the general path words
/// it; `upstream` is the color and endpoint the request went to.
fn message(shared: &Shared, e: &Error, upstream: Option<(Color, SocketAddr)>) -> String {
    match (e, upstream) {
        (Error::HeadTimeout(_), _) => format!("408 request timeout: {e}\n"),
        (Error::ClientClosed | Error::ClientRead(_) | Error::BodyTimeout(_), _) => {
            proxy::bad_request_body(&e.to_string())
        }
        (Error::NoTable, _) => proxy::NO_TABLE.into(),
        (Error::NoEndpoints(color), _) => proxy::no_endpoints(*color),
        (Error::Unreachable(failed), Some((color, _))) => {
            proxy::connect_failed_message(color, failed)
        }
        // Closes the endpoint's idle connections too.
        (Error::Timeout, Some((color, addr))) => proxy::upstream_timed_out(shared, color, addr),
        (Error::Response(ResponseError::SwitchedUnasked), Some((color, addr))) => {
            proxy::switched_unasked(color, addr)
        }
        (_, Some((color, addr))) => proxy::failed_before_answering(color, addr, &e.to_string()),
        (_, None) => format!("{e}\n"),
    }
}

/// Logs a failure that cut a response off after its head went out.
fn log_relay_failure(addr: SocketAddr, e: &Error) {
    match e {
        Error::BodyStalled(timeout) => {
            tracing::warn!(endpoint = %addr, timeout = %format_duration(*timeout), "upstream response body stalled; cutting it off");
        }
        e if e.fault() == Fault::Client => {
            tracing::debug!(endpoint = %addr, fault = %e.fault(), error = %e, "client connection failed during the response");
        }
        e => {
            tracing::debug!(endpoint = %addr, fault = %e.fault(), error = %e, "upstream response body cut off");
        }
    }
}

/// What became of one request.
enum Next {
    KeepAlive,
    Close,
}

/// Sends the request (`request` head, `body`) to `addr` and reads the
/// response head; the client's response head is written into `resp`.
async fn exchange(
    pool: &Arc<Pool>,
    addr: SocketAddr,
    fresh_only: bool,
    request: &[u8],
    body: &[u8],
    req: ReqInfo<'_>,
    resp: &mut Vec<u8>,
) -> Result<(RawConn, ResponseHead), Error> {
    let pooled = if fresh_only {
        None
    } else {
        pool.checkout_raw(addr)
    };
    let mut up = match pooled {
        Some(c) => c,
        None => pool.connect_raw(addr).await.map_err(Error::Connect)?,
    };
    let reused = up.reused;
    if let Err(e) = write_all(&mut up.stream, &mut [request, body]).await {
        return Err(Error::Closed {
            reused,
            cause: Some(e),
        });
    }
    up.buf.clear();
    let mut answered = false;
    loop {
        if up.buf.len() > MAX_RESPONSE_HEAD {
            return Err(Error::HeadTooLarge);
        }
        up.buf.reserve(READ_CHUNK);
        match up.stream.read_buf(&mut up.buf).await {
            Ok(0) if !answered => {
                return Err(Error::Closed {
                    reused,
                    cause: None,
                });
            }
            Ok(0) => return Err(Error::ClosedInHead),
            Err(e) if !answered => {
                return Err(Error::Closed {
                    reused,
                    cause: Some(e),
                });
            }
            Err(e) => return Err(Error::ReadHead(e)),
            Ok(_) => answered = true,
        }
        loop {
            match parse::response_head(&up.buf, req, resp)? {
                ParsedResponse::Partial => break,
                ParsedResponse::Interim(n) => {
                    up.buf.advance(n);
                    if up.buf.is_empty() {
                        break;
                    }
                }
                ParsedResponse::Final(head) => return Ok((up, head)),
            }
        }
    }
}

struct Conn {
    router: Router,
    client: TcpStream,
    peer: SocketAddr,
    /// Bytes read from the client and not consumed yet.
    buf: BytesMut,
    /// The upstream request head.
    out: Vec<u8>,
    /// The client response head.
    resp: Vec<u8>,
    deadline: Deadline,
}

/// Serves a cleartext client connection on the lean path, handing it to
/// the general path at the first request the lean path does not take.
pub(crate) async fn serve(
    router: Router,
    builder: &auto::Builder<TokioExecutor>,
    client: TcpStream,
    peer: SocketAddr,
    stop: watch::Receiver<bool>,
) {
    // Registered with the shutdown signal once per connection, not once
    // per request: the signal's waiter list is shared by every connection.
    let mut watched = stop.clone();
    let mut stopping: Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(async move {
        let _ = watched.changed().await;
    });
    let mut c = Conn {
        router,
        client,
        peer,
        buf: BytesMut::new(),
        out: Vec::new(),
        resp: Vec::new(),
        deadline: Deadline::new(),
    };
    loop {
        let Some(parsed) = c.next_head(&stop, stopping.as_mut()).await else {
            return;
        };
        let next = match parsed {
            Parsed::Partial | Parsed::Handoff => break,
            Parsed::Reply(refusal) => c.reply(refusal).await,
            Parsed::Forward(plan) => c.forward(plan).await,
        };
        if matches!(next, Next::Close) || *stop.borrow() {
            let _ = c.client.shutdown().await;
            return;
        }
    }
    let Conn {
        router,
        client,
        peer,
        buf,
        ..
    } = c;
    let io = Prefixed {
        prefix: buf.freeze(),
        io: client,
    };
    router.serve_io(builder, io, peer, false, stop).await;
}

impl Conn {
    /// Reads until a whole request head is buffered and parses it; `None`
    /// when the connection is to be closed (client gone, idle or
    /// header-read timeout, shutdown).
    async fn next_head(
        &mut self,
        stop: &watch::Receiver<bool>,
        mut stopping: Pin<&mut (dyn Future<Output = ()> + Send)>,
    ) -> Option<Parsed> {
        let shared = self.router.shared.clone();
        let config = &shared.config;
        let mut head_started: Option<Instant> = None;
        let idle_since = Instant::now();
        loop {
            if !self.buf.is_empty() {
                match prepare(&self.router, &self.buf, self.peer, &mut self.out) {
                    Parsed::Partial => {}
                    parsed => return Some(parsed),
                }
                if self.buf.len() >= config.max_header_bytes.max(8192) {
                    // The general path answers 431.
                    return Some(Parsed::Handoff);
                }
            }
            let waiting_idle = self.buf.is_empty();
            if waiting_idle {
                if *stop.borrow() {
                    return None;
                }
                self.deadline.set(idle_since + config.idle_timeout);
            } else {
                let started = *head_started.get_or_insert_with(Instant::now);
                self.deadline.set(started + config.header_read_timeout);
            }
            self.buf.reserve(READ_CHUNK);
            tokio::select! {
                r = self.client.read_buf(&mut self.buf) => match r {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                },
                _ = self.deadline.expired() => {
                    if !waiting_idle {
                        let e = Error::HeadTimeout(config.header_read_timeout);
                        self.answer(&shared, &e, None, None, true).await;
                    }
                    return None;
                }
                _ = stopping.as_mut(), if waiting_idle => return None,
            }
        }
    }

    /// Answers a failed request with the router's own plain-text response;
    /// `upstream` is the color and endpoint it went to. Whether the answer
    /// was written.
    async fn answer(
        &mut self,
        shared: &Shared,
        e: &Error,
        upstream: Option<(Color, SocketAddr)>,
        color: Option<Color>,
        close: bool,
    ) -> bool {
        let status = e.status().unwrap_or(StatusCode::BAD_GATEWAY);
        let message = message(shared, e, upstream);
        tracing::debug!(client = %self.peer, fault = %e.fault(), status = status.as_u16(), error = %e, "request failed");
        let header = shared.config.color_header.as_ref();
        plain(&mut self.resp, status, &message, header.zip(color), close);
        self.client.write_all(&self.resp).await.is_ok()
    }

    /// Makes sure the whole (small) request body is buffered after its
    /// head; a request held in memory can be sent again on another
    /// connection.
    async fn read_body(&mut self, head_len: usize, body_len: usize) -> Result<(), Error> {
        let want = head_len + body_len;
        if self.buf.len() >= want {
            return Ok(());
        }
        let timeout = self.router.shared.config.header_read_timeout;
        self.deadline.set(Instant::now() + timeout);
        while self.buf.len() < want {
            self.buf.reserve(want - self.buf.len());
            tokio::select! {
                r = self.client.read_buf(&mut self.buf) => match r {
                    Ok(0) => return Err(Error::ClientClosed),
                    Err(e) => return Err(Error::ClientRead(e)),
                    Ok(_) => {}
                },
                _ = self.deadline.expired() => return Err(Error::BodyTimeout(timeout)),
            }
        }
        Ok(())
    }

    /// Answers a request the router cannot route.
    async fn reply(&mut self, r: Refusal) -> Next {
        let body = self.read_body(r.head_len, r.body_len).await;
        let close = r.close || body.is_err();
        if body.is_ok() {
            self.buf.advance(r.head_len + r.body_len);
        }
        let shared = self.router.shared.clone();
        if let Some((color, preview)) = r.color {
            let outcome = Outcome {
                shared: &shared,
                color,
                preview,
                start: std::time::Instant::now(),
            };
            outcome.record(r.error.status().unwrap_or_default(), true);
        }
        let color = r.color.map(|(c, _)| c);
        if !self.answer(&shared, &r.error, None, color, close).await || close {
            return Next::Close;
        }
        Next::KeepAlive
    }

    /// Proxies one request and relays its response.
    async fn forward(&mut self, mut plan: Plan) -> Next {
        let shared = self.router.shared.clone();
        let color = plan.color;
        let outcome = Outcome {
            shared: &shared,
            color,
            preview: plan.preview,
            start: std::time::Instant::now(),
        };
        let req = ReqInfo {
            head: plan.head,
            close: plan.close,
            color,
            color_header: shared.config.color_header.as_ref(),
        };
        if let Err(e) = self.read_body(plan.head_len, plan.body_len).await {
            outcome.record(e.status().unwrap_or_default(), true);
            self.answer(&shared, &e, None, Some(color), true).await;
            return Next::Close;
        }
        let pool = shared.colors[idx(color)].pool.load_full();
        let sent = self.send(&mut plan, &pool, req).await;
        self.buf.advance(plan.head_len + plan.body_len);
        let (mut up, head) = match sent {
            Ok(sent) => sent,
            Err(e) => {
                outcome.record(e.status().unwrap_or_default(), true);
                let at = Some((color, plan.endpoint.addr));
                let written = self.answer(&shared, &e, at, Some(color), plan.close).await;
                drop(plan.flight);
                return if !written || plan.close {
                    Next::Close
                } else {
                    Next::KeepAlive
                };
            }
        };
        outcome.record(head.status, false);
        let relayed = self.relay(&mut up, &head).await;
        drop(plan.flight);
        match relayed {
            Ok(()) if head.reusable => pool.checkin_raw(plan.endpoint.addr, up),
            Ok(()) => {}
            Err(e) => {
                log_relay_failure(plan.endpoint.addr, &e);
                return Next::Close;
            }
        }
        if head.close_client {
            Next::Close
        } else {
            Next::KeepAlive
        }
    }

    /// Sends the request of `plan` (buffered, head and body) to its
    /// endpoint and reads the response head, within the upstream timeout.
    /// A failed connect moves the request, and its in-flight count, to
    /// another endpoint while attempts are left; an idempotent request is
    /// sent once more on a fresh connection when a pooled one turns out
    /// closed. `plan.endpoint` is the endpoint last tried.
    async fn send(
        &mut self,
        plan: &mut Plan,
        pool: &Arc<Pool>,
        req: ReqInfo<'_>,
    ) -> Result<(RawConn, ResponseHead), Error> {
        let shared = &self.router.shared;
        let color = plan.color;
        self.deadline
            .set(Instant::now() + shared.config.upstream_timeout);
        let mut failed: Vec<(SocketAddr, std::io::Error)> = Vec::new();
        let mut fresh_only = false;
        loop {
            let addr = plan.endpoint.addr;
            let body = &self.buf[plan.head_len..plan.head_len + plan.body_len];
            let result = tokio::select! {
                r = exchange(pool, addr, fresh_only, &self.out, body, req, &mut self.resp) => r,
                _ = self.deadline.expired() => Err(Error::Timeout),
            };
            match result {
                Ok(sent) => {
                    plan.endpoint.health.succeeded();
                    return Ok(sent);
                }
                Err(Error::Connect(e)) => {
                    failed.push((addr, e));
                    let Some(next) =
                        proxy::after_connect_failure(&self.router, color, &plan.endpoint, &failed)
                    else {
                        return Err(Error::Unreachable(failed));
                    };
                    plan.endpoint = next;
                    // Counted on the next endpoint before the failed one is
                    // released, so the color never looks idle to a drain.
                    plan.flight =
                        InFlightGuard::new(shared.clone(), idx(color), plan.endpoint.clone());
                    fresh_only = false;
                }
                Err(Error::Closed { reused: true, .. }) if plan.idempotent && !fresh_only => {
                    tracing::debug!(endpoint = %addr, "pooled connection was closed; sending on a new one");
                    fresh_only = true;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Relays the response whose head is in `self.resp`: the head and the
    /// body bytes already read in one write, then the rest of the body as
    /// it arrives, within the upstream body timeout between reads.
    async fn relay(&mut self, up: &mut RawConn, head: &ResponseHead) -> Result<(), Error> {
        up.buf.advance(head.head_len);
        let mut framing = head.framing;
        let k = framing.take(&up.buf)?;
        write_body(&mut self.client, &self.resp, &up.buf[..k], head.rechunk)
            .await
            .map_err(Error::ClientWrite)?;
        up.buf.advance(k);
        let body_timeout = self.router.shared.config.upstream_body_timeout;
        while !framing.done() {
            up.buf.reserve(READ_CHUNK);
            if !body_timeout.is_zero() {
                self.deadline.set(Instant::now() + body_timeout);
            }
            let read = tokio::select! {
                r = up.stream.read_buf(&mut up.buf) => r,
                _ = self.deadline.expired(), if !body_timeout.is_zero() => {
                    return Err(Error::BodyStalled(body_timeout));
                }
            };
            match read {
                Ok(0) if framing == Framing::Close => {
                    if head.rechunk {
                        self.client
                            .write_all(b"0\r\n\r\n")
                            .await
                            .map_err(Error::ClientWrite)?;
                    }
                    return Ok(());
                }
                // Cut off: the client sees its connection close too.
                Ok(0) | Err(_) => return Err(Error::BodyCutOff),
                Ok(_) => {}
            }
            let k = framing.take(&up.buf)?;
            write_body(&mut self.client, &[], &up.buf[..k], head.rechunk)
                .await
                .map_err(Error::ClientWrite)?;
            up.buf.advance(k);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(table: &str) -> Router {
        Router::new(
            crate::RouterConfig::default(),
            crate::RouteTable::from_json(table.as_bytes()).unwrap(),
        )
        .unwrap()
    }

    fn forward(router: &Router, head: &str) -> (Plan, String) {
        let mut out = Vec::new();
        let peer: SocketAddr = "10.1.2.3:5555".parse().unwrap();
        match prepare(router, head.as_bytes(), peer, &mut out) {
            Parsed::Forward(plan) => (plan, String::from_utf8(out).unwrap()),
            _ => panic!("not forwarded: {head:?}"),
        }
    }

    #[test]
    fn request_head_is_rewritten_as_the_general_path_does() {
        let r = router(r#"{"active":"blue","endpoints":{"blue":["127.0.0.1:1"]}}"#);
        let (plan, out) = forward(
            &r,
            "GET /a?b=1 HTTP/1.1\r\nHost: shop.test\r\nConnection: keep-alive, x-secret\r\nX-Secret: 1\r\nKeep-Alive: 5\r\nProxy-Authorization: x\r\nTE: trailers, gzip\r\nX-Forwarded-For: 1.1.1.1\r\nX-Forwarded-Proto: https\r\nX-Keep: yes\r\n\r\n",
        );
        assert_eq!(plan.color, Color::Blue);
        assert!(!plan.close);
        assert_eq!(
            out,
            "GET /a?b=1 HTTP/1.1\r\nHost: shop.test\r\nX-Keep: yes\r\nx-forwarded-for: 1.1.1.1, 10.1.2.3\r\nx-forwarded-proto: http\r\nx-forwarded-host: shop.test\r\nte: trailers\r\n\r\n"
        );
    }

    #[test]
    fn unusual_requests_go_to_the_general_path() {
        let r = router(r#"{"active":"blue","endpoints":{"blue":["127.0.0.1:1"]}}"#);
        let mut out = Vec::new();
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        for head in [
            "GET / HTTP/1.0\r\nHost: x\r\n\r\n",
            "GET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n",
            "CONNECT x:443 HTTP/1.1\r\nHost: x\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "\x00\x01 garbage\r\n\r\n",
        ] {
            assert!(
                matches!(
                    prepare(&r, head.as_bytes(), peer, &mut out),
                    Parsed::Handoff
                ),
                "{head:?}"
            );
        }
        assert!(matches!(
            prepare(&r, b"GET / HTTP/1.1\r\nHost: x\r\n", peer, &mut out),
            Parsed::Partial
        ));
    }

    #[test]
    fn preview_header_and_cookie_route_on_the_lean_path() {
        let r = router(
            r#"{"active":"blue","preview":{"color":"green","header":{"name":"X-Preview","value":"yes"},"cookie":{"name":"canary","value":"1"}},"endpoints":{"blue":["127.0.0.1:1"],"green":["127.0.0.1:2"]}}"#,
        );
        let color = |extra: &str| {
            forward(&r, &format!("GET / HTTP/1.1\r\nHost: x\r\n{extra}\r\n"))
                .0
                .color
        };
        assert_eq!(color("x-preview: yes\r\n"), Color::Green);
        assert_eq!(color("x-preview: Yes\r\n"), Color::Blue);
        assert_eq!(color("Cookie: a=b; canary=1\r\n"), Color::Green);
        assert_eq!(color("Cookie: canary=10\r\n"), Color::Blue);
        assert_eq!(color(""), Color::Blue);
    }

    #[test]
    fn a_request_with_no_route_is_refused_as_the_router_s_fault() {
        let mut out = Vec::new();
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let head = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nok";
        let r = Router::unconfigured(crate::RouterConfig::default());
        let Parsed::Reply(refusal) = prepare(&r, head, peer, &mut out) else {
            panic!("not refused");
        };
        assert!(matches!(refusal.error, Error::NoTable));
        assert_eq!(refusal.error.fault(), Fault::Router);
        assert_eq!(
            refusal.error.status(),
            Some(StatusCode::SERVICE_UNAVAILABLE)
        );
        assert_eq!((refusal.head_len, refusal.body_len), (head.len() - 2, 2));
        assert_eq!(refusal.color, None);
    }
}
