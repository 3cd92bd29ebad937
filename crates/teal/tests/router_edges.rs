//! Drain, WebSocket passthrough, malformed input, the admin API and failure
//! statuses of a real `teal router` process with real `teal sample-app`
//! upstreams.

mod router_support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use router_support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

async fn ws_connect(proxy: SocketAddr) -> Ws {
    let stream = TcpStream::connect(proxy).await.expect("connect");
    let (ws, resp) = tokio_tungstenite::client_async(format!("ws://{proxy}/ws"), stream)
        .await
        .expect("websocket handshake through the router");
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    ws
}

async fn ws_say(ws: &mut Ws, text: &str) -> String {
    ws.send(Message::text(text)).await.expect("send");
    match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) => t.as_str().to_string(),
        other => panic!("no echo for {text:?}: {other:?}"),
    }
}

async fn drain(admin: SocketAddr, color: &str, timeout: &str) -> serde_json::Value {
    let path = format!("/drain?color={color}&timeout={timeout}");
    let resp = send(admin, request("POST", &path, Some(TOKEN), None)).await;
    assert_eq!(resp.status(), StatusCode::OK, "{}", resp.body());
    serde_json::from_str(resp.body()).expect("drain report")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_request_finishes_on_old_color_and_drain_waits_for_it() {
    let blue = app("blue", "v1");
    let green = app("green", "v2");
    let r = router(Some(&table("blue", blue.addr, green.addr)), &[]);

    let proxy = r.proxy;
    let slow = tokio::spawn(async move {
        let resp = get(proxy, "/sleep?ms=2000").await;
        (resp, Instant::now())
    });
    eventually("the slow request is in flight on blue", || async {
        metric(r.admin, "teal_router_in_flight{color=\"blue\"}").await == 1.0
    })
    .await;

    let resp = put_routes(r.admin, &table("green", blue.addr, green.addr)).await;
    assert_eq!(resp.status(), StatusCode::OK, "{}", resp.body());
    assert_eq!(get(r.proxy, "/").await.headers()["x-app-color"], "green");

    let report = drain(r.admin, "blue", "20s").await;
    let drain_returned = Instant::now();
    assert_eq!(report["completed"], true, "{report}");
    assert_eq!(report["remaining"], 0, "{report}");
    let (slow_resp, slow_done) = slow.await.expect("slow request task");
    assert_eq!(slow_resp.status(), StatusCode::OK, "{}", slow_resp.body());
    assert_eq!(slow_resp.headers()["x-app-color"], "blue");
    assert!(
        slow_done <= drain_returned,
        "drain returned before the in-flight request finished"
    );
    assert_eq!(
        metric(r.admin, "teal_router_in_flight{color=\"blue\"}").await,
        0.0
    );

    // Draining an idle color returns at once with nothing left.
    let report = drain(r.admin, "blue", "20s").await;
    assert_eq!(report["completed"], true, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_to_old_color_lives_until_drain_timeout_then_closes() {
    let blue = app("blue", "v1");
    let green = app("green", "v2");
    let r = router(Some(&table("blue", blue.addr, green.addr)), &[]);

    let mut old = ws_connect(r.proxy).await;
    assert_eq!(ws_say(&mut old, "hi").await, "blue: hi");

    let resp = put_routes(r.admin, &table("green", blue.addr, green.addr)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    // The established tunnel stays on blue; a new one goes to green.
    assert_eq!(ws_say(&mut old, "still").await, "blue: still");
    let mut new = ws_connect(r.proxy).await;
    assert_eq!(ws_say(&mut new, "hello").await, "green: hello");

    let admin = r.admin;
    let draining = tokio::spawn(async move { drain(admin, "blue", "1500ms").await });
    // While the drain waits, the old tunnel keeps working.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !draining.is_finished(),
        "drain returned with a WebSocket open"
    );
    assert_eq!(ws_say(&mut old, "during drain").await, "blue: during drain");

    let report = draining.await.expect("drain task");
    assert_eq!(report["completed"], false, "{report}");
    assert_eq!(report["upgrades_closed"], 1, "{report}");
    assert_eq!(report["remaining"], 0, "{report}");

    // The old tunnel is closed now, with a close frame "going away" (1001)
    // rather than a bare TCP close (which clients report as 1006).
    let next = tokio::time::timeout(Duration::from_secs(10), old.next())
        .await
        .expect("the closed tunnel must not hang");
    match &next {
        Some(Ok(Message::Close(Some(frame)))) => {
            assert_eq!(frame.code, CloseCode::Away, "{next:?}")
        }
        _ => panic!("no close frame from the drained WebSocket: {next:?}"),
    }
    let _ = old.send(Message::text("after")).await;
    let after = tokio::time::timeout(Duration::from_secs(10), old.next())
        .await
        .expect("the closed tunnel must not hang");
    assert!(
        !matches!(after, Some(Ok(Message::Text(_)))),
        "the drained WebSocket still answered: {after:?}"
    );
    // The green one is untouched.
    assert_eq!(ws_say(&mut new, "fine").await, "green: fine");
}

/// Sends raw bytes on a fresh connection, half-closes if asked, and returns
/// whatever the router answered before closing (bounded wait).
async fn raw(proxy: SocketAddr, bytes: &[u8], half_close: bool) -> String {
    let mut stream = TcpStream::connect(proxy).await.expect("connect");
    // The router may close before everything is written; that is fine.
    let _ = stream.write_all(bytes).await;
    if half_close {
        let _ = stream.shutdown().await;
    }
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(15), stream.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "the router neither answered nor closed");
    String::from_utf8_lossy(&out).into_owned()
}

/// The router either answered with `status` or closed the connection.
fn assert_status_or_close(resp: &str, status: &str) {
    let line = resp.lines().next().unwrap_or("");
    assert!(
        resp.is_empty() || line.starts_with(&format!("HTTP/1.1 {status}")),
        "want {status} or a close, got {line:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_gets_4xx_or_close_and_router_keeps_serving() {
    let blue = app("blue", "v1");
    let green = app("green", "v2");
    let r = router(
        Some(&table("blue", blue.addr, green.addr)),
        &["--header-read-timeout", "1s"],
    );
    let ok = |resp: http::Response<String>| {
        assert_eq!(resp.status(), StatusCode::OK, "{}", resp.body());
    };

    // Garbage instead of a request line.
    let resp = raw(r.proxy, b"\x00\x01\x02 not http at all\r\n\r\n", false).await;
    assert_status_or_close(&resp, "400");
    ok(get(r.proxy, "/").await);

    // A header far above the limit.
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(256 * 1024)
    );
    let resp = raw(r.proxy, big.as_bytes(), false).await;
    assert_status_or_close(&resp, "431");
    ok(get(r.proxy, "/").await);

    // Invalid chunked encoding in a request body.
    let chunked = b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n";
    let resp = raw(r.proxy, chunked, false).await;
    assert_status_or_close(&resp, "400");
    ok(get(r.proxy, "/").await);

    // Both Content-Length and Transfer-Encoding (request smuggling shape),
    // with a second request hidden after the chunked body. RFC 9112 6.3:
    // Transfer-Encoding wins and the connection is closed after the answer,
    // so the request is refused, or answered once (empty chunked body) and
    // the connection closed: the hidden request is never served.
    let smuggle = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let resp = raw(r.proxy, smuggle, false).await;
    let line = resp.lines().next().unwrap_or("");
    assert!(
        resp.is_empty() || line.starts_with("HTTP/1.1 400") || line.starts_with("HTTP/1.1 200"),
        "want 400, 200 or a close, got {line:?}"
    );
    assert!(
        resp.matches("HTTP/1.1 ").count() <= 1,
        "the hidden request was served: {resp}"
    );

    // A half request, then the client half-closes: the router closes too.
    let resp = raw(r.proxy, b"GET / HTTP/1.1\r\nHost: x\r\n", true).await;
    assert_status_or_close(&resp, "400");

    // A whole request, then half-close: answered or closed, never stuck.
    let resp = raw(r.proxy, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", true).await;
    assert_status_or_close(&resp, "200");

    // A client that sends part of a head and stalls is cut off by the
    // header-read timeout.
    let resp = raw(r.proxy, b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ", false).await;
    assert_status_or_close(&resp, "408");

    // Still serving, on a fresh connection and with keep-alive.
    ok(get(r.proxy, "/").await);
    let resp = raw(
        r.proxy,
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        false,
    )
    .await;
    assert_eq!(resp.matches("HTTP/1.1 200 OK").count(), 2, "{resp}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_requires_token_and_rejects_bad_tables_by_field() {
    let blue = app("blue", "v1");
    let green = app("green", "v2");
    let good = table("blue", blue.addr, green.addr);
    let r = router(Some(&good), &[]);
    let (gen0, table0) = generation(r.admin).await;
    assert_eq!(gen0, 1);

    // No token, wrong token: 401 and nothing changes.
    let flip = table("green", blue.addr, green.addr);
    for token in [None, Some("wrong-token")] {
        let resp = send(r.admin, request("PUT", "/routes", token, Some(&flip))).await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{}", resp.body());
        let resp = send(r.admin, request("GET", "/routes", token, None)).await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        let resp = send(r.admin, request("POST", "/drain?color=blue", token, None)).await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    }
    assert_eq!(generation(r.admin).await, (gen0, table0.clone()));
    assert_eq!(get(r.proxy, "/").await.headers()["x-app-color"], "blue");

    // Health and metrics are open.
    assert_eq!(get(r.admin, "/healthz").await.status(), StatusCode::OK);
    let metrics = get(r.admin, "/metrics").await;
    assert_eq!(metrics.status(), StatusCode::OK);
    assert!(metrics.body().contains("teal_router_route_generation 1"));

    // Bad tables: 400 naming the field; the table stays as it was.
    let cases = [
        (
            format!(
                r#"{{"active":"red","endpoints":{{"blue":["{}"]}}}}"#,
                blue.addr
            ),
            "active: unknown color \"red\"",
        ),
        (
            format!(
                r#"{{"active":"blue","endpoints":{{"blue":["{}"],"purple":["{}"]}}}}"#,
                blue.addr, green.addr
            ),
            "endpoints.purple: unknown color",
        ),
        (
            format!(
                r#"{{"active":"green","endpoints":{{"blue":["{}"],"green":[]}}}}"#,
                blue.addr
            ),
            "endpoints.green: the active color needs at least one endpoint",
        ),
        (
            r#"{"active":"blue","endpoints":{"blue":["not-an-address"]}}"#.to_string(),
            "endpoints.blue[0]: \"not-an-address\" is not an IP:PORT address",
        ),
        (
            format!(
                r#"{{"active":"blue","endpoints":{{"blue":["{0}","{0}"]}}}}"#,
                blue.addr
            ),
            "endpoints.blue[1]: duplicate endpoint",
        ),
        (
            format!(
                r#"{{"active":"blue","endpoints":{{"blue":["{}"]}},"preview":{{"color":"blue","header":{{"name":"bad header","value":"1"}}}}}}"#,
                blue.addr
            ),
            "preview.header.name:",
        ),
        ("{not json".to_string(), "route table is not valid JSON"),
    ];
    for (body, want) in cases {
        let resp = put_routes(r.admin, &body).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{body}");
        assert!(
            resp.body().starts_with(want),
            "for {body}: got {:?}, want {want:?}",
            resp.body()
        );
    }
    let bad_drain = send(
        r.admin,
        request("POST", "/drain?color=red", Some(TOKEN), None),
    )
    .await;
    assert_eq!(bad_drain.status(), StatusCode::BAD_REQUEST);
    assert!(
        bad_drain.body().starts_with("color: unknown color \"red\""),
        "{}",
        bad_drain.body()
    );
    let bad_drain = send(
        r.admin,
        request("POST", "/drain?color=blue&timeout=soon", Some(TOKEN), None),
    )
    .await;
    assert_eq!(bad_drain.status(), StatusCode::BAD_REQUEST);
    assert!(
        bad_drain.body().starts_with("timeout:"),
        "{}",
        bad_drain.body()
    );
    assert_eq!(generation(r.admin).await, (gen0, table0));

    // With the token, the swap goes through.
    let resp = put_routes(r.admin, &flip).await;
    assert_eq!(resp.status(), StatusCode::OK, "{}", resp.body());
    assert_eq!(generation(r.admin).await.0, 2);
    assert_eq!(get(r.proxy, "/").await.headers()["x-app-color"], "green");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_on_unix_socket_needs_no_token() {
    let blue = app("blue", "v1");
    let green = app("green", "v2");
    let dir = temp_dir();
    let sock = dir.join("admin.sock");
    let routes = dir.join("routes.json");
    std::fs::write(&routes, table("blue", blue.addr, green.addr)).unwrap();
    let admin_arg = format!("unix:{}", sock.display());
    let proc = spawn_teal(&[
        "router",
        "--listen",
        "127.0.0.1:0",
        "--admin",
        &admin_arg,
        "--routes",
        routes.to_str().unwrap(),
        "--color-header",
        "x-teal-color",
    ]);
    let proxy: SocketAddr = proc
        .line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("proxy="))
        .unwrap()
        .parse()
        .unwrap();
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&sock).unwrap().permissions());
    assert_eq!(mode & 0o077, 0, "admin socket is open to others: {mode:o}");

    let body = table("green", blue.addr, green.addr);
    let req = format!(
        "PUT /routes HTTP/1.1\r\nHost: admin\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut stream = tokio::net::UnixStream::connect(&sock)
        .await
        .expect("connect admin socket");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("\"generation\":2"), "{out}");

    let resp = get(proxy, "/").await;
    assert_eq!(resp.headers()["x-app-color"], "green");
    assert_eq!(resp.headers()["x-teal-color"], "green");
    drop(proc);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_statuses_name_the_cause() {
    // 503: no route table installed yet.
    let r = router(None, &["--upstream-timeout", "500ms"]);
    let resp = get(r.proxy, "/").await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        resp.body().contains("no route table installed"),
        "{}",
        resp.body()
    );

    // 502: nothing listens on the endpoint.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    // 502: the endpoint accepts and closes at once.
    let resetter = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let reset_addr = resetter.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = resetter.accept().await {
            drop(s);
        }
    });
    let blue = app("blue", "v1");
    let resp = put_routes(r.admin, &table("blue", closed, blue.addr)).await;
    assert_eq!(resp.status(), StatusCode::OK, "{}", resp.body());
    let resp = get(r.proxy, "/").await;
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    assert!(
        resp.body()
            .contains(&format!("cannot connect to upstream blue {closed}")),
        "{}",
        resp.body()
    );
    assert!(
        resp.body().to_lowercase().contains("refused"),
        "{}",
        resp.body()
    );
    assert_eq!(
        metric(
            r.admin,
            "teal_router_upstream_connect_errors_total{color=\"blue\"}"
        )
        .await,
        1.0
    );

    let resp = put_routes(r.admin, &table("blue", reset_addr, blue.addr)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = get(r.proxy, "/").await;
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    assert!(
        resp.body().contains(&format!(
            "upstream blue {reset_addr} failed before answering"
        )),
        "{}",
        resp.body()
    );

    // 504: the upstream is slower than --upstream-timeout.
    let resp = put_routes(r.admin, &table("green", closed, blue.addr)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = get(r.proxy, "/sleep?ms=3000").await;
    assert_eq!(resp.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(
        resp.body().contains("did not answer within 500ms"),
        "{}",
        resp.body()
    );
    // The sample app is blue, but the route says green: the router counts
    // by its own color.
    assert_eq!(
        metric(r.admin, "teal_router_router_errors_total{color=\"green\"}").await,
        1.0
    );
    assert_eq!(
        metric(
            r.admin,
            "teal_router_requests_total{color=\"blue\",class=\"5xx\"}"
        )
        .await,
        2.0
    );

    // And a healthy request still works.
    let resp = get(r.proxy, "/").await;
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxied_requests_carry_forwarded_headers_and_drop_hop_by_hop() {
    let blue = app("blue", "v1");
    let green = app("green", "v2");
    let r = router(Some(&table("blue", blue.addr, green.addr)), &[]);
    let mut req = request("POST", "/echo", None, Some(&"x".repeat(300_000)));
    let h = req.headers_mut();
    h.insert("connection", "keep-alive, x-hop".parse().unwrap());
    h.insert("x-hop", "secret".parse().unwrap());
    h.insert("keep-alive", "timeout=5".parse().unwrap());
    h.insert("proxy-authorization", "Basic eA==".parse().unwrap());
    h.insert("te", "trailers".parse().unwrap());
    h.insert("x-end-to-end", "kept".parse().unwrap());
    h.insert("x-forwarded-for", "203.0.113.9".parse().unwrap());
    let resp = send(r.proxy, req).await;
    assert_eq!(resp.status(), StatusCode::OK, "{}", resp.body());
    let echo: serde_json::Value = serde_json::from_str(resp.body()).unwrap();
    let headers = &echo["headers"];
    for gone in ["x-hop", "keep-alive", "proxy-authorization"] {
        assert!(
            headers.get(gone).is_none(),
            "{gone} reached the upstream: {headers}"
        );
    }
    assert_eq!(headers["te"][0], "trailers");
    assert_eq!(headers["x-end-to-end"][0], "kept");
    assert_eq!(headers["x-forwarded-for"][0], "203.0.113.9, 127.0.0.1");
    assert_eq!(headers["x-forwarded-proto"][0], "http");
    assert_eq!(headers["x-forwarded-host"][0], "teal.test");
    assert_eq!(headers["host"][0], "teal.test");
    assert_eq!(echo["body_bytes"], 300_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sample_app_flags_health_errors_metrics_h2c_and_sigterm() {
    // PORT from the environment; not ready for a long while; always failing.
    let mut failing = spawn_teal_env(
        &[
            "sample-app",
            "--color",
            "green",
            "--version",
            "v9",
            "--error-rate",
            "1",
            "--ready-after",
            "1h",
        ],
        &[("PORT", "0")],
    );
    let addr: SocketAddr = failing
        .line
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        get(addr, "/healthz").await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    for _ in 0..3 {
        let resp = get(addr, "/").await;
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(resp.headers()["x-app-color"], "green");
        assert_eq!(resp.headers()["x-app-version"], "v9");
    }
    let metrics = get(addr, "/metrics").await;
    assert!(
        metrics
            .body()
            .contains("app_requests_total{color=\"green\",version=\"v9\",code=\"500\"} 3"),
        "{}",
        metrics.body()
    );

    // A healthy app over h2c.
    let healthy = app("blue", "v1");
    assert_eq!(get(healthy.addr, "/healthz").await.status(), StatusCode::OK);
    let stream = TcpStream::connect(healthy.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("h2c handshake");
    tokio::spawn(conn);
    let req = http::Request::get(format!("http://{}/", healthy.addr))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.expect("h2 response");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(&body[..], br#"{"color":"blue","version":"v1"}"#);

    // SIGTERM while a request is in flight: it completes, then the app exits 0.
    let addr = healthy.addr;
    let slow = tokio::spawn(async move { get(addr, "/sleep?ms=1000").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = std::process::Command::new("kill")
        .args(["-TERM", &healthy.proc.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let resp = slow.await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "{}", resp.body());
    let mut healthy = healthy;
    assert!(
        healthy.proc.wait().success(),
        "sample-app did not exit cleanly on SIGTERM"
    );
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "still accepting after SIGTERM"
    );
    failing.wait_kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_port_is_ready_only_once_a_route_table_is_installed() {
    let blue = app("blue", "v1");
    let green = app("green", "v2");
    let r = router(None, &["--probe", "127.0.0.1:0"]);
    let probe: SocketAddr = field(&r.proc.line, "probe=").parse().expect("probe addr");

    // Before any table: alive, not ready, and the proxy could only answer 503.
    let ready = get(probe, "/readyz").await;
    assert_eq!(
        ready.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        ready.body()
    );
    assert!(ready.body().contains("no route table"), "{}", ready.body());
    assert_eq!(get(probe, "/healthz").await.status(), StatusCode::OK);
    assert_eq!(
        get(r.proxy, "/").await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );

    let resp = put_routes(r.admin, &table("blue", blue.addr, green.addr)).await;
    assert_eq!(resp.status(), StatusCode::OK, "{}", resp.body());
    let ready = get(probe, "/readyz").await;
    assert_eq!(ready.status(), StatusCode::OK, "{}", ready.body());
    assert_eq!(ready.body(), "ready: route generation 1\n");
    assert_eq!(get(r.proxy, "/").await.status(), StatusCode::OK);

    // The probe port serves metrics without a token, and nothing that changes the router.
    let metrics = get(probe, "/metrics").await;
    assert_eq!(metrics.status(), StatusCode::OK);
    assert!(
        metrics.body().contains("teal_router_in_flight"),
        "{}",
        metrics.body()
    );
    for path in ["/routes", "/drain"] {
        assert_eq!(
            get(probe, path).await.status(),
            StatusCode::NOT_FOUND,
            "{path}"
        );
    }
    let post = send(probe, request("POST", "/readyz", None, None)).await;
    assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
}

/// A router with a probe port and `--shutdown-delay delay`, routing to two
/// apps (returned too: they live as long as the test holds them).
fn router_with_shutdown_delay(delay: &str) -> (RouterProc, [App; 2]) {
    let blue = app("blue", "v1");
    let green = app("green", "v2");
    let r = router(
        Some(&table("blue", blue.addr, green.addr)),
        &["--probe", "127.0.0.1:0", "--shutdown-delay", delay],
    );
    (r, [blue, green])
}

/// Sends SIGTERM to `r`; when.
fn sigterm(r: &RouterProc) -> Instant {
    let term = Instant::now();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &r.proc.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    term
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sigterm_with_a_shutdown_delay_the_router_reports_not_ready_and_keeps_serving() {
    let (r, _apps) = router_with_shutdown_delay("3s");
    let probe: SocketAddr = field(&r.proc.line, "probe=").parse().expect("probe addr");
    assert_eq!(get(probe, "/readyz").await.status(), StatusCode::OK);

    let term = sigterm(&r);
    // During the delay: not ready, and new connections are still served.
    eventually("/readyz reports the shutdown", || async {
        let ready = get(probe, "/readyz").await;
        ready.status() == StatusCode::SERVICE_UNAVAILABLE && ready.body().contains("shutting down")
    })
    .await;
    let mut served = 0;
    while term.elapsed() < Duration::from_millis(2500) {
        let resp = get(r.proxy, "/").await;
        assert_eq!(resp.status(), StatusCode::OK, "{}", resp.body());
        served += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served >= 10, "{served}");
    // After it: the listener closes and the process exits cleanly.
    let mut r = r;
    assert!(r.proc.wait().success(), "router did not exit cleanly");
    assert!(
        term.elapsed() >= Duration::from_secs(3),
        "exited {:?} after SIGTERM, before its delay",
        term.elapsed()
    );
    assert!(
        TcpStream::connect(r.proxy).await.is_err(),
        "still accepting"
    );
}

/// A Service may go on sending new connections after the shutdown delay
/// (its endpoint update lagging behind under load): the router keeps
/// accepting until a second passes without one, so none is refused, and
/// then stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_still_arriving_after_the_shutdown_delay_are_served_until_quiet() {
    let (r, _apps) = router_with_shutdown_delay("2s");
    let term = sigterm(&r);
    // New connections until 2.8 s, past the 2 s delay.
    let mut served = 0;
    while term.elapsed() < Duration::from_millis(2800) {
        let resp = get(r.proxy, "/").await;
        assert_eq!(
            resp.status(),
            StatusCode::OK,
            "{:?} after SIGTERM: {}",
            term.elapsed(),
            resp.body()
        );
        served += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served >= 20, "{served}");
    let mut r = r;
    assert!(r.proc.wait().success(), "router did not exit cleanly");
    let took = term.elapsed();
    assert!(
        took >= Duration::from_millis(3500) && took < Duration::from_secs(6),
        "exited {took:?} after SIGTERM: expected about a second after the last connection"
    );
}
