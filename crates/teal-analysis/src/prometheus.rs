//! Prometheus metrics: a PromQL query through the HTTP API
//! (`GET /api/v1/query`), one number read from its answer.

use std::time::Duration;

use teal_api::{MetricSpec, PrometheusMetric};
use teal_core::analysis::Measurement;
use teal_notify::client::excerpt;

use crate::{QueryVars, no_value, value};

/// A Prometheus answer larger than this is refused: one number is asked for.
pub const PROMETHEUS_BODY_CAP: usize = 1 << 20;
/// How long a query may take, answer included.
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

/// Runs `p`'s query with `vars` put in and measures `m` by its answer.
pub(crate) async fn measure(m: &MetricSpec, p: &PrometheusMetric, vars: &QueryVars) -> Measurement {
    match prometheus_query(&p.address, &query_text(&p.query, vars)).await {
        Ok(Some(v)) => value(m, v),
        Ok(None) => no_value(m, "the query returned no samples"),
        Err(e) => no_value(m, format!("prometheus query failed: {e}")),
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

/// `GET /api/v1/query` on the Prometheus at `address`; the first sample
/// of a vector, or the scalar. Through teal-notify's client: the egress
/// policy of the process applies, an answer is read only as far as
/// [`PROMETHEUS_BODY_CAP`] and within [`PROMETHEUS_TIMEOUT`].
pub async fn prometheus_query(address: &str, query: &str) -> Result<Option<f64>, String> {
    let url = format!(
        "{}/api/v1/query?query={}",
        address.trim_end_matches('/'),
        percent_encode(query)
    );
    let a = teal_notify::client::request(
        http::Method::GET,
        &url,
        None,
        &[],
        PROMETHEUS_TIMEOUT,
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
