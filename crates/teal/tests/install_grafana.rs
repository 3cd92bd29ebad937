//! deploy/grafana/teal.json: valid JSON; every metric its queries name is
//! one that the real controller (after a release) or the real router (local
//! mode under traffic) exposes on /metrics; and every query, evaluated by a
//! real Prometheus scraping both, is accepted — the main ones with data.

mod browser_support;
mod k8s_support;
mod local_support;

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Stdio};
use std::time::Duration;

use browser_support::http_get;
use k8s_support::{
    apply_deploy_files, deploy_path, kubectl, release_image, workload_and_bluegreen,
};
use local_support::{get, healthy_daemon};
use serde_json::Value;
use teal_testenv::wait_for;

/// Every PromQL expression of the dashboard (panels, annotations) and the
/// Grafana variable queries, which name metrics but are not PromQL.
fn expressions(dash: &Value) -> (Vec<String>, Vec<String>) {
    let mut promql = Vec::new();
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(o) => {
                if let Some(Value::String(e)) = o.get("expr") {
                    out.push(e.clone());
                }
                o.values().for_each(|v| walk(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    walk(&dash["panels"], &mut promql);
    walk(&dash["annotations"], &mut promql);
    let variables = dash["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["definition"].as_str().map(str::to_string))
        .collect();
    (promql, variables)
}

/// The `teal_*` metric names in an expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("teal_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

/// Metric names in a Prometheus text exposition, histogram and counter
/// suffixes included.
fn exposed(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split_whitespace();
            let (name, kind) = (it.next().unwrap(), it.next().unwrap_or(""));
            let suffixes: &[&str] = match kind {
                "histogram" => &["_bucket", "_sum", "_count"],
                "counter" if !name.ends_with("_total") => &["_total"],
                _ => &[""],
            };
            names.extend(suffixes.iter().map(|s| format!("{name}{s}")));
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_string());
        }
    }
    names
}

/// What Grafana substitutes before sending a query.
fn as_grafana_sends(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$__range", "5m")
        .replace("$router_job", ".*")
        .replace("$controller_job", ".*")
}

#[tokio::test]
async fn every_query_names_exposed_metrics_and_prometheus_accepts_it() {
    let text = std::fs::read_to_string(deploy_path("grafana/teal.json")).unwrap();
    let dash: Value = serde_json::from_str(&text).expect("deploy/grafana/teal.json is not JSON");
    let (promql, variables) = expressions(&dash);
    assert!(promql.len() >= 20, "{} queries", promql.len());
    // The requests and 5xx panels draw production and preview apart.
    for title in [
        "Requests per second by color",
        "Server errors (5xx) per second by color",
    ] {
        let panel = dash["panels"]
            .as_array()
            .and_then(|p| p.iter().find(|p| p["title"] == title))
            .unwrap_or_else(|| panic!("no panel {title:?}"));
        let legends: Vec<&str> = panel["targets"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|t| t["legendFormat"].as_str())
            .collect();
        assert!(
            legends.contains(&"{{color}} production") && legends.contains(&"{{color}} preview"),
            "{title}: {legends:?}"
        );
    }

    // The controller after one release.
    let env = teal_testenv::TestEnv::shared();
    apply_deploy_files(env, &["crd.yaml"]);
    let ns = env.namespace("grafana").await;
    kubectl(
        env,
        &["apply", "-n", &ns, "-f", "-"],
        Some(&workload_and_bluegreen("shop", "  scaleDownDelay: 1s\n")),
    );
    let controller_addr: SocketAddr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut controller = Command::new(env!("CARGO_BIN_EXE_teal"))
        .args(["controller", "--no-leader-election", "--namespace", &ns])
        .args(["--metrics-addr", &controller_addr.to_string()])
        .env("KUBECONFIG", env.kubeconfig_path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    release_image(&env.client(), &ns, "shop", "shop:2").await;

    // The router of local mode, with traffic.
    let setup = healthy_daemon("grafana", "");
    let router_addr: SocketAddr = setup.daemon.status()["admin"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    for _ in 0..20 {
        get(setup.port, &[]).expect("a request through the router");
    }

    let mut names = exposed(&http_get(controller_addr, "/metrics", "127.0.0.1").1);
    names.extend(exposed(&http_get(router_addr, "/metrics", "127.0.0.1").1));
    for expr in promql.iter().chain(&variables) {
        let used = metric_names(expr);
        assert!(!used.is_empty(), "a query names no teal metric: {expr}");
        for name in used {
            assert!(
                names.contains(&name),
                "{name} (in `{expr}`) is not exposed by the controller or the router"
            );
        }
    }

    let prom = teal_testenv::prometheus::start(&format!(
        "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nscrape_configs:\n  - job_name: teal-controller\n    static_configs: [{{targets: ['{controller_addr}']}}]\n  - job_name: teal-router\n    static_configs: [{{targets: ['{router_addr}']}}]\n"
    ))
    .await
    .unwrap();
    // Keep traffic flowing until Prometheus sees a rate for it.
    let by_color = as_grafana_sends(&promql[4]);
    assert!(
        by_color.contains("teal_router_requests_total"),
        "{by_color}"
    );
    wait_for(
        "a request rate per color",
        Duration::from_secs(60),
        || async {
            let _ = get(setup.port, &[]);
            let v = prom.query(&by_color).await.map_err(|e| e.to_string())?;
            if v.iter().any(|s| s.value > 0.0) {
                Ok(())
            } else {
                Err(format!("{v:?}"))
            }
        },
    )
    .await;
    for expr in &promql {
        let q = as_grafana_sends(expr);
        if let Err(e) = prom.query(&q).await {
            panic!("Prometheus rejects `{q}`: {e}");
        }
    }
    // increase() needs two samples of the controller's series; the router's
    // rate above can show up first, so wait for those too.
    let events_q = as_grafana_sends(
        promql
            .iter()
            .find(|e| e.starts_with("sum by (event) (increase("))
            .unwrap(),
    );
    wait_for("release events", Duration::from_secs(60), || async {
        let v = prom.query(&events_q).await.map_err(|e| e.to_string())?;
        if v.iter().any(|s| s.metric.contains_key("event")) {
            Ok(())
        } else {
            Err(format!("release events have no data: {v:?}"))
        }
    })
    .await;
    let _ = controller.kill();
    let _ = controller.wait();
}
