//! The probe port: what a kubelet (or any supervisor) asks a router replica.
//!
//! `GET /readyz` answers 200 once a route table is installed and 503 before
//! (and again once the process is told to stop), so a replica gets traffic
//! only when it can route it; `GET /healthz`
//! answers 200 while the process serves; `GET /metrics` is the same text as
//! the admin API's. Nothing here changes the router, so the port needs no
//! token.

use std::future::Future;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::net::TcpListener;

use crate::Router;
use crate::admin::{AdminBody, text};

impl Router {
    /// Serves `/readyz`, `/healthz` and `/metrics` on `listener` until
    /// `shutdown` completes.
    pub async fn serve_probes(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> std::io::Result<()> {
        let listener = &listener;
        self.serve_http1(
            "probe",
            move || async move { listener.accept().await.map(|(s, _)| s) },
            shutdown,
            |router, req| std::future::ready(probe(&router, &req)),
        )
        .await
    }
}

fn probe(router: &Router, req: &Request<Incoming>) -> Response<AdminBody> {
    let path = req.uri().path();
    if !matches!(path, "/readyz" | "/healthz" | "/metrics") {
        return text(
            StatusCode::NOT_FOUND,
            format!("404 not found: {path}; the probe port serves /readyz, /healthz, /metrics\n"),
        );
    }
    if req.method() != Method::GET {
        let mut resp = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "405 method not allowed: use GET\n",
        );
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET"));
        return resp;
    }
    match path {
        "/readyz" if router.is_stopping() => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: shutting down\n",
        ),
        "/readyz" => match router.generation() {
            0 => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: no route table installed yet\n",
            ),
            g => text(StatusCode::OK, format!("ready: route generation {g}\n")),
        },
        "/healthz" => text(StatusCode::OK, "ok\n"),
        _ => {
            let mut resp = text(StatusCode::OK, router.render_metrics());
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            resp
        }
    }
}
