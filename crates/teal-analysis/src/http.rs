//! What the Prometheus and web providers share: a request's credentials,
//! headers, trust and time allowed (read from the metric's secrets), the
//! call itself with a capped answer, and the variables put into the text
//! of a query, URL or body.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use teal_api::HttpAccess;
use teal_notify::client::{Trust, excerpt};

use crate::{QueryVars, Secrets};

/// An answer larger than this is refused: one number is asked for.
pub const BODY_CAP: usize = 1 << 20;
/// How long a request may take, answer included, unless the metric says.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// Characters of an unexpected answer shown in status.
pub const EXCERPT_CHARS: usize = 200;

/// How a request is sent: headers (credentials included), the certificates
/// an https server is checked against, the time allowed.
#[derive(Debug, Default)]
pub(crate) struct Request {
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) trust: Option<Trust>,
    pub(crate) timeout: Option<Duration>,
}

impl Request {
    /// The request `a` asks for, its secrets read from `secrets`; errors
    /// name the field under `provider` (`prometheus`, `web`).
    pub(crate) async fn of(
        a: HttpAccess<'_>,
        provider: &str,
        secrets: &dyn Secrets,
    ) -> Result<Request, String> {
        let mut out = Request {
            timeout: a.timeout.map(|t| t.std()),
            ..Request::default()
        };
        if let Some(t) = a.tls {
            let ca_pem = match &t.ca_secret_ref {
                Some(r) => Some(
                    secrets
                        .get(r, &format!("{provider}.tls.caSecretRef"))
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
        if let Some(auth) = a.auth {
            let value = match (&auth.bearer_token_secret_ref, &auth.basic) {
                (Some(r), _) => {
                    let field = format!("{provider}.auth.bearerTokenSecretRef");
                    format!("Bearer {}", secrets.get(r, &field).await?)
                }
                (None, Some(b)) => {
                    let field = format!("{provider}.auth.basic.passwordSecretRef");
                    let password = secrets.get(&b.password_secret_ref, &field).await?;
                    let pair = format!("{}:{password}", b.username);
                    format!(
                        "Basic {}",
                        base64::engine::general_purpose::STANDARD.encode(pair)
                    )
                }
                (None, None) => return Err(format!("{provider}.auth: no credentials set")),
            };
            out.headers
                .push((http::header::AUTHORIZATION.to_string(), value));
        }
        for (i, h) in a.headers.iter().enumerate() {
            let value = match (&h.value, &h.secret_ref) {
                (Some(v), _) => v.clone(),
                (None, Some(r)) => {
                    secrets
                        .get(r, &format!("{provider}.headers[{i}].secretRef"))
                        .await?
                }
                (None, None) => return Err(format!("{provider}.headers[{i}]: no value set")),
            };
            out.headers.push((h.name.clone(), value));
        }
        Ok(out)
    }

    /// Whether the metric sets header `name` itself.
    pub(crate) fn has_header(&self, name: &str) -> bool {
        self.headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case(name))
    }

    /// Sends the request: `method` to `url` with `body` and the headers,
    /// an https server's certificate checked as the metric says. Through
    /// teal-notify's client: the egress policy of the process applies, an
    /// answer is read only as far as [`BODY_CAP`] and within the timeout.
    /// A 2xx answer's body; anything else is an error with the status and
    /// an excerpt.
    pub(crate) async fn send(
        &self,
        method: http::Method,
        url: &str,
        body: Option<Bytes>,
    ) -> Result<Bytes, String> {
        let headers: Vec<(&str, String)> = self
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect();
        let timeout = self.timeout.unwrap_or(TIMEOUT);
        let a = teal_notify::client::request_trusting(
            self.trust.as_ref(),
            method,
            url,
            body,
            &headers,
            timeout,
            BODY_CAP,
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
                "the answer is larger than {} KiB (one number is asked for)",
                BODY_CAP / 1024
            ));
        }
        Ok(a.body)
    }
}

/// `text` with the `{{field}}` placeholders replaced by `vars`, and
/// `{{now}}` / `{{now-DURATION}}` by the Unix time in seconds (now, or that
/// long ago). Unknown placeholders stay as they are.
pub(crate) fn fill(text: &str, vars: &QueryVars) -> String {
    let mut out = text.to_string();
    for (field, value) in [
        ("name", vars.name.as_str()),
        ("namespace", &vars.namespace),
        ("color", vars.color.as_str()),
        ("revision", &vars.revision),
        ("service", &vars.service),
    ] {
        out = out.replace(&format!("{{{{{field}}}}}"), value);
    }
    if out.contains("{{now") {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        out = fill_now(&out, now);
    }
    out
}

/// `{{now}}` and `{{now-DURATION}}` in `text` replaced, `now` being the
/// Unix time in seconds.
fn fill_now(text: &str, now: u64) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("{{now") {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        let Some(end) = tail.find("}}") else {
            out.push_str(tail);
            return out;
        };
        let inner = tail[2..end].trim();
        let value = match inner.strip_prefix("now") {
            Some("") => Some(now),
            Some(ago) => ago
                .trim_start()
                .strip_prefix('-')
                .and_then(|d| d.trim().parse::<teal_api::Duration>().ok())
                .map(|d| now.saturating_sub(d.std().as_secs())),
            None => None,
        };
        match value {
            Some(v) => out.push_str(&v.to_string()),
            None => out.push_str(&tail[..end + 2]),
        }
        rest = &tail[end + 2..];
    }
    out.push_str(rest);
    out
}

/// `s` percent-encoded as a query parameter value.
pub(crate) fn percent_encode(s: &str) -> String {
    encode_except(s, |b| b.is_ascii_alphanumeric() || b"-_.~".contains(&b))
}

/// `url` with the characters a URL cannot hold (spaces, quotes, braces,
/// non-ASCII…) percent-encoded; what a URL may hold, `%` escapes
/// included, is kept.
pub(crate) fn encode_url(url: &str) -> String {
    encode_except(url, |b| {
        b.is_ascii_alphanumeric() || b"-._~:/?#[]@!$&'()*+,;=%".contains(&b)
    })
}

fn encode_except(s: &str, keep: impl Fn(u8) -> bool) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if keep(b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use teal_core::Color;

    /// Secrets named by their environment variable: the value is `<env>-value`.
    pub(crate) struct Named;

    impl Secrets for Named {
        fn get<'a>(
            &'a self,
            r: &'a teal_api::hooks::SecretRef,
            _field: &'a str,
        ) -> crate::Reading<'a> {
            Box::pin(async move { Ok(format!("{}-value", r.env.as_deref().unwrap_or("?"))) })
        }
    }

    fn prometheus(yaml: &str) -> teal_api::PrometheusMetric {
        serde_saphyr::from_str(yaml).unwrap()
    }

    #[tokio::test]
    async fn credentials_and_headers_come_from_the_secrets() {
        let p = prometheus(
            "address: https://prom\nquery: up\ntimeout: 3s\nauth: {bearerTokenSecretRef: {env: TOKEN}}\nheaders: [{name: X-Scope-OrgID, secretRef: {env: TENANT}}, {name: X-A, value: b}]\n",
        );
        let r = Request::of(p.access(), "prometheus", &Named).await.unwrap();
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
        assert!(r.has_header("x-a") && !r.has_header("content-type"));
        let p = prometheus(
            "address: https://prom\nquery: up\ntls: {caSecretRef: {env: CA}}\nauth: {basic: {username: reader, passwordSecretRef: {env: PW}}}\n",
        );
        let r = Request::of(p.access(), "prometheus", &Named).await.unwrap();
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
    fn a_url_keeps_what_it_may_hold() {
        assert_eq!(
            encode_url("https://h:1/q?query=avg:x{service:shop} by {color}&a=%2F#f"),
            "https://h:1/q?query=avg:x%7Bservice:shop%7D%20by%20%7Bcolor%7D&a=%2F#f"
        );
        assert_eq!(encode_url("https://h/é\""), "https://h/%C3%A9%22");
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
            fill(
                "x{app=\"{{name}}\",ns=\"{{namespace}}\",c=\"{{color}}\",r=\"{{revision}}\",s=\"{{service}}\",o=\"{{other}}\"}",
                &vars
            ),
            "x{app=\"shop\",ns=\"prod\",c=\"green\",r=\"r2\",s=\"shop-svc\",o=\"{{other}}\"}"
        );
    }

    #[test]
    fn now_is_the_unix_time_and_may_go_back() {
        assert_eq!(
            fill_now("from={{now-5m}}&to={{now}}&x={{now-1h30m}}", 10_000),
            "from=9700&to=10000&x=4600"
        );
        assert_eq!(
            fill_now("{{now-soon}} {{nowish}} {{now", 10_000),
            "{{now-soon}} {{nowish}} {{now"
        );
        assert_eq!(fill_now("{{now - 10s}}", 5), "0");
    }
}
