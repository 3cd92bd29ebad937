//! The lean HTTP/1.1 path, for the requests most traffic is made of.
//!
//! An HTTP/1.1 request on a cleartext connection with an origin-form target,
//! one `Host`, and no body or a `Content-Length` body of at most 64 KiB is
//! proxied here: its head is parsed once, the upstream head is written
//! straight from the parsed slices, and the response head and body are
//! relayed as bytes on upstream connections kept per worker thread. No
//! header map, no task, channel or timer per request. Anything else
//! (HTTP/1.0, upgrades, `Expect`, chunked or large request bodies, other
//! targets, anything malformed or over a limit, HTTP/2 prior knowledge)
//! hands the connection, with the bytes read so far, to the general path,
//! which serves it from that request on. Both paths follow the same rules:
//! per-request routing, hop-by-hop headers, `x-forwarded-*`, in-flight
//! counts for drain, failover after failed connects, metrics, and the same
//! error statuses and messages.

use std::future::Future;
use std::io::{self, IoSlice, Write as _};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::StatusCode;
use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;
use teal_core::Color;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

use crate::body::InFlightGuard;
use crate::proxy::{self, Compiled, Endpoint, Outcome, Routed};
use crate::upstream::{Pool, RawConn};
use crate::{Router, format_duration, idx};

/// Headers of one request or response head (the general path's limit too).
const MAX_HEADERS: usize = 100;
/// Larger request bodies take the general path, which streams them.
const MAX_BODY: u64 = 64 * 1024;
/// Largest response head accepted from an upstream.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Bytes read from a socket at a time.
const READ_CHUNK: usize = 16 * 1024;

/// One timer per connection, re-armed lazily: moving the deadline later
/// costs nothing; when the timer fires before the deadline it re-arms.
struct Deadline {
    sleep: Pin<Box<Sleep>>,
    armed: Instant,
    want: Instant,
}

impl Deadline {
    fn new() -> Deadline {
        let far = Instant::now() + Duration::from_secs(86_400 * 365);
        Deadline {
            sleep: Box::pin(tokio::time::sleep_until(far)),
            armed: far,
            want: far,
        }
    }

    fn set(&mut self, at: Instant) {
        self.want = at;
        if at < self.armed || self.sleep.is_elapsed() {
            self.sleep.as_mut().reset(at);
            self.armed = at;
        }
    }

    async fn expired(&mut self) {
        loop {
            self.sleep.as_mut().await;
            if Instant::now() >= self.want {
                return;
            }
            let want = self.want;
            self.sleep.as_mut().reset(want);
            self.armed = want;
        }
    }
}

/// Header names the lean path looks at.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Name {
    Host,
    ContentLength,
    TransferEncoding,
    Connection,
    Te,
    Upgrade,
    Expect,
    XForwardedFor,
    XForwardedProto,
    XForwardedHost,
    /// Never crosses a proxy (RFC 9110 §7.6.1), `proxy-*` included.
    HopByHop,
    Other,
}

fn name_of(name: &str) -> Name {
    let is = |s: &str| name.eq_ignore_ascii_case(s);
    match name.len() {
        2 if is("te") => Name::Te,
        4 if is("host") => Name::Host,
        6 if is("expect") => Name::Expect,
        7 if is("upgrade") => Name::Upgrade,
        10 if is("connection") => Name::Connection,
        10 if is("keep-alive") => Name::HopByHop,
        14 if is("content-length") => Name::ContentLength,
        15 if is("x-forwarded-for") => Name::XForwardedFor,
        16 if is("x-forwarded-host") => Name::XForwardedHost,
        17 if is("transfer-encoding") => Name::TransferEncoding,
        17 if is("x-forwarded-proto") => Name::XForwardedProto,
        _ if name.len() >= 6 && name[..6].eq_ignore_ascii_case("proxy-") => Name::HopByHop,
        _ => Name::Other,
    }
}

/// Comma-separated tokens of a header value, trimmed, empty ones skipped.
fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|b| *b == b',')
        .map(|t| t.trim_ascii())
        .filter(|t| !t.is_empty())
}

/// A `Content-Length` value: digits only.
fn parse_length(value: &[u8]) -> Option<u64> {
    let v = value.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// What `HeaderValue::to_str` accepts: visible ASCII and tabs.
fn visible_ascii(value: &[u8]) -> bool {
    value.iter().all(|b| (32..127).contains(b) || *b == b'\t')
}

/// A request head that the lean path forwards.
struct Plan {
    head_len: usize,
    body_len: usize,
    /// The client asked to close the connection after this response.
    close: bool,
    /// A HEAD request: the response has no body whatever its headers say.
    head: bool,
    /// Safe to send again when a reused connection closed without an answer.
    idempotent: bool,
    color: Color,
    /// Sent to `color` by the preview route.
    preview: bool,
    endpoint: Arc<Endpoint>,
    flight: InFlightGuard,
}

enum Parsed {
    /// More bytes are needed.
    Partial,
    /// For the general path.
    Handoff,
    /// Answered by the router (no route); the request body is skipped.
    Reply {
        head_len: usize,
        body_len: usize,
        close: bool,
        status: StatusCode,
        message: String,
        /// The color and whether the preview route chose it.
        color: Option<(Color, bool)>,
    },
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
fn parse_request(router: &Router, buf: &[u8], peer: SocketAddr, out: &mut Vec<u8>) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Handoff,
    };
    let (Some(method), Some(path), Some(1)) = (req.method, req.path, req.version) else {
        return Parsed::Handoff;
    };
    if method == "CONNECT" || !path.starts_with('/') {
        return Parsed::Handoff;
    }
    let mut hosts = 0;
    let mut host: &[u8] = b"";
    let mut length: Option<u64> = None;
    let mut close = false;
    let mut te_trailers = false;
    let mut xff: Option<&[u8]> = None;
    let mut has_xfh = false;
    // Names the Connection header lists, beyond the fixed hop-by-hop set.
    let mut listed: Vec<&[u8]> = Vec::new();
    for h in req.headers.iter() {
        match name_of(h.name) {
            Name::Host => {
                hosts += 1;
                host = h.value;
            }
            Name::ContentLength => match (length, parse_length(h.value)) {
                (None, Some(n)) => length = Some(n),
                _ => return Parsed::Handoff,
            },
            Name::TransferEncoding | Name::Upgrade | Name::Expect => return Parsed::Handoff,
            Name::Connection => {
                for t in tokens(h.value) {
                    if t.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if !std::str::from_utf8(t).is_ok_and(|t| {
                        matches!(
                            name_of(t),
                            Name::HopByHop
                                | Name::Connection
                                | Name::Te
                                | Name::Upgrade
                                | Name::TransferEncoding
                        )
                    }) {
                        listed.push(t);
                    }
                }
            }
            Name::Te => {
                te_trailers |= tokens(h.value).any(|t| {
                    t.split(|b| *b == b';')
                        .next()
                        .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"trailers"))
                });
            }
            Name::XForwardedFor => {
                if xff.is_none() {
                    xff = Some(h.value);
                }
            }
            Name::XForwardedHost => has_xfh = true,
            Name::XForwardedProto | Name::HopByHop | Name::Other => {}
        }
    }
    let body_len = length.unwrap_or(0);
    if hosts != 1 || body_len > MAX_BODY {
        return Parsed::Handoff;
    }
    let body_len = body_len as usize;
    let is_listed = |name: &str| {
        listed
            .iter()
            .any(|l| l.eq_ignore_ascii_case(name.as_bytes()))
    };

    let (color, preview, endpoint, flight) =
        match proxy::route_and_count(router, |t| route(t, req.headers)) {
            Routed::NoTable => {
                return Parsed::Reply {
                    head_len,
                    body_len,
                    close,
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    message: proxy::NO_TABLE.into(),
                    color: None,
                };
            }
            Routed::NoEndpoints(color, preview) => {
                return Parsed::Reply {
                    head_len,
                    body_len,
                    close,
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    message: proxy::no_endpoints(color),
                    color: Some((color, preview)),
                };
            }
            Routed::To(color, preview, endpoint, flight) => (color, preview, endpoint, flight),
        };

    out.clear();
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for h in req.headers.iter() {
        let keep = match name_of(h.name) {
            Name::Connection
            | Name::Te
            | Name::HopByHop
            | Name::XForwardedFor
            | Name::XForwardedProto => false,
            // Host survives the Connection header (the general path puts
            // it back), the others do not.
            Name::Host => true,
            _ => !is_listed(h.name),
        };
        if keep {
            out.extend_from_slice(h.name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(h.value);
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(b"x-forwarded-for: ");
    if let Some(prior) = xff
        .filter(|v| !is_listed("x-forwarded-for") && visible_ascii(v) && !v.trim_ascii().is_empty())
    {
        out.extend_from_slice(prior);
        out.extend_from_slice(b", ");
    }
    let _ = write!(out, "{}\r\nx-forwarded-proto: http\r\n", peer.ip());
    if !has_xfh || is_listed("x-forwarded-host") {
        out.extend_from_slice(b"x-forwarded-host: ");
        out.extend_from_slice(host);
        out.extend_from_slice(b"\r\n");
    }
    if te_trailers {
        out.extend_from_slice(b"te: trailers\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Parsed::Forward(Plan {
        head_len,
        body_len,
        close,
        head: method == "HEAD",
        idempotent: matches!(
            method,
            "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
        ),
        color,
        preview,
        endpoint,
        flight,
    })
}

/// How the end of a response body is found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    /// No body, or all of it relayed.
    Done,
    Length(u64),
    Chunked(Chunk),
    /// Until the upstream closes the connection.
    Close,
}

impl Framing {
    /// How many bytes at the start of `bytes` belong to the body; the body
    /// ended when [`Framing::done`] says so.
    fn take(&mut self, bytes: &[u8]) -> Result<usize, &'static str> {
        match self {
            Framing::Done => Ok(0),
            Framing::Length(n) => {
                let k = (*n).min(bytes.len() as u64);
                *n -= k;
                if *n == 0 {
                    *self = Framing::Done;
                }
                Ok(k as usize)
            }
            Framing::Chunked(state) => {
                let k = state.feed(bytes)?;
                if *state == Chunk::Done {
                    *self = Framing::Done;
                }
                Ok(k)
            }
            Framing::Close => Ok(bytes.len()),
        }
    }

    fn done(&self) -> bool {
        *self == Framing::Done
    }
}

/// Position in a chunked body (RFC 9112 §7.1), relayed unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunk {
    Size { n: u64, digits: u8 },
    Ext(u64),
    SizeLf(u64),
    Data(u64),
    DataCr,
    DataLf,
    TrailerStart,
    TrailerLine,
    LastLf,
    Done,
}

impl Chunk {
    const START: Chunk = Chunk::Size { n: 0, digits: 0 };

    /// Advances over `bytes`; returns how many of them belong to the body
    /// (all, unless it ends inside them).
    fn feed(&mut self, bytes: &[u8]) -> Result<usize, &'static str> {
        let mut i = 0;
        while i < bytes.len() {
            match *self {
                Chunk::Done => return Ok(i),
                Chunk::Data(n) => {
                    let take = n.min((bytes.len() - i) as u64);
                    i += take as usize;
                    *self = if take == n {
                        Chunk::DataCr
                    } else {
                        Chunk::Data(n - take)
                    };
                    continue;
                }
                _ => {}
            }
            let b = bytes[i];
            i += 1;
            *self = match (*self, b) {
                (Chunk::Size { n, digits }, b) if b.is_ascii_hexdigit() => {
                    if digits >= 15 {
                        return Err("chunk size too large");
                    }
                    let d = (b as char).to_digit(16).unwrap_or(0) as u64;
                    Chunk::Size {
                        n: n * 16 + d,
                        digits: digits + 1,
                    }
                }
                (Chunk::Size { n, digits }, b';' | b' ' | b'\t') if digits > 0 => Chunk::Ext(n),
                (Chunk::Size { n, digits }, b'\r') if digits > 0 => Chunk::SizeLf(n),
                (Chunk::Ext(n), b'\r') => Chunk::SizeLf(n),
                (Chunk::Ext(_), b'\n') => return Err("bare LF in a chunk size line"),
                (Chunk::Ext(n), _) => Chunk::Ext(n),
                (Chunk::SizeLf(0), b'\n') => Chunk::TrailerStart,
                (Chunk::SizeLf(n), b'\n') => Chunk::Data(n),
                (Chunk::DataCr, b'\r') => Chunk::DataLf,
                (Chunk::DataLf, b'\n') => Chunk::START,
                (Chunk::TrailerStart, b'\r') => Chunk::LastLf,
                (Chunk::TrailerStart | Chunk::TrailerLine, b'\n') => Chunk::TrailerStart,
                (Chunk::TrailerStart | Chunk::TrailerLine, _) => Chunk::TrailerLine,
                (Chunk::LastLf, b'\n') => Chunk::Done,
                _ => return Err("invalid chunked encoding"),
            };
        }
        Ok(i)
    }
}

/// What the response side needs to know of the request.
#[derive(Clone, Copy)]
struct ReqInfo<'a> {
    head: bool,
    close: bool,
    color: Color,
    /// Response header naming the color, when configured.
    color_header: Option<&'a http::HeaderName>,
}

/// A response head read from an upstream.
struct ResponseHead {
    head_len: usize,
    status: StatusCode,
    framing: Framing,
    /// The upstream connection may carry another request afterwards.
    reusable: bool,
    /// The client connection closes after this response.
    close_client: bool,
    /// The upstream ends the body by closing: it is sent to the client
    /// chunked, so the client connection stays open.
    rechunk: bool,
}

enum ParsedResponse {
    Partial,
    /// A 1xx interim response of this many bytes, not relayed.
    Interim(usize),
    Final(ResponseHead),
}

/// Parses the response head at the start of `buf` and writes the client's
/// response head into `out`.
fn parse_response(
    buf: &[u8],
    req: ReqInfo<'_>,
    out: &mut Vec<u8>,
) -> Result<ParsedResponse, String> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(ParsedResponse::Partial),
        Err(e) => return Err(format!("invalid HTTP response: {e}")),
    };
    let code = resp.code.unwrap_or(0);
    let status =
        StatusCode::from_u16(code).map_err(|_| format!("invalid HTTP response status {code}"))?;
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Err(String::new());
    }
    if status.is_informational() {
        return Ok(ParsedResponse::Interim(head_len));
    }
    let mut length: Option<u64> = None;
    let mut te: Option<&[u8]> = None;
    let mut upstream_close = resp.version != Some(1);
    let mut listed: Vec<&[u8]> = Vec::new();
    for h in resp.headers.iter() {
        match name_of(h.name) {
            Name::ContentLength => match (length, parse_length(h.value)) {
                (None, Some(n)) => length = Some(n),
                (Some(a), Some(b)) if a == b => {}
                _ => return Err("invalid content-length in the response".into()),
            },
            Name::TransferEncoding => {
                if te.is_some() {
                    return Err("more than one transfer-encoding in the response".into());
                }
                te = Some(h.value);
            }
            Name::Connection => {
                for t in tokens(h.value) {
                    if t.eq_ignore_ascii_case(b"close") {
                        upstream_close = true;
                    } else if t.eq_ignore_ascii_case(b"keep-alive") {
                        if resp.version == Some(0) {
                            upstream_close = false;
                        }
                    } else {
                        listed.push(t);
                    }
                }
            }
            _ => {}
        }
    }
    let no_body =
        req.head || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    let framing = match (no_body, te, length) {
        (true, _, _) => Framing::Done,
        (false, Some(te), _) => {
            let last = tokens(te).last().unwrap_or(b"");
            if last.eq_ignore_ascii_case(b"chunked") {
                Framing::Chunked(Chunk::START)
            } else {
                Framing::Close
            }
        }
        (false, None, Some(0)) => Framing::Done,
        (false, None, Some(n)) => Framing::Length(n),
        (false, None, None) => Framing::Close,
    };
    // A body the upstream ends by closing goes to the client chunked,
    // unless it carries a transfer coding of its own (then the client
    // connection closes after it too).
    let rechunk = framing == Framing::Close && te.is_none();
    let close_client = req.close || (framing == Framing::Close && !rechunk);

    out.clear();
    let reason = status
        .canonical_reason()
        .or(resp.reason)
        .unwrap_or_default();
    let _ = write!(out, "HTTP/1.1 {} {reason}\r\n", status.as_u16());
    for h in resp.headers.iter() {
        let keep = match name_of(h.name) {
            Name::Connection | Name::Te | Name::HopByHop | Name::Upgrade => false,
            Name::TransferEncoding => true,
            _ => !listed
                .iter()
                .any(|l| l.eq_ignore_ascii_case(h.name.as_bytes())),
        };
        if keep {
            out.extend_from_slice(h.name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(h.value);
            out.extend_from_slice(b"\r\n");
        }
    }
    if let Some(name) = req.color_header {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(req.color.as_str().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if rechunk {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if close_client {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(ParsedResponse::Final(ResponseHead {
        head_len,
        status,
        framing,
        reusable: !upstream_close && framing != Framing::Close,
        close_client,
        rechunk,
    }))
}

/// A plain-text response of the router's own.
fn plain(
    out: &mut Vec<u8>,
    status: StatusCode,
    message: &str,
    color: Option<(&http::HeaderName, Color)>,
    close: bool,
) {
    out.clear();
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or_default(),
        message.len()
    );
    if let Some((name, color)) = color {
        let _ = write!(out, "{}: {}\r\n", name.as_str(), color.as_str());
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(message.as_bytes());
}

/// Writes `parts` in order, in one system call when the socket takes them.
async fn write_all(io: &mut TcpStream, parts: &mut [&[u8]]) -> io::Result<()> {
    let mut first = 0;
    loop {
        while first < parts.len() && parts[first].is_empty() {
            first += 1;
        }
        let rest = &parts[first..];
        let n = match rest {
            [] => return Ok(()),
            [one] => io.write(one).await?,
            _ => {
                let slices: [IoSlice<'_>; 4] =
                    std::array::from_fn(|i| IoSlice::new(rest.get(i).copied().unwrap_or_default()));
                io.write_vectored(&slices[..rest.len().min(4)]).await?
            }
        };
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let mut n = n;
        for part in parts[first..].iter_mut() {
            let k = n.min(part.len());
            *part = &part[k..];
            n -= k;
            if n == 0 {
                break;
            }
        }
    }
}

/// Writes a piece of body, as a chunk when `rechunk`.
async fn write_body(io: &mut TcpStream, head: &[u8], data: &[u8], rechunk: bool) -> io::Result<()> {
    if !rechunk || data.is_empty() {
        return write_all(io, &mut [head, data]).await;
    }
    let size = format!("{:x}\r\n", data.len());
    write_all(io, &mut [head, size.as_bytes(), data, b"\r\n"]).await
}

/// What became of one request.
enum Next {
    KeepAlive,
    Close,
}

/// Why no response head came from the upstream.
enum UpstreamError {
    Connect(io::Error),
    Timeout,
    /// Closed (or reset) before any byte of an answer; a `reused`
    /// connection may have been closed by the upstream while it was idle.
    Closed {
        reused: bool,
        cause: Option<io::Error>,
    },
    Failed(String),
    SwitchedUnasked,
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
) -> Result<(RawConn, ResponseHead), UpstreamError> {
    let pooled = if fresh_only {
        None
    } else {
        pool.checkout_raw(addr)
    };
    let mut up = match pooled {
        Some(c) => c,
        None => pool
            .connect_raw(addr)
            .await
            .map_err(UpstreamError::Connect)?,
    };
    let reused = up.reused;
    if let Err(e) = write_all(&mut up.stream, &mut [request, body]).await {
        return Err(UpstreamError::Closed {
            reused,
            cause: Some(e),
        });
    }
    up.buf.clear();
    let mut answered = false;
    loop {
        if up.buf.len() > MAX_RESPONSE_HEAD {
            return Err(UpstreamError::Failed(
                "the response head is larger than 64 KiB".into(),
            ));
        }
        up.buf.reserve(READ_CHUNK);
        match up.stream.read_buf(&mut up.buf).await {
            Ok(0) if !answered => {
                return Err(UpstreamError::Closed {
                    reused,
                    cause: None,
                });
            }
            Ok(0) => {
                return Err(UpstreamError::Failed(
                    "the connection closed inside the response head".into(),
                ));
            }
            Err(e) if !answered => {
                return Err(UpstreamError::Closed {
                    reused,
                    cause: Some(e),
                });
            }
            Err(e) => return Err(UpstreamError::Failed(e.to_string())),
            Ok(_) => answered = true,
        }
        loop {
            match parse_response(&up.buf, req, resp) {
                Ok(ParsedResponse::Partial) => break,
                Ok(ParsedResponse::Interim(n)) => {
                    up.buf.advance(n);
                    if up.buf.is_empty() {
                        break;
                    }
                }
                Ok(ParsedResponse::Final(head)) => return Ok((up, head)),
                Err(m) if m.is_empty() => return Err(UpstreamError::SwitchedUnasked),
                Err(m) => return Err(UpstreamError::Failed(m)),
            }
        }
    }
}

/// A client connection's socket after the bytes the lean path already
/// read from it: what the general path is handed.
pub(crate) struct Prefixed<I> {
    prefix: Bytes,
    io: I,
}

impl<I: AsyncRead + Unpin> AsyncRead for Prefixed<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Prefixed<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
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
            Parsed::Reply {
                head_len,
                body_len,
                close,
                status,
                message,
                color,
            } => {
                c.reply(head_len, body_len, close, status, &message, color)
                    .await
            }
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
                match parse_request(&self.router, &self.buf, self.peer, &mut self.out) {
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
                        let message = format!(
                            "408 request timeout: the request head did not arrive within {}\n",
                            format_duration(config.header_read_timeout)
                        );
                        plain(&mut self.resp, StatusCode::REQUEST_TIMEOUT, &message, None, true);
                        let _ = self.client.write_all(&self.resp).await;
                    }
                    return None;
                }
                _ = stopping.as_mut(), if waiting_idle => return None,
            }
        }
    }

    /// Makes sure the whole (small) request body is buffered after its
    /// head; a request held in memory can be sent again on another
    /// connection. The error names why the body did not arrive.
    async fn read_body(&mut self, head_len: usize, body_len: usize) -> Result<(), String> {
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
                    Ok(0) => return Err("the client closed the connection".into()),
                    Err(e) => return Err(e.to_string()),
                    Ok(_) => {}
                },
                _ = self.deadline.expired() => {
                    return Err(format!("it did not arrive within {}", format_duration(timeout)));
                }
            }
        }
        Ok(())
    }

    /// Answers a request the router cannot route.
    async fn reply(
        &mut self,
        head_len: usize,
        body_len: usize,
        close: bool,
        status: StatusCode,
        message: &str,
        color: Option<(Color, bool)>,
    ) -> Next {
        let body = self.read_body(head_len, body_len).await;
        let close = close || body.is_err();
        if body.is_ok() {
            self.buf.advance(head_len + body_len);
        }
        let shared = self.router.shared.clone();
        if let Some((color, preview)) = color {
            let outcome = Outcome {
                shared: &shared,
                color,
                preview,
                start: std::time::Instant::now(),
            };
            outcome.record(status, true);
        }
        let header = shared.config.color_header.as_ref();
        let color = color.map(|(c, _)| c);
        plain(&mut self.resp, status, message, header.zip(color), close);
        if self.client.write_all(&self.resp).await.is_err() || close {
            return Next::Close;
        }
        Next::KeepAlive
    }

    /// Proxies one request and relays its response.
    async fn forward(&mut self, plan: Plan) -> Next {
        let shared = self.router.shared.clone();
        let config = &shared.config;
        let color = plan.color;
        let outcome = Outcome {
            shared: &shared,
            color,
            preview: plan.preview,
            start: std::time::Instant::now(),
        };
        let color_header = config.color_header.as_ref();
        let req = ReqInfo {
            head: plan.head,
            close: plan.close,
            color,
            color_header,
        };
        if let Err(cause) = self.read_body(plan.head_len, plan.body_len).await {
            outcome.record(StatusCode::BAD_REQUEST, true);
            let message = proxy::bad_request_body(&cause);
            let header = color_header.map(|h| (h, color));
            plain(
                &mut self.resp,
                StatusCode::BAD_REQUEST,
                &message,
                header,
                true,
            );
            let _ = self.client.write_all(&self.resp).await;
            return Next::Close;
        }
        let consumed = plan.head_len + plan.body_len;
        let mut endpoint = plan.endpoint;
        let mut flight = plan.flight;
        self.deadline.set(Instant::now() + config.upstream_timeout);
        let pool = shared.colors[idx(color)].pool.load_full();
        let mut failed: Vec<(SocketAddr, io::Error)> = Vec::new();
        let mut fresh_only = false;
        let (mut up, head) = loop {
            let addr = endpoint.addr;
            let body = &self.buf[plan.head_len..consumed];
            let result = tokio::select! {
                r = exchange(&pool, addr, fresh_only, &self.out, body, req, &mut self.resp) => r,
                _ = self.deadline.expired() => Err(UpstreamError::Timeout),
            };
            let (status, message) = match result {
                Ok(pair) => {
                    endpoint.health.succeeded();
                    break pair;
                }
                Err(UpstreamError::Connect(e)) => {
                    failed.push((addr, e));
                    if let Some(next) =
                        proxy::after_connect_failure(&self.router, color, &endpoint, &failed)
                    {
                        endpoint = next;
                        // Counted on the next endpoint before the failed one
                        // is released, so the color never looks idle to a
                        // drain.
                        flight = InFlightGuard::new(shared.clone(), idx(color), endpoint.clone());
                        fresh_only = false;
                        continue;
                    }
                    (
                        StatusCode::BAD_GATEWAY,
                        proxy::connect_failed_message(color, &failed),
                    )
                }
                Err(UpstreamError::Closed { reused: true, .. })
                    if plan.idempotent && !fresh_only =>
                {
                    tracing::debug!(endpoint = %addr, "pooled connection was closed; sending on a new one");
                    fresh_only = true;
                    continue;
                }
                // Worded as the general path words it.
                Err(UpstreamError::Closed { cause: None, .. }) => (
                    StatusCode::BAD_GATEWAY,
                    proxy::failed_before_answering(
                        color,
                        addr,
                        "connection closed before message completed",
                    ),
                ),
                Err(UpstreamError::Closed { cause: Some(e), .. }) => (
                    StatusCode::BAD_GATEWAY,
                    proxy::failed_before_answering(color, addr, &e.to_string()),
                ),
                Err(UpstreamError::Failed(m)) => (
                    StatusCode::BAD_GATEWAY,
                    proxy::failed_before_answering(color, addr, &m),
                ),
                Err(UpstreamError::SwitchedUnasked) => (
                    StatusCode::BAD_GATEWAY,
                    proxy::switched_unasked(color, addr),
                ),
                Err(UpstreamError::Timeout) => (
                    StatusCode::GATEWAY_TIMEOUT,
                    proxy::upstream_timed_out(&shared, color, addr),
                ),
            };
            self.buf.advance(consumed);
            outcome.record(status, true);
            plain(
                &mut self.resp,
                status,
                &message,
                color_header.map(|h| (h, color)),
                plan.close,
            );
            let written = self.client.write_all(&self.resp).await;
            drop(flight);
            return if written.is_err() || plan.close {
                Next::Close
            } else {
                Next::KeepAlive
            };
        };
        self.buf.advance(consumed);
        outcome.record(head.status, false);

        // The response: its head and the body bytes already read, in one
        // write, then the rest of the body as it arrives.
        up.buf.advance(head.head_len);
        let mut framing = head.framing;
        let Ok(k) = framing.take(&up.buf) else {
            tracing::debug!(endpoint = %endpoint.addr, "invalid response body framing");
            return Next::Close;
        };
        let rechunk = head.rechunk;
        if write_body(&mut self.client, &self.resp, &up.buf[..k], rechunk)
            .await
            .is_err()
        {
            return Next::Close;
        }
        up.buf.advance(k);
        let body_timeout = config.upstream_body_timeout;
        while !framing.done() {
            up.buf.reserve(READ_CHUNK);
            if !body_timeout.is_zero() {
                self.deadline.set(Instant::now() + body_timeout);
            }
            let read = tokio::select! {
                r = up.stream.read_buf(&mut up.buf) => r,
                _ = self.deadline.expired(), if !body_timeout.is_zero() => {
                    tracing::warn!(endpoint = %endpoint.addr, timeout = %format_duration(body_timeout), "upstream response body stalled; cutting it off");
                    return Next::Close;
                }
            };
            match read {
                Ok(0) if framing == Framing::Close => {
                    if rechunk && self.client.write_all(b"0\r\n\r\n").await.is_err() {
                        return Next::Close;
                    }
                    break;
                }
                Ok(0) | Err(_) => {
                    // Cut off: the client sees its connection close too.
                    tracing::debug!(endpoint = %endpoint.addr, "upstream response body cut off");
                    return Next::Close;
                }
                Ok(_) => {}
            }
            let k = match framing.take(&up.buf) {
                Ok(k) => k,
                Err(e) => {
                    tracing::debug!(endpoint = %endpoint.addr, error = e, "invalid response body");
                    return Next::Close;
                }
            };
            if write_body(&mut self.client, &[], &up.buf[..k], rechunk)
                .await
                .is_err()
            {
                return Next::Close;
            }
            up.buf.advance(k);
        }
        drop(flight);
        if head.reusable && framing.done() {
            pool.checkin_raw(endpoint.addr, up);
        }
        if head.close_client {
            Next::Close
        } else {
            Next::KeepAlive
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_all(input: &[u8]) -> (Chunk, Result<usize, &'static str>) {
        let mut c = Chunk::START;
        let r = c.feed(input);
        (c, r)
    }

    #[test]
    fn chunked_body_ends_after_the_last_chunk_and_trailers() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nx-trailer: 1\r\n\r\nGET";
        let (state, used) = feed_all(body);
        assert_eq!(state, Chunk::Done);
        assert_eq!(used, Ok(body.len() - 3));
        // Byte by byte gives the same end.
        let mut c = Chunk::START;
        let mut total = 0;
        for b in body.iter() {
            if c == Chunk::Done {
                break;
            }
            total += c.feed(std::slice::from_ref(b)).unwrap();
        }
        assert_eq!(total, body.len() - 3);
    }

    #[test]
    fn chunked_body_errors_are_reported() {
        assert!(feed_all(b"zz\r\n").1.is_err());
        assert!(feed_all(b"5\r\nhelloXX").1.is_err());
        assert!(feed_all(b"ffffffffffffffffff\r\n").1.is_err());
        let (state, used) = feed_all(b"3\r\nab");
        assert_eq!(state, Chunk::Data(1));
        assert_eq!(used, Ok(5));
    }

    #[test]
    fn length_framing_takes_exactly_the_body() {
        let mut f = Framing::Length(5);
        assert_eq!(f.take(b"abc"), Ok(3));
        assert!(!f.done());
        assert_eq!(f.take(b"deGET"), Ok(2));
        assert!(f.done());
    }

    #[test]
    fn names_are_classified_case_insensitively() {
        assert!(name_of("Content-Length") == Name::ContentLength);
        assert!(name_of("PROXY-Authorization") == Name::HopByHop);
        assert!(name_of("Keep-Alive") == Name::HopByHop);
        assert!(name_of("proxy") == Name::Other);
        assert!(name_of("X-Forwarded-For") == Name::XForwardedFor);
        assert_eq!(parse_length(b" 12 "), Some(12));
        assert_eq!(parse_length(b"+12"), None);
        assert_eq!(parse_length(b"1,2"), None);
    }

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
        match parse_request(router, head.as_bytes(), peer, &mut out) {
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
                    parse_request(&r, head.as_bytes(), peer, &mut out),
                    Parsed::Handoff
                ),
                "{head:?}"
            );
        }
        assert!(matches!(
            parse_request(&r, b"GET / HTTP/1.1\r\nHost: x\r\n", peer, &mut out),
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
    fn response_head_drops_hop_by_hop_and_frames_the_body() {
        let req = ReqInfo {
            head: false,
            close: false,
            color: Color::Green,
            color_header: None,
        };
        let mut out = Vec::new();
        let name = http::HeaderName::from_static("x-color");
        let raw = b"HTTP/1.1 200 Fine\r\nContent-Length: 2\r\nConnection: x-hop\r\nX-Hop: 1\r\nKeep-Alive: 1\r\nX-App: a\r\n\r\nok";
        let Ok(ParsedResponse::Final(head)) = parse_response(
            raw,
            ReqInfo {
                color_header: Some(&name),
                ..req
            },
            &mut out,
        ) else {
            panic!("not parsed");
        };
        assert_eq!(head.framing, Framing::Length(2));
        assert!(head.reusable);
        assert!(!head.close_client);
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-App: a\r\nx-color: green\r\n\r\n"
        );
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
        let Ok(ParsedResponse::Final(head)) = parse_response(raw, req, &mut out) else {
            panic!("not parsed");
        };
        assert_eq!(head.framing, Framing::Chunked(Chunk::START));
        assert!(!head.reusable);
        let raw = b"HTTP/1.1 200 OK\r\nX-App: a\r\n\r\n";
        let Ok(ParsedResponse::Final(head)) = parse_response(raw, req, &mut out) else {
            panic!("not parsed");
        };
        assert_eq!(head.framing, Framing::Close);
        assert!(head.rechunk && !head.close_client && !head.reusable);
        assert!(String::from_utf8_lossy(&out).contains("transfer-encoding: chunked"));
        let raw = b"HTTP/1.1 100 Continue\r\n\r\n";
        assert!(matches!(
            parse_response(raw, req, &mut out),
            Ok(ParsedResponse::Interim(25))
        ));
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n";
        assert!(parse_response(raw, req, &mut out).is_err());
    }
}
