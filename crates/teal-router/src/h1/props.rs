//! Properties of the lean path's head parsers and body framing, checked on
//! any input: by the property tests below on generated heads and bodies,
//! and by the fuzz targets (`fuzz/fuzz_targets/h1_*.rs`) on whatever
//! libFuzzer makes. Each function panics when a property fails.

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr};

use http::StatusCode;
use teal_core::Color;

use super::framing::{Chunk, Framing, MAX_BODY, no_body};
use super::parse::{
    self, MAX_HEADERS, Name, ParsedResponse, ReqInfo, RequestHead, RequestParse, ResponseHead,
    name_of, tokens,
};

/// The client address the rewritten request heads name.
const PEER: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));

fn count(headers: &[httparse::Header<'_>], name: &str) -> usize {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case(name))
        .count()
}

/// A request head the lean path takes is taken whole (no shorter prefix of
/// it is a head), within the body limit, and rewritten into a well-formed
/// head with the same request line, one `Host`, no hop-by-hop header, the
/// `x-forwarded-*` headers set, and nothing the client's `Connection`
/// header listed; the lean path takes the rewritten head too, with the same
/// meaning.
pub fn request_head(bytes: &[u8]) {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let RequestParse::Complete(head) = parse::request_head(&mut headers, bytes) else {
        return;
    };
    assert!(head.head_len <= bytes.len());
    assert!(head.body_len as u64 <= MAX_BODY);
    for cut in [head.head_len - 1, head.head_len / 2] {
        let mut h = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let parsed = parse::request_head(&mut h, &bytes[..cut]);
        assert!(
            !matches!(parsed, RequestParse::Complete(_)),
            "a prefix of {cut} bytes is a whole head"
        );
    }
    let listed: Vec<&[u8]> = head
        .headers
        .iter()
        .filter(|h| name_of(h.name) == Name::Connection)
        .flat_map(|h| tokens(h.value))
        .collect();
    let mut out = Vec::new();
    head.write_upstream(PEER, &mut out);
    let headers = check_upstream_head(&out, &head, &listed);

    // A head at the header limit has more than the limit once the router's
    // headers are added: the lean path would hand it to the general one.
    if headers > MAX_HEADERS {
        return;
    }
    let mut h = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let RequestParse::Complete(again) = parse::request_head(&mut h, &out) else {
        panic!(
            "the rewritten head is not taken: {:?}",
            String::from_utf8_lossy(&out)
        );
    };
    assert_eq!(again.head_len, out.len());
    assert_eq!(
        (again.method, again.path, again.body_len),
        (head.method, head.path, head.body_len)
    );
    assert!(!again.close);
}

/// The head written for the upstream is well formed, with the request
/// line of `head`, one `Host`, the `x-forwarded-*` headers, no hop-by-hop
/// header and nothing `listed` in the client's `Connection` header.
/// Returns how many headers it has.
fn check_upstream_head(out: &[u8], head: &RequestHead<'_, '_>, listed: &[&[u8]]) -> usize {
    let mut h = [httparse::EMPTY_HEADER; MAX_HEADERS + 4];
    let mut req = httparse::Request::new(&mut h);
    assert_eq!(req.parse(out), Ok(httparse::Status::Complete(out.len())));
    assert_eq!((req.method, req.path), (Some(head.method), Some(head.path)));
    assert_eq!(req.version, Some(1));
    assert_eq!(count(req.headers, "host"), 1);
    assert_eq!(count(req.headers, "x-forwarded-for"), 1);
    assert_eq!(count(req.headers, "x-forwarded-proto"), 1);
    assert!(count(req.headers, "x-forwarded-host") >= 1);
    for x in req.headers.iter() {
        match name_of(x.name) {
            Name::Connection | Name::HopByHop | Name::TransferEncoding | Name::Upgrade => {
                panic!("hop-by-hop header {:?} forwarded", x.name)
            }
            Name::Te => assert_eq!(x.value, b"trailers"),
            Name::XForwardedFor => assert!(x.value.ends_with(PEER.to_string().as_bytes())),
            Name::XForwardedProto => assert_eq!(x.value, b"http"),
            // The body's length stays whatever Connection lists.
            Name::Host | Name::XForwardedHost | Name::ContentLength => {}
            _ => assert!(
                !listed
                    .iter()
                    .any(|l| l.eq_ignore_ascii_case(x.name.as_bytes())),
                "{:?} is listed in Connection but forwarded",
                x.name
            ),
        }
    }
    req.headers.len()
}

static COLOR_HEADER: http::HeaderName = http::HeaderName::from_static("x-teal-color");

/// A response head the lean path relays is taken whole and rewritten into
/// a well-formed HTTP/1.1 head with the same status, no hop-by-hop header,
/// the color header, `connection: close` exactly when the client
/// connection closes after it, and a framing that tells the client where
/// the body ends as the upstream's did (a body the upstream ends by
/// closing is rechunked). `head_request`/`close`: the request was a HEAD,
/// asked to close.
pub fn response_head(bytes: &[u8], head_request: bool, close: bool) {
    let info = ReqInfo {
        head: head_request,
        close,
        color: Color::Green,
        color_header: Some(&COLOR_HEADER),
    };
    let mut out = Vec::new();
    let head = match parse::response_head(bytes, info, &mut out) {
        Ok(ParsedResponse::Final(head)) => head,
        Ok(ParsedResponse::Interim(n)) => {
            assert!(n > 0 && n <= bytes.len());
            return;
        }
        Ok(ParsedResponse::Partial) | Err(_) => return,
    };
    assert!(head.head_len <= bytes.len());
    assert!(!head.status.is_informational());
    assert!(head.status != StatusCode::SWITCHING_PROTOCOLS);
    if head.rechunk {
        assert_eq!(head.framing, Framing::Close);
    }
    if head.reusable {
        assert_ne!(head.framing, Framing::Close);
    }
    if close {
        assert!(head.close_client);
    }
    if no_body(head_request, head.status) {
        assert_eq!(head.framing, Framing::Done);
    }

    let headers = check_client_head(&out, &head);

    // Read back as the client reads it: the same status and body framing
    // (unless the router's headers took the head over the header limit).
    if headers > MAX_HEADERS {
        return;
    }
    let back = ReqInfo {
        close: false,
        color_header: None,
        ..info
    };
    let mut again = Vec::new();
    let Ok(ParsedResponse::Final(seen)) = parse::response_head(&out, back, &mut again) else {
        panic!(
            "the rewritten head does not read back: {:?}",
            String::from_utf8_lossy(&out)
        );
    };
    assert_eq!(seen.head_len, out.len());
    assert_eq!(seen.status, head.status);
    let expected = if head.rechunk {
        Framing::Chunked(Chunk::START)
    } else {
        head.framing
    };
    assert_eq!(
        seen.framing,
        expected,
        "{:?} relayed as {:?}",
        String::from_utf8_lossy(&bytes[..head.head_len]),
        String::from_utf8_lossy(&out)
    );
}

/// The head written for the client is a well-formed HTTP/1.1 head with
/// the status of `head`, no hop-by-hop header, the color header, and
/// `connection: close` exactly when the client connection closes after it.
/// Returns how many headers it has.
fn check_client_head(out: &[u8], head: &ResponseHead) -> usize {
    let mut h = [httparse::EMPTY_HEADER; MAX_HEADERS + 4];
    let mut resp = httparse::Response::new(&mut h);
    assert_eq!(
        resp.parse(out),
        Ok(httparse::Status::Complete(out.len())),
        "{:?}",
        String::from_utf8_lossy(out)
    );
    assert_eq!(resp.version, Some(1));
    assert_eq!(resp.code, Some(head.status.as_u16()));
    let mut connection = 0;
    for x in resp.headers.iter() {
        match name_of(x.name) {
            Name::Connection => {
                assert_eq!(x.value, b"close");
                connection += 1;
            }
            Name::HopByHop | Name::Te | Name::Upgrade => {
                panic!("hop-by-hop header {:?} relayed", x.name)
            }
            _ => {}
        }
    }
    assert_eq!(connection, usize::from(head.close_client));
    assert!(
        resp.headers
            .iter()
            .any(|x| x.name == COLOR_HEADER.as_str() && x.value == b"green")
    );
    resp.headers.len()
}

/// Feeds `bytes` to a chunked-body parser whole and in pieces of `step`
/// bytes: both find the same end (or the same error) at the same place.
pub fn chunked(bytes: &[u8], step: usize) {
    let step = step.max(1);
    let mut whole = Chunk::START;
    let result = whole.feed(bytes);
    let mut split = Chunk::START;
    let mut taken = 0;
    let mut error = None;
    for piece in bytes.chunks(step) {
        if split == Chunk::Done {
            break;
        }
        match split.feed(piece) {
            Ok(k) => {
                assert!(k <= piece.len());
                taken += k;
            }
            Err(e) => {
                error = Some(e);
                break;
            }
        }
    }
    match result {
        Ok(n) => {
            assert_eq!(error, None, "{:?}", String::from_utf8_lossy(bytes));
            assert_eq!((n, whole), (taken, split));
            assert!(n == bytes.len() || whole == Chunk::Done);
        }
        Err(e) => assert_eq!(error, Some(e)),
    }
    // Through the response framing, as the relay reads it.
    let mut framing = Framing::Chunked(Chunk::START);
    match (framing.take(bytes), result) {
        (Ok(k), Ok(n)) => {
            assert_eq!(k, n);
            assert_eq!(framing.done(), whole == Chunk::Done);
        }
        (Err(a), Err(b)) => assert_eq!(a, b),
        (a, b) => panic!("framing {a:?}, chunk parser {b:?}"),
    }
}

/// Any data, chunked as an upstream may chunk it (sizes, extensions,
/// trailers from the data itself) and followed by the next message: the
/// parser takes exactly the chunked body, in one piece or two.
pub fn chunked_encoding(data: &[u8], cut: usize) {
    let mut body = Vec::new();
    let mut rest = data;
    while let Some(&first) = rest.first() {
        let n = (1 + usize::from(first) % 40).min(rest.len());
        let (chunk, tail) = rest.split_at(n);
        let _ = write!(body, "{n:X}");
        if first & 1 == 1 {
            body.extend_from_slice(b" ;name=\"v\"");
        }
        body.extend_from_slice(b"\r\n");
        body.extend_from_slice(chunk);
        body.extend_from_slice(b"\r\n");
        rest = tail;
    }
    body.extend_from_slice(b"0\r\n");
    if data.len() % 2 == 1 {
        body.extend_from_slice(b"x-trailer: 1\r\n");
    }
    body.extend_from_slice(b"\r\n");
    let end = body.len();
    body.extend_from_slice(b"HTTP/1.1 200 OK\r\n");

    let mut whole = Chunk::START;
    assert_eq!(whole.feed(&body), Ok(end));
    assert_eq!(whole, Chunk::Done);
    let cut = cut % (end + 1);
    let mut framing = Framing::Chunked(Chunk::START);
    let first = framing.take(&body[..cut]).expect("a valid chunked body");
    assert_eq!(first, cut);
    let second = framing.take(&body[cut..]).expect("a valid chunked body");
    assert_eq!(first + second, end);
    assert!(framing.done());
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Header lines the lean path looks at, and some it does not.
    fn header_line() -> impl Strategy<Value = String> {
        let name = prop::sample::select(vec![
            "Host",
            "host",
            "Content-Length",
            "Connection",
            "TE",
            "Keep-Alive",
            "Proxy-Authorization",
            "X-Forwarded-For",
            "X-Forwarded-Proto",
            "X-Forwarded-Host",
            "Transfer-Encoding",
            "Upgrade",
            "Cookie",
            "X-App",
            "x-secret",
        ]);
        let value = prop_oneof![
            prop::sample::select(vec![
                "close",
                "keep-alive, x-secret",
                "x-app, X-Forwarded-For",
                "content-length",
                "trailers, gzip",
                "chunked",
                "gzip, chunked",
                "0",
                "12",
                " 7 ",
                "1.1.1.1",
                "a=b; teal=green",
                "",
            ])
            .prop_map(String::from),
            "[ -~\t]{0,16}",
        ];
        (name, value).prop_map(|(n, v)| format!("{n}: {v}\r\n"))
    }

    fn request() -> impl Strategy<Value = Vec<u8>> {
        let method = prop::sample::select(vec!["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"]);
        let path = "/[a-z0-9/?=&%.-]{0,12}";
        let version = prop::sample::select(vec!["HTTP/1.1", "HTTP/1.1", "HTTP/1.0"]);
        let headers = prop::collection::vec(header_line(), 0..8);
        let tail = prop::collection::vec(any::<u8>(), 0..8);
        (method, path, version, headers, tail).prop_map(|(m, p, v, hs, tail)| {
            let mut head = format!("{m} {p} {v}\r\nHost: shop.test\r\n").into_bytes();
            head.extend(hs.concat().into_bytes());
            head.extend_from_slice(b"\r\n");
            head.extend(tail);
            head
        })
    }

    fn response() -> impl Strategy<Value = Vec<u8>> {
        let status = prop::sample::select(vec![
            "200 OK",
            "204 No Content",
            "304 Not Modified",
            "404 Nope",
            "100 Continue",
            "101 Switching",
            "599 Custom",
        ]);
        let version = prop::sample::select(vec!["HTTP/1.1", "HTTP/1.1", "HTTP/1.0"]);
        let headers = prop::collection::vec(header_line(), 0..8);
        (status, version, headers).prop_map(|(s, v, hs)| {
            let mut head = format!("{v} {s}\r\n").into_bytes();
            head.extend(hs.concat().into_bytes());
            head.extend_from_slice(b"\r\nbody");
            head
        })
    }

    #[test]
    fn the_properties_hold_for_heads_found_by_fuzzing() {
        request_head(
            b"POST / HTTP/1.1\r\nHost: x\r\nConnection: content-length\r\nContent-Length: 2\r\n\r\nok",
        );
        request_head("GET / HTTP/1.1\r\nHost: x\r\nConnection: :+keeܟ-alive\r\n\r\n".as_bytes());
        response_head(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: content-length\r\n\r\nok",
            false,
            false,
        );
        let many = "X-H: 1\r\n".repeat(MAX_HEADERS - 1);
        response_head(
            format!("HTTP/1.1 200 OK\r\n{many}Content-Length: 2\r\n\r\nok").as_bytes(),
            false,
            false,
        );
        request_head(format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n").as_bytes());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn request_heads_are_taken_whole_and_rewritten_cleanly(bytes in request()) {
            request_head(&bytes);
        }

        #[test]
        fn any_bytes_as_a_request_head(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            request_head(&bytes);
        }

        #[test]
        fn response_heads_keep_their_status_and_framing(
            bytes in response(),
            head_request in any::<bool>(),
            close in any::<bool>(),
        ) {
            response_head(&bytes, head_request, close);
        }

        #[test]
        fn chunked_bodies_end_at_the_same_place_in_any_pieces(
            bytes in prop::collection::vec(
                prop_oneof![
                    4 => prop::sample::select(b"0123456789abcdefABCDEF\r\n;\t x=".to_vec()),
                    1 => any::<u8>(),
                ],
                0..64,
            ),
            step in 1usize..8,
        ) {
            chunked(&bytes, step);
        }

        #[test]
        fn chunked_encodings_are_taken_exactly(
            data in prop::collection::vec(any::<u8>(), 0..200),
            cut in any::<usize>(),
        ) {
            chunked_encoding(&data, cut);
        }
    }
}
