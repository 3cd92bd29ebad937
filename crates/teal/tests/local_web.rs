//! A web metric in local mode, against a JSON API this test serves behind
//! an API key that teal reads from a file: a good release passes, a bad one
//! rolls back with the metric's name and value.

mod local_support;

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use local_support::*;

const KEY: &str = "local-k3y";

/// Serves `GET /errors?revision=R` as `{"data": {"errors": N}}`: 0 for
/// revision v2, 100 for any other, with the key in `X-Api-Key`; 401
/// without. The request lines it answered.
async fn json_api() -> (std::net::SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let log = log.clone();
                    async move {
                        let keyed = req.headers().get("x-api-key").is_some_and(|v| v == KEY);
                        let query = req.uri().query().unwrap_or_default().to_string();
                        log.lock().unwrap().push(format!("{keyed} {query}"));
                        let (status, body) = match (keyed, query.as_str()) {
                            (false, _) => (401, r#"{"error": "no key"}"#.to_string()),
                            (true, "revision=v2") => (200, r#"{"data": {"errors": 0}}"#.into()),
                            (true, _) => (200, r#"{"data": {"errors": 100}}"#.into()),
                        };
                        Ok::<_, hyper::Error>(
                            http::Response::builder()
                                .status(status)
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from(body)))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread")]
async fn web_metric_gates_the_release() {
    let (addr, seen) = json_api().await;
    let files = Scratch::new("web");
    std::fs::write(files.0.join("key"), format!("{KEY}\n")).unwrap();
    let extra = format!(
        "analysis:\n  prePromotion:\n    interval: 1s\n    checks: 2\n    inconclusiveLimit: 0\n    metrics:\n      - name: errors\n        max: 5\n        web:\n          url: 'http://{addr}/errors?revision={{{{revision}}}}'\n          headers: [{{name: X-Api-Key, secretRef: {{file: \"{dir}/key\"}}}}]\n          jsonPath: $.data.errors\n",
        dir = files.0.display(),
    );
    let setup = tokio::task::spawn_blocking(move || healthy_daemon("web", &extra))
        .await
        .unwrap();
    let o = deploy_within_a_minute(&setup.config, "v2").await;
    assert!(o.status.success(), "{}\n{}", text(&o), setup.daemon.log());
    assert_eq!(live_version(setup.port).as_deref(), Some("v2"));
    assert!(
        seen.lock().unwrap().iter().any(|l| l == "true revision=v2"),
        "the key from the file was sent: {:?}",
        seen.lock().unwrap()
    );

    let o = deploy_within_a_minute(&setup.config, "v3").await;
    assert_rolled_back(&o, "v3", &["errors = 100"], setup.port, "v2");
}
