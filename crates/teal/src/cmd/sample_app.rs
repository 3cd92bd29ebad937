//! `teal sample-app`: a small HTTP service that says which color and version
//! it is. It is the upstream of the router tests and the app of `teal demo`.
//!
//! - `GET /` → `{"color":…,"version":…}` with `x-app-color`/`x-app-version`
//!   (500 for `--error-rate` of the requests)
//! - `GET /healthz` → 200 once `--ready-after` has passed, 503 before
//! - `GET /sleep?ms=N` → waits, then answers like `/`
//! - `GET /echo` (any method) → the request as the app saw it: method,
//!   HTTP version, path, headers and the number of body bytes
//! - `/ws` → WebSocket echo prefixing each text message with the color
//! - `GET /metrics` → Prometheus counters of responses by code

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use teal_router::{Color, parse_duration};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

/// Longest `/sleep` honoured.
const MAX_SLEEP_MS: u64 = 120_000;
/// How long in-flight requests get to finish after SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

#[derive(clap::Args)]
pub struct Args {
    /// The color this instance runs as.
    #[arg(long)]
    color: Color,
    /// The version it reports.
    #[arg(long, default_value = "v1")]
    version: String,
    /// Port to listen on (falls back to $PORT; 0 picks a free port).
    #[arg(long, env = "PORT")]
    port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    listen: IpAddr,
    /// Fraction (0 to 1) of `GET /` requests answered with 500.
    #[arg(long, default_value_t = 0.0)]
    error_rate: f64,
    /// `/healthz` answers 503 until this much time has passed.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    ready_after: Duration,
}

struct App {
    color: Color,
    version: String,
    error_rate: f64,
    ready_at: Instant,
    rng: AtomicU64,
    by_code: Mutex<BTreeMap<u16, u64>>,
}

type AppBody = Full<Bytes>;

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    if !(0.0..=1.0).contains(&args.error_rate) {
        bail!("--error-rate: {} is outside 0..=1", args.error_rate);
    }
    let addr = SocketAddr::new(args.listen, args.port);
    if let Err(e) = teal_router::raise_open_file_limit() {
        tracing::warn!(error = %e, "cannot read the open-file limit");
    }
    let listener = teal_router::listen(addr).with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr()?;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        ^ u64::from(std::process::id());
    let app = Arc::new(App {
        color: args.color,
        version: args.version,
        error_rate: args.error_rate,
        ready_at: Instant::now() + args.ready_after,
        rng: AtomicU64::new(seed),
        by_code: Mutex::new(BTreeMap::new()),
    });
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening {local} color={}", app.color)?;
        out.flush()?;
    }

    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10));
    let builder = Arc::new(builder);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut conns = tokio::task::JoinSet::new();
    let signal = super::router::shutdown_signal();
    tokio::pin!(signal);
    let mut backoff = teal_router::AcceptBackoff::new("sample-app");
    loop {
        let (stream, _) = tokio::select! {
            _ = &mut signal => break,
            r = listener.accept() => match r {
                Ok(pair) => {
                    backoff.accepted();
                    pair
                }
                Err(e) => {
                    tokio::time::sleep(backoff.failed(&e)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let builder = builder.clone();
        let mut stop = stop_rx.clone();
        conns.spawn(async move {
            let service = service_fn(move |req| {
                let app = app.clone();
                async move { Ok::<_, Infallible>(handle(app, req).await) }
            });
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = stop.wait_for(|s| *s) => conn.as_mut().graceful_shutdown(),
            }
            let _ = conn.await;
        });
        // Reap finished connections so the set does not grow without bound.
        while conns.try_join_next().is_some() {}
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!("shutdown grace passed with connections still open");
    }
    Ok(ExitCode::SUCCESS)
}

impl App {
    fn random_unit(&self) -> f64 {
        let mut z = self
            .rng
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    fn count(&self, status: StatusCode) {
        let mut map = self.by_code.lock().unwrap_or_else(|e| e.into_inner());
        *map.entry(status.as_u16()).or_default() += 1;
    }

    fn identity(&self, status: StatusCode, extra: Option<(&str, &str)>) -> Response<AppBody> {
        let mut body = serde_json::json!({ "color": self.color.as_str(), "version": self.version });
        if let Some((k, v)) = extra {
            body[k] = serde_json::Value::from(v);
        }
        let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert("x-app-color", HeaderValue::from_static(self.color.as_str()));
        if let Ok(v) = HeaderValue::from_str(&self.version) {
            h.insert("x-app-version", v);
        }
        resp
    }

    fn metrics(&self) -> String {
        let map = self.by_code.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::from(
            "# HELP app_requests_total Responses sent by the sample app, by status code.\n# TYPE app_requests_total counter\n",
        );
        for (code, n) in map.iter() {
            out.push_str(&format!(
                "app_requests_total{{color=\"{}\",version=\"{}\",code=\"{code}\"}} {n}\n",
                self.color, self.version
            ));
        }
        out
    }
}

fn text(status: StatusCode, body: String) -> Response<AppBody> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

async fn handle(app: Arc<App>, req: Request<Incoming>) -> Response<AppBody> {
    let resp = route(&app, req).await;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        app.count(resp.status());
    }
    resp
}

async fn route(app: &Arc<App>, mut req: Request<Incoming>) -> Response<AppBody> {
    let path = req.uri().path().to_string();
    match path.as_str() {
        "/" => {
            if app.error_rate > 0.0 && app.random_unit() < app.error_rate {
                app.identity(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    Some(("error", "injected")),
                )
            } else {
                app.identity(StatusCode::OK, None)
            }
        }
        "/healthz" => {
            if Instant::now() >= app.ready_at {
                text(StatusCode::OK, "ok\n".into())
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "starting\n".into())
            }
        }
        "/sleep" => {
            let ms = req
                .uri()
                .query()
                .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("ms=")))
                .map(str::parse::<u64>);
            match ms {
                Some(Ok(ms)) if ms <= MAX_SLEEP_MS => {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    app.identity(StatusCode::OK, None)
                }
                _ => text(
                    StatusCode::BAD_REQUEST,
                    format!("ms: a number of milliseconds up to {MAX_SLEEP_MS} is required\n"),
                ),
            }
        }
        "/echo" => {
            let method = req.method().to_string();
            let http_version = format!("{:?}", req.version());
            let uri = req.uri().to_string();
            let headers: BTreeMap<String, Vec<String>> = req
                .headers()
                .keys()
                .map(|k| {
                    let values = req
                        .headers()
                        .get_all(k)
                        .iter()
                        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                        .collect();
                    (k.as_str().to_string(), values)
                })
                .collect();
            let mut body = req.into_body();
            let mut bytes = 0u64;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => bytes += f.data_ref().map_or(0, |d| d.len() as u64),
                    Err(e) => {
                        return text(
                            StatusCode::BAD_REQUEST,
                            format!("request body failed: {e}\n"),
                        );
                    }
                }
            }
            let body = serde_json::json!({
                "color": app.color.as_str(), "version": app.version,
                "method": method, "http_version": http_version, "uri": uri, "headers": headers, "body_bytes": bytes,
            });
            let mut resp = app.identity(StatusCode::OK, None);
            *resp.body_mut() = Full::new(Bytes::from(body.to_string()));
            resp
        }
        "/ws" => {
            let key = req.headers().get("sec-websocket-key").cloned();
            let is_ws = req
                .headers()
                .get(header::UPGRADE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
            let Some(key) = key.filter(|_| is_ws) else {
                return text(
                    StatusCode::BAD_REQUEST,
                    "/ws needs a WebSocket upgrade request\n".into(),
                );
            };
            let on_upgrade = hyper::upgrade::on(&mut req);
            let color = app.color;
            tokio::spawn(async move {
                match on_upgrade.await {
                    Ok(upgraded) => {
                        let ws = WebSocketStream::from_raw_socket(
                            TokioIo::new(upgraded),
                            Role::Server,
                            None,
                        )
                        .await;
                        echo(ws, color).await;
                    }
                    Err(e) => tracing::debug!(error = %e, "websocket upgrade failed"),
                }
            });
            let mut resp = Response::new(Full::new(Bytes::new()));
            *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            let h = resp.headers_mut();
            h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            if let Ok(v) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
                h.insert("sec-websocket-accept", v);
            }
            h.insert("x-app-color", HeaderValue::from_static(color.as_str()));
            resp
        }
        "/metrics" => text(StatusCode::OK, app.metrics()),
        _ => text(StatusCode::NOT_FOUND, format!("404 not found: {path}\n")),
    }
}

async fn echo<S>(mut ws: WebSocketStream<S>, color: Color)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    while let Some(msg) = ws.next().await {
        let reply = match msg {
            Ok(Message::Text(t)) => Message::text(format!("{color}: {}", t.as_str())),
            Ok(Message::Binary(b)) => Message::Binary(b),
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => continue,
        };
        if ws.send(reply).await.is_err() {
            break;
        }
    }
}
