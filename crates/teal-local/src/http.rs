//! A small HTTP/1.1 client for the CLI's calls to the daemon's control API.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// A response: status and body.
pub struct Answer {
    pub status: u16,
    pub body: Bytes,
}

/// Sends one request; `token` becomes a bearer Authorization header.
pub async fn request(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<Vec<u8>>,
    timeout: Duration,
) -> Result<Answer, String> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut req = http::Request::builder().method(method).uri(url);
    if let Some(t) = token {
        req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    if body.is_some() {
        req = req.header(http::header::CONTENT_TYPE, "application/json");
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| format!("bad request for {url}: {e}"))?;
    let call = async {
        let resp = client
            .request(req)
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("{url}: reading the answer: {e}"))?
            .to_bytes();
        Ok(Answer { status, body })
    };
    tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| format!("{url}: no answer within {timeout:?}"))?
}

/// GET that expects a 2xx answer and returns its body.
pub async fn get(url: &str, token: Option<&str>, timeout: Duration) -> Result<Bytes, String> {
    let a = request("GET", url, token, None, timeout).await?;
    if !(200..300).contains(&a.status) {
        return Err(format!(
            "{url} answered {}: {}",
            a.status,
            String::from_utf8_lossy(&a.body).trim()
        ));
    }
    Ok(a.body)
}
