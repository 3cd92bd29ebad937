//! System limits a real `teal router` process meets: the depth of its accept
//! backlog, and the open-file limit the shell left it.

mod router_support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use http::StatusCode;
use router_support::*;

/// The backlog (Send-Q of a listening socket in `ss -ltn`) of the socket
/// listening on `addr`.
fn listen_backlog(addr: SocketAddr) -> u64 {
    let out = Command::new("ss")
        .args(["-ltnH", &format!("sport = :{}", addr.port())])
        .output()
        .expect("run ss (iproute2)");
    assert!(out.status.success(), "ss: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains(&addr.to_string()))
        .unwrap_or_else(|| panic!("no listening socket {addr} in ss's output: {text}"));
    // State Recv-Q Send-Q Local Peer: Send-Q is the backlog.
    line.split_whitespace()
        .nth(2)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no Send-Q in {line:?}"))
}

fn somaxconn() -> u64 {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .expect("read somaxconn")
        .trim()
        .parse()
        .expect("somaxconn is a number")
}

#[test]
fn router_listens_with_the_systems_backlog() {
    let r = router(None, &[]);
    let want = somaxconn().min(4096);
    let proxy = listen_backlog(r.proxy);
    assert!(
        proxy >= want,
        "proxy backlog {proxy}, want at least {want} (somaxconn {})",
        somaxconn()
    );
    let admin = listen_backlog(r.admin);
    assert!(admin >= want, "admin backlog {admin}, want at least {want}");
}

/// A `teal router` under `prlimit --nofile=SOFT:HARD`, its log in a file.
struct Limited {
    child: Child,
    proxy: SocketAddr,
    log: std::path::PathBuf,
    _dir: std::path::PathBuf,
}

impl Drop for Limited {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self._dir);
    }
}

fn limited_router(nofile: &str, routes: &str) -> Limited {
    let dir = temp_dir();
    let routes_path = dir.join("routes.json");
    std::fs::write(&routes_path, routes).expect("routes file");
    let log = dir.join("router.log");
    let mut args = loopback_router_args(&dir);
    args.push("--routes".into());
    args.push(routes_path.display().to_string());
    let mut child = Command::new("prlimit")
        .arg(format!("--nofile={nofile}"))
        .arg(env!("CARGO_BIN_EXE_teal"))
        .args(&args)
        .env("TEAL_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("run prlimit (util-linux)");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("first line");
    assert!(
        line.starts_with("listening"),
        "router did not start: {line:?}"
    );
    let proxy = field(&line, "proxy=").parse().expect("proxy addr");
    Limited {
        child,
        proxy,
        log,
        _dir: dir,
    }
}

/// `text` without its terminal colour sequences.
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// This test process needs more than 1,100 descriptors of its own.
fn raise_own_limit(at_least: u64) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    if soft < at_least {
        assert!(
            hard >= at_least,
            "the test needs {at_least} open files; hard limit {hard}"
        );
        setrlimit(Resource::RLIMIT_NOFILE, at_least, hard).expect("setrlimit");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_under_a_soft_limit_of_1024_serves_past_1100_idle_connections() {
    raise_own_limit(2048);
    let blue = app("blue", "v1");
    let green = app("green", "v2");
    let r = limited_router("1024:4096", &table("blue", blue.addr, green.addr));

    let mut idle = Vec::new();
    for _ in 0..1100 {
        idle.push(
            tokio::net::TcpStream::connect(r.proxy)
                .await
                .expect("connect"),
        );
    }
    // Give the router time to accept them all (and, when out of
    // descriptors, to fail accepting).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let resp = tokio::time::timeout(Duration::from_secs(15), get(r.proxy, "/"))
        .await
        .expect("a new client is served while 1,100 idle connections are open");
    assert_eq!(resp.status(), StatusCode::OK, "{resp:?}");
    drop(idle);

    let log = plain(&std::fs::read_to_string(&r.log).expect("read the router's log"));
    let failures = log.matches("accept failed").count();
    assert!(
        failures <= 5,
        "{failures} accept failures logged:\n{}",
        log.lines().take(20).collect::<Vec<_>>().join("\n")
    );
    assert!(
        log.contains("open_files=4096"),
        "the log does not give the raised open-file limit:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_that_cannot_raise_its_limit_caps_connections_to_fit_and_says_so() {
    raise_own_limit(2048);
    let blue = app("blue", "v1");
    let green = app("green", "v2");
    let r = limited_router("1024:1024", &table("blue", blue.addr, green.addr));
    let mut idle = Vec::new();
    for _ in 0..1100 {
        idle.push(
            tokio::net::TcpStream::connect(r.proxy)
                .await
                .expect("connect"),
        );
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Connections over the cap wait in the backlog: closing idle ones lets
    // a new request through.
    drop(idle.drain(..900));
    let resp = tokio::time::timeout(Duration::from_secs(15), get(r.proxy, "/"))
        .await
        .expect("a new client is served once idle connections close");
    assert_eq!(resp.status(), StatusCode::OK, "{resp:?}");
    drop(idle);
    let log = plain(&std::fs::read_to_string(&r.log).expect("read the router's log"));
    let failures = log.matches("accept failed").count();
    assert!(
        failures <= 5,
        "{failures} accept failures logged:\n{}",
        log.lines().take(20).collect::<Vec<_>>().join("\n")
    );
    assert!(
        log.contains("max_connections=448"),
        "the log does not say the connection cap fits the limit:\n{log}"
    );
}
