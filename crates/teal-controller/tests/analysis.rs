//! Pre-promotion analysis in the controller against a real control plane and
//! a real Prometheus, which scrapes a loopback HTTP server whose figures the
//! test sets: a healthy release passes and goes live, a bad one fails before
//! cutover with the metric's name and value in status and in a Warning Event.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use support::case;

/// Serves `/metrics` in the Prometheus text format: one gauge
/// `shop_errors_percent{namespace,app,color}` per entry the test sets.
/// (namespace, app, color) → value.
type Gauges = HashMap<(String, String, String), f64>;

#[derive(Clone, Default)]
struct Exposer {
    values: Arc<Mutex<Gauges>>,
}

impl Exposer {
    async fn start() -> (Exposer, std::net::SocketAddr) {
        let e = Exposer::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = e.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let shared = shared.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |_req: http::Request<hyper::body::Incoming>| {
                        let body = shared.render();
                        async move {
                            Ok::<_, hyper::Error>(
                                http::Response::builder()
                                    .header("content-type", "text/plain; version=0.0.4")
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
        (e, addr)
    }

    fn set(&self, ns: &str, app: &str, color: &str, v: f64) {
        self.values
            .lock()
            .unwrap()
            .insert((ns.into(), app.into(), color.into()), v);
    }

    fn render(&self) -> String {
        let mut out = String::from("# TYPE shop_errors_percent gauge\n");
        for ((ns, app, color), v) in self.values.lock().unwrap().iter() {
            out.push_str(&format!(
                "shop_errors_percent{{namespace=\"{ns}\",app=\"{app}\",color=\"{color}\"}} {v}\n"
            ));
        }
        out
    }
}

/// Waits until BlueGreen `shop` promoted a release and is healthy.
async fn promoted(c: &support::Case, what: &str) -> teal_api::BlueGreenStatus {
    c.wait_status(what, "shop", |s| {
        s.history.iter().any(|h| h.outcome == "promoted") && s.phase.as_deref() == Some("Healthy")
    })
    .await
}

/// Waits until BlueGreen `shop`'s second release ended without promotion.
async fn failed_second(c: &support::Case, what: &str) -> teal_api::BlueGreenStatus {
    c.wait_status(what, "shop", |s| {
        s.history.len() >= 2
            && s.history.last().is_some_and(|h| h.outcome != "promoted")
            && s.phase.as_deref() != Some("Analyzing")
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_analysis_gates_the_cutover() {
    let (exposer, addr) = Exposer::start().await;
    let scrape = format!(
        "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nscrape_configs:\n  - job_name: shop\n    honor_labels: true\n    static_configs: [{{targets: ['{addr}']}}]\n"
    );
    let prom = teal_testenv::prometheus::start(&scrape)
        .await
        .expect("prometheus starts");
    let mut c = case("analysis").await;
    let ns = c.ns.clone();
    exposer.set(&ns, "shop", "blue", 0.0);
    exposer.set(&ns, "shop", "green", 1.5);
    // Another BlueGreen's figures, which the template variables must exclude.
    exposer.set(&ns, "other", "green", 90.0);
    exposer.set("elsewhere", "shop", "green", 90.0);
    teal_testenv::wait_for(
        "prometheus to scrape the exposer",
        Duration::from_secs(90),
        || {
            let prom = &prom;
            let q = format!("shop_errors_percent{{namespace=\"{ns}\"}}");
            async move {
                let s = prom.query(&q).await.map_err(|e| e.to_string())?;
                if s.len() >= 3 {
                    Ok(())
                } else {
                    Err(format!("{} series so far", s.len()))
                }
            }
        },
    )
    .await;

    let query =
        r#"max(shop_errors_percent{namespace="{{namespace}}",app="{{name}}",color="{{color}}"})"#;
    c.create_workload("shop", "shop:1", 2, BTreeMap::new())
        .await;
    c.create_bluegreen(
        "shop",
        json!({
            "workloadRef": {"kind": "Deployment", "name": "shop"},
            "scaleDownDelay": "1s",
            "progressDeadline": "120s",
            "analysis": {"prePromotion": {
                "interval": "2s",
                "checks": 2,
                "inconclusiveLimit": 2,
                "metrics": [{
                    "name": "errors",
                    "prometheus": {"address": prom.url(), "query": query},
                    "max": 5
                }]
            }}
        }),
    )
    .await
    .unwrap();
    c.start_controller();
    let st = c
        .wait_status("adoption", "shop", |s| {
            s.phase.as_deref() == Some("Healthy")
        })
        .await;
    let v1 = st.active_revision.clone().unwrap();
    assert_eq!(c.selector_color("shop").await.as_deref(), Some("blue"));

    // A healthy release: green at 1.5% passes both checks and goes live.
    c.set_image("shop", "shop:2", BTreeMap::new()).await;
    let st = promoted(&c, "v2 promoted after analysis").await;
    assert_eq!(c.selector_color("shop").await.as_deref(), Some("green"));
    let v2 = st.active_revision.clone().unwrap();
    assert_ne!(v1, v2);
    let a = st.analysis.expect("analysis recorded in status");
    assert_eq!(a.stage, "prePromotion");
    assert_eq!(a.revision, v2);
    assert_eq!(a.checks, 2, "{a:?}");
    assert_eq!(a.failures, 0, "{a:?}");
    assert_eq!(a.verdict.as_deref(), Some("pass"), "{a:?}");
    assert_eq!(a.metrics.len(), 1);
    assert_eq!(a.metrics[0].name, "errors");
    assert_eq!(
        a.metrics[0].value,
        Some(1.5),
        "the query measured this BlueGreen's green, not the others: {a:?}"
    );

    // A bad release on blue: 40% errors fails before cutover.
    exposer.set(&ns, "shop", "blue", 40.0);
    c.set_image("shop", "shop:3", BTreeMap::new()).await;
    let st = failed_second(&c, "v3 fails its analysis").await;
    let msg = st.message.clone().unwrap_or_default();
    let last = st.history.last().unwrap().clone();
    let reason = format!("{msg} | {}", last.reason);
    assert!(
        reason.contains("errors = 40"),
        "metric and value named: {reason}"
    );
    assert!(reason.contains("above the maximum 5"), "{reason}");
    assert_eq!(
        c.selector_color("shop").await.as_deref(),
        Some("green"),
        "traffic never left v2"
    );
    assert_eq!(st.active_revision.as_deref(), Some(v2.as_str()));
    let a = st.analysis.expect("analysis recorded in status");
    assert_eq!(a.metrics[0].value, Some(40.0), "{a:?}");
    assert!(a.failures >= 1, "{a:?}");
    assert!(
        a.verdict.as_deref().is_some_and(|v| v.starts_with("fail")),
        "{a:?}"
    );
    let evs = c.events("shop").await;
    assert!(
        evs.iter()
            .any(|(t, _, note)| t == "Warning" && note.contains("errors = 40")),
        "a Warning Event names the metric and value: {evs:#?}"
    );
}

/// A Prometheus over TLS with basic auth (Prometheus' own
/// `--web.config.file`): the CA bundle, the password and a header value
/// come from Secrets in the BlueGreen's namespace. A good release passes,
/// a bad one fails before cutover naming the metric and its value.
#[tokio::test(flavor = "multi_thread")]
async fn prometheus_behind_tls_and_basic_auth_with_secrets() {
    let (prom, ca_pem) =
        teal_testenv::prometheus::start_secured("global: {scrape_interval: 15s}\n")
            .await
            .expect("prometheus starts behind TLS and basic auth");
    let mut c = case("analysis-tls").await;
    let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(c.client.clone(), &c.ns);
    let secret = serde_json::from_value(json!({
        "metadata": {"name": "prometheus"},
        "stringData": {
            "ca.crt": ca_pem,
            "password": teal_testenv::prometheus::PASSWORD,
            "tenant": "tenant-a"
        }
    }))
    .unwrap();
    secrets
        .create(&kube::api::PostParams::default(), &secret)
        .await
        .unwrap();
    // 0 on green, 100 on blue: the first release (to green) is good, the
    // next (to blue) bad, without anything to scrape.
    let query = r#"min((label_replace(vector(0), "c", "{{color}}", "", "") and on(c) label_replace(vector(0), "c", "green", "", "")) or vector(100))"#;
    c.create_workload("shop", "shop:1", 1, BTreeMap::new())
        .await;
    let secret_ref = |key: &str| json!({"name": "prometheus", "key": key});
    c.create_bluegreen(
        "shop",
        json!({
            "workloadRef": {"kind": "Deployment", "name": "shop"},
            "scaleDownDelay": "1s",
            "progressDeadline": "120s",
            "analysis": {"prePromotion": {
                "interval": "1s",
                "checks": 2,
                "inconclusiveLimit": 2,
                "metrics": [{
                    "name": "gate",
                    "prometheus": {
                        "address": prom.url(),
                        "query": query,
                        "timeout": "5s",
                        "tls": {"caSecretRef": secret_ref("ca.crt")},
                        "auth": {"basic": {
                            "username": teal_testenv::prometheus::USER,
                            "passwordSecretRef": secret_ref("password")
                        }},
                        "headers": [{"name": "X-Scope-OrgID", "secretRef": secret_ref("tenant")}]
                    },
                    "max": 5
                }]
            }}
        }),
    )
    .await
    .unwrap();
    c.start_controller();
    c.wait_status("adoption", "shop", |s| {
        s.phase.as_deref() == Some("Healthy")
    })
    .await;

    c.set_image("shop", "shop:2", BTreeMap::new()).await;
    let st = promoted(&c, "the release to green promoted after analysis").await;
    assert_eq!(c.selector_color("shop").await.as_deref(), Some("green"));
    let a = st.analysis.expect("analysis recorded in status");
    assert_eq!(a.metrics[0].value, Some(0.0), "{a:?}");

    c.set_image("shop", "shop:3", BTreeMap::new()).await;
    let st = failed_second(&c, "the release to blue fails its analysis").await;
    let reason = format!(
        "{} | {}",
        st.message.clone().unwrap_or_default(),
        st.history.last().unwrap().reason
    );
    assert!(reason.contains("gate = 100"), "{reason}");
    assert!(reason.contains("above the maximum 5"), "{reason}");
    assert_eq!(c.selector_color("shop").await.as_deref(), Some("green"));
}
