//! Invalid BlueGreens are refused by the real apiserver (schema and CEL
//! rules from the generated CRD), with messages naming the field.

mod support;

use serde_json::json;
use support::case;

fn base() -> serde_json::Value {
    json!({"workloadRef": {"kind": "Deployment", "name": "shop"}, "replicas": 3})
}

fn with(path: &[&str], value: serde_json::Value) -> serde_json::Value {
    let mut s = base();
    let mut cur = &mut s;
    for (i, key) in path.iter().enumerate() {
        if i == path.len() - 1 {
            cur[*key] = value.clone();
        } else {
            if cur.get(*key).is_none() {
                cur[*key] = json!({});
            }
            cur = &mut cur[*key];
        }
    }
    s
}

/// `spec.analysis.prePromotion` with one metric.
fn metric(m: serde_json::Value) -> serde_json::Value {
    with(
        &["analysis", "prePromotion"],
        json!({"interval": "10s", "metrics": [m]}),
    )
}

fn ok_metric() -> serde_json::Value {
    json!({"name": "success", "builtin": "successRate", "min": 99})
}

fn ports(p: serde_json::Value) -> serde_json::Value {
    with(&["service", "ports"], p)
}

/// The catalogue: what is wrong, the spec, and what the apiserver's answer
/// must contain (the field's path and the reason). docs/validation.md lists
/// every entry by its first column.
fn catalogue() -> Vec<(&'static str, serde_json::Value, Vec<&'static str>)> {
    let metric_without_query = json!({"prePromotion": {"metrics": [{"name": "m", "prometheus": {"address": "http://p:9090"}, "min": 1}]}});
    vec![
        (
            "no workloadRef",
            json!({"replicas": 3}),
            vec!["spec.workloadRef", "Required value"],
        ),
        (
            "workload kind other than Deployment",
            with(&["workloadRef", "kind"], json!("StatefulSet")),
            vec!["spec.workloadRef.kind", "Deployment"],
        ),
        (
            "empty workload name",
            with(&["workloadRef", "name"], json!("")),
            vec!["spec.workloadRef.name"],
        ),
        (
            "workload name not a DNS name",
            with(&["workloadRef", "name"], json!("Shop_1")),
            vec!["spec.workloadRef.name", "should match"],
        ),
        (
            "zero replicas",
            with(&["replicas"], json!(0)),
            vec!["spec.replicas", "greater than or equal to 1"],
        ),
        (
            "too many replicas",
            with(&["replicas"], json!(100000)),
            vec!["spec.replicas", "less than or equal to 10000"],
        ),
        (
            "replicas not a number",
            with(&["replicas"], json!("three")),
            vec!["spec.replicas", "integer"],
        ),
        (
            "bad scaleDownDelay",
            with(&["scaleDownDelay"], json!("5x")),
            vec!["spec.scaleDownDelay", "should match"],
        ),
        (
            "fractional scaleDownDelay",
            with(&["scaleDownDelay"], json!("1.5s")),
            vec!["spec.scaleDownDelay", "should match"],
        ),
        (
            "bad progressDeadline",
            with(&["progressDeadline"], json!("ten minutes")),
            vec!["spec.progressDeadline", "should match"],
        ),
        (
            "progressDeadline below 1s",
            with(&["progressDeadline"], json!("0s")),
            vec!["spec.progressDeadline", "must be at least 1s"],
        ),
        (
            "preview bigger than replicas",
            with(&["preview", "replicas"], json!(5)),
            vec!["spec.preview.replicas must not exceed spec.replicas"],
        ),
        (
            "zero preview replicas",
            with(&["preview", "replicas"], json!(0)),
            vec!["spec.preview.replicas", "greater than or equal to 1"],
        ),
        (
            "preview header name not a token",
            with(
                &["preview", "header"],
                json!({"name": "x version", "value": "green"}),
            ),
            vec!["spec.preview.header.name", "should match"],
        ),
        (
            "empty preview header value",
            with(
                &["preview", "header"],
                json!({"name": "x-version", "value": ""}),
            ),
            vec!["spec.preview.header.value"],
        ),
        (
            "preview header value with a newline",
            with(
                &["preview", "header"],
                json!({"name": "x-version", "value": "a\nb"}),
            ),
            vec!["spec.preview.header.value", "should match"],
        ),
        (
            "empty preview cookie value",
            with(
                &["preview", "cookie"],
                json!({"name": "canary", "value": ""}),
            ),
            vec!["spec.preview.cookie.value"],
        ),
        (
            "promotion mode",
            with(&["promotion", "mode"], json!("sometimes")),
            vec!["spec.promotion.mode", "auto", "manual"],
        ),
        (
            "autoPromoteAfter with auto",
            with(&["promotion", "autoPromoteAfter"], json!("5m")),
            vec!["autoPromoteAfter only applies with mode: manual"],
        ),
        (
            "bad autoPromoteAfter",
            with(
                &["promotion"],
                json!({"mode": "manual", "autoPromoteAfter": "soon"}),
            ),
            vec!["spec.promotion.autoPromoteAfter", "should match"],
        ),
        (
            "router type",
            with(&["router", "type"], json!("nginx")),
            vec!["spec.router.type"],
        ),
        (
            "analysis interval",
            with(
                &["analysis", "prePromotion"],
                json!({"interval": "soon", "metrics": [ok_metric()]}),
            ),
            vec!["spec.analysis.prePromotion.interval", "should match"],
        ),
        (
            "analysis interval below 100ms",
            with(
                &["analysis", "prePromotion"],
                json!({"interval": "50ms", "metrics": [ok_metric()]}),
            ),
            vec![
                "spec.analysis.prePromotion.interval",
                "must be at least 100ms",
            ],
        ),
        (
            "zero analysis checks",
            with(
                &["analysis", "postPromotion"],
                json!({"checks": 0, "metrics": [ok_metric()]}),
            ),
            vec![
                "spec.analysis.postPromotion.checks",
                "greater than or equal to 1",
            ],
        ),
        (
            "negative failureLimit",
            with(
                &["analysis", "prePromotion"],
                json!({"failureLimit": -1, "metrics": [ok_metric()]}),
            ),
            vec![
                "spec.analysis.prePromotion.failureLimit",
                "greater than or equal to 0",
            ],
        ),
        (
            "analysis stage without metrics",
            with(&["analysis", "prePromotion"], json!({"metrics": []})),
            vec!["spec.analysis.prePromotion.metrics", "at least 1"],
        ),
        (
            "duplicate metric names",
            with(
                &["analysis", "prePromotion"],
                json!({"metrics": [ok_metric(), ok_metric()]}),
            ),
            vec![
                "spec.analysis.prePromotion.metrics",
                "metric names must be unique",
            ],
        ),
        (
            "only dry-run metrics",
            metric(json!({"name": "m", "builtin": "successRate", "min": 99, "dryRun": true})),
            vec![
                "spec.analysis.prePromotion.metrics",
                "needs at least one metric without dryRun",
            ],
        ),
        (
            "negative consecutiveErrorLimit",
            with(
                &["analysis", "prePromotion"],
                json!({"consecutiveErrorLimit": -1, "metrics": [ok_metric()]}),
            ),
            vec![
                "spec.analysis.prePromotion.consecutiveErrorLimit",
                "greater than or equal to 0",
            ],
        ),
        (
            "empty metric name",
            metric(json!({"name": "", "builtin": "successRate", "min": 99})),
            vec!["spec.analysis.prePromotion.metrics[0].name"],
        ),
        (
            "metric with two providers",
            metric(
                json!({"name": "m", "builtin": "successRate", "prometheus": {"address": "http://p:9090", "query": "up"}, "min": 1}),
            ),
            vec![
                "spec.analysis.prePromotion.metrics[0]",
                "set exactly one provider",
            ],
        ),
        (
            "metric without a provider",
            metric(json!({"name": "m", "min": 1})),
            vec![
                "spec.analysis.prePromotion.metrics[0]",
                "set exactly one provider",
            ],
        ),
        (
            "metric without a range",
            metric(json!({"name": "m", "builtin": "latencyP99"})),
            vec![
                "spec.analysis.prePromotion.metrics[0]",
                "set min, max or both",
            ],
        ),
        (
            "metric min above max",
            metric(json!({"name": "m", "builtin": "latencyP99", "min": 5, "max": 1})),
            vec![
                "spec.analysis.prePromotion.metrics[0].min",
                "min must not be greater than max",
            ],
        ),
        (
            "job metric with min or max",
            metric(
                json!({"name": "m", "min": 1, "job": {"template": {"spec": {"containers": [{"name": "t", "image": "t"}]}}}}),
            ),
            vec![
                "spec.analysis.prePromotion.metrics[0].job",
                "a job metric is 1 when the Job succeeded and 0 when it failed (it passes at 1): leave out min and max",
            ],
        ),
        (
            "job metric without containers",
            metric(json!({"name": "m", "job": {"template": {"spec": {"containers": []}}}})),
            vec![
                "spec.analysis.prePromotion.metrics[0].job.template.spec.containers",
                "should have at least 1 items",
            ],
        ),
        (
            "job metric with restartPolicy Always",
            metric(
                json!({"name": "m", "job": {"template": {"spec": {"restartPolicy": "Always", "containers": [{"name": "t", "image": "t"}]}}}}),
            ),
            vec![
                "spec.analysis.prePromotion.metrics[0].job.template.spec.restartPolicy",
                "\"Never\", \"OnFailure\"",
            ],
        ),
        (
            "job metric with a deadline out of range",
            metric(
                json!({"name": "m", "job": {"activeDeadlineSeconds": 0, "backoffLimit": 11, "template": {"spec": {"containers": [{"name": "t", "image": "t"}]}}}}),
            ),
            vec![
                "spec.analysis.prePromotion.metrics[0].job.activeDeadlineSeconds",
                "activeDeadlineSeconds must be between 1 and 86400",
                "spec.analysis.prePromotion.metrics[0].job.backoffLimit",
                "backoffLimit must be between 0 and 10",
            ],
        ),
        (
            "unknown builtin metric",
            metric(json!({"name": "m", "builtin": "errorRate", "max": 1})),
            vec![
                "spec.analysis.prePromotion.metrics[0].builtin",
                "successRate",
            ],
        ),
        (
            "builtin metric with a router teal does not see",
            metric(ok_metric()),
            vec![
                "spec.analysis.prePromotion",
                "built-in metrics are measured by teal's router and need spec.router.type teal; with service, istio and gatewayAPI teal does not see the traffic",
            ],
        ),
        (
            "builtin metric after promotion with a router teal does not see",
            {
                let mut s = with(
                    &["analysis", "postPromotion"],
                    json!({"metrics": [ok_metric()]}),
                );
                s["router"] = json!({"type": "istio"});
                s
            },
            vec![
                "spec.analysis.postPromotion",
                "spec.analysis.postPromotion.metrics[].builtin: built-in metrics are measured by teal's router and need spec.router.type teal",
            ],
        ),
        (
            "negative minRequests",
            metric(json!({"name": "m", "builtin": "successRate", "min": 99, "minRequests": -5})),
            vec![
                "spec.analysis.prePromotion.metrics[0].minRequests",
                "greater than or equal to 0",
            ],
        ),
        (
            "prometheus query missing",
            with(&["analysis"], metric_without_query),
            vec![
                "spec.analysis.prePromotion.metrics[0].prometheus.query",
                "Required value",
            ],
        ),
        (
            "blank prometheus query",
            metric(
                json!({"name": "m", "prometheus": {"address": "http://p:9090", "query": "  "}, "min": 1}),
            ),
            vec![
                "spec.analysis.prePromotion.metrics[0].prometheus.query",
                "should match",
            ],
        ),
        (
            "prometheus address not a URL",
            metric(
                json!({"name": "m", "prometheus": {"address": "prometheus:9090", "query": "up"}, "min": 1}),
            ),
            vec![
                "spec.analysis.prePromotion.metrics[0].prometheus.address",
                "should match",
            ],
        ),
        (
            "prometheus tls on an http address",
            metric(
                json!({"name": "m", "prometheus": {"address": "http://p:9090", "query": "up", "tls": {"insecureSkipVerify": true}}, "min": 1}),
            ),
            vec![
                "spec.analysis.prePromotion.metrics[0].prometheus.tls",
                "tls only applies to an https:// address",
            ],
        ),
        (
            "prometheus CA bundle and insecureSkipVerify together",
            metric(
                json!({"name": "m", "prometheus": {"address": "https://p:9090", "query": "up", "tls": {"insecureSkipVerify": true, "caSecretRef": {"name": "ca", "key": "ca.crt"}}}, "min": 1}),
            ),
            vec![
                "spec.analysis.prePromotion.metrics[0].prometheus.tls",
                "set caSecretRef or insecureSkipVerify, not both",
            ],
        ),
        (
            "prometheus auth with bearer token and basic",
            metric(
                json!({"name": "m", "prometheus": {"address": "https://p:9090", "query": "up", "auth": {"bearerTokenSecretRef": {"name": "a", "key": "t"}, "basic": {"username": "u", "passwordSecretRef": {"name": "a", "key": "p"}}}}, "min": 1}),
            ),
            vec![
                "spec.analysis.prePromotion.metrics[0].prometheus.auth",
                "set exactly one of bearerTokenSecretRef and basic",
            ],
        ),
        (
            "prometheus secret without a key",
            metric(
                json!({"name": "m", "prometheus": {"address": "https://p:9090", "query": "up", "auth": {"bearerTokenSecretRef": {"name": "a"}}}, "min": 1}),
            ),
            vec![
                "spec.analysis.prePromotion.metrics[0].prometheus.auth.bearerTokenSecretRef",
                "needs name and key of a Secret",
            ],
        ),
        (
            "prometheus header teal sets",
            metric(
                json!({"name": "m", "prometheus": {"address": "https://p:9090", "query": "up", "headers": [{"name": "Authorization", "value": "x"}]}, "min": 1}),
            ),
            vec![
                "spec.analysis.prePromotion.metrics[0].prometheus.headers[0].name",
                "this header is set by teal",
            ],
        ),
        (
            "prometheus header without a value",
            metric(
                json!({"name": "m", "prometheus": {"address": "https://p:9090", "query": "up", "headers": [{"name": "X-Scope-OrgID"}]}, "min": 1}),
            ),
            vec![
                "spec.analysis.prePromotion.metrics[0].prometheus.headers[0]",
                "set exactly one of value and secretRef",
            ],
        ),
        (
            "prometheus timeout above 60s",
            metric(
                json!({"name": "m", "prometheus": {"address": "https://p:9090", "query": "up", "timeout": "2m"}, "min": 1}),
            ),
            vec![
                "spec.analysis.prePromotion.metrics[0].prometheus.timeout",
                "timeout must be between 100ms and 60s",
            ],
        ),
        (
            "web url not a URL",
            metric(
                json!({"name": "m", "web": {"url": "api.example.com/q", "jsonPath": "$.v"}, "max": 1}),
            ),
            vec![
                "spec.analysis.prePromotion.metrics[0].web.url",
                "should match",
            ],
        ),
        (
            "web jsonPath not a JSONPath",
            metric(
                json!({"name": "m", "web": {"url": "https://api.example.com/q", "jsonPath": "data.value"}, "max": 1}),
            ),
            vec![
                "spec.analysis.prePromotion.metrics[0].web.jsonPath",
                "should match",
            ],
        ),
        (
            "web body with GET",
            metric(
                json!({"name": "m", "web": {"url": "https://api.example.com/q", "body": "{}", "jsonPath": "$.v"}, "max": 1}),
            ),
            vec![
                "spec.analysis.prePromotion.metrics[0].web.body",
                "body is sent with method POST only",
            ],
        ),
        (
            "web method other than GET and POST",
            metric(
                json!({"name": "m", "web": {"url": "https://api.example.com/q", "method": "PUT", "jsonPath": "$.v"}, "max": 1}),
            ),
            vec![
                "spec.analysis.prePromotion.metrics[0].web.method",
                "Unsupported value",
            ],
        ),
        (
            "web tls on an http url",
            metric(
                json!({"name": "m", "web": {"url": "http://api.example.com/q", "jsonPath": "$.v", "tls": {"insecureSkipVerify": true}}, "max": 1}),
            ),
            vec![
                "spec.analysis.prePromotion.metrics[0].web.tls",
                "tls only applies to an https:// url",
            ],
        ),
        (
            "web header without a value",
            metric(
                json!({"name": "m", "web": {"url": "https://api.example.com/q", "jsonPath": "$.v", "headers": [{"name": "DD-API-KEY"}]}, "max": 1}),
            ),
            vec![
                "spec.analysis.prePromotion.metrics[0].web.headers[0]",
                "set exactly one of value and secretRef",
            ],
        ),
        (
            "web timeout above 60s",
            metric(
                json!({"name": "m", "web": {"url": "https://api.example.com/q", "jsonPath": "$.v", "timeout": "90s"}, "max": 1}),
            ),
            vec![
                "spec.analysis.prePromotion.metrics[0].web.timeout",
                "timeout must be between 100ms and 60s",
            ],
        ),
        (
            "service name too long",
            with(&["service", "name"], json!("x".repeat(60))),
            vec!["spec.service.name", "more than 55"],
        ),
        (
            "service name not a DNS label",
            with(&["service", "name"], json!("Shop.v2")),
            vec!["spec.service.name", "should match"],
        ),
        (
            "empty service ports",
            ports(json!([])),
            vec!["spec.service.ports", "at least 1"],
        ),
        (
            "service port 0",
            ports(json!([{"name": "http", "port": 0}])),
            vec![
                "spec.service.ports",
                "every port must be between 1 and 65535",
            ],
        ),
        (
            "service port above 65535",
            ports(json!([{"name": "http", "port": 70000}])),
            vec![
                "spec.service.ports",
                "every port must be between 1 and 65535",
            ],
        ),
        (
            "duplicate service ports",
            ports(json!([{"name": "a", "port": 80}, {"name": "b", "port": 80}])),
            vec!["spec.service.ports", "port numbers must be unique"],
        ),
        (
            "several service ports without names",
            ports(json!([{"port": 80}, {"port": 81}])),
            vec![
                "spec.service.ports",
                "with several ports every port needs a name",
            ],
        ),
    ]
}

#[tokio::test]
async fn invalid_specs_are_rejected_naming_the_field() {
    let c = case("invalid").await;
    let cases = catalogue();
    assert!(cases.len() >= 30, "{} cases", cases.len());
    let mut failures = Vec::new();
    for (i, (what, spec, wants)) in cases.into_iter().enumerate() {
        match c.create_raw(&format!("bad-{i}"), spec).await {
            Ok(()) => failures.push(format!("{what}: the apiserver accepted it")),
            Err(err) => {
                let text = err.to_string();
                for want in wants {
                    if !text.contains(want) {
                        failures.push(format!("{what}: expected {want:?} in {text}"));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Valid specs using every constrained field are accepted (so the cases
    // above fail for their reason, not because of a typo elsewhere).
    c.create_raw("good", base())
        .await
        .expect("the valid spec is accepted");
    let full = json!({
        "workloadRef": {"kind": "Deployment", "name": "shop.web"},
        "replicas": 3,
        "service": {"name": "shop-live", "ports": [{"name": "http", "port": 80, "targetPort": "http"}, {"name": "admin", "port": 9000}]},
        "preview": {"replicas": 1, "header": {"name": "X-Teal-Preview", "value": "yes please"}, "cookie": {"name": "canary", "value": "1"}},
        "promotion": {"mode": "manual", "autoPromoteAfter": "1h30m"},
        "router": {"type": "teal"},
        "analysis": {
            "prePromotion": {"interval": "100ms", "initialDelay": "30s", "checks": 3, "failureLimit": 1, "consecutiveErrorLimit": 2, "metrics": [
                ok_metric(),
                {"name": "p99", "builtin": "latencyP99", "max": 250, "dryRun": true},
                {"name": "errors", "prometheus": {"address": "https://prom.example:9090/base", "query": "sum(rate(x{color=\"{{color}}\"}[1m]))"}, "min": 0, "max": 0.01},
                {"name": "web", "web": {"url": "https://api.example.com/v1/{{namespace}}?from={{now-5m}}", "method": "POST", "body": "{\"color\": \"{{color}}\"}", "jsonPath": "$.data.result[0].value", "headers": [{"name": "X-Api-Key", "secretRef": {"name": "api", "key": "key"}}, {"name": "Accept", "value": "application/json"}], "tls": {"caSecretRef": {"name": "ca", "key": "ca.crt"}}, "auth": {"basic": {"username": "u", "passwordSecretRef": {"name": "api", "key": "pw"}}}, "timeout": "30s"}, "max": 1},
                {"name": "smoke", "job": {"activeDeadlineSeconds": 300, "backoffLimit": 1, "template": {"metadata": {"labels": {"team": "shop"}}, "spec": {"restartPolicy": "OnFailure", "containers": [{"name": "t", "image": "t", "args": ["run"]}]}}}}
            ]},
            "postPromotion": {"metrics": [ok_metric()]}
        },
        "scaleDownDelay": "0s",
        "progressDeadline": "1s"
    });
    c.create_raw("full", full)
        .await
        .expect("a valid spec using every field is accepted");
}

#[test]
fn docs_list_every_catalogue_entry() {
    let doc = include_str!("../../../docs/validation.md");
    let missing: Vec<_> = catalogue()
        .into_iter()
        .map(|(what, _, _)| what)
        .filter(|what| !doc.contains(&format!("| {what} |")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/validation.md lacks rows for {missing:?}"
    );
}

/// What the schema cannot know (other objects in the cluster) is reported
/// by the controller in status, naming the field to change.
#[tokio::test]
async fn the_controller_reports_what_the_schema_cannot_check() {
    let mut c = case("semantic").await;
    c.start_controller();
    // The workload does not exist.
    c.create_bluegreen("ghost", base()).await.unwrap();
    let st = c
        .wait_status("the missing workload is reported", "ghost", |s| {
            s.message
                .as_deref()
                .is_some_and(|m| m.contains("spec.workloadRef"))
        })
        .await;
    let ready = st.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "WorkloadNotFound")
    );
    // The Service name is taken by a Service teal does not manage.
    c.create_workload("web", "web:1", 1, Default::default())
        .await;
    let svc: k8s_openapi::api::core::v1::Service = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}
    }))
    .unwrap();
    c.services()
        .create(&Default::default(), &svc)
        .await
        .unwrap();
    c.create_bluegreen(
        "web",
        json!({"workloadRef": {"kind": "Deployment", "name": "web"}}),
    )
    .await
    .unwrap();
    let st = c
        .wait_status("the Service conflict is reported", "web", |s| {
            s.message
                .as_deref()
                .is_some_and(|m| m.contains("spec.service.name"))
        })
        .await;
    let ready = st.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!(ready.reason, "ServiceConflict");
    // The Service keeps its own selector: teal did not take it over.
    let svc = c.services().get("web").await.unwrap();
    assert_eq!(
        svc.spec
            .unwrap()
            .selector
            .unwrap()
            .get("app")
            .map(String::as_str),
        Some("web")
    );
}

#[tokio::test]
async fn workload_ref_is_immutable() {
    let c = case("immutable").await;
    c.create_bluegreen("shop", base()).await.unwrap();
    let patch = json!({"spec": {"workloadRef": {"kind": "Deployment", "name": "other"}}});
    let err = c
        .bluegreens()
        .patch("shop", &Default::default(), &kube::api::Patch::Merge(patch))
        .await
        .expect_err("changing workloadRef must be refused");
    assert!(
        err.to_string().contains("spec.workloadRef is immutable"),
        "{err}"
    );
}

#[tokio::test]
async fn kubectl_refuses_unknown_fields() {
    let c = case("strict").await;
    let env = teal_testenv::TestEnv::shared();
    let dir = std::env::temp_dir().join(format!("teal-strict-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bg.yaml");
    std::fs::write(
        &file,
        "apiVersion: teal.dev/v1alpha1\nkind: BlueGreen\nmetadata: {name: shop}\nspec:\n  workloadRef: {kind: Deployment, name: shop}\n  scaleDownDelai: 30s\n",
    )
    .unwrap();
    let out = env
        .kubectl()
        .args(["apply", "-n", &c.ns, "-f"])
        .arg(&file)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("scaleDownDelai"), "{stderr}");
}
