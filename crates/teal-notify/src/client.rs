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

/// How much of a hook's or notifier's answer is read: the status is what
/// counts, the body only as far as an excerpt. The rest is never read (the
/// connection is closed instead of being reused), so an endpoint answering
/// with an endless body costs the caller this much memory, not more.
pub const HOOK_BODY_CAP: usize = 64 * 1024;

/// An answer: its status and the first bytes of its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    /// At most the cap the request was sent with.
    pub body: Bytes,
    /// The body went on past the cap (and was not read further).
    pub truncated: bool,
}

/// POSTs `body` as JSON with extra `headers`; returns the status.
pub async fn post_json(
    url: &str,
    body: Bytes,
    headers: &[(&str, String)],
    timeout: Duration,
) -> Result<u16, CallError> {
    let mut all = vec![(
        http::header::CONTENT_TYPE.as_str(),
        "application/json".to_string(),
    )];
    all.extend(headers.iter().map(|(k, v)| (*k, v.clone())));
    request(
        http::Method::POST,
        url,
        Some(body),
        &all,
        timeout,
        HOOK_BODY_CAP,
    )
    .await
    .map(|a| a.status)
}

/// Sends one request and reads at most `cap` bytes of the answer's body,
/// all within `timeout`.
pub async fn request(
    method: http::Method,
    url: &str,
    body: Option<Bytes>,
    headers: &[(&str, String)],
    timeout: Duration,
    cap: usize,
) -> Result<Answer, CallError> {
    let uri: http::Uri = url.parse().map_err(|_| CallError::BadUrl)?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(CallError::BadUrl);
    }
    let mut req = http::Request::builder()
        .method(method)
        .uri(uri)
        .header(http::header::USER_AGENT, "teal");
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let req = req
        .body(Full::new(body.unwrap_or_default()))
        .map_err(|_| CallError::BadUrl)?;
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
        let (body, truncated) = read_capped(resp.into_body(), cap).await;
        Ok(Answer {
            status,
            body,
            truncated,
        })
    };
    tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| CallError::Timeout(timeout))?
}

/// The first `cap` bytes of `body` and whether it went on; a body that
/// breaks off is what was read until then.
async fn read_capped<B>(mut body: B, cap: usize) -> (Bytes, bool)
where
    B: hyper::body::Body + Unpin,
    B::Data: bytes::Buf,
{
    let mut out = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { break };
        let Ok(mut data) = frame.into_data() else {
            continue;
        };
        while bytes::Buf::has_remaining(&data) {
            let chunk = bytes::Buf::chunk(&data);
            let room = cap - out.len();
            if chunk.len() > room {
                out.extend_from_slice(&chunk[..room]);
                return (out.freeze(), true);
            }
            out.extend_from_slice(chunk);
            let n = chunk.len();
            bytes::Buf::advance(&mut data, n);
        }
    }
    (out.freeze(), false)
}

/// A short excerpt of an answer's body fit for a status field or an Event:
/// at most `max` characters of its text, control characters (new lines,
/// terminal escapes) replaced by spaces and runs of spaces folded; "…"
/// marks a cut.
pub fn excerpt(body: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(body);
    let mut out = String::new();
    let mut cut = false;
    for (n, c) in text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .filter({
            let mut last_space = true;
            move |c| {
                let keep = !(*c == ' ' && last_space);
                last_space = *c == ' ';
                keep
            }
        })
        .enumerate()
    {
        if n == max {
            cut = true;
            break;
        }
        out.push(c);
    }
    let mut out = out.trim_end().to_string();
    if cut {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_excerpt_is_bounded_and_on_one_line() {
        assert_eq!(excerpt(b"  bad\r\n\x1b[31mquery\t ", 100), "bad [31mquery");
        assert_eq!(
            excerpt("é".repeat(500).as_bytes(), 10),
            format!("{}…", "é".repeat(10))
        );
        assert_eq!(excerpt(&[0xff, b'a'], 10), "\u{fffd}a");
    }
}
