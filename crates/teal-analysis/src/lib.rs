//! teal-analysis: measuring a release's analysis metrics, the same way in
//! local mode and in the Kubernetes controller.
//!
//! Every metric is measured by a [`MetricProvider`]: [`Builtin`] reads the
//! router's per-color counters of the check's window, [`Prometheus`] runs a
//! PromQL query, [`Web`] asks any JSON API and reads one number from the
//! answer by a JSONPath. A new provider (Datadog, CloudWatch…) is a new field of
//! `teal_api::MetricSpec`, an implementation of the trait and one arm in
//! [`provider_for`]; the callers (local mode's stage loop, the controller's
//! background checks) and the verdict logic (`teal_core::analysis`) stay
//! as they are.
//!
//! Nothing here knows a router or a cluster: the callers hand in the
//! window of counters they read ([`CheckContext`]).

#![forbid(unsafe_code)]

mod builtin;
mod http;
mod prometheus;
mod web;

use std::future::Future;
use std::pin::Pin;

use teal_api::hooks::SecretRef;
use teal_api::{BuiltinMetric, MetricSpec, PrometheusMetric, WebMetric};
use teal_core::analysis::Measurement;
use teal_core::{Color, ColorStats};

pub use builtin::{DEFAULT_MIN_REQUESTS, measure_builtin};
pub use http::{BODY_CAP, EXCERPT_CHARS, TIMEOUT};

/// Values substituted into Prometheus queries and web metrics' URLs and
/// bodies (`{{name}}`, `{{namespace}}`, `{{color}}`, `{{revision}}`,
/// `{{service}}`; `{{now}}` is the time of the check).
#[derive(Debug, Clone)]
pub struct QueryVars {
    pub name: String,
    pub namespace: String,
    pub color: Color,
    pub revision: String,
    pub service: String,
}

/// Where a provider reads the secrets a metric names (credentials, CA
/// certificates, header values): Kubernetes Secrets in the BlueGreen's
/// namespace, or in local mode environment variables and files.
pub trait Secrets: Send + Sync {
    /// The value `r` names; errors name `field` (never the value).
    fn get<'a>(&'a self, r: &'a SecretRef, field: &'a str) -> Reading<'a>;
}

/// A boxed future of a secret's value, so [`Secrets`] can be a trait object.
pub type Reading<'a> = Pin<Box<dyn Future<Output = Result<String, String>> + Send + 'a>>;

/// What a provider has at hand for one check.
pub struct CheckContext<'a> {
    pub vars: &'a QueryVars,
    /// Where the metric's secrets are read.
    pub secrets: &'a dyn Secrets,
    /// What the router counted for the analysed color since the previous
    /// check, or why that is not known (the router does not see the
    /// traffic, its counters could not be read).
    pub window: Result<&'a ColorStats, &'a str>,
}

/// A boxed future, so providers can be trait objects.
pub type Measuring<'a> = Pin<Box<dyn Future<Output = Measurement> + Send + 'a>>;

/// A source of metric values.
pub trait MetricProvider: Send + Sync {
    fn measure<'a>(&'a self, m: &'a MetricSpec, cx: &'a CheckContext<'a>) -> Measuring<'a>;
}

/// The router's per-color counters.
pub struct Builtin(pub BuiltinMetric);

impl MetricProvider for Builtin {
    fn measure<'a>(&'a self, m: &'a MetricSpec, cx: &'a CheckContext<'a>) -> Measuring<'a> {
        Box::pin(async move {
            match cx.window {
                Ok(w) => measure_builtin(m, self.0, w),
                Err(why) => no_value(m, why),
            }
        })
    }
}

/// A PromQL query through the Prometheus HTTP API.
pub struct Prometheus(pub PrometheusMetric);

impl MetricProvider for Prometheus {
    fn measure<'a>(&'a self, m: &'a MetricSpec, cx: &'a CheckContext<'a>) -> Measuring<'a> {
        Box::pin(prometheus::measure(m, &self.0, cx))
    }
}

/// An HTTP request to a JSON API, one number read by a JSONPath.
pub struct Web(pub WebMetric);

impl MetricProvider for Web {
    fn measure<'a>(&'a self, m: &'a MetricSpec, cx: &'a CheckContext<'a>) -> Measuring<'a> {
        Box::pin(web::measure(m, &self.0, cx))
    }
}

/// The provider a metric names (validation makes sure there is exactly one).
pub fn provider_for(m: &MetricSpec) -> Option<Box<dyn MetricProvider>> {
    if let Some(b) = m.builtin {
        return Some(Box::new(Builtin(b)));
    }
    if let Some(p) = &m.prometheus {
        return Some(Box::new(Prometheus(p.clone())));
    }
    m.web
        .clone()
        .map(|w| Box::new(Web(w)) as Box<dyn MetricProvider>)
}

/// Measures `m` with the provider it names. A `job` metric runs a
/// Kubernetes Job: the controller measures it with a provider of its own
/// (this crate knows no cluster), and here it is a provider error.
pub async fn measure(m: &MetricSpec, cx: &CheckContext<'_>) -> Measurement {
    match provider_for(m) {
        Some(p) => p.measure(m, cx).await,
        None if m.job.is_some() => provider_error(m, JOB_NEEDS_KUBERNETES),
        None => provider_error(m, "no provider"),
    }
}

/// Why a `job` metric has no value outside Kubernetes.
pub const JOB_NEEDS_KUBERNETES: &str = "job: runs only on Kubernetes (a Job needs a cluster)";

/// A measurement of `m` without a value for lack of data, and why.
pub fn no_value(m: &MetricSpec, note: impl Into<String>) -> Measurement {
    Measurement::of(m.name.clone(), m.min, m.max).no_data(note)
}

/// A measurement of `m` without a value because its provider failed, and
/// how (counted apart from failures: `consecutiveErrorLimit`).
pub fn provider_error(m: &MetricSpec, note: impl Into<String>) -> Measurement {
    Measurement::of(m.name.clone(), m.min, m.max).failed(note)
}

/// A measurement of `m` with a value.
fn value(m: &MetricSpec, v: f64) -> Measurement {
    Measurement::of(m.name.clone(), m.min, m.max).value(v)
}
