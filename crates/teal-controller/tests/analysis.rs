//! Pre-promotion analysis in the controller against a real control plane and
//! a real Prometheus, which scrapes a loopback HTTP server whose figures the
//! test sets, or a JSON API the test serves itself (web metrics): a healthy
//! release passes and goes live, a bad one fails before cutover with the
//! metric's name and value in status and in a Warning Event.

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

/// What a test server answers: status, content type, body.
type Answer = (u16, &'static str, String);

/// Serves HTTP on a free loopback port until the test ends, each request
/// answered by `answer` from its head and body.
async fn serve(
    answer: impl Fn(&http::request::Parts, &[u8]) -> Answer + Clone + Send + Sync + 'static,
) -> std::net::SocketAddr {
    use http_body_util::BodyExt as _;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let answer = answer.clone();
                    async move {
                        let (head, body) = req.into_parts();
                        let body = body.collect().await?.to_bytes();
                        let (status, content_type, body) = answer(&head, &body);
                        Ok::<_, hyper::Error>(
                            http::Response::builder()
                                .status(status)
                                .header("content-type", content_type)
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
    addr
}

/// Creates Secret `name` with `data` (key → value) in the case's namespace.
async fn create_secret(c: &support::Case, name: &str, data: serde_json::Value) {
    let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(c.client.clone(), &c.ns);
    let secret =
        serde_json::from_value(json!({"metadata": {"name": name}, "stringData": data})).unwrap();
    secrets
        .create(&kube::api::PostParams::default(), &secret)
        .await
        .unwrap();
}

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
        let shared = e.clone();
        let addr = serve(move |_, _| (200, "text/plain; version=0.0.4", shared.render())).await;
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

/// An [`Exposer`] with `values` (namespace, app, color, value) and a real
/// Prometheus scraping it every second; returns once Prometheus has every
/// series of `ns`.
async fn scraped(
    ns: &str,
    values: &[(&str, &str, &str, f64)],
) -> (Exposer, teal_testenv::prometheus::Prometheus) {
    let (exposer, addr) = Exposer::start().await;
    let scrape = format!(
        "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nscrape_configs:\n  - job_name: shop\n    honor_labels: true\n    static_configs: [{{targets: ['{addr}']}}]\n"
    );
    let prom = teal_testenv::prometheus::start(&scrape)
        .await
        .expect("prometheus starts");
    for (n, app, color, v) in values {
        exposer.set(n, app, color, *v);
    }
    let want = values.iter().filter(|v| v.0 == ns).count();
    teal_testenv::wait_for(
        "prometheus to scrape the exposer",
        Duration::from_secs(90),
        || {
            let prom = &prom;
            let q = format!("shop_errors_percent{{namespace=\"{ns}\"}}");
            async move {
                let s = prom.query(&q).await.map_err(|e| e.to_string())?;
                if s.len() >= want {
                    Ok(())
                } else {
                    Err(format!("{} series so far", s.len()))
                }
            }
        },
    )
    .await;
    (exposer, prom)
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
            && s.phase.as_deref() != Some("Previewing")
    })
    .await
}

/// Releases `shop:2` (to green) and waits until it passed its analysis
/// and went live.
async fn good_release_to_green(c: &support::Case) -> teal_api::BlueGreenStatus {
    c.set_image("shop", "shop:2", BTreeMap::new()).await;
    let st = promoted(c, "the release to green promoted after analysis").await;
    assert_eq!(c.selector_color("shop").await.as_deref(), Some("green"));
    st
}

/// Releases `shop:3` (to blue) and waits until it failed its analysis
/// before cutover, the reason naming `named` (`metric = value`) above the
/// maximum 5; green stays live.
async fn bad_release_to_blue(c: &support::Case, named: &str) -> teal_api::BlueGreenStatus {
    c.set_image("shop", "shop:3", BTreeMap::new()).await;
    let st = failed_second(c, "the release to blue fails its analysis").await;
    let reason = format!(
        "{} | {}",
        st.message.clone().unwrap_or_default(),
        st.history.last().unwrap().reason
    );
    assert!(reason.contains(named), "metric and value named: {reason}");
    assert!(reason.contains("above the maximum 5"), "{reason}");
    assert_eq!(
        c.selector_color("shop").await.as_deref(),
        Some("green"),
        "traffic never left the good release"
    );
    st
}

/// The BlueGreen `shop` of Deployment `shop` with `pre` as its
/// pre-promotion analysis.
fn shop_analysed(pre: serde_json::Value) -> serde_json::Value {
    json!({
        "workloadRef": {"kind": "Deployment", "name": "shop"},
        "scaleDownDelay": "1s",
        "progressDeadline": "120s",
        "analysis": {"prePromotion": pre}
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_analysis_gates_the_cutover() {
    let mut c = case("analysis").await;
    let ns = c.ns.clone();
    let (exposer, prom) = scraped(
        &ns,
        &[
            (ns.as_str(), "shop", "blue", 0.0),
            (ns.as_str(), "shop", "green", 1.5),
            // Another BlueGreen's figures, which the template variables must exclude.
            (ns.as_str(), "other", "green", 90.0),
            ("elsewhere", "shop", "green", 90.0),
        ],
    )
    .await;

    let query =
        r#"max(shop_errors_percent{namespace="{{namespace}}",app="{{name}}",color="{{color}}"})"#;
    c.create_workload("shop", "shop:1", 2, BTreeMap::new())
        .await;
    c.create_bluegreen(
        "shop",
        shop_analysed(json!({
                "interval": "2s",
                "checks": 2,
                "inconclusiveLimit": 2,
                "metrics": [{
                    "name": "errors",
                    "prometheus": {"address": prom.url(), "query": query},
                    "max": 5
                }, {
                    // Out of its range from the start, but a dry run.
                    "name": "errors-strict",
                    "prometheus": {"address": prom.url(), "query": query},
                    "max": 0.5,
                    "dryRun": true
                }]
        })),
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
    assert_eq!(a.metrics.len(), 2);
    assert_eq!(a.metrics[0].name, "errors");
    assert_eq!(
        a.metrics[0].value,
        Some(1.5),
        "the query measured this BlueGreen's green, not the others: {a:?}"
    );
    // The dry-run metric was measured and reported, and decided nothing.
    assert_eq!(
        (
            a.metrics[1].name.as_str(),
            a.metrics[1].value,
            a.metrics[1].dry_run
        ),
        ("errors-strict", Some(1.5), true),
        "{a:?}"
    );
    // The first check's measurements are kept.
    assert_eq!(a.history.len(), 1, "{a:?}");
    assert_eq!(a.history[0].check, 1);
    assert_eq!(a.history[0].metrics[0].value, Some(1.5), "{a:?}");

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
    warned(&c, "errors = 40").await;
}

/// A provider that cannot be reached (here a closed port) gives provider
/// errors, counted apart from failures and from checks without data: the
/// stage fails once more checks in a row than `consecutiveErrorLimit` had
/// one, naming the metric and the error. No check runs during the stage's
/// `initialDelay`.
#[tokio::test]
async fn provider_errors_fail_the_stage_past_the_consecutive_limit() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let mut c = case("analysis-errors").await;
    c.adopted(shop_analysed(json!({
        "interval": "1s",
        "initialDelay": "8s",
        "checks": 20,
        "inconclusiveLimit": 0,
        "consecutiveErrorLimit": 2,
        "metrics": [{"name": "errors", "prometheus": {"address": address, "query": "up"}, "max": 5}]
    })))
    .await;

    c.set_image("shop", "shop:2", BTreeMap::new()).await;
    c.wait_status("analysing v2", "shop", |s| {
        s.phase.as_deref() == Some("Previewing")
    })
    .await;
    // Well inside the initial delay (8 s, and a first check 1 s after it).
    tokio::time::sleep(Duration::from_secs(4)).await;
    let st = c.bluegreens().get("shop").await.unwrap().status.unwrap();
    assert!(
        st.analysis.as_ref().is_none_or(|a| a.checks == 0),
        "a check ran during the initial delay: {:?}",
        st.analysis
    );

    let st = c
        .wait_status("v2 fails on provider errors", "shop", |s| {
            s.history.last().is_some_and(|h| h.outcome != "promoted")
                && s.phase.as_deref() != Some("Previewing")
        })
        .await;
    let a = st.analysis.expect("analysis recorded in status");
    assert_eq!(
        (a.checks, a.errors, a.failures, a.inconclusive),
        (3, 3, 0, 0),
        "{a:?}"
    );
    assert!(a.metrics[0].error, "{a:?}");
    let reason = st.history.last().unwrap().reason.clone();
    assert!(
        reason.contains("3 checks in a row with a provider error")
            && reason.contains("errors: prometheus query failed"),
        "{reason}"
    );
    assert_eq!(c.selector_color("shop").await.as_deref(), Some("blue"));
}

/// A MetricTemplate serves two BlueGreens with their own arguments (each
/// gets its own query: one passes, one fails naming metric and value); a
/// change of the template applies to the next check; a missing
/// ClusterMetricTemplate is a condition naming the field until it exists.
#[tokio::test]
async fn metric_templates_serve_many_bluegreens_with_their_own_arguments() {
    let mut c = case("templates").await;
    let ns = c.ns.clone();
    let (_exposer, prom) = scraped(
        &ns,
        &[
            (ns.as_str(), "shop", "green", 1.5),
            (ns.as_str(), "cart", "green", 4.0),
        ],
    )
    .await;
    let query = r#"max(shop_errors_percent{namespace="{{namespace}}",app="{{args.app}}",color="{{color}}"})"#;
    let template = |name: &str, kind: &str, query: &str| {
        format!(
            "apiVersion: teal.dev/v1alpha1\nkind: {kind}\nmetadata: {{name: {name}}}\nspec:\n  args: [{{name: app}}]\n  prometheus: {{address: '{}', query: '{query}'}}\n",
            prom.url()
        )
    };
    support::kubectl_apply(&ns, &template("error-rate", "MetricTemplate", query));
    let uses = |app: &str, kind: &str, name: &str, checks: u32| {
        shop_analysed(json!({
            "interval": "1s", "checks": checks, "failureLimit": 0, "inconclusiveLimit": 5,
            "metrics": [{"name": "errors", "max": 5,
                         "templateRef": {"kind": kind, "name": name, "args": {"app": app}}}]
        }))
    };
    let cluster_name = format!("errors-{ns}");
    for (bg, spec) in [
        ("web-a", uses("shop", "MetricTemplate", "error-rate", 2)),
        ("web-b", uses("cart", "MetricTemplate", "error-rate", 600)),
        (
            "web-c",
            uses("shop", "ClusterMetricTemplate", &cluster_name, 2),
        ),
    ] {
        let mut spec = spec;
        spec["workloadRef"]["name"] = bg.into();
        c.create_workload(bg, &format!("{bg}:1"), 1, BTreeMap::new())
            .await;
        c.create_bluegreen(bg, spec).await.unwrap();
    }
    c.start_controller();
    let message = templates_condition(&c, "web-c", "False").await;
    assert_eq!(
        message,
        format!(
            "spec.analysis.prePromotion.metrics[0].templateRef: ClusterMetricTemplate {cluster_name} not found"
        )
    );
    let message = templates_condition(&c, "web-a", "True").await;
    assert!(message.contains(r#"app="shop""#), "{message}");

    // Each BlueGreen's release is checked with its own query.
    for bg in ["web-a", "web-b"] {
        c.set_image(bg, &format!("{bg}:2"), BTreeMap::new()).await;
    }
    c.wait_status("web-a promoted", "web-a", |s| {
        s.history.iter().any(|h| h.outcome == "promoted") && s.phase.as_deref() == Some("Healthy")
    })
    .await;
    let st = c
        .wait_status("web-b's check of cart", "web-b", |s| {
            s.analysis
                .as_ref()
                .is_some_and(|a| a.metrics.first().and_then(|m| m.value) == Some(4.0))
        })
        .await;
    assert_eq!(st.phase.as_deref(), Some("Previewing"));
    // The template changed while web-b's checks go on: the next check uses
    // it, and fails.
    support::kubectl_apply(
        &ns,
        &template(
            "error-rate",
            "MetricTemplate",
            &query.replace("max(", "10 * max("),
        ),
    );
    let st = c
        .wait_status("web-b fails naming metric and value", "web-b", |s| {
            s.history.last().is_some_and(|h| h.outcome != "promoted")
                && s.phase.as_deref() != Some("Previewing")
        })
        .await;
    assert!(
        st.history
            .last()
            .unwrap()
            .reason
            .contains("errors = 40 is above the maximum 5"),
        "{:?}",
        st.history.last()
    );

    // The ClusterMetricTemplate created: web-c's condition clears and its
    // release passes.
    support::kubectl_apply(
        &ns,
        &template(&cluster_name, "ClusterMetricTemplate", query),
    );
    templates_condition(&c, "web-c", "True").await;
    c.set_image("web-c", "web-c:2", BTreeMap::new()).await;
    c.wait_status("web-c promoted", "web-c", |s| {
        s.history.iter().any(|h| h.outcome == "promoted") && s.phase.as_deref() == Some("Healthy")
    })
    .await;
    teal_testenv::TestEnv::shared()
        .kubectl()
        .args(["delete", "clustermetrictemplate", &cluster_name])
        .output()
        .unwrap();
}

/// Waits until `bg`'s `MetricTemplates` condition has `status`; its message.
async fn templates_condition(c: &support::Case, bg: &str, status: &str) -> String {
    let st = c
        .wait_status(&format!("{bg}'s MetricTemplates={status}"), bg, |s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "MetricTemplates" && c.status == status)
        })
        .await;
    st.conditions
        .into_iter()
        .find(|c| c.type_ == "MetricTemplates")
        .map(|c| c.message)
        .unwrap_or_default()
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
    create_secret(
        &c,
        "prometheus",
        json!({
            "ca.crt": ca_pem,
            "password": teal_testenv::prometheus::PASSWORD,
            "tenant": "tenant-a"
        }),
    )
    .await;
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

    let st = good_release_to_green(&c).await;
    let a = st.analysis.expect("analysis recorded in status");
    assert_eq!(a.metrics[0].value, Some(0.0), "{a:?}");

    bad_release_to_blue(&c, "gate = 100").await;
}

/// Asserts that a Warning Event of `shop` names `named` (metric and value).
async fn warned(c: &support::Case, named: &str) {
    let evs = c.events("shop").await;
    assert!(
        evs.iter()
            .any(|(t, _, note)| t == "Warning" && note.contains(named)),
        "a Warning Event names the metric and value: {evs:#?}"
    );
}

/// Each metric's name and last value.
fn values(a: &teal_api::bluegreen::AnalysisStatus) -> Vec<(&str, Option<f64>)> {
    a.metrics
        .iter()
        .map(|m| (m.name.as_str(), m.value))
        .collect()
}

/// A JSON API of the test's own, as a web metric reads it: the error rate
/// of each color (set by the test), behind an API key.
#[derive(Clone, Default)]
struct JsonApi {
    /// color → errors percent.
    errors: Arc<Mutex<HashMap<String, f64>>>,
    /// Requests answered with a value, and refused for a wrong key.
    seen: Arc<Mutex<Vec<String>>>,
}

/// The key [`JsonApi`] wants in `X-Api-Key` (given to teal in a Secret).
const API_KEY: &str = "k3y-from-a-secret";

impl JsonApi {
    async fn start() -> (JsonApi, std::net::SocketAddr) {
        let api = JsonApi::default();
        let shared = api.clone();
        let addr = serve(move |head, body| {
            let (status, answer) = shared.answer(head, body);
            (status, "application/json", answer.to_string())
        })
        .await;
        (api, addr)
    }

    fn set(&self, color: &str, v: f64) {
        self.errors.lock().unwrap().insert(color.into(), v);
    }

    /// `POST /api/<namespace>/query` with `{"color": …}`: a Datadog-like
    /// series of the color. `GET /api/colors?app=shop`: every color's value.
    fn answer(&self, head: &http::request::Parts, body: &[u8]) -> (u16, serde_json::Value) {
        let key = head.headers.get("x-api-key").and_then(|v| v.to_str().ok());
        let line = format!("{} {}", head.method, head.uri);
        if key != Some(API_KEY) {
            self.seen.lock().unwrap().push(format!("refused {line}"));
            return (401, json!({"errors": ["Forbidden"]}));
        }
        self.seen.lock().unwrap().push(line);
        let errors = self.errors.lock().unwrap().clone();
        match (head.method.as_str(), head.uri.path()) {
            ("POST", p) if p.starts_with("/api/") && p.ends_with("/query") => {
                let q: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
                let color = q["color"].as_str().unwrap_or_default();
                let v = errors.get(color).copied();
                (
                    200,
                    json!({"status": "ok", "series": [{
                        "metric": "shop.errors",
                        "pointlist": [[1_700_000_000_000_u64, 0.0], [1_700_000_060_000_u64, v]]
                    }]}),
                )
            }
            ("GET", "/api/colors") if head.uri.query() == Some("app=shop") => {
                let colors: Vec<_> = errors
                    .iter()
                    .map(|(c, v)| json!({"color": c, "value": v.to_string()}))
                    .collect();
                (200, json!({"data": {"colors": colors}}))
            }
            ("GET", "/api/colors") => (200, json!({"data": {"colors": []}})),
            _ => (404, json!({"error": "no such endpoint"})),
        }
    }
}

/// `web` metrics against a JSON API of the test's own, its key from a
/// Secret: an inline POST (the color in the body, the namespace in the
/// URL, a Datadog-like series read by `$.series[0].pointlist[-1][1]`) and
/// a MetricTemplate's GET (an argument in the URL, the color in a JSONPath
/// filter, a numeric string). A good release passes and goes live; a bad
/// one fails before cutover naming the metric and its value.
#[tokio::test(flavor = "multi_thread")]
async fn web_metrics_read_a_json_api_with_a_key_from_a_secret() {
    let (api, addr) = JsonApi::start().await;
    api.set("blue", 0.0);
    api.set("green", 1.5);
    let mut c = case("analysis-web").await;
    let ns = c.ns.clone();
    create_secret(&c, "metrics-api", json!({"key": API_KEY})).await;
    let key = json!([{"name": "X-Api-Key", "secretRef": {"name": "metrics-api", "key": "key"}}]);
    support::kubectl_apply(
        &ns,
        &format!(
            "apiVersion: teal.dev/v1alpha1\nkind: MetricTemplate\nmetadata: {{name: color-errors}}\nspec:\n  args: [{{name: app}}]\n  web:\n    url: 'http://{addr}/api/colors?app={{{{args.app}}}}'\n    jsonPath: \"$.data.colors[?@.color == '{{{{color}}}}'].value\"\n    headers: [{{name: X-Api-Key, secretRef: {{name: metrics-api, key: key}}}}]\n"
        ),
    );
    c.adopted(shop_analysed(json!({
        "interval": "1s",
        "checks": 2,
        "inconclusiveLimit": 0,
        "metrics": [{
            "name": "errors",
            "web": {
                "url": format!("http://{addr}/api/{{{{namespace}}}}/query"),
                "method": "POST",
                "body": r#"{"query": "sum:shop.errors{*}", "color": "{{color}}"}"#,
                "jsonPath": "$.series[0].pointlist[-1][1]",
                "headers": key,
                "timeout": "5s"
            },
            "max": 5
        }, {
            "name": "errors-by-template",
            "templateRef": {"name": "color-errors", "args": {"app": "shop"}},
            "max": 5
        }]
    })))
    .await;
    let message = templates_condition(&c, "shop", "True").await;
    assert!(
        message.contains(&format!(
            "GET http://{addr}/api/colors?app=shop $.data.colors[?@.color == '{{{{color}}}}'].value"
        )),
        "{message}"
    );

    // A good release: green at 1.5% passes both metrics and goes live.
    let st = good_release_to_green(&c).await;
    let a = st.analysis.expect("analysis recorded in status");
    assert_eq!(a.verdict.as_deref(), Some("pass"), "{a:?}");
    assert_eq!(
        values(&a),
        [("errors", Some(1.5)), ("errors-by-template", Some(1.5))],
        "each read green's value: {a:?}"
    );
    let seen = api.seen.lock().unwrap().clone();
    assert!(
        seen.iter().any(|l| l == &format!("POST /api/{ns}/query")),
        "{seen:?}"
    );
    assert!(
        seen.iter().all(|l| !l.starts_with("refused")),
        "the key from the Secret was sent: {seen:?}"
    );

    // A bad release on blue: 40% errors fails before cutover.
    api.set("blue", 40.0);
    let st = bad_release_to_blue(&c, "errors = 40").await;
    let a = st.analysis.expect("analysis recorded in status");
    assert_eq!(
        values(&a),
        [("errors", Some(40.0)), ("errors-by-template", Some(40.0))],
        "{a:?}"
    );
    warned(&c, "errors = 40").await;
}
