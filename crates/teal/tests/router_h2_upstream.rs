//! HTTP/2 (h2c, prior knowledge) from a real `teal router` to real
//! `teal sample-app` upstreams: bodies intact, many requests multiplexed,
//! cutover exact with zero failed requests.

mod router_support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use router_support::*;
use tokio::net::TcpStream;

type Sample = (Instant, Instant, String);

/// Requests back to back (POSTs with a body) on one HTTP/1.1 keep-alive
/// connection until `stop`; each must be a 200 that reached the upstream
/// over HTTP/2 with its body intact.
async fn client(proxy: SocketAddr, n: usize, stop: Arc<AtomicBool>) -> Result<Vec<Sample>, String> {
    let stream = TcpStream::connect(proxy).await.map_err(|e| e.to_string())?;
    let (mut s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut samples = Vec::new();
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let body = "x".repeat((n * 131 + i * 17) % 20_000);
        s.ready()
            .await
            .map_err(|e| format!("connection closed: {e}"))?;
        let start = Instant::now();
        let req = Request::post("/echo?n=1")
            .header("host", "teal.test")
            .body(Full::new(Bytes::from(body.clone())))
            .unwrap();
        let resp = s
            .send_request(req)
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        let text = String::from_utf8_lossy(&bytes);
        if status != StatusCode::OK {
            return Err(format!("{status}: {text}"));
        }
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        if json["http_version"] != "HTTP/2.0" || json["body_bytes"] != body.len() {
            return Err(format!("not forwarded over HTTP/2 intact: {text}"));
        }
        if json["uri"] != "http://teal.test/echo?n=1"
            || json["headers"]["x-forwarded-for"][0] != "127.0.0.1"
        {
            return Err(format!("target or forwarded headers wrong: {text}"));
        }
        let color = json["color"].as_str().unwrap_or_default().to_string();
        samples.push((start, Instant::now(), color));
    }
    Ok(samples)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_upstreams_carry_bodies_and_cut_over_exactly() {
    let blue = app("blue", "v1");
    let green = app("green", "v2");
    let r = router(
        Some(&table("blue", blue.addr, green.addr)),
        &["--upstream-protocol", "h2c", "--workers", "2"],
    );
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..32)
        .map(|n| tokio::spawn(client(r.proxy, n, stop.clone())))
        .collect();
    let swaps = swap_back_and_forth(r.admin, blue.addr, green.addr, 20).await;
    stop.store(true, Ordering::Relaxed);
    let mut samples = Vec::new();
    for c in clients {
        samples.extend(c.await.unwrap().expect("a client saw a failed request"));
    }
    let checked = check_exact(&samples, "blue", &swaps);
    assert!(
        checked > 200,
        "too few requests to judge: {checked} of {}",
        samples.len()
    );

    // 32 client connections were served over a handful of multiplexed
    // upstream connections: one per worker thread and endpoint.
    let established = |app: SocketAddr| {
        let port = format!("{:04X}", app.port());
        std::fs::read_to_string("/proc/net/tcp")
            .unwrap()
            .lines()
            .filter(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() > 3 && f[1].ends_with(&format!(":{port}")) && f[3] == "01"
            })
            .count()
    };
    let upstream_conns = established(blue.addr) + established(green.addr);
    assert!(
        (1..=4).contains(&upstream_conns),
        "{upstream_conns} upstream connections for 2 workers x 2 endpoints"
    );

    // Drain closes the old color's HTTP/2 connections (20 swaps from
    // blue end on blue).
    assert_eq!(swaps.last().unwrap().active, "blue");
    assert!(established(green.addr) > 0);
    let drained = send(
        r.admin,
        request("POST", "/drain?color=green&timeout=5s", Some(TOKEN), None),
    )
    .await;
    assert_eq!(drained.status(), StatusCode::OK, "{}", drained.body());
    eventually("the drained color's upstream connections close", || async {
        established(green.addr) == 0
    })
    .await;
    assert!(established(blue.addr) > 0);
}
