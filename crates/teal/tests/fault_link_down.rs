//! One endpoint's network goes away under load. `teal router` and the test's
//! keep-alive clients run in a network namespace the test creates; the two
//! endpoints of the live color (`teal sample-app`) each run in a namespace of
//! their own, joined to the router's by a veth pair. Mid-traffic, one
//! endpoint's end of its link is set down: from then on its packets are
//! dropped with no answer and no reset, so connects to it get nothing until
//! the connect timeout and requests on connections already open to it get no
//! response until the upstream timeout. After a while the link comes back.
//!
//! Asserted: the router keeps serving throughout; every failed request is a
//! 502 or 504 with a plain-text cause naming the endpoint whose link went
//! down, none names the other one, and no request goes unanswered; at most
//! [`CLIENTS`] requests fail (the bound is derived at [`failure_bound`]);
//! the failed connects are retried on the healthy endpoint and eject the dead
//! one; the router's descriptors and memory stay bounded; once the link is up
//! the endpoint serves again when its ejection cooldown ends.

mod router_support;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use router_support::*;
use teal_testenv::netns::{NetNs, VethEnd};

/// Keep-alive client connections sending requests back to back.
const CLIENTS: usize = 8;
/// Router worker threads.
const WORKERS: usize = 2;
const CONNECT_TIMEOUT: &str = "500ms";
const UPSTREAM_TIMEOUT: &str = "2s";
/// How long the link stays down: several upstream timeouts and ejection
/// cooldowns.
const DOWN_FOR: Duration = Duration::from_secs(6);
/// A request unanswered for this long (15 upstream timeouts) hangs.
const HANG: Duration = Duration::from_secs(30);
const APP_PORT: u16 = 8080;
/// The device at the endpoint's end of its link.
const UPLINK: &str = "uplink";

/// One endpoint of the live color in a namespace of its own.
struct Endpoint {
    // Dropped in this order: the process before its namespace.
    _app: Proc,
    ns: NetNs,
    addr: SocketAddr,
    /// The version it reports, which tells the clients who served them.
    name: String,
}

/// Joins namespace `n` to `router_ns` with a veth pair (10.251.N.1 on the
/// router's side, 10.251.N.2 on the endpoint's) and starts the app there.
fn endpoint(router_ns: &NetNs, n: u8) -> Endpoint {
    let ns = NetNs::create(&format!("ldep{n}")).unwrap_or_else(|e| panic!("{e}"));
    let here: IpAddr = format!("10.251.{n}.1").parse().unwrap();
    let there: IpAddr = format!("10.251.{n}.2").parse().unwrap();
    NetNs::veth(
        VethEnd {
            ns: router_ns,
            device: &format!("to-ep{n}"),
            addr: here,
            prefix_len: 24,
        },
        VethEnd {
            ns: &ns,
            device: UPLINK,
            addr: there,
            prefix_len: 24,
        },
    )
    .unwrap();
    let name = format!("ep{n}");
    let app = spawn_command(
        ns.command(env!("CARGO_BIN_EXE_teal")),
        &[
            "sample-app",
            "--color",
            "blue",
            "--version",
            &name,
            "--listen",
            &there.to_string(),
            "--port",
            &APP_PORT.to_string(),
        ],
        &[],
    );
    Endpoint {
        _app: app,
        ns,
        addr: SocketAddr::new(there, APP_PORT),
        name,
    }
}

/// One request as a client saw it.
#[derive(Debug)]
struct Answer {
    start: Instant,
    end: Instant,
    /// 0: no answer (the connection failed or the request hung).
    status: u16,
    content_type: String,
    body: String,
    /// The endpoint that served a 200.
    served_by: Option<String>,
}

type Log = Arc<Mutex<Vec<Answer>>>;

/// Keep-alive connections made inside `ns`, each sending `GET /` back to
/// back until [`Load::finish`].
struct Load {
    stop: Arc<AtomicBool>,
    log: Log,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(ns: &NetNs, proxy: SocketAddr) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let log: Log = Arc::default();
        let tasks = (0..CLIENTS)
            .map(|_| {
                let stream = ns.connect(proxy).unwrap();
                tokio::spawn(client(stream, stop.clone(), log.clone()))
            })
            .collect();
        Load { stop, log, tasks }
    }

    /// Answers so far that match `f`.
    fn count(&self, f: impl Fn(&Answer) -> bool) -> usize {
        self.log.lock().unwrap().iter().filter(|a| f(a)).count()
    }

    async fn more(&self, n: usize) {
        let from = self.count(|_| true);
        wait(&format!("{n} more requests"), 120, || async {
            self.count(|_| true) >= from + n
        })
        .await;
    }

    async fn finish(self) -> Vec<Answer> {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            t.await.expect("client task");
        }
        std::mem::take(&mut *self.log.lock().unwrap())
    }
}

async fn client(stream: std::net::TcpStream, stop: Arc<AtomicBool>, log: Log) {
    let mut sender = http1_client(stream).await;
    while !stop.load(Ordering::SeqCst) {
        let req = Request::get("/")
            .header("host", "teal.test")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let start = Instant::now();
        let answer = tokio::time::timeout(HANG, async {
            let resp = sender.send_request(req).await?;
            let status = resp.status();
            let content_type = resp
                .headers()
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            let body = resp.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>((status, content_type, body))
        })
        .await;
        let (answer, go_on) = match answer {
            Ok(Ok((status, content_type, body))) => {
                let body = String::from_utf8_lossy(&body).into_owned();
                let served_by = (status == StatusCode::OK)
                    .then(|| serde_json::from_str::<serde_json::Value>(&body).ok())
                    .flatten()
                    .and_then(|v| Some(v["version"].as_str()?.to_string()));
                let answer = Answer {
                    start,
                    end: Instant::now(),
                    status: status.as_u16(),
                    content_type,
                    body,
                    served_by,
                };
                (answer, true)
            }
            Ok(Err(e)) => (unanswered(start, format!("request failed: {e}")), false),
            Err(_) => (
                unanswered(start, format!("no answer within {HANG:?}")),
                false,
            ),
        };
        log.lock().unwrap().push(answer);
        if !go_on {
            return;
        }
    }
}

fn unanswered(start: Instant, body: String) -> Answer {
    Answer {
        start,
        end: Instant::now(),
        status: 0,
        content_type: String::new(),
        body,
        served_by: None,
    }
}

/// Polls `f` every 50 ms for up to `secs` seconds (a hang guard, not a
/// timed assertion); panics naming `what`.
async fn wait<F, Fut>(what: &str, secs: u64, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// The router, its admin API reached from inside its namespace.
struct Router<'a> {
    ns: &'a NetNs,
    proc: Proc,
    proxy: SocketAddr,
    admin: SocketAddr,
    dir: std::path::PathBuf,
}

impl Drop for Router<'_> {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Router<'_> {
    async fn admin_get(&self, path: &str) -> http::Response<String> {
        let stream = tokio_socket(self.ns.connect(self.admin).unwrap());
        send_on(stream, request("GET", path, None, None)).await
    }

    async fn metric(&self, name: &str) -> f64 {
        let series = format!("{name}{{color=\"blue\"}}");
        series_value(self.admin_get("/metrics").await.body(), &series)
    }

    /// The process is running (not exited, not a zombie) and its admin API
    /// answers.
    async fn assert_up(&self) {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.proc.pid()))
            .expect("the router process exists");
        let state = stat.rsplit(')').next().unwrap_or_default().trim_start();
        assert!(!state.starts_with('Z'), "the router exited: {stat}");
        let health = self.admin_get("/healthz").await;
        assert_eq!(health.status(), StatusCode::OK, "{}", health.body());
    }
}

/// Most requests that can fail, and why.
///
/// While the link is down no new connection to the endpoint can be made
/// (its connects time out, are retried on the other endpoint, and eject
/// it), so a request fails only on an upstream connection to it that was
/// already open when the link went down: the request in flight on it, or
/// one sent on it from the pool before the endpoint's outage was noticed.
/// A connection whose request timed out is closed, so each such connection
/// fails at most one request. And a worker opens a new connection to an
/// endpoint only when all its connections there are busy, each busy with a
/// request of one of its clients' connections; HTTP/1.1 client connections
/// carry one request at a time. So at most `CLIENTS` connections to the
/// endpoint exist, and at most `CLIENTS` requests fail.
///
/// Tighter, and asserted too: the first timeout or failed connect on the
/// endpoint closes its idle connections, so only requests that started
/// before the router noticed the outage can fail.
fn failure_bound() -> usize {
    CLIENTS
}

/// Most descriptors the router may hold under the load: what it holds
/// idle, the client connections, and for each of the two endpoints at most
/// one upstream connection (open or being connected) per client connection
/// (see [`failure_bound`]); plus a few for the test's admin requests (each
/// closed before the next, but the router may not have reaped the last ones
/// yet).
fn fd_bound(idle: usize) -> usize {
    idle + CLIENTS + 2 * CLIENTS + 6
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_endpoints_link_down_fails_only_requests_on_it_and_it_serves_again_when_up() {
    let router_ns = NetNs::create("ldrouter").unwrap_or_else(|e| panic!("{e}"));
    let ep1 = endpoint(&router_ns, 1);
    let ep2 = endpoint(&router_ns, 2);

    let dir = temp_dir();
    let routes = dir.join("routes.json");
    std::fs::write(
        &routes,
        format!(
            r#"{{"active":"blue","endpoints":{{"blue":["{}","{}"]}}}}"#,
            ep1.addr, ep2.addr
        ),
    )
    .unwrap();
    let mut args = loopback_router_args(&dir);
    args.extend(
        [
            "--routes",
            routes.to_str().unwrap(),
            "--connect-timeout",
            CONNECT_TIMEOUT,
            "--upstream-timeout",
            UPSTREAM_TIMEOUT,
            "--workers",
            &WORKERS.to_string(),
        ]
        .map(String::from),
    );
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let proc = spawn_command(router_ns.command(env!("CARGO_BIN_EXE_teal")), &argv, &[]);
    let r = Router {
        ns: &router_ns,
        proxy: field(&proc.line, "proxy=").parse().unwrap(),
        admin: field(&proc.line, "admin=").parse().unwrap(),
        proc,
        dir,
    };
    let pid = r.proc.pid();
    r.assert_up().await;
    // What the router holds with no traffic, once its workers run (the
    // admin connection above may still be closing: wait until the count
    // holds still).
    wait("the router's workers run", 60, || async {
        worker_threads(pid) == WORKERS
    })
    .await;
    let mut idle_fds = open_fds(pid);
    wait("the router's descriptors settle", 30, || {
        let now = open_fds(pid);
        let settled = now == idle_fds;
        idle_fds = now;
        async move { settled }
    })
    .await;

    // Steady load, served by both endpoints.
    let load = Load::start(&router_ns, r.proxy);
    for ep in [&ep1, &ep2] {
        wait(&format!("{} serves", ep.name), 60, || async {
            load.count(|a| a.served_by.as_deref() == Some(&ep.name)) >= 100
        })
        .await;
    }
    let rss_before = rss_kib(pid);
    let (mut max_fds, mut max_rss) = (open_fds(pid), rss_before);

    // ep1's link goes down mid-traffic.
    let down_at = Instant::now();
    ep1.ns.set_link(UPLINK, false).unwrap();
    // Its connects fail (no answer within the connect timeout), are retried
    // on ep2 and eject it.
    let router = &r;
    wait("a failed connect to ep1 ejects it", 60, || {
        max_fds = max_fds.max(open_fds(pid));
        async move { router.metric("teal_router_upstream_ejections_total").await >= 1.0 }
    })
    .await;
    let ejected = Instant::now();
    let served_down = |load: &Load| {
        load.count(|a| a.start > down_at && a.served_by.as_deref() == Some(&ep2.name))
    };
    let before = served_down(&load);
    while down_at.elapsed() < DOWN_FOR {
        max_fds = max_fds.max(open_fds(pid));
        max_rss = max_rss.max(rss_kib(pid));
        r.assert_up().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // ep2 kept serving after the ejection.
    wait("ep2 serves while ep1's link is down", 60, || async {
        served_down(&load) > before
    })
    .await;
    let connect_errors = r.metric("teal_router_upstream_connect_errors_total").await;
    let retries = r.metric("teal_router_upstream_retries_total").await;
    assert!(connect_errors >= 1.0, "{connect_errors} connect errors");
    assert!(retries >= 1.0, "{retries} retries");

    // Back up: once its cooldown ends, ep1 serves again.
    ep1.ns.set_link(UPLINK, true).unwrap();
    let up_at = Instant::now();
    wait("ep1 serves again after its link came up", 90, || {
        max_fds = max_fds.max(open_fds(pid));
        let back = load.count(|a| a.start > up_at && a.served_by.as_deref() == Some(&ep1.name));
        async move { back > 0 }
    })
    .await;
    let readmitted_after = up_at.elapsed();
    wait("no endpoint ejected", 60, || async {
        r.metric("teal_router_upstream_ejected_endpoints").await == 0.0
    })
    .await;
    load.more(200).await;
    max_fds = max_fds.max(open_fds(pid));
    let rss_after = rss_kib(pid);
    max_rss = max_rss.max(rss_after);
    let answers = load.finish().await;
    r.assert_up().await;

    // The failures: only requests on ep1's link, each a 502 or 504 with a
    // plain-text cause naming ep1, at most the derived bound.
    let failed: Vec<&Answer> = answers.iter().filter(|a| a.status != 200).collect();
    let served = |name: &str, from: Instant, to: Instant| {
        answers
            .iter()
            .filter(|a| a.start > from && a.start < to && a.served_by.as_deref() == Some(name))
            .count()
    };
    let end = Instant::now();
    // The router has noticed ep1's outage once a connect to it failed (and
    // ejected it) or a request to it timed out, whichever came first: from
    // then on every request either avoids ep1 or connects to it anew, which
    // fails fast into a retry on ep2. So no request that started after the
    // client saw the first timeout, or after the ejection, may fail.
    let first_failure = failed
        .iter()
        .filter(|a| a.status == 504)
        .map(|a| a.end)
        .min();
    let noticed = first_failure.map_or(ejected, |f| f.min(ejected));
    eprintln!(
        "{} requests, {} failed; while ep1's link was down ep2 served {}; after it came up \
         ep1 served {} and ep2 {}; ep1 served again {:.1} s after the link came up; \
         {connect_errors} connect errors, {retries} retries, {} ejections; \
         router descriptors: {idle_fds} idle, at most {max_fds} (bound {}); \
         VmRSS {rss_before} KiB before, at most {max_rss} KiB, {rss_after} KiB after",
        answers.len(),
        failed.len(),
        served(&ep2.name, down_at, up_at),
        served(&ep1.name, up_at, end),
        served(&ep2.name, up_at, end),
        readmitted_after.as_secs_f64(),
        r.metric("teal_router_upstream_ejections_total").await,
        fd_bound(idle_fds),
    );
    for a in &failed {
        eprintln!(
            "failed: request started {:?} after the link went down: {} {}",
            a.start.saturating_duration_since(down_at),
            a.status,
            a.body.trim_end()
        );
    }
    for a in &failed {
        assert!(
            a.status == 502 || a.status == 504,
            "a failure that is not a 502 or 504: {a:?}"
        );
        assert_eq!(a.content_type, "text/plain; charset=utf-8", "{a:?}");
        let cause = if a.status == 504 {
            format!(
                "504 gateway timeout: upstream blue {} did not answer within {UPSTREAM_TIMEOUT}",
                ep1.addr
            )
        } else {
            format!("502 bad gateway: upstream blue {}", ep1.addr)
        };
        assert!(a.body.starts_with(&cause), "{a:?}");
        assert!(!a.body.contains(&ep2.addr.to_string()), "{a:?}");
        assert!(
            a.start < noticed,
            "failed after the router had noticed ep1's outage ({:?} after the link went down): {a:?}",
            a.start.saturating_duration_since(down_at)
        );
    }
    assert!(
        failed.len() <= failure_bound(),
        "{} requests failed, bound {}",
        failed.len(),
        failure_bound()
    );
    // The fault was felt: some request was on ep1's link when it went down
    // or was sent on a connection to it before its outage was noticed.
    assert!(
        failed.iter().any(|a| a.status == 504),
        "no request timed out on ep1's link"
    );

    // Descriptors and memory stayed bounded.
    assert!(
        max_fds <= fd_bound(idle_fds),
        "router held {max_fds} descriptors, bound {}",
        fd_bound(idle_fds)
    );
    // The outage leaves nothing behind that grows with time or with the
    // number of requests: resident memory stays within what the load itself
    // takes (before the outage) plus a margin for allocator slack.
    let rss_bound = rss_before + 32 * 1024;
    assert!(
        max_rss <= rss_bound,
        "router VmRSS {max_rss} KiB, {rss_before} KiB before the outage (bound {rss_bound} KiB)"
    );
    drop(r);
    drop((ep1, ep2));
}
