//! Measuring analysis metrics: built-in ones from the router's per-color
//! counters, Prometheus ones through its HTTP API.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use teal_api::hooks::{WebhookSpec, WebhookType};
use teal_api::{AnalysisStageSpec, BuiltinMetric, MetricSpec, PrometheusMetric};
use teal_core::analysis::{Measurement, Run};
use teal_core::release::{Stage, Verdict};
use teal_core::{Color, ColorStats};
use teal_router::Router;
use tokio::sync::mpsc;

/// Default minimum of requests a built-in metric needs in one window.
pub const DEFAULT_MIN_REQUESTS: u64 = 10;

/// Values substituted into Prometheus queries.
#[derive(Debug, Clone)]
pub struct QueryVars {
    pub name: String,
    pub namespace: String,
    pub color: Color,
    pub revision: String,
    pub service: String,
}

/// What a provider has at hand for one check.
pub struct CheckContext<'a> {
    pub vars: &'a QueryVars,
    /// The router's counters of the analysed color since the last check.
    pub window: &'a ColorStats,
}

/// A boxed future, so providers can be trait objects.
pub type Measuring<'a> = Pin<Box<dyn Future<Output = Measurement> + Send + 'a>>;

/// A source of metric values. A new provider (Datadog, CloudWatch…) is a
/// new spec field, an implementation of this trait and one arm in
/// [`provider_for`]; the stage loop and the verdict logic stay as they are.
pub trait MetricProvider: Send + Sync {
    fn measure<'a>(&'a self, m: &'a MetricSpec, cx: &'a CheckContext<'a>) -> Measuring<'a>;
}

/// teal-router's per-color counters.
pub struct Builtin(pub BuiltinMetric);

impl MetricProvider for Builtin {
    fn measure<'a>(&'a self, m: &'a MetricSpec, cx: &'a CheckContext<'a>) -> Measuring<'a> {
        Box::pin(async move { measure_builtin(m, self.0, cx.window) })
    }
}

/// A PromQL query through the Prometheus HTTP API.
pub struct Prometheus(pub PrometheusMetric);

impl MetricProvider for Prometheus {
    fn measure<'a>(&'a self, m: &'a MetricSpec, cx: &'a CheckContext<'a>) -> Measuring<'a> {
        Box::pin(measure_prometheus(m, &self.0, cx.vars))
    }
}

/// The provider a metric names (validation makes sure there is exactly one).
pub fn provider_for(m: &MetricSpec) -> Option<Box<dyn MetricProvider>> {
    match (&m.builtin, &m.prometheus) {
        (Some(b), _) => Some(Box::new(Builtin(*b))),
        (None, Some(p)) => Some(Box::new(Prometheus(p.clone()))),
        (None, None) => None,
    }
}

/// Rollout and rollback webhooks called with every check.
#[derive(Debug, Clone, Default)]
pub struct StageHooks {
    pub hooks: Vec<WebhookSpec>,
    pub payload: Option<teal_notify::HookPayload>,
}

impl StageHooks {
    async fn call(&self) -> Vec<teal_core::hooks::HookResult> {
        let Some(p) = &self.payload else {
            return Vec::new();
        };
        let mut out = teal_notify::webhook::call_all(&self.hooks, WebhookType::Rollout, p).await;
        out.extend(teal_notify::webhook::call_all(&self.hooks, WebhookType::Rollback, p).await);
        out
    }
}

/// Progress and end of one analysis stage, as sent to the engine.
#[derive(Debug, Clone)]
pub struct Report {
    pub stage: Stage,
    pub revision: String,
    pub run: Run,
    pub verdict: Option<Verdict>,
}

/// Measures one built-in metric over a window of counters.
pub fn measure_builtin(m: &MetricSpec, which: BuiltinMetric, window: &ColorStats) -> Measurement {
    let min_requests = m.min_requests.unwrap_or(DEFAULT_MIN_REQUESTS);
    let requests = window.requests();
    let none = Measurement::of(m.name.clone(), m.min, m.max);
    if requests < min_requests {
        return none.no_data(format!(
            "{requests} requests in the window, fewer than minRequests ({min_requests})"
        ));
    }
    let v = match which {
        BuiltinMetric::SuccessRate => window.success_rate_percent(),
        BuiltinMetric::LatencyP50 => window.latency_quantile_ms(0.5),
        BuiltinMetric::LatencyP90 => window.latency_quantile_ms(0.9),
        BuiltinMetric::LatencyP99 => window.latency_quantile_ms(0.99),
    };
    Measurement { value: v, ..none }
}

/// Runs a PromQL query and reads one number from its answer.
pub async fn measure_prometheus(
    m: &MetricSpec,
    p: &PrometheusMetric,
    vars: &QueryVars,
) -> Measurement {
    let query = p
        .query
        .replace("{{name}}", &vars.name)
        .replace("{{namespace}}", &vars.namespace)
        .replace("{{color}}", vars.color.as_str())
        .replace("{{revision}}", &vars.revision)
        .replace("{{service}}", &vars.service);
    let none = Measurement::of(m.name.clone(), m.min, m.max);
    match prometheus_query(&p.address, &query).await {
        Ok(Some(v)) => none.value(v),
        Ok(None) => none.no_data("the query returned no samples"),
        Err(e) => none.failed(format!("prometheus query failed: {e}")),
    }
}

/// `GET /api/v1/query`; the first sample of a vector or the scalar.
pub async fn prometheus_query(address: &str, query: &str) -> Result<Option<f64>, String> {
    let url = format!(
        "{}/api/v1/query?query={}",
        address.trim_end_matches('/'),
        percent_encode(query)
    );
    let body = crate::http::get(&url, None, Duration::from_secs(10)).await?;
    let v: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| format!("answer is not JSON: {e}"))?;
    if v["status"] != "success" {
        return Err(format!(
            "prometheus answered {}",
            v["error"].as_str().unwrap_or("an error")
        ));
    }
    let data = &v["data"];
    let sample = match data["resultType"].as_str() {
        Some("vector") => data["result"].get(0).map(|r| r["value"][1].clone()),
        Some("scalar") => Some(data["result"][1].clone()),
        other => {
            return Err(format!(
                "unsupported result type {other:?}: the query must return one number"
            ));
        }
    };
    match sample {
        None => Ok(None),
        Some(s) => {
            let s = s.as_str().ok_or("sample value is not a string")?;
            s.parse::<f64>()
                .map(Some)
                .map_err(|e| format!("sample {s:?}: {e}"))
        }
    }
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Runs one analysis stage on `color` until it has a verdict, sending a
/// report after every check.
pub async fn run_stage(
    router: Router,
    spec: AnalysisStageSpec,
    stage: Stage,
    vars: QueryVars,
    hooks: StageHooks,
    reports: mpsc::UnboundedSender<Report>,
) {
    let providers: Vec<Option<Box<dyn MetricProvider>>> =
        spec.metrics.iter().map(provider_for).collect();
    let mut run = Run::new(spec.limits());
    let mut prev = router.stats(vars.color);
    let mut ticker = tokio::time::interval(spec.interval.std());
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    if let Some(delay) = spec.initial_delay {
        tokio::time::sleep(delay.std()).await;
        ticker.reset();
        prev = router.stats(vars.color);
    }
    loop {
        ticker.tick().await;
        let now = router.stats(vars.color);
        let window = now.since(&prev);
        prev = now;
        let cx = CheckContext {
            vars: &vars,
            window: &window,
        };
        let mut ms = Vec::with_capacity(spec.metrics.len());
        for (m, p) in spec.metrics.iter().zip(&providers) {
            ms.push(match p {
                Some(p) => p.measure(m, &cx).await,
                None => Measurement::of(m.name.clone(), m.min, m.max).failed("no provider"),
            });
        }
        spec.mark_dry_run(&mut ms);
        let results = hooks.call().await;
        let verdict = run.record_checks(ms, results);
        let done = verdict.is_some();
        let _ = reports.send(Report {
            stage,
            revision: vars.revision.clone(),
            run: run.clone(),
            verdict,
        });
        if done {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metric(b: BuiltinMetric, min: Option<f64>, max: Option<f64>) -> MetricSpec {
        MetricSpec {
            name: "m".into(),
            builtin: Some(b),
            prometheus: None,
            template_ref: None,
            min,
            max,
            min_requests: Some(5),
            dry_run: false,
        }
    }

    #[test]
    fn too_few_requests_is_no_data() {
        let mut w = ColorStats::empty();
        w.record(200, 0.001);
        let m = measure_builtin(
            &metric(BuiltinMetric::SuccessRate, Some(99.0), None),
            BuiltinMetric::SuccessRate,
            &w,
        );
        assert_eq!(m.value, None);
        assert!(m.note.unwrap().contains("fewer than minRequests (5)"));
    }

    #[test]
    fn success_rate_over_the_window() {
        let mut w = ColorStats::empty();
        for i in 0..10 {
            w.record(if i < 3 { 500 } else { 200 }, 0.001);
        }
        let m = measure_builtin(
            &metric(BuiltinMetric::SuccessRate, Some(99.0), None),
            BuiltinMetric::SuccessRate,
            &w,
        );
        assert_eq!(m.value, Some(70.0));
    }

    #[test]
    fn query_is_encoded() {
        assert_eq!(
            percent_encode("sum(rate(x{a=\"b\"}[1m]))"),
            "sum%28rate%28x%7Ba%3D%22b%22%7D%5B1m%5D%29%29"
        );
    }
}
