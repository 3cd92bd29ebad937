//! One HTTP client for hooks, notifiers and analysis queries: HTTP/1.1
//! over plain TCP or TLS (rustls, the system's CA roots, or for one call
//! the CA bundle it brings or no verification: [`Trust`]).

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock, RwLock};
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

/// How the certificate of an https server is checked, when not against
/// the system's CA certificates.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Trust {
    /// PEM CA certificates the server's certificate must chain to, in place
    /// of the system's.
    pub ca_pem: Option<Vec<u8>>,
    /// Accept any certificate (signatures are still checked).
    pub insecure_skip_verify: bool,
}

impl std::fmt::Debug for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trust")
            .field("ca_pem", &self.ca_pem.as_ref().map(|p| p.len()))
            .field("insecure_skip_verify", &self.insecure_skip_verify)
            .finish()
    }
}

/// A client for one call that checks certificates as `trust` says.
fn client_trusting(trust: &Trust) -> Result<Https, CallError> {
    let config = if trust.insecure_skip_verify {
        rustls::ClientConfig::builder()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(
                rustls::crypto::ring::default_provider(),
            )))
            .with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        if let Some(pem) = &trust.ca_pem {
            use rustls::pki_types::CertificateDer;
            use rustls::pki_types::pem::PemObject;
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| {
                    CallError::Transport(format!("the CA certificates are not PEM: {e}"))
                })?;
                roots.add(cert).map_err(|e| {
                    CallError::Transport(format!("a CA certificate is not usable: {e}"))
                })?;
            }
        }
        if roots.is_empty() {
            return Err(CallError::Transport(
                "the CA bundle holds no certificate".into(),
            ));
        }
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth()
    };
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http()
        .enable_http1()
        .build();
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

/// Accepts any server certificate; signatures of the handshake are still
/// verified, so the connection is encrypted, but not authenticated.
#[derive(Debug)]
struct AnyCertificate(rustls::crypto::CryptoProvider);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
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
    /// The [`Egress`] policy does not let the call out; never retried.
    #[error("not sent: {0}")]
    Denied(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Transport(String),
}

/// Which hosts calls may reach, for a process that sends them on behalf of
/// others (the Kubernetes controller calls the URLs anyone who may edit a
/// BlueGreen writes). Without a policy (see [`set_egress`]) every http(s)
/// URL is called.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Egress {
    /// When not empty, the only hosts called: host names (`hooks.example.com`),
    /// domains (`*.example.com`: any name below it), IP addresses and CIDR
    /// blocks (`10.1.0.0/16`). A host name is matched as written in the URL.
    pub allow: Vec<String>,
    /// Addresses never called (the Kubernetes API server's own), whatever
    /// `allow` says.
    pub deny: Vec<SocketAddr>,
}

/// The policy calls are checked against; `None` lets every call out.
pub fn set_egress(policy: Option<Egress>) {
    *egress().write().unwrap_or_else(|e| e.into_inner()) = policy.map(Arc::new);
}

fn egress() -> &'static RwLock<Option<Arc<Egress>>> {
    static E: OnceLock<RwLock<Option<Arc<Egress>>>> = OnceLock::new();
    E.get_or_init(Default::default)
}

/// An IP address or CIDR block; `None` for a host name or a domain.
fn net(rule: &str) -> Option<(IpAddr, u8)> {
    let (ip, bits) = match rule.split_once('/') {
        Some((ip, bits)) => (ip, Some(bits.parse::<u8>().ok()?)),
        None => (rule, None),
    };
    let ip: IpAddr = ip
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    Some((ip, bits.unwrap_or(max).min(max)))
}

fn in_net(ip: IpAddr, (net, bits): (IpAddr, u8)) -> bool {
    let (ip, net, width) = match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => (u32::from(a) as u128, u32::from(n) as u128, 32),
        (IpAddr::V6(a), IpAddr::V6(n)) => (u128::from(a), u128::from(n), 128),
        _ => return false,
    };
    let shift = width - u32::from(bits);
    bits == 0 || (ip >> shift) == (net >> shift)
}

/// Link-local addresses (169.254.0.0/16, fe80::/10): cloud metadata
/// services answer there.
fn link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => a.is_link_local(),
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => v4.is_link_local(),
            None => (a.segments()[0] & 0xffc0) == 0xfe80,
        },
    }
}

impl Egress {
    /// Whether `host` (as written in a URL) is in the allow-list.
    fn allows_host(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let ip: Option<IpAddr> = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .ok();
        self.allow.iter().any(|rule| {
            let rule = rule.trim().to_ascii_lowercase();
            match (net(&rule), ip) {
                (Some(n), Some(ip)) => in_net(ip, n),
                (Some(_), None) => false,
                (None, _) => match rule.strip_prefix("*.") {
                    Some(domain) => host.ends_with(&format!(".{domain}")),
                    None => host == rule,
                },
            }
        })
    }

    /// Why `addr` may not be called, if it may not.
    fn refuses(&self, addr: SocketAddr) -> Option<String> {
        let ip = addr.ip();
        if self.deny.contains(&addr) {
            return Some(format!("{addr} is the Kubernetes API server"));
        }
        let allowed_explicitly = self
            .allow
            .iter()
            .filter_map(|r| net(r.trim()))
            .any(|n| in_net(ip, n));
        (link_local(ip) && !allowed_explicitly).then(|| {
            format!("{ip} is a link-local address (allow it in the controller's egress allow-list to call it)")
        })
    }

    /// Checks a call to `uri`: its host against the allow-list, and every
    /// address the host resolves to now.
    async fn check(&self, uri: &http::Uri) -> Result<(), CallError> {
        let host = uri.host().ok_or(CallError::BadUrl)?;
        if !self.allow.is_empty() && !self.allows_host(host) {
            return Err(CallError::Denied(format!(
                "host {host} is not in the controller's egress allow-list"
            )));
        }
        let port = uri
            .port_u16()
            .unwrap_or(if uri.scheme_str() == Some("https") {
                443
            } else {
                80
            });
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let addrs: Vec<SocketAddr> = match bare.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => tokio::net::lookup_host((bare, port))
                .await
                .map_err(|e| CallError::Transport(format!("resolving {host}: {e}")))?
                .collect(),
        };
        for a in addrs {
            if let Some(why) = self.refuses(a) {
                return Err(CallError::Denied(format!("host {host}: {why}")));
            }
        }
        Ok(())
    }
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
    request_trusting(None, method, url, body, headers, timeout, cap).await
}

/// [`request`], checking an https server's certificate as `trust` says
/// (`None`: against the system's CA certificates).
pub async fn request_trusting(
    trust: Option<&Trust>,
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
    let policy = egress().read().unwrap_or_else(|e| e.into_inner()).clone();
    if let Some(policy) = policy {
        tokio::time::timeout(timeout, policy.check(&uri))
            .await
            .map_err(|_| CallError::Timeout(timeout))??;
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
    let own;
    let client = match trust {
        Some(t) => {
            own = client_trusting(t)?;
            &own
        }
        None => client(),
    };
    let call = async {
        let resp = client.request(req).await.map_err(|e| {
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
    fn the_allow_list_takes_names_domains_addresses_and_blocks() {
        let e = Egress {
            allow: vec![
                "hooks.example.com".into(),
                "*.corp.example".into(),
                "10.1.0.0/16".into(),
                "fd00::1".into(),
            ],
            deny: vec![],
        };
        assert!(e.allows_host("hooks.example.com"));
        assert!(e.allows_host("HOOKS.example.com."));
        assert!(!e.allows_host("evil-hooks.example.com"));
        assert!(e.allows_host("ci.corp.example"));
        assert!(!e.allows_host("corp.example"));
        assert!(e.allows_host("10.1.200.3"));
        assert!(!e.allows_host("10.2.0.1"));
        assert!(e.allows_host("[fd00::1]"));
        assert!(!e.allows_host("[fd00::2]"));
    }

    #[test]
    fn link_local_and_the_api_server_are_refused_unless_allowed() {
        let api: SocketAddr = "10.96.0.1:443".parse().unwrap();
        let e = Egress {
            allow: vec![],
            deny: vec![api],
        };
        assert!(e.refuses("169.254.169.254:80".parse().unwrap()).is_some());
        assert!(e.refuses("[fe80::1]:80".parse().unwrap()).is_some());
        assert!(
            e.refuses("[::ffff:169.254.1.1]:80".parse().unwrap())
                .is_some()
        );
        assert!(e.refuses(api).is_some());
        assert!(e.refuses("10.96.0.1:8080".parse().unwrap()).is_none());
        assert!(e.refuses("10.1.2.3:80".parse().unwrap()).is_none());
        let metadata_allowed = Egress {
            allow: vec!["169.254.169.254".into()],
            deny: vec![api],
        };
        assert!(
            metadata_allowed
                .refuses("169.254.169.254:80".parse().unwrap())
                .is_none()
        );
        assert!(metadata_allowed.refuses(api).is_some());
    }

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
