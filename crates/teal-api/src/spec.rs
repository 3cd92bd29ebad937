//! Spec types shared by the Kubernetes `BlueGreen` resource and local mode:
//! preview, promotion and analysis. Field names are camelCase in YAML.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::Duration;
use crate::hooks::{SecretRef, SecretSource};

/// A spec field that is wrong, and what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// Path of the field, e.g. `analysis.prePromotion.metrics[0].min`.
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> FieldError {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// How the idle color is reached before it is promoted.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(
    validation = Rule::new("!has(self.headerValueFrom) || has(self.header)").message("spec.preview.headerValueFrom needs spec.preview.header.name: the header whose value the Secret holds").field_path(".headerValueFrom"),
    validation = Rule::new("!has(self.header) || (has(self.header.value) != has(self.headerValueFrom))").message("set exactly one of spec.preview.header.value (a literal value) or spec.preview.headerValueFrom (the value from a Secret)").field_path(".header"),
    validation = Rule::new("!has(self.cookie) || has(self.cookie.value)").message("spec.preview.cookie needs a value").field_path(".cookie")
)]
pub struct PreviewSpec {
    /// Requests carrying this header (exact name and value) go to the idle color.
    /// Leave `value` out to take it from `headerValueFrom`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<MatchSpec>,
    /// The preview header's value from a Secret, so that it cannot be
    /// guessed from the BlueGreen. Kubernetes only; mutually exclusive with
    /// `header.value`. The value never appears in status or Events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_value_from: Option<ValueFrom>,
    /// Requests carrying this cookie (exact name and value) go to the idle color.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<MatchSpec>,
    /// Replicas of the idle color while previewed; scaled to full size
    /// before cutover. Default: full size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub replicas: Option<u32>,
}

/// An exact name/value match.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MatchSpec {
    /// An HTTP token: letters, digits and !#$%&'*+-.^_`|~.
    #[schemars(length(min = 1, max = 256), pattern(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$"))]
    pub name: String,
    /// Non-empty, without control characters.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(min = 1, max = 4096), pattern(r"^[^\x00-\x1f\x7f]+$"))]
    pub value: String,
}

/// Where a value comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ValueFrom {
    /// A key of a Secret in the BlueGreen's namespace.
    pub secret_key_ref: SecretKeyRef,
}

/// A key of a Secret in the BlueGreen's namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretKeyRef {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key in the Secret's data.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

impl PreviewSpec {
    pub fn validate(&self, path: &str, replicas: u32, errors: &mut Vec<FieldError>) {
        if let Some(h) = &self.header {
            if !is_token(&h.name) {
                errors.push(FieldError::new(
                    format!("{path}.header.name"),
                    format!("{:?} is not a valid HTTP header name (letters, digits and !#$%&'*+-.^_`|~ only)", h.name),
                ));
            }
            if (h.value.is_empty() && self.header_value_from.is_none())
                || h.value.chars().any(|c| c.is_control())
            {
                errors.push(FieldError::new(
                    format!("{path}.header.value"),
                    "must be a non-empty value without control characters",
                ));
            }
        }
        if let Some(c) = &self.cookie
            && (!is_token(&c.name) || c.value.is_empty())
        {
            errors.push(FieldError::new(
                format!("{path}.cookie"),
                "needs a valid cookie name and a non-empty value",
            ));
        }
        if let Some(r) = self.replicas
            && (r == 0 || r > replicas)
        {
            errors.push(FieldError::new(
                format!("{path}.replicas"),
                format!("must be between 1 and replicas ({replicas}), got {r}"),
            ));
        }
    }
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// When a previewed color goes live.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PromotionSpec {
    #[serde(default)]
    pub mode: PromotionMode,
    /// With `manual`: promote anyway after this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_promote_after: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum PromotionMode {
    /// Promote as soon as pre-promotion analysis passes.
    #[default]
    Auto,
    /// Wait for `promote`.
    Manual,
}

impl PromotionSpec {
    pub fn to_core(&self) -> teal_core::release::Promotion {
        match self.mode {
            PromotionMode::Auto => teal_core::release::Promotion::Auto,
            PromotionMode::Manual => teal_core::release::Promotion::Manual {
                auto_promote_after_ms: self.auto_promote_after.map(Duration::as_millis),
            },
        }
    }

    pub fn validate(&self, path: &str, errors: &mut Vec<FieldError>) {
        if self.auto_promote_after.is_some() && self.mode == PromotionMode::Auto {
            errors.push(FieldError::new(
                format!("{path}.autoPromoteAfter"),
                "only applies with mode: manual (auto promotes at once)",
            ));
        }
    }
}

/// Checks before and after cutover.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AnalysisSpec {
    /// Runs on the idle color through preview traffic, before cutover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_promotion: Option<AnalysisStageSpec>,
    /// Runs on the new live color before the previous one is scaled down;
    /// failure switches back at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_promotion: Option<AnalysisStageSpec>,
}

/// One analysis stage: `checks` checks, one every `interval`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AnalysisStageSpec {
    #[serde(default = "default_interval")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('100ms')").message("must be at least 100ms"))]
    pub interval: Duration,
    #[serde(default = "default_checks")]
    #[schemars(range(min = 1, max = 10000))]
    pub checks: u32,
    /// Failed checks tolerated before the stage fails.
    #[serde(default)]
    pub failure_limit: u32,
    /// Checks without data tolerated before the stage is inconclusive
    /// (which waits for an operator; it never passes by itself).
    #[serde(default = "default_inconclusive_limit")]
    pub inconclusive_limit: u32,
    /// Checks in a row with a provider error (the query could not be made
    /// or answered) tolerated before the stage fails. Such checks count
    /// neither as failed nor as without data. Default 4.
    #[serde(default = "default_consecutive_error_limit")]
    pub consecutive_error_limit: u32,
    /// Time to wait before checks start: the first check runs
    /// `initialDelay` + `interval` after the stage began (for metrics that
    /// need the new color's traffic to build up). Default 0s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_delay: Option<Duration>,
    #[schemars(length(min = 1, max = 32))]
    #[x_kube(validation = Rule::new("self.all(m, self.exists_one(n, n.name == m.name))").message("metric names must be unique"))]
    #[x_kube(validation = Rule::new("self.exists(m, !has(m.dryRun) || !m.dryRun)").message("needs at least one metric without dryRun: dry-run metrics decide nothing"))]
    pub metrics: Vec<MetricSpec>,
}

fn default_interval() -> Duration {
    Duration::from_secs(10)
}
fn default_checks() -> u32 {
    5
}
fn default_inconclusive_limit() -> u32 {
    1
}
fn default_consecutive_error_limit() -> u32 {
    teal_core::analysis::DEFAULT_CONSECUTIVE_ERROR_LIMIT
}

/// A metric and its allowed range. Exactly one provider is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(
    validation = Rule::new("[has(self.builtin), has(self.prometheus), has(self.web), has(self.job), has(self.templateRef)].filter(p, p).size() == 1").message("set exactly one provider: builtin (successRate, latencyP50, latencyP90, latencyP99), prometheus, web, job or templateRef"),
    validation = Rule::new("has(self.job) || has(self.min) || has(self.max)").message("set min, max or both: a metric without a range checks nothing"),
    validation = Rule::new("!has(self.job) || !(has(self.min) || has(self.max))").message("a job metric is 1 when the Job succeeded and 0 when it failed (it passes at 1): leave out min and max").field_path(".job"),
    validation = Rule::new("!has(self.min) || !has(self.max) || self.min <= self.max").message("min must not be greater than max").field_path(".min")
)]
pub struct MetricSpec {
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// Measured by teal's router, per color: no Prometheus needed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub builtin: Option<BuiltinMetric>,
    /// A PromQL query returning one number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusMetric>,
    /// An HTTP GET or POST to a JSON API (Datadog, New Relic, an in-house
    /// service…), the number read from its answer by a JSONPath.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web: Option<WebMetric>,
    /// A Kubernetes Job run against the analysed color: 1 when it
    /// succeeded, 0 when it failed; passes at 1 (no min or max). Kubernetes
    /// only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobMetric>,
    /// The provider and query of a MetricTemplate (or ClusterMetricTemplate),
    /// with this metric's argument values (Kubernetes only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_ref: Option<crate::template::TemplateRef>,
    /// Lowest value that passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// Highest value that passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// Built-in metrics: fewer requests than this in a check window count
    /// as no data. Default 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_requests: Option<u64>,
    /// Measured and reported with every check, never decisive: to try a
    /// new metric or range before trusting it. Default false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
}

/// A test run as a Kubernetes Job in the BlueGreen's namespace, once per
/// check. Every container gets the environment that reaches the analysed
/// color (`TEAL_PREVIEW_URL`, `TEAL_PREVIEW_HEADER`…, see docs/analysis.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(
    validation = Rule::new("!has(self.activeDeadlineSeconds) || (self.activeDeadlineSeconds >= 1 && self.activeDeadlineSeconds <= 86400)").message("activeDeadlineSeconds must be between 1 and 86400").field_path(".activeDeadlineSeconds"),
    validation = Rule::new("!has(self.backoffLimit) || (self.backoffLimit >= 0 && self.backoffLimit <= 10)").message("backoffLimit must be between 0 and 10").field_path(".backoffLimit")
)]
pub struct JobMetric {
    /// The Job's pod template (a core/v1 PodTemplateSpec, as in a Job's
    /// `spec.template`). `restartPolicy` defaults to `Never`.
    #[schemars(schema_with = "pod_template_schema")]
    pub template: serde_json::Value,
    /// Seconds the Job may run, retries included, before it fails (and the
    /// check with it). Default 600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_deadline_seconds: Option<i64>,
    /// Retries of a failed pod before the Job fails. Default 0: a test that
    /// fails once fails the check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_limit: Option<i32>,
}

/// A job metric's default `activeDeadlineSeconds`.
pub const JOB_DEADLINE_SECONDS: i64 = 600;

/// The schema of a pod template: the fields teal reads are typed, the rest
/// is kept as given (the full PodTemplateSpec schema would make the CRD
/// several times larger; the apiserver checks the Job when it is created).
fn pod_template_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
        "required": ["spec"],
        "properties": {
            "metadata": {
                "type": "object",
                "x-kubernetes-preserve-unknown-fields": true
            },
            "spec": {
                "type": "object",
                "x-kubernetes-preserve-unknown-fields": true,
                "required": ["containers"],
                "properties": {
                    "restartPolicy": {
                        "type": "string",
                        "enum": ["Never", "OnFailure"]
                    },
                    "containers": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "x-kubernetes-preserve-unknown-fields": true,
                            "required": ["name"]
                        }
                    }
                }
            }
        }
    })
}

impl JobMetric {
    /// Checks what the schema cannot say; `path` is the metric's `job` field.
    pub fn validate(&self, path: &str, errors: &mut Vec<FieldError>) {
        if let Err(e) = self.pod_template() {
            errors.push(FieldError::new(format!("{path}.template"), e));
        }
        if let Some(d) = self.active_deadline_seconds
            && !(1..=86_400).contains(&d)
        {
            errors.push(FieldError::new(
                format!("{path}.activeDeadlineSeconds"),
                format!("must be between 1 and 86400, got {d}"),
            ));
        }
        if let Some(b) = self.backoff_limit
            && !(0..=10).contains(&b)
        {
            errors.push(FieldError::new(
                format!("{path}.backoffLimit"),
                format!("must be between 0 and 10, got {b}"),
            ));
        }
    }

    /// The pod template, typed; the error says what is wrong with it.
    pub fn pod_template(&self) -> Result<k8s_openapi::api::core::v1::PodTemplateSpec, String> {
        let t: k8s_openapi::api::core::v1::PodTemplateSpec =
            serde_json::from_value(self.template.clone())
                .map_err(|e| format!("not a pod template: {e}"))?;
        let spec = t.spec.as_ref().ok_or("needs spec.containers")?;
        if spec.containers.is_empty() {
            return Err("needs at least one container in spec.containers".into());
        }
        if let Some(p) = spec.restart_policy.as_deref()
            && p != "Never"
            && p != "OnFailure"
        {
            return Err(format!(
                "spec.restartPolicy must be Never or OnFailure (a Job's pods end), got {p}"
            ));
        }
        Ok(t)
    }

    /// Seconds the Job may run.
    pub fn deadline_seconds(&self) -> i64 {
        self.active_deadline_seconds.unwrap_or(JOB_DEADLINE_SECONDS)
    }
}

/// Metrics teal's router measures for each color.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum BuiltinMetric {
    /// Percentage of requests not answered with a 5xx (0–100).
    SuccessRate,
    /// Median latency, milliseconds.
    LatencyP50,
    /// 90th percentile latency, milliseconds.
    LatencyP90,
    /// 99th percentile latency, milliseconds.
    LatencyP99,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(
    validation = Rule::new("!has(self.tls) || self.address.startsWith('https://')").message("tls only applies to an https:// address").field_path(".tls"),
    validation = Rule::new("!has(self.timeout) || (duration(self.timeout) >= duration('100ms') && duration(self.timeout) <= duration('60s'))").message("timeout must be between 100ms and 60s").field_path(".timeout")
)]
pub struct PrometheusMetric {
    /// Base URL of the Prometheus server, e.g. http://prometheus:9090.
    #[schemars(length(max = 2048), pattern(r"^https?://[^\s/?#]+"))]
    pub address: String,
    /// PromQL; `{{name}}`, `{{namespace}}`, `{{color}}`, `{{revision}}` and
    /// `{{service}}` are replaced before the query runs.
    #[schemars(length(max = 16384), pattern(r"\S"))]
    pub query: String,
    /// How an https:// address is verified. Default: against the system's
    /// CA certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<MetricTls>,
    /// Credentials sent with every query: a bearer token or basic auth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<MetricAuth>,
    /// Further request headers, e.g. `X-Scope-OrgID` for a Mimir, Cortex or
    /// Thanos tenant.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub headers: Vec<MetricHeader>,
    /// Time allowed for one query, answer included: 100ms to 60s. Default 10s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
}

/// An HTTP request to a JSON API and where in its answer the number is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(
    validation = Rule::new("!has(self.tls) || self.url.startsWith('https://')").message("tls only applies to an https:// url").field_path(".tls"),
    validation = Rule::new("!has(self.body) || (has(self.method) && self.method == 'POST')").message("body is sent with method POST only").field_path(".body"),
    validation = Rule::new("!has(self.timeout) || (duration(self.timeout) >= duration('100ms') && duration(self.timeout) <= duration('60s'))").message("timeout must be between 100ms and 60s").field_path(".timeout")
)]
pub struct WebMetric {
    /// The URL, e.g. `https://api.datadoghq.com/api/v1/query?query=...`.
    /// `{{name}}`, `{{namespace}}`, `{{color}}`, `{{revision}}`,
    /// `{{service}}`, `{{now}}` and `{{now-DURATION}}` (Unix seconds) are
    /// replaced; characters a URL cannot hold (spaces, quotes, braces…) are
    /// percent-encoded when sent.
    #[schemars(length(max = 8192), pattern(r"^https?://[^\s/?#]+"))]
    pub url: String,
    /// `GET` (default) or `POST`.
    #[serde(default, skip_serializing_if = "WebMethod::is_get")]
    pub method: WebMethod,
    /// Request headers, e.g. `DD-API-KEY` or `API-Key`, each a literal
    /// `value` or one from a Secret.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub headers: Vec<MetricHeader>,
    /// The request body of a POST, with the same variables replaced as in
    /// `url`. Sent as `Content-Type: application/json` unless `headers`
    /// says otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 65536))]
    pub body: Option<String>,
    /// An RFC 9535 JSONPath selecting the one number in the answer, e.g.
    /// `$.series[0].pointlist[-1][1]` (Argo Rollouts' `{$.…}` form is
    /// accepted too), with the same variables replaced as in `url`. A
    /// number, a numeric string, or true/false (1/0); nothing selected, or
    /// `null`, is a check without data; several values are an error.
    #[schemars(length(min = 1, max = 1024), pattern(r"^\s*[{$]"))]
    pub json_path: String,
    /// How an https:// url is verified. Default: against the system's CA
    /// certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<MetricTls>,
    /// Credentials: a bearer token or basic auth (`Authorization`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<MetricAuth>,
    /// Time allowed for one request, answer included: 100ms to 60s.
    /// Default 10s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
}

/// The HTTP method of a web metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub enum WebMethod {
    #[default]
    #[serde(rename = "GET")]
    Get,
    #[serde(rename = "POST")]
    Post,
}

impl WebMethod {
    pub fn is_get(&self) -> bool {
        *self == WebMethod::Get
    }

    pub fn as_str(self) -> &'static str {
        match self {
            WebMethod::Get => "GET",
            WebMethod::Post => "POST",
        }
    }
}

/// A web metric's `jsonPath` as RFC 9535 text: Argo Rollouts' form
/// `{$.data.value}` (or `{.data.value}`) loses its braces.
pub fn json_path_text(path: &str) -> std::borrow::Cow<'_, str> {
    let t = path.trim();
    let inner = match t.strip_prefix('{').and_then(|r| r.strip_suffix('}')) {
        Some(i) => i.trim(),
        None => return std::borrow::Cow::Borrowed(t),
    };
    if inner.starts_with('.') || inner.starts_with('[') {
        std::borrow::Cow::Owned(format!("${inner}"))
    } else {
        std::borrow::Cow::Borrowed(inner)
    }
}

/// A web metric's `jsonPath`, parsed; the error says why it is not one.
pub fn parse_json_path(path: &str) -> Result<serde_json_path::JsonPath, String> {
    serde_json_path::JsonPath::parse(&json_path_text(path)).map_err(|e| e.to_string())
}

/// How teal checks the certificate of an https:// server (Prometheus, or a
/// web metric's API).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(
    validation = Rule::new("!(has(self.caSecretRef) && has(self.insecureSkipVerify) && self.insecureSkipVerify)").message("set caSecretRef or insecureSkipVerify, not both"),
    validation = Rule::new("!has(self.caSecretRef) || (has(self.caSecretRef.name) && has(self.caSecretRef.key))").message("caSecretRef needs name and key of a Secret in the BlueGreen's namespace").field_path(".caSecretRef")
)]
pub struct MetricTls {
    /// PEM CA certificates the server's certificate must chain to, in place
    /// of the system's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretRef>,
    /// Accept any certificate. Only for a test setup: anyone on the path
    /// can then read and answer the queries.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_skip_verify: bool,
}

/// Credentials sent to the server (Prometheus, a proxy in front of it, or a
/// web metric's API). Exactly one of `bearerTokenSecretRef` and `basic`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(
    validation = Rule::new("has(self.bearerTokenSecretRef) != has(self.basic)").message("set exactly one of bearerTokenSecretRef and basic"),
    validation = Rule::new("!has(self.bearerTokenSecretRef) || (has(self.bearerTokenSecretRef.name) && has(self.bearerTokenSecretRef.key))").message("bearerTokenSecretRef needs name and key of a Secret in the BlueGreen's namespace").field_path(".bearerTokenSecretRef")
)]
pub struct MetricAuth {
    /// Sent as `Authorization: Bearer <token>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer_token_secret_ref: Option<SecretRef>,
    /// Sent as `Authorization: Basic ...`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic: Option<BasicAuth>,
}

/// HTTP basic auth: a user name and a password from a secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(
    validation = Rule::new("has(self.passwordSecretRef.name) && has(self.passwordSecretRef.key)").message("passwordSecretRef needs name and key of a Secret in the BlueGreen's namespace").field_path(".passwordSecretRef")
)]
pub struct BasicAuth {
    #[schemars(length(min = 1, max = 256), pattern(r"^[^:]*$"))]
    pub username: String,
    pub password_secret_ref: SecretRef,
}

/// A request header: a literal `value` or one from a secret (`secretRef`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(
    validation = Rule::new("has(self.value) != has(self.secretRef)").message("set exactly one of value and secretRef"),
    validation = Rule::new("!has(self.secretRef) || (has(self.secretRef.name) && has(self.secretRef.key))").message("secretRef needs name and key of a Secret in the BlueGreen's namespace").field_path(".secretRef"),
    validation = Rule::new("!(self.name.lowerAscii() in ['authorization', 'host', 'content-length', 'transfer-encoding', 'connection'])").message("this header is set by teal (use auth for credentials)").field_path(".name")
)]
pub struct MetricHeader {
    /// A header name (letters, digits and ``!#$%&'*+-.^_`|~``).
    #[schemars(length(min = 1, max = 256), pattern(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$"))]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretRef>,
}

/// Headers teal sets itself, refused in `headers`.
const RESERVED_HEADERS: [&str; 5] = [
    "authorization",
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
];

/// Shortest and longest query timeout (Prometheus and web metrics).
pub const PROMETHEUS_TIMEOUT_RANGE: (std::time::Duration, std::time::Duration) = (
    std::time::Duration::from_millis(100),
    std::time::Duration::from_secs(60),
);

impl AnalysisSpec {
    /// Every secret the stages' metrics name (to anchor local mode's
    /// relative file paths).
    pub fn secret_refs_mut(&mut self) -> impl Iterator<Item = &mut SecretRef> {
        [self.pre_promotion.as_mut(), self.post_promotion.as_mut()]
            .into_iter()
            .flatten()
            .flat_map(|s| s.metrics.iter_mut())
            .flat_map(|m| {
                let mut refs = Vec::new();
                if let Some(p) = m.prometheus.as_mut() {
                    refs.extend(p.secret_refs_mut());
                }
                if let Some(w) = m.web.as_mut() {
                    refs.extend(w.secret_refs_mut());
                }
                refs
            })
    }
}

/// How a prometheus or web metric reaches its server: the parts they
/// share, checked and read the same way.
#[derive(Debug, Clone, Copy)]
pub struct HttpAccess<'a> {
    /// The server's URL (`address` or `url`).
    pub url: &'a str,
    pub tls: Option<&'a MetricTls>,
    pub auth: Option<&'a MetricAuth>,
    pub headers: &'a [MetricHeader],
    pub timeout: Option<Duration>,
}

impl PrometheusMetric {
    /// Every secret this metric names.
    pub fn secret_refs_mut(&mut self) -> Vec<&mut SecretRef> {
        access_secret_refs_mut(self.tls.as_mut(), self.auth.as_mut(), &mut self.headers)
    }

    /// Where and how the query is sent.
    pub fn access(&self) -> HttpAccess<'_> {
        HttpAccess {
            url: &self.address,
            tls: self.tls.as_ref(),
            auth: self.auth.as_ref(),
            headers: &self.headers,
            timeout: self.timeout,
        }
    }

    /// Checks what the schema cannot say; `path` is the metric's
    /// `prometheus` field.
    pub fn validate(&self, path: &str, source: SecretSource, errors: &mut Vec<FieldError>) {
        if !(self.address.starts_with("http://") || self.address.starts_with("https://")) {
            errors.push(FieldError::new(
                format!("{path}.address"),
                format!("{:?} must be an http:// or https:// URL", self.address),
            ));
        }
        if self.query.trim().is_empty() {
            errors.push(FieldError::new(
                format!("{path}.query"),
                "must not be empty",
            ));
        }
        self.access().validate(path, source, errors);
    }
}

impl WebMetric {
    /// Every secret this metric names.
    pub fn secret_refs_mut(&mut self) -> Vec<&mut SecretRef> {
        access_secret_refs_mut(self.tls.as_mut(), self.auth.as_mut(), &mut self.headers)
    }

    /// Where and how the request is sent.
    pub fn access(&self) -> HttpAccess<'_> {
        HttpAccess {
            url: &self.url,
            tls: self.tls.as_ref(),
            auth: self.auth.as_ref(),
            headers: &self.headers,
            timeout: self.timeout,
        }
    }

    /// Checks what the schema cannot say; `path` is the metric's `web`
    /// field.
    pub fn validate(&self, path: &str, source: SecretSource, errors: &mut Vec<FieldError>) {
        let host = self
            .url
            .strip_prefix("http://")
            .or_else(|| self.url.strip_prefix("https://"));
        let host = host.map(|h| h.split(['/', '?', '#']).next().unwrap_or_default());
        if host.is_none_or(|h| h.is_empty() || h.contains(char::is_whitespace)) {
            errors.push(FieldError::new(
                format!("{path}.url"),
                format!(
                    "{:?} must be an http:// or https:// URL with a host",
                    self.url
                ),
            ));
        }
        if self.body.is_some() && self.method != WebMethod::Post {
            errors.push(FieldError::new(
                format!("{path}.body"),
                "is sent with method POST only (the method is GET)",
            ));
        }
        if let Err(e) = parse_json_path(&self.json_path) {
            errors.push(FieldError::new(
                format!("{path}.jsonPath"),
                format!(
                    "{:?} is not an RFC 9535 JSONPath (e.g. $.data.value): {e}",
                    self.json_path
                ),
            ));
        }
        self.access().validate(path, source, errors);
    }
}

fn access_secret_refs_mut<'a>(
    tls: Option<&'a mut MetricTls>,
    auth: Option<&'a mut MetricAuth>,
    headers: &'a mut [MetricHeader],
) -> Vec<&'a mut SecretRef> {
    let mut out: Vec<&mut SecretRef> = Vec::new();
    if let Some(r) = tls.and_then(|t| t.ca_secret_ref.as_mut()) {
        out.push(r);
    }
    if let Some(a) = auth {
        out.extend(a.bearer_token_secret_ref.as_mut());
        out.extend(a.basic.as_mut().map(|b| &mut b.password_secret_ref));
    }
    out.extend(headers.iter_mut().filter_map(|h| h.secret_ref.as_mut()));
    out
}

impl HttpAccess<'_> {
    /// Checks `tls`, `auth`, `headers` and `timeout`; `path` is the
    /// metric's provider field (`prometheus` or `web`).
    pub fn validate(&self, path: &str, source: SecretSource, errors: &mut Vec<FieldError>) {
        if let Some(t) = self.tls {
            if !self.url.starts_with("https://") {
                errors.push(FieldError::new(
                    format!("{path}.tls"),
                    "only applies to an https:// address",
                ));
            }
            if let Some(ca) = &t.ca_secret_ref {
                if t.insecure_skip_verify {
                    errors.push(FieldError::new(
                        format!("{path}.tls"),
                        "set caSecretRef or insecureSkipVerify, not both",
                    ));
                }
                ca.validate(&format!("{path}.tls.caSecretRef"), source, errors);
            }
        }
        if let Some(a) = self.auth {
            match (&a.bearer_token_secret_ref, &a.basic) {
                (Some(t), None) => {
                    t.validate(&format!("{path}.auth.bearerTokenSecretRef"), source, errors)
                }
                (None, Some(b)) => {
                    if b.username.is_empty() || b.username.contains(':') {
                        errors.push(FieldError::new(
                            format!("{path}.auth.basic.username"),
                            "must not be empty nor contain ':'",
                        ));
                    }
                    b.password_secret_ref.validate(
                        &format!("{path}.auth.basic.passwordSecretRef"),
                        source,
                        errors,
                    );
                }
                _ => errors.push(FieldError::new(
                    format!("{path}.auth"),
                    "set exactly one of bearerTokenSecretRef and basic",
                )),
            }
        }
        for (i, h) in self.headers.iter().enumerate() {
            let p = format!("{path}.headers[{i}]");
            if http_token(&h.name).is_none() {
                errors.push(FieldError::new(
                    format!("{p}.name"),
                    format!(
                        "{:?} is not a header name (letters, digits and !#$%&'*+-.^_`|~)",
                        h.name
                    ),
                ));
            } else if RESERVED_HEADERS.contains(&h.name.to_ascii_lowercase().as_str()) {
                errors.push(FieldError::new(
                    format!("{p}.name"),
                    format!("{} is set by teal (use auth for credentials)", h.name),
                ));
            }
            match (&h.value, &h.secret_ref) {
                (Some(_), None) => {}
                (None, Some(r)) => r.validate(&format!("{p}.secretRef"), source, errors),
                _ => errors.push(FieldError::new(
                    p.clone(),
                    "set exactly one of value and secretRef",
                )),
            }
        }
        if let Some(t) = self.timeout {
            let (lo, hi) = PROMETHEUS_TIMEOUT_RANGE;
            if t.std() < lo || t.std() > hi {
                errors.push(FieldError::new(
                    format!("{path}.timeout"),
                    "must be between 100ms and 60s",
                ));
            }
        }
    }
}

/// `name` when it is a valid HTTP header name.
fn http_token(name: &str) -> Option<&str> {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    ok.then_some(name)
}

impl AnalysisSpec {
    /// `source` says where secrets may come from (Kubernetes or local mode).
    pub fn validate(&self, path: &str, source: SecretSource, errors: &mut Vec<FieldError>) {
        for (stage, spec) in [
            ("prePromotion", &self.pre_promotion),
            ("postPromotion", &self.post_promotion),
        ] {
            if let Some(s) = spec {
                s.validate(&format!("{path}.{stage}"), source, errors);
            }
        }
    }
}

impl AnalysisStageSpec {
    pub fn limits(&self) -> teal_core::analysis::Limits {
        teal_core::analysis::Limits {
            checks: self.checks,
            failure_limit: self.failure_limit,
            inconclusive_limit: self.inconclusive_limit,
            consecutive_error_limit: self.consecutive_error_limit,
        }
    }

    /// When the first check is due, `now_ms` being when the stage began.
    pub fn first_check_ms(&self, now_ms: u64) -> u64 {
        now_ms + self.initial_delay.map_or(0, Duration::as_millis) + self.interval.as_millis()
    }

    /// Marks the measurements of dry-run metrics so (measured, reported,
    /// never decisive); done where a check is recorded.
    pub fn mark_dry_run(&self, ms: &mut [teal_core::analysis::Measurement]) {
        for m in ms {
            m.dry_run = self
                .metrics
                .iter()
                .any(|spec| spec.name == m.metric && spec.dry_run);
        }
    }

    pub fn validate(&self, path: &str, source: SecretSource, errors: &mut Vec<FieldError>) {
        if self.interval.as_millis() < 100 {
            errors.push(FieldError::new(
                format!("{path}.interval"),
                "must be at least 100ms",
            ));
        }
        if self.checks == 0 {
            errors.push(FieldError::new(
                format!("{path}.checks"),
                "must be at least 1",
            ));
        }
        if self.metrics.is_empty() {
            errors.push(FieldError::new(
                format!("{path}.metrics"),
                "needs at least one metric (a stage without metrics would pass without checking anything)",
            ));
        } else if self.metrics.iter().all(|m| m.dry_run) {
            errors.push(FieldError::new(
                format!("{path}.metrics"),
                "needs at least one metric without dryRun: dry-run metrics decide nothing",
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, m) in self.metrics.iter().enumerate() {
            let p = format!("{path}.metrics[{i}]");
            if m.name.is_empty() {
                errors.push(FieldError::new(format!("{p}.name"), "must not be empty"));
            } else if !names.insert(m.name.as_str()) {
                errors.push(FieldError::new(
                    format!("{p}.name"),
                    format!("{:?} is used twice", m.name),
                ));
            }
            let providers = [
                m.builtin.is_some(),
                m.prometheus.is_some(),
                m.web.is_some(),
                m.job.is_some(),
                m.template_ref.is_some(),
            ];
            if providers.iter().filter(|p| **p).count() != 1 {
                errors.push(FieldError::new(
                    p.clone(),
                    "set exactly one provider: builtin (successRate, latencyP50, latencyP90, latencyP99), prometheus, web, job or templateRef",
                ));
            }
            if let Some(job) = &m.job {
                if source == SecretSource::Local {
                    errors.push(FieldError::new(
                        format!("{p}.job"),
                        "runs only on Kubernetes (a Job needs a cluster); in local mode use builtin, prometheus or web",
                    ));
                }
                for (bound, v) in [("min", m.min), ("max", m.max)] {
                    if v.is_some() {
                        errors.push(FieldError::new(
                            format!("{p}.{bound}"),
                            "a job metric is 1 when the Job succeeded and 0 when it failed (it passes at 1): leave out min and max",
                        ));
                    }
                }
                job.validate(&format!("{p}.job"), errors);
            } else if m.min.is_none() && m.max.is_none() {
                errors.push(FieldError::new(
                    p.clone(),
                    "set min, max or both: a metric without a range checks nothing",
                ));
            }
            for (bound, v) in [("min", m.min), ("max", m.max)] {
                if let Some(v) = v
                    && !v.is_finite()
                {
                    errors.push(FieldError::new(
                        format!("{p}.{bound}"),
                        format!(
                            "must be a finite number, got {v} (a check against it would never fail)"
                        ),
                    ));
                }
            }
            if let (Some(lo), Some(hi)) = (m.min, m.max)
                && lo > hi
            {
                errors.push(FieldError::new(
                    format!("{p}.min"),
                    format!("min ({lo}) is greater than max ({hi})"),
                ));
            }
            if let Some(pm) = &m.prometheus {
                pm.validate(&format!("{p}.prometheus"), source, errors);
            }
            if let Some(w) = &m.web {
                w.validate(&format!("{p}.web"), source, errors);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(yaml: &str) -> AnalysisStageSpec {
        serde_saphyr::from_str(yaml).unwrap()
    }

    fn errors(s: &AnalysisStageSpec) -> Vec<String> {
        let mut e = Vec::new();
        s.validate("analysis.prePromotion", SecretSource::Local, &mut e);
        e.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn defaults_and_a_valid_stage() {
        let s = stage("metrics:\n  - name: success-rate\n    builtin: successRate\n    min: 99\n");
        assert_eq!(s.interval.as_millis(), 10_000);
        assert_eq!(s.checks, 5);
        assert!(errors(&s).is_empty(), "{:?}", errors(&s));
    }

    #[test]
    fn prometheus_access_errors_name_the_field() {
        let s = stage(
            "metrics:\n  - name: p\n    max: 1\n    prometheus:\n      address: http://prom:9090\n      query: up\n      timeout: 2m\n      tls: {insecureSkipVerify: true, caSecretRef: {name: ca, key: ca.crt}}\n      auth: {bearerTokenSecretRef: {env: TOKEN}, basic: {username: 'a:b', passwordSecretRef: {file: pw}}}\n      headers:\n        - {name: Authorization, value: x}\n        - {name: 'bad name', value: x}\n        - {name: X-Scope-OrgID}\n",
        );
        let e = errors(&s);
        let p = "analysis.prePromotion.metrics[0].prometheus";
        let want = [
            format!("{p}.tls: only applies to an https:// address"),
            format!("{p}.tls: set caSecretRef or insecureSkipVerify, not both"),
            format!("{p}.tls.caSecretRef: Kubernetes Secrets are not available in local mode"),
            format!("{p}.auth: set exactly one of bearerTokenSecretRef and basic"),
            format!("{p}.headers[0].name: Authorization is set by teal (use auth for credentials)"),
            format!("{p}.headers[1].name: \"bad name\" is not a header name"),
            format!("{p}.headers[2]: set exactly one of value and secretRef"),
            format!("{p}.timeout: must be between 100ms and 60s"),
        ];
        for w in &want {
            assert!(
                e.iter().any(|x| x.starts_with(w.as_str())),
                "missing {w:?} in {e:#?}"
            );
        }
        assert_eq!(e.len(), want.len(), "{e:#?}");
        let good = stage(
            "metrics:\n  - name: p\n    max: 1\n    prometheus:\n      address: https://prom:9090\n      query: up\n      timeout: 30s\n      tls: {caSecretRef: {file: ca.pem}}\n      auth: {basic: {username: reader, passwordSecretRef: {env: PW}}}\n      headers: [{name: X-Scope-OrgID, value: tenant-a}]\n",
        );
        assert!(errors(&good).is_empty(), "{:?}", errors(&good));
    }

    /// The errors of a stage with one web metric, `web` being its fields
    /// (YAML flow mapping entries).
    fn web_errors(web: &str) -> Vec<String> {
        errors(&stage(&format!(
            "metrics:\n  - name: w\n    max: 1\n    web: {{{web}}}\n"
        )))
    }

    fn refused(web: &str, want: &str) {
        let e = web_errors(web);
        let want = format!("analysis.prePromotion.metrics[0].web.{want}");
        assert!(
            e.iter().any(|x| x.starts_with(&want)),
            "{web}: missing {want:?} in {e:#?}"
        );
        assert_eq!(e.len(), 1, "{web}: {e:#?}");
    }

    #[test]
    fn a_valid_web_metric() {
        for web in [
            "url: 'https://api.example.com/q?query=a{b:c} by {x}&from={{now-5m}}', jsonPath: '$.series[0].pointlist[-1][1]', headers: [{name: DD-API-KEY, secretRef: {env: DD}}]",
            "url: 'http://svc:8080/api', method: POST, body: '{\"q\": \"{{color}}\"}', jsonPath: '$.data.actor.account.nrql.results[0].rate', auth: {basic: {username: u, passwordSecretRef: {file: pw}}}, timeout: 20s",
            "url: 'https://x', jsonPath: '{$.data.ok}', tls: {insecureSkipVerify: true}",
            "url: 'https://x', jsonPath: '$.items[?@.color == \"green\"].value'",
        ] {
            assert!(web_errors(web).is_empty(), "{web}: {:#?}", web_errors(web));
        }
    }

    #[test]
    fn a_web_url_that_is_not_http_is_refused() {
        refused(
            "url: 'ftp://x', jsonPath: '$.v'",
            "url: \"ftp://x\" must be an http:// or https:// URL",
        );
        refused("url: 'https:///path', jsonPath: '$.v'", "url: ");
        refused("url: 'https://a b/', jsonPath: '$.v'", "url: ");
    }

    #[test]
    fn a_bad_json_path_is_refused() {
        refused(
            "url: 'https://x', jsonPath: '$.a[?'",
            "jsonPath: \"$.a[?\" is not an RFC 9535 JSONPath",
        );
        refused(
            "url: 'https://x', jsonPath: 'data.value'",
            "jsonPath: \"data.value\" is not an RFC 9535 JSONPath",
        );
    }

    #[test]
    fn a_body_on_get_is_refused() {
        refused(
            "url: 'https://x', body: '{}', jsonPath: '$.v'",
            "body: is sent with method POST only",
        );
    }

    #[test]
    fn web_access_errors_name_the_field() {
        refused(
            "url: 'http://x', jsonPath: '$.v', tls: {insecureSkipVerify: true}",
            "tls: only applies to an https:// address",
        );
        refused(
            "url: 'https://x', jsonPath: '$.v', timeout: 61s",
            "timeout: must be between 100ms and 60s",
        );
        refused(
            "url: 'https://x', jsonPath: '$.v', headers: [{name: Authorization, value: k}]",
            "headers[0].name: Authorization is set by teal",
        );
        refused(
            "url: 'https://x', jsonPath: '$.v', headers: [{name: DD-API-KEY}]",
            "headers[0]: set exactly one of value and secretRef",
        );
        refused(
            "url: 'https://x', jsonPath: '$.v', auth: {bearerTokenSecretRef: {name: s, key: k}}",
            "auth.bearerTokenSecretRef: Kubernetes Secrets are not available in local mode",
        );
        let e = errors(&stage(
            "metrics:\n  - name: w\n    max: 1\n    builtin: successRate\n    web: {url: 'https://x', jsonPath: '$.v'}\n",
        ));
        assert!(e.iter().any(|x| x.starts_with("analysis.prePromotion.metrics[0]: set exactly one provider: builtin (successRate, latencyP50, latencyP90, latencyP99), prometheus, web, job or templateRef")), "{e:#?}");
    }

    #[test]
    fn argo_rollouts_json_paths_are_read_as_rfc_9535() {
        assert_eq!(json_path_text(" {$.data.ok} "), "$.data.ok");
        assert_eq!(json_path_text("{.data.ok}"), "$.data.ok");
        assert_eq!(json_path_text("{[0]}"), "$[0]");
        assert_eq!(json_path_text("$.a"), "$.a");
    }

    #[test]
    fn web_secrets_are_anchored_with_the_others() {
        let mut a: AnalysisSpec = serde_saphyr::from_str(
            "prePromotion:\n  metrics:\n    - name: w\n      max: 1\n      web: {url: 'https://x', jsonPath: '$.v', headers: [{name: K, secretRef: {file: k}}], auth: {bearerTokenSecretRef: {file: t}}}\n",
        )
        .unwrap();
        let files: Vec<String> = a
            .secret_refs_mut()
            .filter_map(|r| r.file.as_ref().map(|f| f.display().to_string()))
            .collect();
        assert_eq!(files, ["t", "k"]);
    }

    #[test]
    fn errors_name_the_field() {
        let s = stage(
            "interval: 10ms\nchecks: 0\nmetrics:\n  - name: a\n    min: 2\n    max: 1\n  - name: a\n    builtin: latencyP99\n",
        );
        let e = errors(&s);
        let want = [
            "analysis.prePromotion.interval: must be at least 100ms",
            "analysis.prePromotion.checks: must be at least 1",
            "analysis.prePromotion.metrics[0]: set exactly one provider",
            "analysis.prePromotion.metrics[0].min: min (2) is greater than max (1)",
            "analysis.prePromotion.metrics[1].name: \"a\" is used twice",
            "analysis.prePromotion.metrics[1]: set min, max or both",
        ];
        for w in want {
            assert!(
                e.iter().any(|x| x.starts_with(w)),
                "missing {w:?} in {e:#?}"
            );
        }
    }

    #[test]
    fn job_metrics_have_an_implied_range_and_run_only_on_kubernetes() {
        let s = stage(
            "metrics:\n  - name: smoke\n    job:\n      template:\n        spec:\n          containers: [{name: t, image: busybox}]\n",
        );
        let mut e = Vec::new();
        s.validate("analysis.prePromotion", SecretSource::Kubernetes, &mut e);
        assert!(e.is_empty(), "{e:?}");
        assert_eq!(s.metrics[0].job.as_ref().unwrap().deadline_seconds(), 600);
        // Local mode has no cluster to run it in.
        assert_eq!(
            errors(&s),
            [
                "analysis.prePromotion.metrics[0].job: runs only on Kubernetes (a Job needs a cluster); in local mode use builtin, prometheus or web"
            ]
        );
        let bad = stage(
            "metrics:\n  - name: smoke\n    min: 1\n    job:\n      backoffLimit: 11\n      activeDeadlineSeconds: 0\n      template:\n        spec:\n          restartPolicy: Always\n          containers: [{name: t, image: busybox}]\n",
        );
        let mut e = Vec::new();
        bad.validate("analysis.prePromotion", SecretSource::Kubernetes, &mut e);
        let e: Vec<String> = e.iter().map(ToString::to_string).collect();
        let p = "analysis.prePromotion.metrics[0]";
        assert_eq!(
            e,
            [
                format!(
                    "{p}.min: a job metric is 1 when the Job succeeded and 0 when it failed (it passes at 1): leave out min and max"
                ),
                format!(
                    "{p}.job.template: spec.restartPolicy must be Never or OnFailure (a Job's pods end), got Always"
                ),
                format!("{p}.job.activeDeadlineSeconds: must be between 1 and 86400, got 0"),
                format!("{p}.job.backoffLimit: must be between 0 and 10, got 11"),
            ]
        );
        let none = stage(
            "metrics:\n  - name: smoke\n    job:\n      template: {spec: {containers: []}}\n",
        );
        let mut e = Vec::new();
        none.validate("analysis.prePromotion", SecretSource::Kubernetes, &mut e);
        assert_eq!(
            e[0].to_string(),
            "analysis.prePromotion.metrics[0].job.template: needs at least one container in spec.containers"
        );
    }

    #[test]
    fn non_finite_bounds_are_refused() {
        // Found by the bluegreen_spec fuzz target: YAML accepts .nan and
        // .inf, and a NaN bound made every comparison pass.
        let s = stage(
            "metrics:\n  - name: a\n    builtin: successRate\n    min: .nan\n  - name: b\n    builtin: latencyP99\n    max: .inf\n",
        );
        let e = errors(&s);
        assert!(
            e.iter()
                .any(|x| x
                    .starts_with("analysis.prePromotion.metrics[0].min: must be a finite number")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|x| x
                    .starts_with("analysis.prePromotion.metrics[1].max: must be a finite number")),
            "{e:?}"
        );
    }

    #[test]
    fn unknown_fields_and_bad_durations_are_refused() {
        let e = serde_saphyr::from_str::<AnalysisStageSpec>("intervall: 5s\nmetrics: []\n")
            .unwrap_err();
        assert!(e.to_string().contains("intervall"), "{e}");
        let e =
            serde_saphyr::from_str::<AnalysisStageSpec>("interval: 5x\nmetrics: []\n").unwrap_err();
        assert!(e.to_string().contains("invalid duration"), "{e}");
    }

    #[test]
    fn preview_validation() {
        let p = PreviewSpec {
            header: Some(MatchSpec {
                name: "x version".into(),
                value: "green".into(),
            }),
            header_value_from: None,
            cookie: None,
            replicas: Some(5),
        };
        let mut e = Vec::new();
        p.validate("preview", 3, &mut e);
        let e: Vec<String> = e.iter().map(ToString::to_string).collect();
        assert!(e[0].starts_with("preview.header.name:"), "{e:?}");
        assert_eq!(
            e[1],
            "preview.replicas: must be between 1 and replicas (3), got 5"
        );
    }
}
