//! Prometheus metrics: a PromQL query through the HTTP API
//! (`GET /api/v1/query`), one number read from its answer.

use teal_api::{MetricSpec, PrometheusMetric};
use teal_core::analysis::Measurement;
use teal_notify::client::excerpt;

use crate::http::{EXCERPT_CHARS, Request, fill, percent_encode};
use crate::{CheckContext, no_value, provider_error, value};

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
    let query = fill(&p.query, cx.vars);
    let answer = match Request::of(p.access(), "prometheus", cx.secrets).await {
        Ok(req) => query_with(&req, &p.address, &query).await,
        Err(e) => Err(e),
    };
    match answer {
        Ok(Some(v)) => value(m, v),
        Ok(None) => no_value(m, "the query returned no samples"),
        Err(e) => provider_error(m, format!("prometheus query failed: {e}")),
    }
}

/// `GET /api/v1/query` on the Prometheus at `address`, sent as `req`
/// says; the first sample of a vector, or the scalar.
async fn query_with(req: &Request, address: &str, query: &str) -> Result<Option<f64>, String> {
    let url = format!(
        "{}/api/v1/query?query={}",
        address.trim_end_matches('/'),
        percent_encode(query)
    );
    let body = req.send(http::Method::GET, &url, None).await?;
    let answer: QueryAnswer = serde_json::from_slice(&body).map_err(|e| {
        format!(
            "the answer is not Prometheus JSON ({e}): {}",
            excerpt(&body, EXCERPT_CHARS)
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
