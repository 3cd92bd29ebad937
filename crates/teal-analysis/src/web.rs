//! Web metrics: an HTTP GET or POST to any JSON API (Datadog, New Relic,
//! Grafana Cloud, an in-house service), one number read from its answer
//! by an RFC 9535 JSONPath.

use bytes::Bytes;
use serde_json::Value;
use teal_api::{MetricSpec, WebMethod, WebMetric};
use teal_core::analysis::Measurement;
use teal_notify::client::excerpt;

use crate::http::{EXCERPT_CHARS, Request, encode_url, fill};
use crate::{CheckContext, no_value, provider_error, value};

/// What the JSONPath found in an answer.
#[derive(Debug, PartialEq)]
enum Found {
    Number(f64),
    /// Nothing selected, or `null`: why.
    Nothing(String),
}

/// Sends `w`'s request with the check's values put in and measures `m` by
/// the number its JSONPath selects in the answer.
pub(crate) async fn measure(m: &MetricSpec, w: &WebMetric, cx: &CheckContext<'_>) -> Measurement {
    match request(w, cx).await {
        Ok(Found::Number(v)) => value(m, v),
        Ok(Found::Nothing(why)) => no_value(m, why),
        Err(e) => provider_error(m, format!("web request failed: {e}")),
    }
}

async fn request(w: &WebMetric, cx: &CheckContext<'_>) -> Result<Found, String> {
    // Local mode refuses a bad path up front; the apiserver checks only how
    // it starts, so on Kubernetes this is where it is reported, before any
    // request is sent.
    let text = fill(&w.json_path, cx.vars);
    let path = teal_api::parse_json_path(&text)
        .map_err(|e| format!("web.jsonPath {text:?} is not an RFC 9535 JSONPath: {e}"))?;
    let mut req = Request::of(w.access(), "web", cx.secrets).await?;
    let body = w.body.as_deref().map(|b| Bytes::from(fill(b, cx.vars)));
    if body.is_some() && !req.has_header("content-type") {
        req.headers
            .push(("content-type".into(), "application/json".into()));
    }
    if !req.has_header("accept") {
        req.headers
            .push(("accept".into(), "application/json".into()));
    }
    let method = match w.method {
        WebMethod::Get => http::Method::GET,
        WebMethod::Post => http::Method::POST,
    };
    let url = encode_url(&fill(&w.url, cx.vars));
    let answer = req.send(method, &url, body).await?;
    let json: Value = serde_json::from_slice(&answer).map_err(|e| {
        format!(
            "the answer is not JSON ({e}): {}",
            excerpt(&answer, EXCERPT_CHARS)
        )
    })?;
    select(&path, &text, &json)
}

/// The one number `path` (written `text`) selects in `json`.
fn select(path: &serde_json_path::JsonPath, text: &str, json: &Value) -> Result<Found, String> {
    let nodes = path.query(json).all();
    let node = match nodes.as_slice() {
        [] => {
            return Ok(Found::Nothing(format!(
                "jsonPath {text} selects nothing in the answer"
            )));
        }
        [one] => *one,
        many => {
            return Err(format!(
                "jsonPath {text} selects {} values, not one: {}",
                many.len(),
                excerpt(
                    // The first few are enough for an excerpt.
                    Value::Array(many.iter().take(20).map(|v| (*v).clone()).collect())
                        .to_string()
                        .as_bytes(),
                    EXCERPT_CHARS
                )
            ));
        }
    };
    let n = match node {
        Value::Null => {
            return Ok(Found::Nothing(format!(
                "jsonPath {text} selects null (no data)"
            )));
        }
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
        Value::Array(_) | Value::Object(_) => None,
    };
    match n {
        Some(v) if v.is_finite() => Ok(Found::Number(v)),
        _ => Err(format!(
            "jsonPath {text} selects {}, not a number",
            excerpt(node.to_string().as_bytes(), EXCERPT_CHARS)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pick(path: &str, json: Value) -> Result<Found, String> {
        let p = teal_api::parse_json_path(path).unwrap();
        select(&p, path, &json)
    }

    #[test]
    fn one_number_is_read() {
        let dd = json!({"status": "ok", "series": [{"metric": "errors", "pointlist": [[1.7e12, 0.5], [1.7e12, 2.25]]}]});
        assert_eq!(
            pick("$.series[0].pointlist[-1][1]", dd),
            Ok(Found::Number(2.25))
        );
        assert_eq!(
            pick("$.data.value", json!({"data": {"value": " 12.5 "}})),
            Ok(Found::Number(12.5)),
            "a numeric string"
        );
        assert_eq!(
            pick("{$.ok}", json!({"ok": true})),
            Ok(Found::Number(1.0)),
            "Argo Rollouts' form, a boolean"
        );
        assert_eq!(
            pick(
                "$.results[?@.color == 'green'].rate",
                json!({"results": [{"color": "blue", "rate": 1}, {"color": "green", "rate": 7}]})
            ),
            Ok(Found::Number(7.0))
        );
    }

    #[test]
    fn nothing_or_null_is_no_data() {
        assert_eq!(
            pick("$.series[0].pointlist[-1][1]", json!({"series": []})),
            Ok(Found::Nothing(
                "jsonPath $.series[0].pointlist[-1][1] selects nothing in the answer".into()
            ))
        );
        assert!(matches!(
            pick("$.v", json!({"v": null})),
            Ok(Found::Nothing(why)) if why.contains("null")
        ));
    }

    #[test]
    fn several_values_or_a_non_number_are_provider_errors() {
        assert_eq!(
            pick("$.v[*]", json!({"v": [1, 2, 3]})),
            Err("jsonPath $.v[*] selects 3 values, not one: [1,2,3]".into())
        );
        assert_eq!(
            pick("$.v", json!({"v": {"a": 1}})),
            Err("jsonPath $.v selects {\"a\":1}, not a number".into())
        );
        assert_eq!(
            pick("$.v", json!({"v": "fast"})),
            Err("jsonPath $.v selects \"fast\", not a number".into())
        );
        assert!(pick("$.v", json!({"v": "NaN"})).is_err());
    }
}
