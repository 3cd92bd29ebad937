//! The daemon's control API (loopback HTTP, bearer token) used by
//! `teal local deploy|status|promote|abort|rollback|retry`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::{Deserialize, Serialize};
use teal_core::release::Command;
use tokio::net::TcpListener;

use crate::engine::{Engine, EngineError};
use crate::supervisor::RevisionSpec;

/// Body of `POST /v1/deploy`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeployRequest {
    pub revision: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
}

/// Body of `POST /v1/promote`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromoteRequest {
    #[serde(default)]
    pub full: bool,
}

/// Error body of every non-2xx answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
}

const MAX_BODY: usize = 256 * 1024;

/// A client must have sent a request's headers within this time of
/// connecting (or of its previous request), or the connection is closed: a
/// client trickling bytes cannot hold a connection open.
pub const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// The same for a request's body.
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves the control API until `shutdown` completes.
pub async fn serve(
    engine: Engine,
    listener: TcpListener,
    token: String,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let token = Arc::new(token);
    let dashboard = crate::dashboard::Dashboard::start(engine.clone());
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            r = listener.accept() => r,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, a connection reset before it was
                // accepted, …: that connection is lost, not the API. A short
                // pause keeps a persistent error (EMFILE) from spinning.
                tracing::warn!("control API: accept failed: {e}");
                tokio::select! {
                    _ = &mut shutdown => return Ok(()),
                    _ = tokio::time::sleep(std::time::Duration::from_millis(50)) => continue,
                }
            }
        };
        let engine = engine.clone();
        let token = token.clone();
        let dashboard = dashboard.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let engine = engine.clone();
                let token = token.clone();
                // The read-only dashboard needs no token (see crate::dashboard).
                let page = dashboard.route(&req);
                async move {
                    Ok::<_, Infallible>(match page {
                        Some(page) => page,
                        None => handle(engine, &token, req).await,
                    })
                }
            });
            // HTTP/1.1 only (the CLI and browsers speak it on plain HTTP),
            // so that the header timeout applies from the first byte on.
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn json<T: Serialize>(status: StatusCode, body: &T) -> Response<Full<Bytes>> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(bytes)))
        .expect("static response")
}

fn error(status: StatusCode, msg: impl Into<String>) -> Response<Full<Bytes>> {
    json(status, &ApiError { error: msg.into() })
}

fn authorized(req: &Request<Incoming>, token: &str) -> bool {
    let Some(v) = req.headers().get(http::header::AUTHORIZATION) else {
        return false;
    };
    let Ok(v) = v.to_str() else { return false };
    let Some(given) = v.strip_prefix("Bearer ") else {
        return false;
    };
    // Compare in constant time with respect to the contents.
    given.len() == token.len()
        && given
            .bytes()
            .zip(token.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

async fn body<T: for<'de> Deserialize<'de> + Default>(
    req: Request<Incoming>,
) -> Result<T, Response<Full<Bytes>>> {
    let read = tokio::time::timeout(
        BODY_TIMEOUT,
        Limited::new(req.into_body(), MAX_BODY).collect(),
    )
    .await
    .map_err(|_| {
        error(
            StatusCode::REQUEST_TIMEOUT,
            format!("the request body did not arrive within {BODY_TIMEOUT:?}"),
        )
    })?;
    let bytes = read
        .map_err(|e| {
            error(
                StatusCode::BAD_REQUEST,
                format!("cannot read the request body: {e}"),
            )
        })?
        .to_bytes();
    if bytes.is_empty() {
        return Ok(T::default());
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            format!("invalid request body: {e}"),
        )
    })
}

fn answer(r: Result<(), EngineError>, ok: &str) -> Response<Full<Bytes>> {
    match r {
        Ok(()) => json(StatusCode::OK, &serde_json::json!({ "ok": ok })),
        Err(e @ EngineError::Conflict(_)) => error(StatusCode::CONFLICT, e.to_string()),
        Err(e @ EngineError::Invalid(_)) => error(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e @ EngineError::Stopped) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

async fn handle(engine: Engine, token: &str, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if !authorized(&req, token) {
        return error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token (see the control.token file in the state directory)",
        );
    }
    let path = req.uri().path().to_string();
    match (req.method().clone(), path.as_str()) {
        (Method::GET, "/v1/status") => json(StatusCode::OK, &*engine.status()),
        (Method::POST, "/v1/deploy") => {
            let d: DeployRequest = match body(req).await {
                Ok(d) => d,
                Err(r) => return r,
            };
            let spec = RevisionSpec {
                name: d.revision.clone(),
                command: d.command,
                env: d.env,
            };
            answer(
                engine.deploy(spec).await,
                &format!("release of {} started", d.revision),
            )
        }
        (Method::POST, "/v1/promote") => {
            let p: PromoteRequest = match body(req).await {
                Ok(p) => p,
                Err(r) => return r,
            };
            answer(
                engine.command(Command::Promote { full: p.full }).await,
                "promoted",
            )
        }
        (Method::POST, "/v1/abort") => answer(engine.command(Command::Abort).await, "aborted"),
        (Method::POST, "/v1/rollback") => {
            answer(engine.command(Command::Rollback).await, "rolling back")
        }
        (Method::POST, "/v1/retry") => answer(engine.command(Command::Retry).await, "retrying"),
        (
            _,
            "/v1/status" | "/v1/deploy" | "/v1/promote" | "/v1/abort" | "/v1/rollback"
            | "/v1/retry",
        ) => error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
        _ => error(StatusCode::NOT_FOUND, format!("no such endpoint: {path}")),
    }
}
