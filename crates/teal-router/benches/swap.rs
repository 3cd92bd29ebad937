//! Route swap timing under load: how long `Router::swap` takes to return, and
//! how long until every client connection is served by the new color.
//! Run with `cargo bench -p teal-router --bench swap`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use teal_router::{Color, RouteTable, Router, RouterConfig};
use tokio::net::{TcpListener, TcpStream};

const CONNECTIONS: usize = 64;
const SWAPS: usize = 200;

async fn upstream(color: Color) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = service_fn(move |_req| async move {
                    let mut resp = hyper::Response::new(Full::new(Bytes::from_static(b"ok")));
                    resp.headers_mut()
                        .insert("x-color", color.as_str().parse().expect("value"));
                    Ok::<_, Infallible>(resp)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

struct Shared {
    /// Swap number in progress (1-based) and its target color.
    epoch: AtomicU64,
    target_green: AtomicBool,
    started: Mutex<Instant>,
    /// Per epoch: how many connections have seen the new color, and the
    /// latest time one of them did.
    reported: AtomicUsize,
    last_ns: AtomicU64,
    stop: AtomicBool,
}

async fn client(proxy: SocketAddr, shared: Arc<Shared>) {
    let stream = TcpStream::connect(proxy).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let mut my_epoch = 0;
    while !shared.stop.load(Ordering::Relaxed) {
        let req = hyper::Request::get("/")
            .header("host", "bench")
            .body(Empty::<Bytes>::new())
            .expect("request");
        let resp = sender.send_request(req).await.expect("response");
        let green = resp.headers()["x-color"] == "green";
        let _ = resp.into_body().collect().await;
        let epoch = shared.epoch.load(Ordering::SeqCst);
        if epoch > my_epoch && green == shared.target_green.load(Ordering::SeqCst) {
            my_epoch = epoch;
            let started = *shared.started.lock().expect("lock");
            let ns = started.elapsed().as_nanos() as u64;
            shared.last_ns.fetch_max(ns, Ordering::SeqCst);
            shared.reported.fetch_add(1, Ordering::SeqCst);
        }
    }
}

fn summary(name: &str, mut v: Vec<f64>) -> String {
    v.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    format!(
        "{name}: p50 {:.1} us, p99 {:.1} us, max {:.1} us ({} swaps)",
        q(0.5),
        q(0.99),
        v[v.len() - 1],
        v.len()
    )
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let blue = upstream(Color::Blue).await;
        let green = upstream(Color::Green).await;
        let table = |active| RouteTable {
            active,
            preview: None,
            endpoints: BTreeMap::from([(Color::Blue, vec![blue]), (Color::Green, vec![green])]),
        };
        let router = Router::new(RouterConfig::default(), table(Color::Blue)).expect("router");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let proxy = listener.local_addr().expect("addr");
        {
            let router = router.clone();
            tokio::spawn(async move { router.serve(listener, std::future::pending()).await });
        }
        let shared = Arc::new(Shared {
            epoch: AtomicU64::new(0),
            target_green: AtomicBool::new(false),
            started: Mutex::new(Instant::now()),
            reported: AtomicUsize::new(0),
            last_ns: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let clients: Vec<_> = (0..CONNECTIONS)
            .map(|_| tokio::spawn(client(proxy, shared.clone())))
            .collect();
        tokio::time::sleep(Duration::from_millis(500)).await;

        let mut swap_us = Vec::new();
        let mut all_us = Vec::new();
        let mut color = Color::Blue;
        for epoch in 1..=SWAPS as u64 {
            color = color.other();
            let next = table(color);
            shared.reported.store(0, Ordering::SeqCst);
            shared.last_ns.store(0, Ordering::SeqCst);
            shared
                .target_green
                .store(color == Color::Green, Ordering::SeqCst);
            *shared.started.lock().expect("lock") = Instant::now();
            let t0 = Instant::now();
            shared.epoch.store(epoch, Ordering::SeqCst);
            router.swap(next).expect("swap");
            swap_us.push(t0.elapsed().as_secs_f64() * 1e6);
            while shared.reported.load(Ordering::SeqCst) < CONNECTIONS {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            all_us.push(shared.last_ns.load(Ordering::SeqCst) as f64 / 1e3);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        shared.stop.store(true, Ordering::SeqCst);
        for c in clients {
            let _ = c.await;
        }
        println!("{}", summary("swap returns", swap_us));
        println!("{}", summary("swap all connections on new color", all_us));
    });
}
