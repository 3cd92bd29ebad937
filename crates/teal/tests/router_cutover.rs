//! Cutover and preview switches under concurrent keep-alive load, against a
//! real `teal router` process and real blue/green `teal sample-app` upstreams.
//!
//! Every request records when it started; every swap records when the
//! `PUT /routes` was sent and when its answer came back. A request that
//! started after a swap returned (and before the next one was sent) must have
//! been served by the color that swap installed.

mod router_support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use router_support::*;
use tokio::net::TcpStream;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mark {
    Plain,
    Header,
    Cookie,
}

struct Sample {
    start: Instant,
    end: Instant,
    color: String,
    mark: Mark,
}

#[derive(Default)]
struct ClientReport {
    samples: Vec<Sample>,
    failures: Vec<String>,
}

fn build(mark: Mark) -> Request<Empty<Bytes>> {
    let mut b = Request::get("/").header("host", "teal.test");
    match mark {
        Mark::Plain => {}
        Mark::Header => b = b.header("x-preview", "1"),
        Mark::Cookie => b = b.header("cookie", "a=b; preview=1"),
    }
    b.body(Empty::new()).expect("request")
}

async fn one(
    sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    mark: Mark,
) -> Result<Sample, String> {
    let start = Instant::now();
    let resp = sender
        .send_request(build(mark))
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    classify(resp, start, mark).await
}

async fn classify(
    resp: http::Response<hyper::body::Incoming>,
    start: Instant,
    mark: Mark,
) -> Result<Sample, String> {
    let status = resp.status();
    let color = resp
        .headers()
        .get("x-app-color")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body failed: {e}"))?
        .to_bytes();
    if status != StatusCode::OK {
        return Err(format!(
            "status {status}: {}",
            String::from_utf8_lossy(&body)
        ));
    }
    let json: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| format!("bad body: {e}"))?;
    if json["color"] != color.as_str() {
        return Err(format!("header color {color} but body {json}"));
    }
    Ok(Sample {
        start,
        end: Instant::now(),
        color,
        mark,
    })
}

/// One HTTP/1.1 keep-alive connection sending requests back to back.
async fn h1_client(proxy: SocketAddr, mark: Mark, stop: Arc<AtomicBool>) -> ClientReport {
    let mut report = ClientReport::default();
    let stream = TcpStream::connect(proxy).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    while !stop.load(Ordering::Relaxed) {
        match one(&mut sender, mark).await {
            Ok(s) => report.samples.push(s),
            Err(e) => {
                report.failures.push(e);
                break;
            }
        }
    }
    report
}

/// One HTTP/2 (h2c) connection with `streams` concurrent request loops.
async fn h2_client(proxy: SocketAddr, streams: usize, stop: Arc<AtomicBool>) -> ClientReport {
    let stream = TcpStream::connect(proxy).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    let mut tasks = Vec::new();
    for _ in 0..streams {
        let mut sender = sender.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut report = ClientReport::default();
            while !stop.load(Ordering::Relaxed) {
                let start = Instant::now();
                let mut req = build(Mark::Plain);
                *req.uri_mut() = "http://teal.test/".parse().expect("uri");
                let result = match sender.send_request(req).await {
                    Ok(resp) => classify(resp, start, Mark::Plain).await,
                    Err(e) => Err(format!("h2 request failed: {e}")),
                };
                match result {
                    Ok(s) => report.samples.push(s),
                    Err(e) => {
                        report.failures.push(e);
                        break;
                    }
                }
            }
            report
        }));
    }
    let mut all = ClientReport::default();
    for t in tasks {
        let r = t.await.expect("h2 stream task");
        all.samples.extend(r.samples);
        all.failures.extend(r.failures);
    }
    all
}

struct Swap {
    sent: Instant,
    returned: Instant,
    /// Color for plain requests, and for preview requests, after this swap.
    plain: &'static str,
    preview: &'static str,
}

/// The color a sample must have been served by, or `None` when a swap was in
/// progress at any time between the request's start and its end (then either
/// color is right: a later swap may legitimately route it).
fn expected(
    sample: &Sample,
    initial: (&'static str, &'static str),
    swaps: &[Swap],
) -> Option<&'static str> {
    let mut current = initial;
    for s in swaps {
        if sample.start < s.sent {
            if sample.end > s.sent {
                return None;
            }
            break;
        }
        if sample.start < s.returned {
            return None;
        }
        current = (s.plain, s.preview);
    }
    Some(if sample.mark == Mark::Plain {
        current.0
    } else {
        current.1
    })
}

struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<(tokio::task::JoinHandle<ClientReport>, bool)>,
}

impl Load {
    fn start(proxy: SocketAddr, h1: &[(Mark, usize)], h2_conns: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for (mark, n) in h1 {
            for _ in 0..*n {
                tasks.push((tokio::spawn(h1_client(proxy, *mark, stop.clone())), true));
            }
        }
        for _ in 0..h2_conns {
            tasks.push((tokio::spawn(h2_client(proxy, 4, stop.clone())), false));
        }
        Load { stop, tasks }
    }

    /// Stops the load; returns all samples after checking there were no
    /// failures and that every HTTP/1.1 connection saw both colors (it was
    /// kept alive across swaps and not pinned to a color).
    async fn finish(self, expect_both_on_each_h1: bool) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        let mut samples = Vec::new();
        let mut failures = Vec::new();
        for (task, is_h1) in self.tasks {
            let r = task.await.expect("client task");
            if is_h1 && expect_both_on_each_h1 && r.failures.is_empty() {
                let blue = r.samples.iter().any(|s| s.color == "blue");
                let green = r.samples.iter().any(|s| s.color == "green");
                assert!(
                    blue && green,
                    "a keep-alive connection saw only one color over all swaps ({} requests)",
                    r.samples.len()
                );
            }
            samples.extend(r.samples);
            failures.extend(r.failures);
        }
        assert!(
            failures.is_empty(),
            "{} failed requests, e.g. {:?}",
            failures.len(),
            &failures[..failures.len().min(5)]
        );
        samples
    }
}

/// Installs `count` tables from `next` (table JSON, plain color, preview
/// color) through the admin API, pausing between them, and records when each
/// swap was sent and when it returned.
async fn swap_repeatedly(
    admin: SocketAddr,
    count: usize,
    mut next: impl FnMut() -> (String, &'static str, &'static str),
) -> Vec<Swap> {
    let mut swaps = Vec::new();
    for _ in 0..count {
        let (json, plain, preview) = next();
        let sent = Instant::now();
        let resp = put_routes(admin, &json).await;
        let returned = Instant::now();
        assert_eq!(resp.status(), StatusCode::OK, "{}", resp.body());
        swaps.push(Swap {
            sent,
            returned,
            plain,
            preview,
        });
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    swaps
}

fn check(samples: &[Sample], initial: (&'static str, &'static str), swaps: &[Swap]) -> usize {
    let mut checked = 0;
    let mut wrong = Vec::new();
    for s in samples {
        if let Some(want) = expected(s, initial, swaps) {
            checked += 1;
            if s.color != want {
                wrong.push((s.mark, s.color.clone(), want));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {checked} requests started after a swap returned were served by the wrong color, e.g. {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
    checked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cutover_under_keepalive_load_is_exact() {
    let blue = app("blue", "v1");
    let green = app("green", "v2");
    let r = router(Some(&table("blue", blue.addr, green.addr)), &[]);

    let load = Load::start(r.proxy, &[(Mark::Plain, 64)], 2);
    // Let every connection get going before the first switch.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut active = "blue";
    let swaps = swap_repeatedly(r.admin, 20, || {
        active = if active == "blue" { "green" } else { "blue" };
        (table(active, blue.addr, green.addr), active, active)
    })
    .await;
    let samples = load.finish(true).await;
    let checked = check(&samples, ("blue", "blue"), &swaps);
    assert!(checked > 500, "too few requests to judge: {checked}");
    let (generation, _) = generation(r.admin).await;
    assert_eq!(generation, 21);

    // The router's own counters saw the same traffic, split over both colors.
    let blue_2xx = metric(
        r.admin,
        "teal_router_requests_total{color=\"blue\",class=\"2xx\"}",
    )
    .await;
    let green_2xx = metric(
        r.admin,
        "teal_router_requests_total{color=\"green\",class=\"2xx\"}",
    )
    .await;
    assert!(blue_2xx > 0.0 && green_2xx > 0.0);
    assert!(blue_2xx + green_2xx >= samples.len() as f64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preview_reaches_only_the_preview_color_and_switches_atomically() {
    let blue = app("blue", "v1");
    let green = app("green", "v2");
    let r = router(
        Some(&preview_table("blue", "green", blue.addr, green.addr)),
        &[],
    );

    // Quiet checks first: header, cookie, wrong value, no mark.
    let mut req = request("GET", "/", None, None);
    req.headers_mut().insert("x-preview", "1".parse().unwrap());
    assert_eq!(send(r.proxy, req).await.headers()["x-app-color"], "green");
    let mut req = request("GET", "/", None, None);
    req.headers_mut()
        .insert("cookie", "x=y; preview=1".parse().unwrap());
    assert_eq!(send(r.proxy, req).await.headers()["x-app-color"], "green");
    let mut req = request("GET", "/", None, None);
    req.headers_mut().insert("x-preview", "2".parse().unwrap());
    assert_eq!(send(r.proxy, req).await.headers()["x-app-color"], "blue");
    let mut req = request("GET", "/", None, None);
    req.headers_mut()
        .insert("cookie", "preview=10".parse().unwrap());
    assert_eq!(send(r.proxy, req).await.headers()["x-app-color"], "blue");
    assert_eq!(get(r.proxy, "/").await.headers()["x-app-color"], "blue");

    // Under load, move the preview route between green and blue while the
    // active color stays blue.
    let load = Load::start(
        r.proxy,
        &[(Mark::Plain, 24), (Mark::Header, 20), (Mark::Cookie, 20)],
        0,
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut preview = "green";
    let swaps = swap_repeatedly(r.admin, 20, || {
        preview = if preview == "green" { "blue" } else { "green" };
        (
            preview_table("blue", preview, blue.addr, green.addr),
            "blue",
            preview,
        )
    })
    .await;
    let samples = load.finish(false).await;
    assert!(
        samples
            .iter()
            .filter(|s| s.mark == Mark::Plain)
            .all(|s| s.color == "blue"),
        "a request without the preview mark reached green"
    );
    let checked = check(&samples, ("blue", "green"), &swaps);
    assert!(checked > 500, "too few requests to judge: {checked}");
    let marked_green = samples
        .iter()
        .filter(|s| s.mark != Mark::Plain && s.color == "green")
        .count();
    assert!(marked_green > 0);
}
