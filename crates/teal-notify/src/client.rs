//! One HTTP client for hooks and notifiers: HTTP/1.1 over plain TCP or
//! TLS (rustls, the system's CA roots).

use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

type Https = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

fn client() -> &'static Https {
    static CLIENT: OnceLock<Https> = OnceLock::new();
    CLIENT.get_or_init(|| {
        let builder = hyper_rustls::HttpsConnectorBuilder::new();
        let connector = match builder.with_native_roots() {
            Ok(b) => b.https_or_http().enable_http1().build(),
            Err(e) => {
                tracing::warn!("no system CA certificates ({e}): https notifiers will fail");
                hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config(empty_roots())
                    .https_or_http()
                    .enable_http1()
                    .build()
            }
        };
        Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector)
    })
}

fn empty_roots() -> rustls::ClientConfig {
    rustls::ClientConfig::builder()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth()
}

/// Why a call got no answer. Never contains the URL (it may be secret).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("the URL is not a valid http(s) URL")]
    BadUrl,
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Transport(String),
}

/// POSTs `body` as JSON with extra `headers`; returns the status.
pub async fn post_json(
    url: &str,
    body: Bytes,
    headers: &[(&str, String)],
    timeout: Duration,
) -> Result<u16, CallError> {
    let uri: http::Uri = url.parse().map_err(|_| CallError::BadUrl)?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(CallError::BadUrl);
    }
    let mut req = http::Request::post(uri)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::USER_AGENT, "teal");
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let req = req.body(Full::new(body)).map_err(|_| CallError::BadUrl)?;
    let call = async {
        let resp = client().request(req).await.map_err(|e| {
            // The error's chain names the cause (refused, reset, TLS…).
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg = format!("{msg}: {s}");
                src = s.source();
            }
            CallError::Transport(msg)
        })?;
        let status = resp.status().as_u16();
        // Read (and drop) the answer so the connection can be reused.
        let _ = resp.into_body().collect().await;
        Ok(status)
    };
    tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| CallError::Timeout(timeout))?
}
