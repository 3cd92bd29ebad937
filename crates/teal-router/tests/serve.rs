//! In-process router against in-process upstreams whose answers the test
//! controls: drain waits for an in-flight request, bodies are streamed, and
//! statistics are recorded per color.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Empty};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use teal_router::{Color, RouteTable, Router, RouterConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// A response body fed chunk by chunk by the test.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|c| c.map(|b| Ok(Frame::data(b))))
    }
}

type Pending = Arc<Mutex<Option<mpsc::Receiver<Bytes>>>>;

/// An upstream whose one response body is whatever the test sends on the
/// returned channel; the response headers go out at once.
async fn controlled_upstream() -> (SocketAddr, mpsc::Sender<Bytes>) {
    let (tx, rx) = mpsc::channel(4);
    let pending: Pending = Arc::new(Mutex::new(Some(rx)));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let pending = pending.clone();
            tokio::spawn(async move {
                let service = service_fn(move |_req| {
                    let rx = pending.lock().unwrap().take().expect("one request only");
                    async move { Ok::<_, Infallible>(hyper::Response::new(ChannelBody(rx))) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, tx)
}

async fn start(table: RouteTable) -> (Router, SocketAddr) {
    let router = Router::new(RouterConfig::default(), table).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let r = router.clone();
    tokio::spawn(async move { r.serve(listener, std::future::pending()).await });
    (router, addr)
}

fn table(active: Color, blue: SocketAddr, green: SocketAddr) -> RouteTable {
    RouteTable {
        active,
        preview: None,
        endpoints: BTreeMap::from([(Color::Blue, vec![blue]), (Color::Green, vec![green])]),
    }
}

async fn wait_for(what: &str, f: impl Fn() -> bool) {
    for _ in 0..1000 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_response_keeps_its_color_in_flight_until_the_last_byte() {
    let (blue, chunks) = controlled_upstream().await;
    let (green, _unused) = controlled_upstream().await;
    let (router, proxy) = start(table(Color::Blue, blue, green)).await;

    let stream = TcpStream::connect(proxy).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::get("/")
        .header("host", "t")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();

    // The first chunk reaches the client while the upstream still holds the
    // rest: nothing buffers the whole body.
    chunks.send(Bytes::from_static(b"first ")).await.unwrap();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&first[..], b"first ");
    assert_eq!(router.in_flight(Color::Blue), 1);

    // Switch to green; blue's request is still in flight, so drain waits.
    router.swap(table(Color::Green, blue, green)).unwrap();
    let drainer = router.clone();
    let drain =
        tokio::spawn(async move { drainer.drain(Color::Blue, Duration::from_secs(30)).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !drain.is_finished(),
        "drain returned while blue had a request in flight"
    );

    chunks.send(Bytes::from_static(b"last")).await.unwrap();
    drop(chunks);
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(&rest[..], b"last");
    let report = drain.await.unwrap();
    assert!(report.completed, "{report:?}");
    assert_eq!(report.remaining, 0);
    assert_eq!(router.in_flight(Color::Blue), 0);

    let stats = router.stats(Color::Blue);
    assert_eq!(stats.responses_by_class[1], 1);
    assert_eq!(stats.latency_counts.iter().sum::<u64>(), 1);
    assert_eq!(router.stats(Color::Green).requests(), 0);
    let metrics = router.render_metrics();
    assert!(metrics.contains("teal_router_requests_total{color=\"blue\",class=\"2xx\"} 1"));
    assert!(metrics.contains("teal_router_route_generation 2"));
    assert!(metrics.contains("teal_router_active_color{color=\"green\"} 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_gives_up_at_the_timeout_and_reports_what_is_left() {
    let (blue, chunks) = controlled_upstream().await;
    let (green, _unused) = controlled_upstream().await;
    let (router, proxy) = start(table(Color::Blue, blue, green)).await;
    let stream = TcpStream::connect(proxy).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::get("/")
        .header("host", "t")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let _resp = sender.send_request(req).await.unwrap();
    wait_for("blue in flight", || router.in_flight(Color::Blue) == 1).await;
    let report = router.drain(Color::Blue, Duration::from_millis(200)).await;
    assert!(!report.completed);
    assert_eq!(report.remaining, 1);
    assert!(report.waited >= Duration::from_millis(200));
    drop(chunks);
}

/// An upstream answering `ok` that counts the connections it accepted and
/// the ones that were closed.
async fn counting_upstream() -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let accepted = Arc::new(AtomicUsize::new(0));
    let closed = Arc::new(AtomicUsize::new(0));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (a, c) = (accepted.clone(), closed.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            a.fetch_add(1, Ordering::SeqCst);
            let c = c.clone();
            tokio::spawn(async move {
                let service = service_fn(|_req| async {
                    Ok::<_, Infallible>(hyper::Response::new(http_body_util::Full::new(
                        Bytes::from_static(b"ok"),
                    )))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
                c.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    (addr, accepted, closed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_reused_and_closed_by_drain() {
    let (blue, accepted, closed) = counting_upstream().await;
    let (green, _, _) = counting_upstream().await;
    let (router, proxy) = start(table(Color::Blue, blue, green)).await;
    // Sequential requests on one keep-alive client connection (served by
    // one worker thread): one upstream connection serves them all.
    let stream = TcpStream::connect(proxy).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    for i in 0..5 {
        let req = hyper::Request::get("/")
            .header("host", "test")
            .body(Empty::<Bytes>::new())
            .unwrap();
        // The client connection takes the next request once it has
        // finished reading the last response.
        send.ready().await.unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200, "request {i}");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "ok");
        wait_for("the connection back in the pool", || {
            router.idle_upstream_connections(Color::Blue) == 1
        })
        .await;
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "one upstream connection"
    );
    assert_eq!(closed.load(Ordering::SeqCst), 0);
    assert_eq!(router.stats(Color::Blue).requests(), 5);

    // Drain closes the idle pooled connection.
    let report = router.drain(Color::Blue, Duration::from_secs(5)).await;
    assert!(report.completed);
    assert_eq!(router.idle_upstream_connections(Color::Blue), 0);
    wait_for("the upstream to see its connection closed", || {
        closed.load(Ordering::SeqCst) == 1
    })
    .await;
}
