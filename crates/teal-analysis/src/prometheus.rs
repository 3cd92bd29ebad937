//! Prometheus metrics: a PromQL query through the HTTP API
//! (`GET /api/v1/query`), one number read from its answer.

use std::time::Duration;

use base64::Engine as _;
use teal_api::{MetricSpec, PrometheusMetric};
use teal_core::analysis::Measurement;
use teal_notify::client::{Trust, excerpt};

use crate::{CheckContext, QueryVars, Secrets, no_value, provider_error, value};

/// A Prometheus answer larger than this is refused: one number is asked for.
pub const PROMETHEUS_BODY_CAP: usize = 1 << 20;
/// How long a query may take, answer included, unless the metric says.
pub const PROMETHEUS_TIMEOUT: Duration = Duration::from_secs(10);
/// Characters of an unexpected answer shown in status.
pub const EXCERPT_CHARS: usize = 200;

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct QueryAnswer {
    status: String,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    data: Option<QueryData>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct QueryData {
    result_type: String,
    result: serde_json::Value,
}

/// Runs `p`'s query with the check's values put in and measures `m` by
/// its answer.
pub(crate) async fn measure(
    m: &MetricSpec,
    p: &PrometheusMetric,
    cx: &CheckContext<'_>,
) -> Measurement {
    let query = query_text(&p.query, cx.vars);
    let answer = match Request::of(p, cx.secrets).await {
        Ok(req) => req.run(&p.address, &query).await,
        Err(e) => Err(e),
    };
    match answer {
        Ok(Some(v)) => value(m, v),
        Ok(None) => no_value(m, "the query returned no samples"),
        Err(e) => provider_error(m, format!("prometheus query failed: {e}")),
    }
}

/// How a query is sent: headers (credentials included), the certificates
/// an https server is checked against, the time allowed.
#[derive(Debug, Default)]
pub(crate) struct Request {
    headers: Vec<(String, String)>,
    trust: Option<Trust>,
    timeout: Option<Duration>,
}

impl Request {
    /// The request `p` asks for, its secrets read from `secrets`.
    pub(crate) async fn of(p: &PrometheusMetric, secrets: &dyn Secrets) -> Result<Request, String> {
        let mut out = Request {
            timeout: p.timeout.map(|t| t.std()),
            ..Request::default()
        };
        if let Some(t) = &p.tls {
            let ca_pem = match &t.ca_secret_ref {
                Some(r) => Some(
                    secrets
                        .get(r, "prometheus.tls.caSecretRef")
                        .await?
                        .into_bytes(),
                ),
                None => None,
            };
            out.trust = Some(Trust {
                ca_pem,
                insecure_skip_verify: t.insecure_skip_verify,
            });
        }
        if let Some(a) = &p.auth {
            let value = match (&a.bearer_token_secret_ref, &a.basic) {
                (Some(r), _) => {
                    let token = secrets
                        .get(r, "prometheus.auth.bearerTokenSecretRef")
                        .await?;
                    format!("Bearer {token}")
                }
                (None, Some(b)) => {
                    let password = secrets
                        .get(
                            &b.password_secret_ref,
                            "prometheus.auth.basic.passwordSecretRef",
                        )
                        .await?;
                    let pair = format!("{}:{password}", b.username);
                    format!(
                        "Basic {}",
                        base64::engine::general_purpose::STANDARD.encode(pair)
                    )
                }
                (None, None) => return Err("prometheus.auth: no credentials set".into()),
            };
            out.headers
                .push((http::header::AUTHORIZATION.to_string(), value));
        }
        for (i, h) in p.headers.iter().enumerate() {
            let value = match (&h.value, &h.secret_ref) {
                (Some(v), _) => v.clone(),
                (None, Some(r)) => {
                    secrets
                        .get(r, &format!("prometheus.headers[{i}].secretRef"))
                        .await?
                }
                (None, None) => return Err(format!("prometheus.headers[{i}]: no value set")),
            };
            out.headers.push((h.name.clone(), value));
        }
        Ok(out)
    }

    /// Runs `query` on the Prometheus at `address`.
    pub(crate) async fn run(&self, address: &str, query: &str) -> Result<Option<f64>, String> {
        let headers: Vec<(&str, String)> = self
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect();
        query_with(
            address,
            query,
            &headers,
            self.trust.as_ref(),
            self.timeout.unwrap_or(PROMETHEUS_TIMEOUT),
        )
        .await
    }
}

/// `query` with the `{{field}}` placeholders replaced by `vars`.
fn query_text(query: &str, vars: &QueryVars) -> String {
    let mut query = query.to_string();
    for (field, value) in [
        ("name", vars.name.as_str()),
        ("namespace", &vars.namespace),
        ("color", vars.color.as_str()),
        ("revision", &vars.revision),
        ("service", &vars.service),
    ] {
        query = query.replace(&format!("{{{{{field}}}}}"), value);
    }
    query
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

/// `GET /api/v1/query` on the Prometheus at `address` with extra
/// `headers`, an https server's certificate checked as `trust` says; the
/// first sample of a vector, or the scalar. Through teal-notify's client:
/// the egress policy of the process applies, an answer is read only as far
/// as [`PROMETHEUS_BODY_CAP`] and within `timeout`.
async fn query_with(
    address: &str,
    query: &str,
    headers: &[(&str, String)],
    trust: Option<&Trust>,
    timeout: Duration,
) -> Result<Option<f64>, String> {
    let url = format!(
        "{}/api/v1/query?query={}",
        address.trim_end_matches('/'),
        percent_encode(query)
    );
    let a = teal_notify::client::request_trusting(
        trust,
        http::Method::GET,
        &url,
        None,
        headers,
        timeout,
        PROMETHEUS_BODY_CAP,
    )
    .await
    .map_err(|e| e.to_string())?;
    if !(200..300).contains(&a.status) {
        return Err(format!(
            "answered HTTP {}: {}",
            a.status,
            excerpt(&a.body, EXCERPT_CHARS)
        ));
    }
    if a.truncated {
        return Err(format!(
            "the answer is larger than {} KiB (the query must return one number)",
            PROMETHEUS_BODY_CAP / 1024
        ));
    }
    let answer: QueryAnswer = serde_json::from_slice(&a.body).map_err(|e| {
        format!(
            "the answer is not Prometheus JSON ({e}): {}",
            excerpt(&a.body, EXCERPT_CHARS)
        )
    })?;
    if answer.status != "success" {
        let why = answer.error.unwrap_or_else(|| "an error".into());
        return Err(format!(
            "prometheus answered {}",
            excerpt(why.as_bytes(), EXCERPT_CHARS)
        ));
    }
    let data = answer.data.ok_or("the answer has no data")?;
    let sample = match data.result_type.as_str() {
        "vector" => data.result.get(0).map(|r| r["value"][1].clone()),
        "scalar" => Some(data.result[1].clone()),
        other => {
            return Err(format!(
                "unsupported result type {:?}: the query must return one number",
                excerpt(other.as_bytes(), 40)
            ));
        }
    };
    sample
        .map(|s| {
            let s = s.as_str().ok_or("sample value is not a string")?;
            s.parse::<f64>()
                .map_err(|e| format!("sample {:?}: {e}", excerpt(s.as_bytes(), 40)))
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use teal_core::Color;

    /// Secrets named by their environment variable: the value is `<env>-value`.
    struct Named;

    impl Secrets for Named {
        fn get<'a>(
            &'a self,
            r: &'a teal_api::hooks::SecretRef,
            _field: &'a str,
        ) -> crate::Reading<'a> {
            Box::pin(async move { Ok(format!("{}-value", r.env.as_deref().unwrap_or("?"))) })
        }
    }

    fn prometheus(yaml: &str) -> PrometheusMetric {
        serde_saphyr::from_str(yaml).unwrap()
    }

    #[tokio::test]
    async fn credentials_and_headers_come_from_the_secrets() {
        let p = prometheus(
            "address: https://prom\nquery: up\ntimeout: 3s\nauth: {bearerTokenSecretRef: {env: TOKEN}}\nheaders: [{name: X-Scope-OrgID, secretRef: {env: TENANT}}, {name: X-A, value: b}]\n",
        );
        let r = Request::of(&p, &Named).await.unwrap();
        assert_eq!(
            r.headers,
            [
                (
                    "authorization".to_string(),
                    "Bearer TOKEN-value".to_string()
                ),
                ("X-Scope-OrgID".to_string(), "TENANT-value".to_string()),
                ("X-A".to_string(), "b".to_string()),
            ]
        );
        assert_eq!(r.timeout, Some(Duration::from_secs(3)));
        assert!(r.trust.is_none());
        let p = prometheus(
            "address: https://prom\nquery: up\ntls: {caSecretRef: {env: CA}}\nauth: {basic: {username: reader, passwordSecretRef: {env: PW}}}\n",
        );
        let r = Request::of(&p, &Named).await.unwrap();
        // base64 of "reader:PW-value"
        assert_eq!(
            r.headers,
            [(
                "authorization".to_string(),
                "Basic cmVhZGVyOlBXLXZhbHVl".to_string()
            )]
        );
        assert_eq!(
            r.trust,
            Some(Trust {
                ca_pem: Some(b"CA-value".to_vec()),
                insecure_skip_verify: false
            })
        );
    }

    #[test]
    fn query_is_encoded() {
        assert_eq!(
            percent_encode("sum(rate(x{a=\"b\"}[1m]))"),
            "sum%28rate%28x%7Ba%3D%22b%22%7D%5B1m%5D%29%29"
        );
    }

    #[test]
    fn placeholders_take_the_release_values() {
        let vars = QueryVars {
            name: "shop".into(),
            namespace: "prod".into(),
            color: Color::Green,
            revision: "r2".into(),
            service: "shop-svc".into(),
        };
        assert_eq!(
            query_text(
                "x{app=\"{{name}}\",ns=\"{{namespace}}\",c=\"{{color}}\",r=\"{{revision}}\",s=\"{{service}}\",o=\"{{other}}\"}",
                &vars
            ),
            "x{app=\"shop\",ns=\"prod\",c=\"green\",r=\"r2\",s=\"shop-svc\",o=\"{{other}}\"}"
        );
    }
}
