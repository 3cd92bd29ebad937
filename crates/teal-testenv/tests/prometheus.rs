//! Prometheus from the system package scrapes an endpoint this test serves, and the result is
//! read back through its HTTP API.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use teal_testenv::{prometheus, wait_for};
use tokio::net::TcpListener;

/// Serves `/metrics` on a free loopback port: a fixed gauge and a counter of scrapes.
async fn serve_metrics(scrapes: Arc<AtomicU64>) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let scrapes = scrapes.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let scrapes = scrapes.clone();
                    async move {
                        if req.uri().path() != "/metrics" {
                            let mut not_found = Response::new(Full::new(Bytes::from_static(b"")));
                            *not_found.status_mut() = hyper::StatusCode::NOT_FOUND;
                            return Ok::<_, Infallible>(not_found);
                        }
                        let n = scrapes.fetch_add(1, Ordering::SeqCst) + 1;
                        let body = format!(
                            "# TYPE teal_probe_requests_total counter\n\
                             teal_probe_requests_total{{color=\"blue\"}} 42\n\
                             teal_probe_requests_total{{color=\"green\"}} 7\n\
                             # TYPE teal_probe_scrapes_total counter\n\
                             teal_probe_scrapes_total {n}\n"
                        );
                        Ok(Response::new(Full::new(Bytes::from(body))))
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn prometheus_scrapes_a_local_endpoint_and_answers_queries() {
    let scrapes = Arc::new(AtomicU64::new(0));
    let addr = serve_metrics(scrapes.clone()).await;
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
         scrape_configs:\n- job_name: probe\n  static_configs:\n  - targets: ['{addr}']\n"
    );
    let prom = prometheus::start(&config)
        .await
        .expect("starting prometheus");
    assert!(
        prom.url().starts_with("http://127.0.0.1:"),
        "{}",
        prom.url()
    );

    // Two scrapes seen through the query API show it keeps scraping.
    let value = wait_for(
        "prometheus to have scraped twice",
        Duration::from_secs(60),
        || async {
            let samples = prom
                .query("teal_probe_scrapes_total")
                .await
                .map_err(|e| e.to_string())?;
            match samples.first() {
                Some(s) if s.value >= 2.0 => Ok(s.value),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    assert!(value <= scrapes.load(Ordering::SeqCst) as f64);

    let mut samples = prom
        .query(r#"sum by (color) (teal_probe_requests_total{job="probe"})"#)
        .await
        .unwrap();
    samples.sort_by(|a, b| a.metric["color"].cmp(&b.metric["color"]));
    let got: Vec<(&str, f64)> = samples
        .iter()
        .map(|s| (s.metric["color"].as_str(), s.value))
        .collect();
    assert_eq!(got, [("blue", 42.0), ("green", 7.0)]);

    let up = prom.query(r#"up{job="probe"}"#).await.unwrap();
    assert_eq!(up.len(), 1);
    assert_eq!(up[0].metric["instance"], addr.to_string());
    assert_eq!(up[0].value, 1.0);

    let err = prom.query("sum(").await.unwrap_err().to_string();
    assert!(err.contains("parse error"), "{err}");
}
