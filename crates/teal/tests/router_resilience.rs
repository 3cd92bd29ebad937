//! Worker threads, retries after failed connects and passive ejection,
//! against real `teal router` and `teal sample-app` processes.

mod router_support;

use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use router_support::*;
use tokio::net::TcpStream;

/// A loopback address nothing listens on.
fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// `conns` keep-alive connections, each sending `per_conn` requests in turn
/// (GETs and POSTs with a body); returns the failures (anything but a 200
/// from `color` with the body intact).
async fn load(proxy: SocketAddr, conns: usize, per_conn: usize, color: &str) -> Vec<String> {
    let mut tasks = Vec::new();
    for c in 0..conns {
        let color = color.to_string();
        tasks.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            let stream = TcpStream::connect(proxy).await.expect("connect");
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .expect("handshake");
            tokio::spawn(conn);
            for i in 0..per_conn {
                let post = (c + i) % 2 == 0;
                let body = format!("request {c}/{i}");
                let req = Request::builder()
                    .method(if post { "POST" } else { "GET" })
                    .uri(if post { "/echo" } else { "/" })
                    .header("host", "teal.test")
                    .body(Full::new(Bytes::from(if post {
                        body.clone()
                    } else {
                        String::new()
                    })))
                    .unwrap();
                let resp = match sender.send_request(req).await {
                    Ok(r) => r,
                    Err(e) => {
                        failures.push(format!("request failed: {e}"));
                        break;
                    }
                };
                let status = resp.status();
                let bytes = resp.into_body().collect().await.unwrap().to_bytes();
                let text = String::from_utf8_lossy(&bytes).into_owned();
                if status != StatusCode::OK {
                    failures.push(format!("{status}: {text}"));
                    continue;
                }
                let json: serde_json::Value = serde_json::from_str(&text).unwrap();
                if json["color"] != color.as_str() {
                    failures.push(format!("wrong color: {text}"));
                }
                if post && json["body_bytes"] != body.len() {
                    failures.push(format!("body not intact: {text}"));
                }
            }
            failures
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("client task"));
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_flag_sets_the_serving_threads() {
    let blue = app("blue", "v1");
    let r = router(
        Some(&table("blue", blue.addr, closed_port())),
        &["--workers", "3"],
    );
    // The workers start with the proxy listener; the line is printed after.
    let threads = || worker_threads(r.proc.pid());
    eventually("three worker threads", || async { threads() == 3 }).await;
    assert!(load(r.proxy, 6, 5, "blue").await.is_empty());
    assert_eq!(threads(), 3);

    let err = std::process::Command::new(env!("CARGO_BIN_EXE_teal"))
        .args(["router", "--connect-attempts", "0"])
        .output()
        .unwrap();
    assert_eq!(err.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&err.stderr).contains("--connect-attempts"),
        "{}",
        String::from_utf8_lossy(&err.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_connects_go_to_another_endpoint_and_eject_the_dead_one() {
    let down = closed_port();
    let mut blue1 = app("blue", "v1");
    let blue2 = app("blue", "v1");
    let green = app("green", "v2");
    let routes = format!(
        r#"{{"active":"blue","endpoints":{{"blue":["{down}","{}","{}"],"green":["{}"]}}}}"#,
        blue1.addr, blue2.addr, green.addr
    );
    let r = router(Some(&routes), &[]);
    let blue_metric = |name: &str| format!("{name}{{color=\"blue\"}}");

    // One of three blue endpoints is down from the start: not one request
    // fails, whatever its method.
    let failures = load(r.proxy, 16, 25, "blue").await;
    assert!(failures.is_empty(), "{failures:?}");
    let retries = metric(r.admin, &blue_metric("teal_router_upstream_retries_total")).await;
    assert!(retries >= 1.0, "retries {retries}");
    assert!(
        metric(
            r.admin,
            &blue_metric("teal_router_upstream_ejections_total")
        )
        .await
            >= 1.0
    );
    assert_eq!(
        metric(
            r.admin,
            &blue_metric("teal_router_upstream_ejected_endpoints")
        )
        .await,
        1.0,
        "the dead endpoint is cooling down"
    );
    // Ejected, it is skipped: a second round needs few or no retries (only
    // once its cooldown ends is it tried again).
    let failures = load(r.proxy, 16, 25, "blue").await;
    assert!(failures.is_empty(), "{failures:?}");
    let again = metric(r.admin, &blue_metric("teal_router_upstream_retries_total")).await;
    assert!(
        again - retries < 20.0,
        "the ejected endpoint kept getting requests: {retries} then {again} retries"
    );

    // A second blue endpoint dies while idle (its pooled connections close
    // with it): still no failed request.
    blue1.proc.wait_kill();
    let failures = load(r.proxy, 16, 25, "blue").await;
    assert!(failures.is_empty(), "{failures:?}");
    assert!(
        metric(
            r.admin,
            &blue_metric("teal_router_upstream_connect_errors_total")
        )
        .await
            >= 2.0
    );

    // Green is untouched by blue's failures.
    assert_eq!(
        metric(
            r.admin,
            "teal_router_upstream_connect_errors_total{color=\"green\"}"
        )
        .await,
        0.0
    );

    // All blue endpoints down: 502 naming every endpoint tried and the cause.
    drop(blue2);
    let resp = get(r.proxy, "/").await;
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY, "{}", resp.body());
    assert!(
        resp.body()
            .starts_with("502 bad gateway: cannot connect to upstream blue "),
        "{}",
        resp.body()
    );
    assert_eq!(
        resp.body()
            .matches("cannot connect to upstream blue")
            .count(),
        3,
        "three attempts: {}",
        resp.body()
    );
    assert!(
        resp.body().contains("Connection refused"),
        "{}",
        resp.body()
    );
    // Never are all endpoints ejected: the last serving one stays in.
    let ejected = metric(
        r.admin,
        &blue_metric("teal_router_upstream_ejected_endpoints"),
    )
    .await;
    assert!(ejected <= 2.0, "{ejected} of 3 endpoints ejected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connect_attempt_means_no_retry() {
    let down = closed_port();
    let blue = app("blue", "v1");
    let routes = format!(
        r#"{{"active":"blue","endpoints":{{"blue":["{down}","{}"]}}}}"#,
        blue.addr
    );
    let r = router(Some(&routes), &["--connect-attempts", "1"]);
    // Until the dead endpoint is ejected, some request lands on it and, with
    // no retry allowed, fails with its cause.
    let mut saw_502 = false;
    for _ in 0..200 {
        let resp = get(r.proxy, "/").await;
        if resp.status() == StatusCode::BAD_GATEWAY {
            assert!(
                resp.body()
                    .contains(&format!("cannot connect to upstream blue {down}")),
                "{}",
                resp.body()
            );
            saw_502 = true;
            break;
        }
    }
    assert!(saw_502, "a request was sent to the dead endpoint");
    assert_eq!(
        metric(
            r.admin,
            "teal_router_upstream_retries_total{color=\"blue\"}"
        )
        .await,
        0.0
    );
}
