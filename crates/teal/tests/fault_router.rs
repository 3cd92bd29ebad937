//! Router faults against real `teal router` and `teal sample-app` processes
//! over loopback: an upstream killed mid-request, slow-loris clients and
//! ten thousand idle client connections. The router must not crash, must
//! keep its memory and descriptors bounded and must fail only the requests
//! the fault actually hit.

mod router_support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use router_support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Steady traffic: `conns` keep-alive connections sending `GET /` in turn
/// until `stop` is set. Returns (requests answered 200 by `color`, failures).
async fn steady(
    proxy: SocketAddr,
    conns: usize,
    color: &'static str,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
) -> (usize, Vec<String>) {
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let stop = stop.clone();
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let mut ok = 0;
            let mut failures = Vec::new();
            let stream = TcpStream::connect(proxy).await.expect("connect");
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .expect("handshake");
            tokio::spawn(conn);
            while !stop.load(Ordering::SeqCst) {
                let req = Request::builder()
                    .uri("/")
                    .header("host", "teal.test")
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                let resp = match sender.send_request(req).await {
                    Ok(r) => r,
                    Err(e) => {
                        failures.push(format!("request failed: {e}"));
                        break;
                    }
                };
                let status = resp.status();
                let text = match resp.into_body().collect().await {
                    Ok(b) => String::from_utf8_lossy(&b.to_bytes()).into_owned(),
                    Err(e) => {
                        failures.push(format!("body failed: {e}"));
                        break;
                    }
                };
                if status != StatusCode::OK {
                    failures.push(format!("{status}: {text}"));
                } else if !text.contains(&format!(r#""color":"{color}""#)) {
                    failures.push(format!("wrong color: {text}"));
                } else {
                    ok += 1;
                }
                done.fetch_add(1, Ordering::SeqCst);
            }
            (ok, failures)
        }));
    }
    let mut ok = 0;
    let mut failures = Vec::new();
    for t in tasks {
        let (o, f) = t.await.expect("client task");
        ok += o;
        failures.extend(f);
    }
    (ok, failures)
}

/// Polls `f` every 50 ms for up to `secs` seconds (a hang guard, not a
/// timed assertion); panics naming `what`.
async fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    for _ in 0..secs * 20 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// Waits until `done` has grown by `n` from now.
async fn more_requests(done: &AtomicUsize, n: usize) {
    let from = done.load(Ordering::SeqCst);
    wait_for(&format!("{n} more steady requests"), 120, || {
        done.load(Ordering::SeqCst) >= from + n
    })
    .await;
}

/// Steady blue traffic on 8 keep-alive connections, running until
/// [`Traffic::finish`].
struct Traffic {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<(usize, Vec<String>)>,
}

impl Traffic {
    /// Starts the traffic and waits for its first `n` requests.
    async fn start(proxy: SocketAddr, n: usize) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(steady(proxy, 8, "blue", stop.clone(), done.clone()));
        more_requests(&done, n).await;
        Traffic { stop, done, task }
    }

    /// Waits for `n` more requests, stops and asserts none failed; returns
    /// how many succeeded.
    async fn finish(self, n: usize) -> usize {
        more_requests(&self.done, n).await;
        self.stop.store(true, Ordering::SeqCst);
        let (ok, failures) = self.task.await.expect("traffic task");
        assert!(
            failures.is_empty(),
            "{} failed: {failures:?}",
            failures.len()
        );
        ok
    }
}

async fn assert_router_up(r: &RouterProc) {
    let health = get(r.admin, "/healthz").await;
    assert_eq!(health.status(), StatusCode::OK, "{}", health.body());
    let resp = get(r.proxy, "/").await;
    assert_eq!(resp.status(), StatusCode::OK, "{}", resp.body());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_killed_mid_request_fails_only_its_requests() {
    const SLOW: usize = 6;
    let mut blue1 = app("blue", "v1");
    let blue2 = app("blue", "v1");
    let green = app("green", "v2");
    let only = |blue: SocketAddr| {
        format!(
            r#"{{"active":"blue","endpoints":{{"blue":["{blue}"],"green":["{}"]}}}}"#,
            green.addr
        )
    };
    let r = router(Some(&only(blue1.addr)), &[]);

    // Slow requests, each on its own connection, all on blue1 (the only
    // blue endpoint when they are sent).
    let slow: Vec<_> = (0..SLOW)
        .map(|_| {
            let proxy = r.proxy;
            tokio::spawn(async move { get(proxy, "/sleep?ms=120000").await })
        })
        .collect();
    let in_flight = "teal_router_in_flight{color=\"blue\"}";
    eventually("the slow requests in flight", || async {
        metric(r.admin, in_flight).await == SLOW as f64
    })
    .await;

    // blue1 is replaced by blue2 in the table (as when a pod is replaced):
    // new requests go to blue2 while blue1 still serves the slow ones.
    let resp = put_routes(r.admin, &only(blue2.addr)).await;
    assert_eq!(resp.status(), StatusCode::OK, "{}", resp.body());

    let traffic = Traffic::start(r.proxy, 200).await;

    // SIGKILL blue1 with the slow requests in flight on it.
    blue1.proc.wait_kill();
    let ok = traffic.finish(400).await;
    assert!(ok >= 600, "{ok} steady requests");

    // Exactly the requests in flight on blue1 failed, each with a 502
    // naming the endpoint.
    for s in slow {
        let resp = s.await.expect("slow request task");
        assert_eq!(resp.status(), StatusCode::BAD_GATEWAY, "{}", resp.body());
        assert!(
            resp.body()
                .starts_with(&format!("502 bad gateway: upstream blue {}", blue1.addr)),
            "{}",
            resp.body()
        );
    }
    eventually("nothing left in flight", || async {
        metric(r.admin, in_flight).await == 0.0
    })
    .await;
    assert_router_up(&r).await;

    // The dead address back in the table next to blue2: connects to it fail
    // over to blue2, no request fails.
    let both = format!(
        r#"{{"active":"blue","endpoints":{{"blue":["{}","{}"],"green":["{}"]}}}}"#,
        blue1.addr, blue2.addr, green.addr
    );
    let resp = put_routes(r.admin, &both).await;
    assert_eq!(resp.status(), StatusCode::OK, "{}", resp.body());
    Traffic::start(r.proxy, 100).await.finish(200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_loris_connections_are_closed_and_others_are_served() {
    const LORIS: usize = 500;
    let blue = app("blue", "v1");
    let green = app("green", "v2");
    // Only the header-read timeout can close a slow client here: the idle
    // timeout is far longer than the test.
    let r = router(
        Some(&table("blue", blue.addr, green.addr)),
        &["--header-read-timeout", "2s", "--idle-timeout", "600s"],
    );

    let started = Arc::new(AtomicUsize::new(0));
    let closed = Arc::new(AtomicUsize::new(0));
    let mut loris = Vec::new();
    for i in 0..LORIS {
        let proxy = r.proxy;
        let started = started.clone();
        let closed = closed.clone();
        loris.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(proxy).await.expect("connect");
            let (mut rd, mut wr) = stream.split();
            let head = format!("GET / HTTP/1.1\r\nHost: teal.test\r\nX-Slow-{i}: ");
            let mut first = true;
            let mut buf = [0u8; 1024];
            let mut answer = Vec::new();
            // A header that never ends, one byte every 300 ms, until the
            // router closes the connection.
            let mut bytes = head.into_bytes().into_iter().chain(std::iter::repeat(b'a'));
            loop {
                let byte = bytes.next().unwrap();
                if wr.write_all(&[byte]).await.is_err() {
                    break;
                }
                if first {
                    first = false;
                    started.fetch_add(1, Ordering::SeqCst);
                }
                tokio::select! {
                    r = rd.read(&mut buf) => match r {
                        Ok(0) | Err(_) => break,
                        Ok(n) => answer.extend_from_slice(&buf[..n]),
                    },
                    _ = tokio::time::sleep(Duration::from_millis(300)) => {}
                }
            }
            closed.fetch_add(1, Ordering::SeqCst);
            String::from_utf8_lossy(&answer).into_owned()
        }));
    }
    wait_for("every slow client connected", 60, || {
        started.load(Ordering::SeqCst) == LORIS
    })
    .await;

    // Normal clients while the slow ones hold their connections.
    let traffic = Traffic::start(r.proxy, 200).await;
    let during = closed.load(Ordering::SeqCst);

    // Every slow connection is closed by the router.
    wait_for("the router closed every slow connection", 120, || {
        closed.load(Ordering::SeqCst) == LORIS
    })
    .await;
    let ok = traffic.finish(100).await;
    assert!(ok >= 300, "{ok} normal requests");
    eprintln!("{during} of {LORIS} slow connections closed after 200 normal requests");
    for l in loris {
        let answer = l.await.expect("slow client task");
        // The router never answered an incomplete request as if it were one.
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
            "unexpected answer to a partial header: {answer:?}"
        );
    }
    assert_router_up(&r).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nine_thousand_idle_connections_leave_traffic_and_memory_bounded() {
    const IDLE: usize = 9_000;
    const RSS_BOUND_KIB: u64 = 400 * 1024;
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    // The test needs a descriptor per connection; the router (which
    // inherits the limit) serves only as many connections as the limit
    // holds with two descriptors each (client and upstream) plus its
    // reserve: 2 x 9,100 + 128 = 18,328, under a hard limit of 20,000.
    // Raising the hard limit needs privileges; without them it must
    // already be that high.
    const NEED: u64 = 2 * 9_100 + teal_router::RESERVED_FILES;
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    if hard < NEED {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, NEED, NEED);
    }
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    assert!(
        hard >= NEED,
        "RLIMIT_NOFILE hard limit {hard} is below the {NEED} the router needs to serve 9,100 connections (run as root or raise it)"
    );
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("setrlimit");

    let blue = app("blue", "v1");
    let green = app("green", "v2");
    let r = router(
        Some(&table("blue", blue.addr, green.addr)),
        &[
            "--max-connections",
            "9100",
            "--idle-timeout",
            "600s",
            "--header-read-timeout",
            "600s",
        ],
    );
    let pid = r.proc.pid();
    assert_router_up(&r).await;
    // Settle: the short connections above are gone.
    let mut baseline = open_fds(pid);
    wait_for("baseline descriptors", 30, || {
        let now = open_fds(pid);
        let settled = now == baseline;
        baseline = now;
        settled
    })
    .await;
    let rss_before = rss_kib(pid);

    let mut idle = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        idle.push(TcpStream::connect(r.proxy).await.expect("connect"));
    }
    // The short connections of the checks above may still be closing when
    // the baseline was taken: a little slack.
    wait_for("the router holds every idle connection", 120, || {
        open_fds(pid) + 16 >= baseline + IDLE
    })
    .await;

    // Normal traffic on top of them.
    let ok = Traffic::start(r.proxy, 200).await.finish(200).await;
    assert!(ok >= 400, "{ok} requests");

    let rss_held = rss_kib(pid);
    eprintln!("router VmRSS: {rss_before} KiB before, {rss_held} KiB with {IDLE} idle connections");
    assert!(
        rss_held < RSS_BOUND_KIB,
        "router VmRSS {rss_held} KiB with {IDLE} idle connections, bound {RSS_BOUND_KIB} KiB"
    );

    // Closed by the clients, the connections are released.
    drop(idle);
    wait_for("the router released the closed connections", 120, || {
        open_fds(pid) <= baseline + 16
    })
    .await;
    assert_router_up(&r).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_closed_by_the_idle_timeout() {
    // A client that connects and never sends a byte is not reading a head
    // yet: the idle timeout, not the header-read timeout, closes it.
    let blue = app("blue", "v1");
    let green = app("green", "v2");
    let r = router(
        Some(&table("blue", blue.addr, green.addr)),
        &["--header-read-timeout", "600s", "--idle-timeout", "2s"],
    );
    let mut silent = Vec::new();
    for _ in 0..50 {
        silent.push(TcpStream::connect(r.proxy).await.expect("connect"));
    }
    for mut s in silent {
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(120), s.read(&mut buf))
            .await
            .expect("the router closed a silent connection");
        assert!(
            matches!(read, Ok(0) | Err(_)),
            "a silent connection got an answer: {read:?}"
        );
    }
    assert_router_up(&r).await;
}
