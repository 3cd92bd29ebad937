//! Cutover under sustained load, side by side: the same two upstreams (a blue
//! and a green `teal sample-app`) behind `teal router`, behind nginx switched
//! the way hand-made blue/green setups do it (rewrite the upstream, `nginx -s
//! reload`), and behind HAProxy switched through its runtime API (green
//! `ready`, blue `maint`). Keep-alive clients send requests back to back and
//! record when each started, when it ended and which color answered; every
//! switch records when it was sent and when the command returned.
//!
//! Reported per proxy: failed requests, requests that started after a switch
//! returned and were still served by the old color, the longest such
//! mixing window, and the time the switch command takes to return.
//!
//! Run through `bench/cutover` (which installs nginx and HAProxy if missing
//! and writes docs/benchmarks.md), or directly:
//! `cargo bench -p teal --bench cutover -- --cutovers 100 --connections 32`.

#[path = "../tests/router_support/mod.rs"]
mod router_support;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use router_support::{SwapTimes, app, put_routes, router, table, temp_dir};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

struct Args {
    cutovers: usize,
    connections: usize,
    pause: Duration,
    out: Option<PathBuf>,
}

fn args() -> Args {
    let mut a = Args {
        cutovers: 100,
        connections: 32,
        pause: Duration::from_millis(200),
        out: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().unwrap_or_else(|| panic!("{name} needs a value"));
        match arg.as_str() {
            "--cutovers" => a.cutovers = value("--cutovers").parse().expect("--cutovers: a count"),
            "--connections" => {
                a.connections = value("--connections")
                    .parse()
                    .expect("--connections: a count")
            }
            "--pause-ms" => {
                a.pause = Duration::from_millis(
                    value("--pause-ms")
                        .parse()
                        .expect("--pause-ms: milliseconds"),
                )
            }
            "--out" => a.out = Some(PathBuf::from(value("--out"))),
            // cargo bench passes --bench; filters do not apply here.
            _ => {}
        }
    }
    a
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A peer process killed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn binary(name: &str) -> String {
    for dir in ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p.display().to_string();
        }
    }
    panic!("{name} is not installed (bench/cutover installs it from Debian)");
}

/// How a proxy moves traffic from one color to the other.
enum Switch {
    Teal {
        admin: SocketAddr,
    },
    Nginx {
        bin: String,
        conf: PathBuf,
        dir: PathBuf,
        port: u16,
    },
    Haproxy {
        socket: PathBuf,
    },
}

fn nginx_conf(dir: &Path, port: u16, upstream: SocketAddr) -> String {
    let d = dir.display();
    format!(
        "worker_processes 2;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
         \x20 fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
         \x20 upstream live {{ server {upstream}; keepalive 64; }}\n\
         \x20 server {{\n    listen 127.0.0.1:{port};\n    keepalive_requests 1000000;\n\
         \x20   location / {{ proxy_pass http://live; proxy_http_version 1.1; proxy_set_header Connection \"\"; }}\n  }}\n}}\n"
    )
}

impl Switch {
    async fn to(&self, color: &str, blue: SocketAddr, green: SocketAddr) {
        match self {
            Switch::Teal { admin } => {
                let resp = put_routes(*admin, &table(color, blue, green)).await;
                assert_eq!(resp.status(), StatusCode::OK, "{}", resp.body());
            }
            Switch::Nginx {
                bin,
                conf,
                dir,
                port,
            } => {
                let upstream = if color == "blue" { blue } else { green };
                std::fs::write(conf, nginx_conf(dir, *port, upstream)).unwrap();
                let out = tokio::process::Command::new(bin)
                    .arg("-c")
                    .arg(conf)
                    .args(["-s", "reload"])
                    .output()
                    .await
                    .unwrap();
                assert!(out.status.success(), "nginx -s reload: {out:?}");
            }
            Switch::Haproxy { socket } => {
                let (on, off) = if color == "blue" {
                    ("blue", "green")
                } else {
                    ("green", "blue")
                };
                let mut s = UnixStream::connect(socket).await.unwrap();
                s.write_all(
                    format!("set server be/{on} state ready; set server be/{off} state maint\n")
                        .as_bytes(),
                )
                .await
                .unwrap();
                let mut answer = String::new();
                s.read_to_string(&mut answer).await.unwrap();
                assert!(
                    answer.trim().is_empty(),
                    "HAProxy runtime API answered: {answer}"
                );
            }
        }
    }
}

struct Sample {
    start: Instant,
    end: Instant,
    color: String,
}

#[derive(Default)]
struct ClientReport {
    samples: Vec<Sample>,
    failures: usize,
}

async fn connect(
    proxy: SocketAddr,
) -> Option<hyper::client::conn::http1::SendRequest<Empty<Bytes>>> {
    let stream = TcpStream::connect(proxy).await.ok()?;
    stream.set_nodelay(true).ok()?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(conn);
    Some(sender)
}

/// One keep-alive connection sending requests back to back; a failed
/// request is counted and the client reconnects.
async fn client(proxy: SocketAddr, stop: Arc<AtomicBool>) -> ClientReport {
    let mut report = ClientReport::default();
    let mut sender = None;
    while !stop.load(Ordering::Relaxed) {
        let s = match &mut sender {
            Some(s) => s,
            None => match connect(proxy).await {
                Some(s) => sender.insert(s),
                None => {
                    report.failures += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        if s.ready().await.is_err() {
            sender = None;
            continue;
        }
        let start = Instant::now();
        let req = Request::get("/")
            .header("host", "bench.test")
            .body(Empty::new())
            .unwrap();
        let ok = match s.send_request(req).await {
            Ok(resp) if resp.status() == StatusCode::OK => {
                let color = resp
                    .headers()
                    .get("x-app-color")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                match resp.into_body().collect().await {
                    Ok(_) => {
                        report.samples.push(Sample {
                            start,
                            end: Instant::now(),
                            color,
                        });
                        true
                    }
                    Err(_) => false,
                }
            }
            _ => false,
        };
        if !ok {
            report.failures += 1;
            sender = None;
        }
    }
    report
}

struct Outcome {
    name: &'static str,
    requests: usize,
    failures: usize,
    /// Requests that started after a switch returned (and ended before the
    /// next one was sent) but were served by the color switched away from.
    old_after_switch: usize,
    /// The latest start of such a request, after its switch returned.
    mixing_max: Duration,
    switch: Vec<Duration>,
}

fn judge(name: &'static str, reports: Vec<ClientReport>, swaps: &[SwapTimes]) -> Outcome {
    let mut o = Outcome {
        name,
        requests: 0,
        failures: 0,
        old_after_switch: 0,
        mixing_max: Duration::ZERO,
        switch: swaps.iter().map(|w| w.returned - w.sent).collect(),
    };
    for r in reports {
        o.failures += r.failures;
        o.requests += r.samples.len();
        for s in r.samples {
            let Some(i) = swaps.iter().rposition(|w| w.returned <= s.start) else {
                continue;
            };
            if swaps.get(i + 1).is_some_and(|next| next.sent <= s.end) {
                continue;
            }
            if s.color != swaps[i].active {
                o.old_after_switch += 1;
                o.mixing_max = o.mixing_max.max(s.start - swaps[i].returned);
            }
        }
    }
    o
}

async fn run(
    name: &'static str,
    proxy: SocketAddr,
    switch: &Switch,
    (blue, green): (SocketAddr, SocketAddr),
    a: &Args,
) -> Outcome {
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..a.connections)
        .map(|_| tokio::spawn(client(proxy, stop.clone())))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut swaps = Vec::new();
    let mut active = "blue";
    for _ in 0..a.cutovers {
        tokio::time::sleep(a.pause).await;
        active = if active == "blue" { "green" } else { "blue" };
        let sent = Instant::now();
        switch.to(active, blue, green).await;
        swaps.push(SwapTimes {
            sent,
            returned: Instant::now(),
            active,
        });
    }
    tokio::time::sleep(a.pause).await;
    stop.store(true, Ordering::Relaxed);
    let mut reports = Vec::new();
    for c in clients {
        reports.push(c.await.unwrap());
    }
    judge(name, reports, &swaps)
}

async fn wait_port(port: u16) {
    for _ in 0..200 {
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("nothing listens on 127.0.0.1:{port}");
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn micros(d: Duration) -> String {
    let us = d.as_micros();
    if us >= 10_000 {
        format!("{:.1} ms", us as f64 / 1000.0)
    } else {
        format!("{us} µs")
    }
}

fn table_md(outcomes: &[Outcome], a: &Args) -> String {
    let mut s = format!(
        "{} cutovers, {} keep-alive connections, {} ms between switches.\n\n\
         | proxy | requests | failed | old color after the switch returned | longest mixing | switch p50 | switch p99 |\n\
         |---|---:|---:|---:|---:|---:|---:|\n",
        a.cutovers,
        a.connections,
        a.pause.as_millis()
    );
    for o in outcomes {
        let mut sw = o.switch.clone();
        sw.sort();
        s.push_str(&format!(
            "| {} | {} | {} | {} ({:.3}%) | {} | {} | {} |\n",
            o.name,
            o.requests,
            o.failures,
            o.old_after_switch,
            100.0 * o.old_after_switch as f64 / o.requests.max(1) as f64,
            micros(o.mixing_max),
            micros(quantile(&sw, 0.5)),
            micros(quantile(&sw, 0.99)),
        ));
    }
    let teal = &outcomes[0];
    for o in &outcomes[1..] {
        let mut a_sw = teal.switch.clone();
        a_sw.sort();
        let mut b_sw = o.switch.clone();
        b_sw.sort();
        s.push_str(&format!(
            "\nteal/{}: switch p50 {:.2}×, old-color requests after the switch {} vs {}.",
            o.name,
            quantile(&a_sw, 0.5).as_secs_f64() / quantile(&b_sw, 0.5).as_secs_f64().max(1e-9),
            teal.old_after_switch,
            o.old_after_switch
        ));
    }
    s.push('\n');
    s
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let a = args();
    let blue = app("blue", "v1");
    let green = app("green", "v2");
    let colors = (blue.addr, green.addr);
    let mut outcomes = Vec::new();

    // teal router.
    {
        let r = router(Some(&table("blue", blue.addr, green.addr)), &[]);
        let sw = Switch::Teal { admin: r.admin };
        outcomes.push(run("teal", r.proxy, &sw, colors, &a).await);
    }

    // nginx: rewrite the upstream and reload, as hand-made setups do.
    {
        let bin = binary("nginx");
        let dir = temp_dir();
        let port = free_port();
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, nginx_conf(&dir, port, blue.addr)).unwrap();
        let _nginx = Killed(
            Command::new(&bin)
                .arg("-c")
                .arg(&conf)
                .args(["-g", "daemon off;"])
                .stdout(Stdio::null())
                .spawn()
                .unwrap(),
        );
        wait_port(port).await;
        let sw = Switch::Nginx {
            bin,
            conf,
            dir: dir.clone(),
            port,
        };
        outcomes.push(run("nginx", ([127, 0, 0, 1], port).into(), &sw, colors, &a).await);
        drop(_nginx);
        let _ = std::fs::remove_dir_all(dir);
    }

    // HAProxy: both servers in one backend, the idle one in maintenance.
    {
        let bin = binary("haproxy");
        let dir = temp_dir();
        let port = free_port();
        let socket = dir.join("admin.sock");
        let cfg = dir.join("haproxy.cfg");
        std::fs::write(
            &cfg,
            format!(
                "global\n  nbthread 2\n  stats socket {} mode 600 level admin\n\
                 defaults\n  mode http\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\
                 frontend fe\n  bind 127.0.0.1:{port}\n  default_backend be\n\
                 backend be\n  server blue {}\n  server green {} disabled\n",
                socket.display(),
                blue.addr,
                green.addr
            ),
        )
        .unwrap();
        let _haproxy = Killed(
            Command::new(&bin)
                .arg("-f")
                .arg(&cfg)
                .arg("-db")
                .stdout(Stdio::null())
                .spawn()
                .unwrap(),
        );
        wait_port(port).await;
        let sw = Switch::Haproxy { socket };
        outcomes.push(run("HAProxy", ([127, 0, 0, 1], port).into(), &sw, colors, &a).await);
        drop(_haproxy);
        let _ = std::fs::remove_dir_all(dir);
    }

    let md = table_md(&outcomes, &a);
    print!("{md}");
    if let Some(out) = &a.out {
        std::fs::write(out, &md).unwrap();
    }
}
