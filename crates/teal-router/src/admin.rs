//! The admin API: route table, drain, metrics, health.
//!
//! `GET /healthz` and `GET /metrics` need no token. `GET /routes`,
//! `PUT /routes` and `POST /drain` need `Authorization: Bearer <token>` on a
//! TCP listener; on a Unix socket, file permissions guard access instead.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};

use crate::{Color, RouteTable, Router, format_duration, parse_duration};

/// Largest route table accepted by `PUT /routes`.
const MAX_TABLE_BYTES: usize = 1 << 20;
/// Longest drain accepted by `POST /drain`.
const MAX_DRAIN: Duration = Duration::from_secs(3600);
/// Drain timeout when the request names none.
const DEFAULT_DRAIN: Duration = Duration::from_secs(30);

/// Where the admin API listens.
pub enum AdminListener {
    /// TCP; every request except `/healthz` and `/metrics` needs
    /// `Authorization: Bearer <token>`.
    Tcp {
        listener: TcpListener,
        token: String,
    },
    /// A Unix socket; access is controlled by its file permissions.
    Unix(UnixListener),
}

impl AdminListener {
    /// Binds a Unix socket at `path` (replacing a stale socket left by an
    /// earlier run) readable and writable by the owner only.
    pub fn unix(path: &Path) -> std::io::Result<AdminListener> {
        use std::os::unix::fs::{FileTypeExt, PermissionsExt};
        if let Ok(meta) = std::fs::symlink_metadata(path)
            && meta.file_type().is_socket()
        {
            std::fs::remove_file(path)?;
        }
        let listener = UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        Ok(AdminListener::Unix(listener))
    }
}

pub(crate) type AdminBody = Full<Bytes>;

impl Router {
    /// Serves the admin API until `shutdown` completes.
    pub async fn serve_admin(
        &self,
        listener: AdminListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> std::io::Result<()> {
        match listener {
            AdminListener::Tcp { listener, token } => {
                if token.is_empty() {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        "admin token must not be empty on a TCP listener",
                    ));
                }
                let token: Option<Arc<str>> = Some(token.into());
                let listener = &listener;
                self.serve_http1(
                    "admin",
                    move || async move { listener.accept().await.map(|(s, _)| s) },
                    shutdown,
                    move |router, req| admin(router, req, token.clone()),
                )
                .await
            }
            AdminListener::Unix(listener) => {
                let listener = &listener;
                self.serve_http1(
                    "admin",
                    move || async move { listener.accept().await.map(|(s, _)| s) },
                    shutdown,
                    |router, req| admin(router, req, None),
                )
                .await
            }
        }
    }

    /// Accepts connections with `accept` until `shutdown` completes and
    /// serves HTTP/1.1 on each with `handle` (heads must arrive within 10 s;
    /// `what` names the listener in logs).
    pub(crate) async fn serve_http1<S, A, AF, H, HF>(
        &self,
        what: &'static str,
        accept: A,
        shutdown: impl Future<Output = ()> + Send,
        handle: H,
    ) -> std::io::Result<()>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        A: Fn() -> AF,
        AF: Future<Output = std::io::Result<S>>,
        H: Fn(Router, Request<Incoming>) -> HF + Clone + Send + Sync + 'static,
        HF: Future<Output = Response<AdminBody>> + Send + 'static,
    {
        tokio::pin!(shutdown);
        let mut backoff = crate::AcceptBackoff::new(what);
        loop {
            let stream = tokio::select! {
                _ = &mut shutdown => return Ok(()),
                r = accept() => match r {
                    Ok(stream) => stream,
                    Err(e) => {
                        tokio::time::sleep(backoff.failed(&e)).await;
                        continue;
                    }
                },
            };
            backoff.accepted();
            let router = self.clone();
            let handle = handle.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let fut = handle(router.clone(), req);
                    async move { Ok::<_, std::convert::Infallible>(fut.await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), service);
                if let Err(e) = conn.await {
                    tracing::debug!(listener = what, error = %e, "connection ended with an error");
                }
            });
        }
    }
}

pub(crate) fn text(status: StatusCode, body: impl Into<String>) -> Response<AdminBody> {
    let mut resp = Response::new(Full::new(Bytes::from(body.into())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn json(value: &serde_json::Value) -> Response<AdminBody> {
    let mut resp = Response::new(Full::new(Bytes::from(value.to_string() + "\n")));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// Compares without stopping at the first differing byte.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn authorized(req: &Request<Incoming>, token: &Option<Arc<str>>) -> bool {
    let Some(token) = token else { return true };
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|given| same_secret(given.trim().as_bytes(), token.as_bytes()))
}

fn query_param<'a>(req: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
    req.uri()
        .query()?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

async fn admin(
    router: Router,
    req: Request<Incoming>,
    token: Option<Arc<str>>,
) -> Response<AdminBody> {
    let path = req.uri().path().to_string();
    match (req.method(), path.as_str()) {
        (&Method::GET, "/healthz") => return text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/metrics") => {
            let mut resp = text(StatusCode::OK, router.render_metrics());
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            return resp;
        }
        (_, "/routes" | "/drain") => {}
        (_, "/healthz" | "/metrics") => {
            return method_not_allowed("GET");
        }
        _ => {
            return text(
                StatusCode::NOT_FOUND,
                format!(
                    "404 not found: {path}; the admin API serves /routes, /drain, /metrics, /healthz\n"
                ),
            );
        }
    }
    if !authorized(&req, &token) {
        let mut resp = text(
            StatusCode::UNAUTHORIZED,
            "401 unauthorized: send the admin token as \"Authorization: Bearer <token>\"\n",
        );
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return resp;
    }
    match (req.method().clone(), path.as_str()) {
        (Method::GET, "/routes") => {
            let (generation, table) = router.try_current();
            json(&serde_json::json!({ "generation": generation, "table": table }))
        }
        (Method::PUT, "/routes") => {
            let body = match Limited::new(req.into_body(), MAX_TABLE_BYTES)
                .collect()
                .await
            {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    return text(
                        StatusCode::BAD_REQUEST,
                        format!(
                            "400 bad request: cannot read the route table (at most {MAX_TABLE_BYTES} bytes): {e}\n"
                        ),
                    );
                }
            };
            match RouteTable::from_json(&body).and_then(|t| router.swap(t)) {
                Ok(generation) => {
                    tracing::info!(generation, "route table installed");
                    json(&serde_json::json!({ "generation": generation }))
                }
                Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
            }
        }
        (Method::POST, "/drain") => {
            let color: Color = match query_param(&req, "color").map(str::parse) {
                Some(Ok(c)) => c,
                Some(Err(e)) => return text(StatusCode::BAD_REQUEST, format!("color: {e}\n")),
                None => {
                    return text(
                        StatusCode::BAD_REQUEST,
                        "color: missing query parameter; allowed values are \"blue\" and \"green\"\n",
                    );
                }
            };
            let timeout = match query_param(&req, "timeout").map(parse_duration) {
                None => DEFAULT_DRAIN,
                Some(Ok(d)) if d <= MAX_DRAIN => d,
                Some(Ok(_)) => {
                    return text(
                        StatusCode::BAD_REQUEST,
                        format!("timeout: at most {} allowed\n", format_duration(MAX_DRAIN)),
                    );
                }
                Some(Err(e)) => return text(StatusCode::BAD_REQUEST, format!("timeout: {e}\n")),
            };
            let report = router.drain(color, timeout).await;
            json(&serde_json::to_value(&report).unwrap_or_default())
        }
        (_, "/routes") => method_not_allowed("GET, PUT"),
        _ => method_not_allowed("POST"),
    }
}

fn method_not_allowed(allow: &'static str) -> Response<AdminBody> {
    let mut resp = text(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("405 method not allowed: use {allow}\n"),
    );
    resp.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    resp
}
