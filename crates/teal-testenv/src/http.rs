//! One plain-HTTP request on loopback, for the services a test starts (Prometheus, etcd).

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Sends `method uri` with an optional JSON `body` and returns the answer's body, failing on
/// a non-2xx status; the error names the request.
pub(crate) async fn send(method: &str, uri: &str, json: Option<String>) -> Result<Bytes, String> {
    let what = format!("{method} {uri}");
    let mut req = http::Request::builder().method(method).uri(uri);
    if json.is_some() {
        req = req.header("content-type", "application/json");
    }
    let req = req
        .body(Full::new(Bytes::from(json.unwrap_or_default())))
        .map_err(|e| format!("{what}: {e}"))?;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let response = client
        .request(req)
        .await
        .map_err(|e| format!("{what}: {e}"))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("reading the answer to {what}: {e}"))?
        .to_bytes();
    if !status.is_success() {
        return Err(format!(
            "{what}: {status}: {}",
            String::from_utf8_lossy(&body)
        ));
    }
    Ok(body)
}
