//! Test support for the router tests: real `teal sample-app` and `teal router`
//! processes on loopback, and small HTTP helpers.
#![allow(dead_code)]

pub mod kubernetes;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

pub const TOKEN: &str = "test-admin-token";

/// A child process killed when dropped.
pub struct Proc {
    child: Child,
    pub line: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process and reaps it.
    pub fn wait_kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process to exit by itself.
    pub fn wait(&mut self) -> std::process::ExitStatus {
        self.child.wait().expect("wait for child")
    }
}

/// Starts `teal ARGS` and waits for its first stdout line ("listening ...").
pub fn spawn_teal(args: &[&str]) -> Proc {
    spawn_teal_env(args, &[])
}

/// Like [`spawn_teal`] with extra environment variables.
pub fn spawn_teal_env(args: &[&str], env: &[(&str, &str)]) -> Proc {
    spawn_cmd(
        Command::new(env!("CARGO_BIN_EXE_teal"))
            .args(args)
            .envs(env.iter().copied()),
    )
}

/// Like [`spawn_teal_env`], with `cmd` running the teal binary (for
/// instance inside a network namespace).
pub fn spawn_command(mut cmd: Command, args: &[&str], env: &[(&str, &str)]) -> Proc {
    spawn_cmd(cmd.args(args).envs(env.iter().copied()))
}

/// Starts `cmd` and waits for its first stdout line, which must start with
/// "listening"; killed on drop.
pub fn spawn_cmd(cmd: &mut Command) -> Proc {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start teal");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read first line");
    assert!(
        line.starts_with("listening"),
        "{cmd:?} did not start: first line {line:?}"
    );
    Proc { child, line }
}

/// Starts `cmd` with its stdout discarded; killed on drop.
pub fn spawn_quiet(cmd: &mut Command) -> Proc {
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start process");
    Proc {
        child,
        line: String::new(),
    }
}

/// The value of `key` (e.g. `proxy=`) in a "listening ..." line.
pub fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
}

pub struct App {
    pub proc: Proc,
    pub addr: SocketAddr,
}

pub fn app(color: &str, version: &str) -> App {
    app_with(color, version, &[])
}

pub fn app_with(color: &str, version: &str, extra: &[&str]) -> App {
    let mut args = vec![
        "sample-app",
        "--color",
        color,
        "--version",
        version,
        "--port",
        "0",
    ];
    args.extend_from_slice(extra);
    let proc = spawn_teal(&args);
    let addr = proc
        .line
        .split_whitespace()
        .nth(1)
        .expect("address")
        .parse()
        .expect("socket address");
    App { proc, addr }
}

pub struct RouterProc {
    pub proc: Proc,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    pub dir: PathBuf,
}

impl Drop for RouterProc {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn temp_dir() -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "teal-router-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// `router` arguments for free loopback ports, with the admin token in a
/// file written into `dir`.
pub fn loopback_router_args(dir: &std::path::Path) -> Vec<String> {
    let token = dir.join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).expect("token file");
    let mut args: Vec<String> = [
        "router",
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--admin-token-file",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(token.display().to_string());
    args
}

/// Starts `teal router` on free loopback ports; `routes` (JSON) is optional.
pub fn router(routes: Option<&str>, extra: &[&str]) -> RouterProc {
    let dir = temp_dir();
    let routes_path = dir.join("routes.json");
    let mut args = loopback_router_args(&dir);
    if let Some(r) = routes {
        std::fs::write(&routes_path, r).expect("routes file");
        args.push("--routes".into());
        args.push(routes_path.display().to_string());
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let proc = spawn_teal(&argv);
    let proxy = field(&proc.line, "proxy=").parse().expect("proxy addr");
    let admin = field(&proc.line, "admin=").parse().expect("admin addr");
    RouterProc {
        proc,
        proxy,
        admin,
        dir,
    }
}

/// A route table with both colors.
pub fn table(active: &str, blue: SocketAddr, green: SocketAddr) -> String {
    format!(r#"{{"active":"{active}","endpoints":{{"blue":["{blue}"],"green":["{green}"]}}}}"#)
}

/// A route table with both colors and a preview header `x-preview: 1` and
/// cookie `preview=1` to `preview`.
pub fn preview_table(active: &str, preview: &str, blue: SocketAddr, green: SocketAddr) -> String {
    format!(
        r#"{{"active":"{active}","endpoints":{{"blue":["{blue}"],"green":["{green}"]}},
            "preview":{{"color":"{preview}","header":{{"name":"x-preview","value":"1"}},
                        "cookie":{{"name":"preview","value":"1"}}}}}}"#
    )
}

/// Sends one request on a fresh HTTP/1.1 connection; returns status, headers
/// and body.
pub async fn send(addr: SocketAddr, req: Request<Full<Bytes>>) -> Response<String> {
    send_on(TcpStream::connect(addr).await.expect("connect"), req).await
}

/// Sends one request on `stream` (a fresh connection, made wherever the
/// caller needs it, e.g. inside a network namespace).
pub async fn send_on(stream: TcpStream, req: Request<Full<Bytes>>) -> Response<String> {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let resp = sender.send_request(req).await.expect("response");
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.expect("body").to_bytes();
    Response::from_parts(parts, String::from_utf8_lossy(&bytes).into_owned())
}

pub async fn get(addr: SocketAddr, path: &str) -> Response<String> {
    send(addr, request("GET", path, None, None)).await
}

pub fn request(
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Request<Full<Bytes>> {
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "teal.test");
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    b.body(Full::new(Bytes::from(body.unwrap_or("").to_string())))
        .expect("request")
}

/// `PUT /routes` with the admin token.
pub async fn put_routes(admin: SocketAddr, table: &str) -> Response<String> {
    send(admin, request("PUT", "/routes", Some(TOKEN), Some(table))).await
}

/// The generation from `GET /routes`.
pub async fn generation(admin: SocketAddr) -> (u64, serde_json::Value) {
    let resp = send(admin, request("GET", "/routes", Some(TOKEN), None)).await;
    assert_eq!(resp.status(), StatusCode::OK, "{}", resp.body());
    let v: serde_json::Value = serde_json::from_str(resp.body()).expect("json");
    (
        v["generation"].as_u64().expect("generation"),
        v["table"].clone(),
    )
}

/// Reads one sample from the router's Prometheus text.
pub async fn metric(admin: SocketAddr, series: &str) -> f64 {
    series_value(get(admin, "/metrics").await.body(), series)
}

/// One sample from Prometheus text.
pub fn series_value(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in metrics"))
}

/// Polls until `f` holds; panics (naming `what`) after a generous bound so a
/// broken router fails the test instead of hanging it.
pub async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..500 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// A route swap as the test saw it: when `PUT /routes` was sent, when its
/// answer came back, and the color it made active.
pub struct SwapTimes {
    pub sent: std::time::Instant,
    pub returned: std::time::Instant,
    pub active: &'static str,
}

/// Checks that every request (start, end, color that served it) that
/// started after a swap returned, and ended before the next one was sent,
/// was served by that swap's color (`initial` before the first swap).
/// Returns how many requests could be judged.
pub fn check_exact(
    samples: &[(std::time::Instant, std::time::Instant, String)],
    initial: &str,
    swaps: &[SwapTimes],
) -> usize {
    let mut checked = 0;
    for (start, end, color) in samples {
        let expected = match swaps.iter().rposition(|w| w.returned <= *start) {
            None if swaps.first().is_none_or(|w| *end < w.sent) => initial,
            None => continue,
            Some(i) if swaps.get(i + 1).is_some_and(|next| next.sent <= *end) => continue,
            Some(i) => swaps[i].active,
        };
        assert_eq!(
            color, expected,
            "a request that started after the swap to {expected} returned was served by {color}"
        );
        checked += 1;
    }
    checked
}

/// Switches the active color `count` times between blue and green (starting
/// from blue), pausing between swaps so requests run on each table.
pub async fn swap_back_and_forth(
    admin: SocketAddr,
    blue: SocketAddr,
    green: SocketAddr,
    count: usize,
) -> Vec<SwapTimes> {
    let mut swaps = Vec::new();
    let mut active = "blue";
    for _ in 0..count {
        tokio::time::sleep(Duration::from_millis(150)).await;
        active = if active == "blue" { "green" } else { "blue" };
        let sent = std::time::Instant::now();
        let resp = put_routes(admin, &table(active, blue, green)).await;
        assert_eq!(resp.status(), StatusCode::OK, "{}", resp.body());
        swaps.push(SwapTimes {
            sent,
            returned: std::time::Instant::now(),
            active,
        });
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    swaps
}

/// Open file descriptors of process `pid`.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("router process is alive")
        .count()
}

/// Resident memory of process `pid` in KiB (`VmRSS` in /proc/PID/status).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// An HTTP/1.1 client connection over `stream`, a blocking socket made
/// elsewhere (e.g. inside a network namespace); the connection is driven by
/// a task of its own.
pub async fn http1_client<B>(
    stream: std::net::TcpStream,
) -> hyper::client::conn::http1::SendRequest<B>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tokio_socket(stream)))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    sender
}

/// `stream`, a blocking socket made elsewhere, for tokio.
pub fn tokio_socket(stream: std::net::TcpStream) -> TcpStream {
    stream.set_nonblocking(true).expect("non-blocking socket");
    let _ = stream.set_nodelay(true);
    TcpStream::from_std(stream).expect("tokio socket")
}

/// Worker threads (named `teal-router-N`) of the router process `pid`.
pub fn worker_threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("router process is alive")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|c| c.trim().starts_with("teal-router-"))
        .count()
}
