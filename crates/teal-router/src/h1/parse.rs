//! HTTP/1.1 heads on the lean path: the request head read from a client and
//! rewritten for the upstream, the response head read from an upstream and
//! rewritten for the client, and the router's own plain-text answers. Pure:
//! bytes in, bytes out, no I/O and no routing.

use std::io::Write as _;
use std::net::IpAddr;

use http::StatusCode;
use teal_core::Color;

use super::framing::{self, Framing};

/// Headers of one request or response head (the general path's limit too).
pub(crate) const MAX_HEADERS: usize = 100;

/// Header names the lean path looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Name {
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

pub(crate) fn name_of(name: &str) -> Name {
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
        // Bytes, not characters: a name read from a header value (a token
        // of `Connection`) may have non-ASCII characters.
        _ if name.len() >= 6 && name.as_bytes()[..6].eq_ignore_ascii_case(b"proxy-") => {
            Name::HopByHop
        }
        _ => Name::Other,
    }
}

/// Comma-separated tokens of a header value, trimmed, empty ones skipped.
pub(crate) fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|b| *b == b',')
        .map(|t| t.trim_ascii())
        .filter(|t| !t.is_empty())
}

/// A `Content-Length` value: digits only.
pub(crate) fn parse_length(value: &[u8]) -> Option<u64> {
    let v = value.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// What `HeaderValue::to_str` accepts: visible ASCII and tabs.
pub(crate) fn visible_ascii(value: &[u8]) -> bool {
    value.iter().all(|b| (32..127).contains(b) || *b == b'\t')
}

/// Appends `name: value\r\n`.
fn put_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A request head the lean path takes, borrowed from the bytes read.
#[derive(Debug)]
pub(crate) struct RequestHead<'h, 'b> {
    pub(crate) head_len: usize,
    /// The `Content-Length` body after the head.
    pub(crate) body_len: usize,
    pub(crate) method: &'b str,
    pub(crate) path: &'b str,
    pub(crate) headers: &'h [httparse::Header<'b>],
    /// The client asked to close the connection after this response.
    pub(crate) close: bool,
    host: &'b [u8],
    te_trailers: bool,
    /// The first `X-Forwarded-For`.
    xff: Option<&'b [u8]>,
    has_xfh: bool,
    /// Names the Connection header lists, beyond the fixed hop-by-hop set.
    listed: Vec<&'b [u8]>,
}

/// A request head at the start of a client's bytes.
#[derive(Debug)]
pub(crate) enum RequestParse<'h, 'b> {
    /// More bytes are needed.
    Partial,
    /// Not for the lean path: malformed, over a limit, or a kind of request
    /// only the general path serves. Not a failure: the general path answers
    /// it, with an error when it is one.
    Handoff,
    Complete(RequestHead<'h, 'b>),
}

/// Parses the request head at the start of `buf`, with `headers` as room
/// for its headers.
pub(crate) fn request_head<'h, 'b>(
    headers: &'h mut [httparse::Header<'b>; MAX_HEADERS],
    buf: &'b [u8],
) -> RequestParse<'h, 'b> {
    let mut req = httparse::Request::new(headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return RequestParse::Partial,
        Err(_) => return RequestParse::Handoff,
    };
    let (Some(method), Some(path), Some(1)) = (req.method, req.path, req.version) else {
        return RequestParse::Handoff;
    };
    if method == "CONNECT" || !path.starts_with('/') {
        return RequestParse::Handoff;
    }
    let mut head = RequestHead {
        head_len,
        body_len: 0,
        method,
        path,
        headers: req.headers,
        close: false,
        host: b"",
        te_trailers: false,
        xff: None,
        has_xfh: false,
        listed: Vec::new(),
    };
    match head.read_headers() {
        Some(()) => RequestParse::Complete(head),
        None => RequestParse::Handoff,
    }
}

/// Whether a name listed in `Connection` is one the fixed hop-by-hop set
/// already drops.
fn always_dropped(name: &[u8]) -> bool {
    std::str::from_utf8(name).is_ok_and(|t| {
        matches!(
            name_of(t),
            Name::HopByHop | Name::Connection | Name::Te | Name::Upgrade | Name::TransferEncoding
        )
    })
}

impl<'b> RequestHead<'_, 'b> {
    /// Reads the headers the lean path looks at; `None` hands the request
    /// to the general path.
    fn read_headers(&mut self) -> Option<()> {
        let mut hosts = 0;
        let mut length: Option<u64> = None;
        for h in self.headers.iter() {
            match name_of(h.name) {
                Name::Host => {
                    hosts += 1;
                    self.host = h.value;
                }
                Name::ContentLength => match (length, parse_length(h.value)) {
                    (None, Some(n)) => length = Some(n),
                    _ => return None,
                },
                Name::TransferEncoding | Name::Upgrade | Name::Expect => return None,
                Name::Connection => {
                    for t in tokens(h.value) {
                        if t.eq_ignore_ascii_case(b"close") {
                            self.close = true;
                        } else if !always_dropped(t) {
                            self.listed.push(t);
                        }
                    }
                }
                Name::Te => {
                    self.te_trailers |= tokens(h.value).any(|t| {
                        t.split(|b| *b == b';')
                            .next()
                            .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"trailers"))
                    });
                }
                Name::XForwardedFor => {
                    if self.xff.is_none() {
                        self.xff = Some(h.value);
                    }
                }
                Name::XForwardedHost => self.has_xfh = true,
                Name::XForwardedProto | Name::HopByHop | Name::Other => {}
            }
        }
        if hosts != 1 {
            return None;
        }
        self.body_len = framing::request_body(length)?;
        Some(())
    }

    fn is_listed(&self, name: &str) -> bool {
        self.listed
            .iter()
            .any(|l| l.eq_ignore_ascii_case(name.as_bytes()))
    }

    /// A HEAD request: the response has no body whatever its headers say.
    pub(crate) fn is_head(&self) -> bool {
        self.method == "HEAD"
    }

    /// Safe to send again when a reused connection closed without an answer.
    pub(crate) fn idempotent(&self) -> bool {
        matches!(
            self.method,
            "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
        )
    }

    /// Writes the head the upstream gets into `out`: hop-by-hop headers
    /// dropped, `x-forwarded-*` set for a client at `peer`.
    pub(crate) fn write_upstream(&self, peer: IpAddr, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(self.method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(self.path.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        for h in self.headers.iter() {
            let keep = match name_of(h.name) {
                Name::Connection
                | Name::Te
                | Name::HopByHop
                | Name::XForwardedFor
                | Name::XForwardedProto => false,
                // Host survives the Connection header (the general path puts
                // it back), and so does the body's length (the body is sent
                // as it came; the general path frames it anew); the others
                // do not.
                Name::Host | Name::ContentLength => true,
                _ => !self.is_listed(h.name),
            };
            if keep {
                put_header(out, h.name.as_bytes(), h.value);
            }
        }
        out.extend_from_slice(b"x-forwarded-for: ");
        if let Some(prior) = self.xff.filter(|v| {
            !self.is_listed("x-forwarded-for") && visible_ascii(v) && !v.trim_ascii().is_empty()
        }) {
            out.extend_from_slice(prior);
            out.extend_from_slice(b", ");
        }
        let _ = write!(out, "{peer}\r\nx-forwarded-proto: http\r\n");
        if !self.has_xfh || self.is_listed("x-forwarded-host") {
            put_header(out, b"x-forwarded-host", self.host);
        }
        if self.te_trailers {
            out.extend_from_slice(b"te: trailers\r\n");
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// What the response side needs to know of the request.
#[derive(Clone, Copy)]
pub(crate) struct ReqInfo<'a> {
    /// A HEAD request.
    pub(crate) head: bool,
    pub(crate) close: bool,
    pub(crate) color: Color,
    /// Response header naming the color, when configured.
    pub(crate) color_header: Option<&'a http::HeaderName>,
}

/// A response head read from an upstream.
#[derive(Debug)]
pub(crate) struct ResponseHead {
    pub(crate) head_len: usize,
    pub(crate) status: StatusCode,
    pub(crate) framing: Framing,
    /// The upstream connection may carry another request afterwards.
    pub(crate) reusable: bool,
    /// The client connection closes after this response.
    pub(crate) close_client: bool,
    /// The upstream ends the body by closing: it is sent to the client
    /// chunked, so the client connection stays open.
    pub(crate) rechunk: bool,
}

#[derive(Debug)]
pub(crate) enum ParsedResponse {
    Partial,
    /// A 1xx interim response of this many bytes, not relayed.
    Interim(usize),
    Final(ResponseHead),
}

/// Why an upstream's response head cannot be relayed: the upstream's fault.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ResponseError {
    #[error("invalid HTTP response: {0}")]
    Malformed(httparse::Error),
    #[error("invalid HTTP response status {0}")]
    Status(u16),
    #[error("invalid content-length in the response")]
    ContentLength,
    #[error("more than one transfer-encoding in the response")]
    TransferEncodings,
    /// A 101 to a request that asked for no upgrade.
    #[error("switched protocols unasked")]
    SwitchedUnasked,
}

/// The headers of a response head that decide its framing and its
/// connection.
struct ResponseFields<'b> {
    length: Option<u64>,
    te: Option<&'b [u8]>,
    upstream_close: bool,
    /// Names the Connection header lists.
    listed: Vec<&'b [u8]>,
}

fn response_fields<'b>(
    version: Option<u8>,
    headers: &[httparse::Header<'b>],
) -> Result<ResponseFields<'b>, ResponseError> {
    let mut f = ResponseFields {
        length: None,
        te: None,
        upstream_close: version != Some(1),
        listed: Vec::new(),
    };
    for h in headers {
        match name_of(h.name) {
            Name::ContentLength => match (f.length, parse_length(h.value)) {
                (None, Some(n)) => f.length = Some(n),
                (Some(a), Some(b)) if a == b => {}
                _ => return Err(ResponseError::ContentLength),
            },
            Name::TransferEncoding => {
                if f.te.is_some() {
                    return Err(ResponseError::TransferEncodings);
                }
                f.te = Some(h.value);
            }
            Name::Connection => {
                for t in tokens(h.value) {
                    if t.eq_ignore_ascii_case(b"close") {
                        f.upstream_close = true;
                    } else if t.eq_ignore_ascii_case(b"keep-alive") {
                        if version == Some(0) {
                            f.upstream_close = false;
                        }
                    } else {
                        f.listed.push(t);
                    }
                }
            }
            _ => {}
        }
    }
    Ok(f)
}

/// Parses the response head at the start of `buf` and writes the client's
/// response head into `out`.
pub(crate) fn response_head(
    buf: &[u8],
    req: ReqInfo<'_>,
    out: &mut Vec<u8>,
) -> Result<ParsedResponse, ResponseError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(ParsedResponse::Partial),
        Err(e) => return Err(ResponseError::Malformed(e)),
    };
    let code = resp.code.unwrap_or(0);
    let status = StatusCode::from_u16(code).map_err(|_| ResponseError::Status(code))?;
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Err(ResponseError::SwitchedUnasked);
    }
    if status.is_informational() {
        return Ok(ParsedResponse::Interim(head_len));
    }
    let fields = response_fields(resp.version, resp.headers)?;
    let framing =
        Framing::of_response(framing::no_body(req.head, status), fields.te, fields.length);
    // A body the upstream ends by closing goes to the client chunked,
    // unless it carries a transfer coding of its own (then the client
    // connection closes after it too).
    let rechunk = framing == Framing::Close && fields.te.is_none();
    let head = ResponseHead {
        head_len,
        status,
        framing,
        reusable: !fields.upstream_close && framing != Framing::Close,
        close_client: req.close || (framing == Framing::Close && !rechunk),
        rechunk,
    };
    let reason = status
        .canonical_reason()
        .or(resp.reason)
        .unwrap_or_default();
    write_response(&head, reason, resp.headers, &fields.listed, req, out);
    Ok(ParsedResponse::Final(head))
}

/// Writes the head the client gets into `out`: hop-by-hop headers and
/// those the upstream's `Connection` header lists dropped, the color
/// header added, the body's new framing and the client connection's end
/// said.
fn write_response(
    head: &ResponseHead,
    reason: &str,
    headers: &[httparse::Header<'_>],
    listed: &[&[u8]],
    req: ReqInfo<'_>,
    out: &mut Vec<u8>,
) {
    out.clear();
    let _ = write!(out, "HTTP/1.1 {} {reason}\r\n", head.status.as_u16());
    for h in headers {
        let keep = match name_of(h.name) {
            Name::Connection | Name::Te | Name::HopByHop | Name::Upgrade => false,
            // The body is relayed as it came: its framing stays, whatever
            // the Connection header lists.
            Name::TransferEncoding | Name::ContentLength => true,
            _ => !listed
                .iter()
                .any(|l| l.eq_ignore_ascii_case(h.name.as_bytes())),
        };
        if keep {
            put_header(out, h.name.as_bytes(), h.value);
        }
    }
    if let Some(name) = req.color_header {
        put_header(out, name.as_str().as_bytes(), req.color.as_str().as_bytes());
    }
    if head.rechunk {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if head.close_client {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// A plain-text response of the router's own.
pub(crate) fn plain(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::h1::framing::Chunk;

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

    #[test]
    fn connection_tokens_with_non_ascii_characters_are_names_like_any_other() {
        assert_eq!(name_of("proxyܟ"), Name::Other);
        assert_eq!(name_of("Proxy-ܟ"), Name::HopByHop);
        let buf = "GET / HTTP/1.1\r\nHost: x\r\nConnection: :+keeܟ-alive, x-a\r\nX-A: 1\r\nX-B: 2\r\n\r\n";
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let RequestParse::Complete(head) = request_head(&mut headers, buf.as_bytes()) else {
            panic!("not taken");
        };
        let mut out = Vec::new();
        head.write_upstream(IpAddr::from([127, 0, 0, 1]), &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET / HTTP/1.1\r\nHost: x\r\nX-B: 2\r\nx-forwarded-for: 127.0.0.1\r\nx-forwarded-proto: http\r\nx-forwarded-host: x\r\n\r\n"
        );
    }

    #[test]
    fn a_body_keeps_its_length_whatever_the_connection_header_lists() {
        let buf = b"POST / HTTP/1.1\r\nHost: x\r\nConnection: content-length\r\nContent-Length: 2\r\n\r\nok";
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let RequestParse::Complete(head) = request_head(&mut headers, buf) else {
            panic!("not taken");
        };
        assert_eq!(head.body_len, 2);
        let mut out = Vec::new();
        head.write_upstream(IpAddr::from([127, 0, 0, 1]), &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nx-forwarded-for: 127.0.0.1\r\nx-forwarded-proto: http\r\nx-forwarded-host: x\r\n\r\n"
        );

        let req = ReqInfo {
            head: false,
            close: false,
            color: Color::Blue,
            color_header: None,
        };
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: content-length, x-hop\r\nX-Hop: 1\r\n\r\nok";
        let mut out = Vec::new();
        let Ok(ParsedResponse::Final(head)) = response_head(raw, req, &mut out) else {
            panic!("not parsed");
        };
        assert_eq!(head.framing, Framing::Length(2));
        assert!(head.reusable && !head.close_client);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"
        );
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
        let Ok(ParsedResponse::Final(head)) = response_head(
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
        let Ok(ParsedResponse::Final(head)) = response_head(raw, req, &mut out) else {
            panic!("not parsed");
        };
        assert_eq!(head.framing, Framing::Chunked(Chunk::START));
        assert!(!head.reusable);
        let raw = b"HTTP/1.1 200 OK\r\nX-App: a\r\n\r\n";
        let Ok(ParsedResponse::Final(head)) = response_head(raw, req, &mut out) else {
            panic!("not parsed");
        };
        assert_eq!(head.framing, Framing::Close);
        assert!(head.rechunk && !head.close_client && !head.reusable);
        assert!(String::from_utf8_lossy(&out).contains("transfer-encoding: chunked"));
        let raw = b"HTTP/1.1 100 Continue\r\n\r\n";
        assert!(matches!(
            response_head(raw, req, &mut out),
            Ok(ParsedResponse::Interim(25))
        ));
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n";
        assert!(response_head(raw, req, &mut out).is_err());
    }
}
