//! The lean HTTP/1.1 path against a scripted upstream that answers with
//! every framing HTTP/1.1 has: both paths give clients the same answers and
//! upstreams the same requests; one connection moves from the lean path to
//! the general one mid-stream; pipelined requests are answered in order; a
//! pooled connection the upstream closed is replaced without failing a GET.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use teal_router::{Color, RouteTable, Router, RouterConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const BIG: usize = 1 << 20;

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| b'a' + (i % 26) as u8).collect()
}

/// Reads one request (head and `Content-Length` or chunked body) from
/// `stream`; `None` when the peer closed.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(String, Vec<u8>)> {
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 8192];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    buf.drain(..head_end);
    let header = |name: &str| {
        head.lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(n, _)| n.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
    };
    let mut body = Vec::new();
    if let Some(len) = header("content-length") {
        let len: usize = len.parse().unwrap();
        while buf.len() < len {
            let mut chunk = [0u8; 8192];
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        body = buf.drain(..len).collect();
    } else if header("transfer-encoding").is_some() {
        // Chunked: read until the last chunk and decode.
        loop {
            if let Some(i) = buf.windows(5).position(|w| w == b"0\r\n\r\n") {
                let raw: Vec<u8> = buf.drain(..i + 5).collect();
                let mut rest = &raw[..];
                while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
                    let size = usize::from_str_radix(
                        std::str::from_utf8(&rest[..eol])
                            .unwrap()
                            .split(';')
                            .next()
                            .unwrap(),
                        16,
                    )
                    .unwrap();
                    if size == 0 {
                        break;
                    }
                    body.extend_from_slice(&rest[eol + 2..eol + 2 + size]);
                    rest = &rest[eol + 2 + size + 2..];
                }
                break;
            }
            let mut chunk = [0u8; 8192];
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    }
    Some((head, body))
}

/// An upstream answering by path with hand-written HTTP/1.1 responses.
/// With `one_per_connection`, a connection answers its first request only:
/// on the next one it closes without answering (as a server whose
/// keep-alive timeout ran out just as the request arrived).
async fn scripted_upstream(one_per_connection: bool) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = Arc::new(AtomicUsize::new(0));
    let count = served.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut answered = 0;
                while let Some((head, body)) = read_request(&mut stream, &mut buf).await {
                    count.fetch_add(1, Ordering::SeqCst);
                    if one_per_connection && answered == 1 {
                        return;
                    }
                    answered += 1;
                    let line = head.lines().next().unwrap_or_default().to_string();
                    let mut parts = line.split(' ');
                    let method = parts.next().unwrap_or_default().to_string();
                    let target = parts.next().unwrap_or_default().to_string();
                    let path = target.split('?').next().unwrap_or_default().to_string();
                    let keep = answer(&mut stream, &method, &path, &line, &head, &body).await;
                    if !keep {
                        return;
                    }
                }
            });
        }
    });
    (addr, served)
}

async fn w(s: &mut TcpStream, bytes: Vec<u8>) {
    let _ = s.write_all(&bytes).await;
}

/// Writes the scripted response; false when the connection must close.
async fn answer(
    stream: &mut TcpStream,
    method: &str,
    path: &str,
    line: &str,
    head: &str,
    body: &[u8],
) -> bool {
    match path {
        "/cl" => w(stream, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Kind: cl\r\n\r\nhello".to_vec()).await,
        "/echo" => {
            // The request line, then its headers normalised (lower-case
            // names, sorted), then the body.
            let mut headers: Vec<String> = head
                .lines()
                .skip(1)
                .filter_map(|l| l.split_once(':'))
                .map(|(n, v)| format!("{}: {}", n.trim().to_ascii_lowercase(), v.trim()))
                .collect();
            headers.sort();
            let mut out = format!("{line}\n{}\n\n", headers.join("\n")).into_bytes();
            out.extend_from_slice(body);
            let mut resp = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", out.len()).into_bytes();
            resp.extend_from_slice(&out);
            w(stream, resp).await;
        }
        "/chunked" => {
            w(stream, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Kind: chunked\r\n\r\n5\r\nhello\r\n".to_vec()).await;
            tokio::time::sleep(Duration::from_millis(5)).await;
            w(stream, b"6;ext=1\r\n world\r\n".to_vec()).await;
            tokio::time::sleep(Duration::from_millis(5)).await;
            w(stream, b"0\r\nX-Trailer: t\r\n\r\n".to_vec()).await;
        }
        "/big" => {
            let data = pattern(BIG);
            w(stream, format!("HTTP/1.1 200 OK\r\nContent-Length: {BIG}\r\n\r\n").into_bytes()).await;
            for piece in data.chunks(64 * 1024) {
                w(stream, piece.to_vec()).await;
            }
        }
        "/head" if method == "HEAD" => {
            w(stream, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nX-Kind: head\r\n\r\n".to_vec()).await
        }
        "/nocontent" => w(stream, b"HTTP/1.1 204 No Content\r\nX-Kind: none\r\n\r\n".to_vec()).await,
        "/interim" => {
            w(stream, b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n".to_vec()).await;
            tokio::time::sleep(Duration::from_millis(5)).await;
            w(stream, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Kind: interim\r\n\r\nok".to_vec()).await;
        }
        "/hop" => {
            w(stream, b"HTTP/1.1 200 OK\r\nConnection: x-hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nProxy-Thing: 1\r\nX-Kind: hop\r\nContent-Length: 2\r\n\r\nok".to_vec()).await
        }
        "/stall" => {
            // Half the body, then nothing while the connection stays open.
            w(stream, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial".to_vec()).await;
            tokio::time::sleep(Duration::from_secs(60)).await;
            return false;
        }
        "/listed-length" => {
            w(stream, b"HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: 2\r\n\r\nok".to_vec()).await
        }
        "/status" => {
            w(stream, b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\nRetry-After: 1\r\n\r\nbusy".to_vec()).await
        }
        "/http10" => {
            w(stream, b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec()).await;
            return false;
        }
        "/close" => {
            w(stream, b"HTTP/1.1 200 OK\r\nX-Kind: close\r\n\r\nuntil the end".to_vec()).await;
            let _ = stream.shutdown().await;
            return false;
        }
        _ => w(stream, b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec()).await,
    }
    true
}

async fn start(upstream: SocketAddr, lean: bool) -> (Router, SocketAddr) {
    let config = RouterConfig {
        lean_http1: lean,
        workers: 2,
        ..RouterConfig::default()
    };
    start_with(upstream, config).await
}

async fn start_with(upstream: SocketAddr, config: RouterConfig) -> (Router, SocketAddr) {
    let table = RouteTable {
        active: Color::Blue,
        preview: None,
        endpoints: BTreeMap::from([(Color::Blue, vec![upstream])]),
    };
    let router = Router::new(config, table).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let r = router.clone();
    tokio::spawn(async move { r.serve(listener, std::future::pending()).await });
    (router, addr)
}

/// A keep-alive client that reconnects when the router closed.
struct Client {
    addr: SocketAddr,
    sender: Option<http1::SendRequest<Full<Bytes>>>,
    connections: usize,
}

/// Status, headers that are not about framing or the connection (sorted),
/// and body.
type Answer = (u16, Vec<(String, String)>, Vec<u8>);

impl Client {
    fn new(addr: SocketAddr) -> Client {
        Client {
            addr,
            sender: None,
            connections: 0,
        }
    }

    async fn send(&mut self, req: http::Request<Full<Bytes>>) -> Answer {
        // The router's close of a connection may be seen only once the
        // sender is asked to be ready: reconnect then too.
        loop {
            if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
                let stream = TcpStream::connect(self.addr).await.unwrap();
                let (sender, conn) = http1::handshake(TokioIo::new(stream)).await.unwrap();
                tokio::spawn(conn);
                self.sender = Some(sender);
                self.connections += 1;
            }
            if self.sender.as_mut().unwrap().ready().await.is_ok() {
                break;
            }
            self.sender = None;
        }
        let sender = self.sender.as_mut().unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        let mut headers: Vec<(String, String)> = resp
            .headers()
            .iter()
            .filter(|(n, _)| {
                !matches!(
                    n.as_str(),
                    "date" | "connection" | "transfer-encoding" | "content-length"
                )
            })
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_string()))
            .collect();
        headers.sort();
        let body = resp
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec();
        (status, headers, body)
    }
}

fn requests() -> Vec<http::Request<Full<Bytes>>> {
    let get = |path: &str| {
        http::Request::get(path)
            .header("host", "shop.test")
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    vec![
        get("/cl"),
        http::Request::get("/echo?q=1")
            .header("host", "shop.test")
            .header("connection", "keep-alive, x-secret")
            .header("x-secret", "s")
            .header("keep-alive", "5")
            .header("proxy-authorization", "Basic eA==")
            .header("te", "trailers, gzip")
            .header("x-forwarded-for", "10.9.9.9")
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-host", "orig.test")
            .header("x-keep", "k")
            .body(Full::new(Bytes::new()))
            .unwrap(),
        http::Request::post("/echo")
            .header("host", "shop.test")
            .header("content-type", "text/plain")
            .body(Full::new(Bytes::from_static(b"hello body")))
            .unwrap(),
        http::Request::put("/echo")
            .header("host", "shop.test")
            .body(Full::new(Bytes::from(pattern(200 * 1024))))
            .unwrap(),
        get("/chunked"),
        get("/big"),
        http::Request::head("/head")
            .header("host", "shop.test")
            .body(Full::new(Bytes::new()))
            .unwrap(),
        get("/nocontent"),
        get("/interim"),
        get("/hop"),
        get("/status"),
        get("/missing"),
        get("/http10"),
        get("/cl"),
        get("/close"),
        get("/cl"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lean_and_general_paths_answer_alike() {
    let (upstream, _) = scripted_upstream(false).await;
    let (lean_router, lean) = start(upstream, true).await;
    let (_, general) = start(upstream, false).await;
    let mut lean_client = Client::new(lean);
    let mut general_client = Client::new(general);
    let mut answers = Vec::new();
    for (a, b) in requests().into_iter().zip(requests()) {
        let what = format!("{} {}", a.method(), a.uri());
        let x = lean_client.send(a).await;
        let y = general_client.send(b).await;
        assert_eq!(
            x,
            y,
            "{what}: lean path (left) and general path (right) differ:\n{}\n---\n{}",
            String::from_utf8_lossy(&x.2),
            String::from_utf8_lossy(&y.2)
        );
        answers.push((what, x));
    }
    // Both paths are also right, not only alike.
    let find = |what: &str| &answers.iter().find(|(w, _)| w == what).unwrap().1;
    assert_eq!(find("GET /cl").2, b"hello");
    let echo = String::from_utf8(find("GET /echo?q=1").2.clone()).unwrap();
    assert!(echo.starts_with("GET /echo?q=1 HTTP/1.1\n"), "{echo}");
    for want in [
        "x-forwarded-for: 10.9.9.9, 127.0.0.1",
        "x-forwarded-proto: http",
        "x-forwarded-host: orig.test",
        "te: trailers",
        "x-keep: k",
        "host: shop.test",
    ] {
        assert!(echo.lines().any(|l| l == want), "{want:?} missing:\n{echo}");
    }
    for gone in [
        "x-secret",
        "keep-alive",
        "proxy-authorization",
        "connection",
    ] {
        assert!(
            !echo.lines().any(|l| l.starts_with(&format!("{gone}:"))),
            "{gone} was forwarded:\n{echo}"
        );
    }
    assert!(String::from_utf8_lossy(&find("POST /echo").2).ends_with("\n\nhello body"));
    assert!(find("PUT /echo").2.ends_with(&pattern(200 * 1024)));
    assert_eq!(find("GET /chunked").2, b"hello world");
    assert_eq!(find("GET /big").2, pattern(BIG));
    let head = find("HEAD /head");
    assert_eq!((head.0, head.2.len()), (200, 0));
    assert_eq!(find("GET /nocontent").0, 204);
    assert_eq!(find("GET /interim").2, b"ok");
    let hop = find("GET /hop");
    assert_eq!(hop.1, vec![("x-kind".to_string(), "hop".to_string())]);
    assert_eq!(find("GET /status").0, 503);
    assert_eq!(find("GET /missing").0, 404);
    assert_eq!(find("GET /close").2, b"until the end");
    // Clients keep their connections alike on both paths (a body the
    // upstream ends by closing is sent on chunked, the connection kept).
    assert_eq!(lean_client.connections, general_client.connections);
    let stats = lean_router.stats(Color::Blue);
    let counted: u64 = stats.responses_by_class.iter().sum();
    assert_eq!(counted, requests().len() as u64, "{stats:?}");
    assert_eq!(stats.router_errors, 0, "{stats:?}");
}

/// Sends raw bytes on one connection and reads until `responses` status
/// lines arrived or the router closed.
async fn raw_exchange(proxy: SocketAddr, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_moves_to_the_general_path_and_pipelines_stay_in_order() {
    let (upstream, _) = scripted_upstream(false).await;
    let (_, proxy) = start(upstream, true).await;
    // A lean request, a chunked upload (general path from here on), then
    // plain requests, all written at once, the last asking to close.
    let resp = raw_exchange(
        proxy,
        b"GET /cl HTTP/1.1\r\nHost: x\r\n\r\n\
          POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n\
          GET /chunked HTTP/1.1\r\nHost: x\r\n\r\n\
          GET /cl HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(resp.matches("HTTP/1.1 200 OK").count(), 4, "{resp}");
    let order: Vec<usize> = ["hello", "\n\nabcd", "hello\r\n", "hello"]
        .iter()
        .scan(0, |from, needle| {
            let at = resp[*from..].find(needle).map(|i| i + *from)?;
            *from = at + 1;
            Some(at)
        })
        .collect();
    assert_eq!(order.len(), 4, "answers out of order: {resp}");

    // Pipelined on the lean path only.
    let resp = raw_exchange(
        proxy,
        b"GET /cl HTTP/1.1\r\nHost: x\r\n\r\nGET /nocontent HTTP/1.1\r\nHost: x\r\n\r\nGET /cl HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let lines: Vec<&str> = resp
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &resp[i..i + 12])
        .collect();
    assert_eq!(
        lines,
        vec!["HTTP/1.1 200", "HTTP/1.1 204", "HTTP/1.1 200"],
        "{resp}"
    );
    let resp = raw_exchange(
        proxy,
        b"GET /http10 HTTP/1.1\r\nHost: x\r\n\r\nGET /cl HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    eprintln!("{resp}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_connections_the_upstream_closed_do_not_fail_requests() {
    let (upstream, received) = scripted_upstream(true).await;
    let (router, proxy) = start(upstream, true).await;
    let mut client = Client::new(proxy);
    // Every pooled connection closes when it gets the next request: a GET
    // is sent again on a new connection and succeeds.
    for i in 0..30 {
        let req = http::Request::get("/cl")
            .header("host", "x")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let (status, _, body) = client.send(req).await;
        assert_eq!(
            (status, body.as_slice()),
            (200, &b"hello"[..]),
            "request {i}"
        );
    }
    // The first GET found no pooled connection; each later one was
    // received twice (closed once, answered once).
    assert_eq!(received.load(Ordering::SeqCst), 1 + 29 * 2);
    assert_eq!(client.connections, 1, "the client connection was kept");
    let stats = router.stats(Color::Blue);
    assert_eq!(stats.responses_by_class[1], 30, "{stats:?}");
    assert_eq!(stats.router_errors, 0, "{stats:?}");

    // A POST is not sent twice: the client gets the 502.
    let before = received.load(Ordering::SeqCst);
    let req = http::Request::post("/echo")
        .header("host", "x")
        .body(Full::new(Bytes::from_static(b"once")))
        .unwrap();
    let (status, _, body) = client.send(req).await;
    assert_eq!(status, 502, "{}", String::from_utf8_lossy(&body));
    assert!(
        String::from_utf8_lossy(&body).contains("failed before answering"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(received.load(Ordering::SeqCst), before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_response_body_is_cut_off_on_both_paths() {
    let (upstream, _) = scripted_upstream(false).await;
    for lean in [true, false] {
        let config = RouterConfig {
            lean_http1: lean,
            workers: 2,
            upstream_body_timeout: Duration::from_millis(300),
            ..RouterConfig::default()
        };
        let (router, proxy) = start_with(upstream, config).await;
        let started = std::time::Instant::now();
        let resp = raw_exchange(proxy, b"GET /stall HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let waited = started.elapsed();
        assert!(resp.starts_with("HTTP/1.1 200 OK"), "lean {lean}: {resp}");
        assert!(resp.ends_with("partial"), "lean {lean}: {resp}");
        // Closed by the body timeout, not by the client giving up (10 s).
        assert!(waited < Duration::from_secs(8), "lean {lean}: {waited:?}");
        // Nothing is left in flight: a drain of the color completes.
        let report = router.drain(Color::Blue, Duration::from_secs(5)).await;
        assert!(report.completed, "lean {lean}: {report:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_keeps_its_length_when_the_connection_header_lists_it() {
    let (upstream, _) = scripted_upstream(false).await;
    for lean in [true, false] {
        let (_, proxy) = start(upstream, lean).await;
        // The upstream gets the body as a body, not as the start of the
        // next request.
        let resp = raw_exchange(
            proxy,
            b"POST /echo HTTP/1.1\r\nHost: x\r\nConnection: content-length\r\nContent-Length: 4\r\n\r\nabcd\
              GET /cl HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(
            resp.matches("HTTP/1.1 200 OK").count(),
            2,
            "lean {lean}: {resp}"
        );
        assert!(resp.contains("content-length: 4\n"), "lean {lean}: {resp}");
        assert!(
            resp.contains("\n\nabcdHTTP/1.1 200 OK"),
            "lean {lean}: {resp}"
        );
        assert!(resp.ends_with("hello"), "lean {lean}: {resp}");
        // The client gets the response body's length.
        let resp = raw_exchange(
            proxy,
            b"GET /listed-length HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        let head = resp.split("\r\n\r\n").next().unwrap_or_default();
        assert!(
            head.to_ascii_lowercase().contains("\r\ncontent-length: 2"),
            "lean {lean}: {resp}"
        );
        assert!(resp.ends_with("\r\n\r\nok"), "lean {lean}: {resp}");
    }
}
