//! A real Prometheus (the system package) on a free loopback port, with a configuration the
//! test writes.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use serde::Deserialize;

use crate::Error;
use crate::supervisor::{self, Supervised};

const START_TIMEOUT: Duration = Duration::from_secs(90);

/// A running Prometheus; stopped when dropped.
pub struct Prometheus {
    url: String,
    supervised: Supervised,
}

/// One series of an instant-query result.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The series' labels, `__name__` included.
    pub metric: BTreeMap<String, String>,
    /// Its value at the query time.
    pub value: f64,
}

/// Starts Prometheus with `config_yaml` as its configuration file and returns once it is
/// ready to answer queries. Scrape targets must be on loopback.
pub async fn start(config_yaml: &str) -> Result<Prometheus, Error> {
    start_with(config_yaml, None).await
}

/// The user [`start_secured`]'s Prometheus lets in.
pub const USER: &str = "reader";
/// Its password.
pub const PASSWORD: &str = "analysis-reader-pw";
/// bcrypt of [`PASSWORD`] (cost 10), as Prometheus' web configuration wants it.
const PASSWORD_BCRYPT: &str = "$2b$10$/sPT0EEHPHBLe44NNPGM4.DQiwCLB8/exNOYgc8k1I/CemssWO91a";

/// [`start`], served the way Prometheus is often run in production: over
/// TLS, with a certificate for 127.0.0.1 signed by a CA of its own
/// (returned as PEM), and basic auth ([`USER`], [`PASSWORD`]), set up by
/// Prometheus' own `--web.config.file`. Its URL is `https://`;
/// [`Prometheus::query`] does not reach it.
pub async fn start_secured(config_yaml: &str) -> Result<(Prometheus, String), Error> {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let rcgen = |e: rcgen::Error| Error::Prometheus(format!("making its certificate: {e}"));
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(rcgen)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca =
        CertifiedIssuer::self_signed(ca, KeyPair::generate().map_err(rcgen)?).map_err(rcgen)?;
    let key = KeyPair::generate().map_err(rcgen)?;
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .map_err(rcgen)?
        .signed_by(&key, &ca)
        .map_err(rcgen)?;
    let web = Web {
        config: format!(
            "tls_server_config:\n  cert_file: cert.pem\n  key_file: key.pem\nbasic_auth_users:\n  {USER}: '{PASSWORD_BCRYPT}'\n"
        ),
        files: vec![("cert.pem", cert.pem()), ("key.pem", key.serialize_pem())],
        ready_auth: format!("{USER}:{PASSWORD}"),
    };
    let p = start_with(config_yaml, Some(web)).await?;
    Ok((p, ca.pem()))
}

/// Prometheus' web configuration, the files it names (beside it) and the
/// credentials of the readiness probe.
struct Web {
    config: String,
    files: Vec<(&'static str, String)>,
    ready_auth: String,
}

async fn start_with(config_yaml: &str, web: Option<Web>) -> Result<Prometheus, Error> {
    let dir = supervisor::state_dir("prometheus")?;
    let config = dir.join("prometheus.yml");
    let write = |path: std::path::PathBuf, text: &str| {
        std::fs::write(&path, text).map_err(|e| Error::io(format!("writing {}", path.display()), e))
    };
    write(config.clone(), config_yaml)?;
    let mut options = Vec::new();
    if let Some(web) = web {
        for (name, text) in &web.files {
            write(dir.join(name), text)?;
        }
        let path = dir.join("web.yml");
        write(path.clone(), &web.config)?;
        options.extend([
            "--web-config".to_string(),
            path.display().to_string(),
            "--ready-auth".to_string(),
            web.ready_auth,
        ]);
    }
    let supervised = tokio::task::spawn_blocking(move || {
        supervisor::start(
            "prometheus",
            "prometheus",
            &options,
            dir,
            &[config.as_path()],
            START_TIMEOUT,
        )
    })
    .await
    .map_err(|e| Error::Prometheus(format!("starting it panicked: {e}")))??;
    Ok(Prometheus {
        url: supervised.detail.clone(),
        supervised,
    })
}

impl Prometheus {
    /// The base URL, e.g. `http://127.0.0.1:40123`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Where this Prometheus keeps its data and logs.
    pub fn state_dir(&self) -> &Path {
        &self.supervised.dir
    }

    /// Runs an instant query (`/api/v1/query`) and returns the series of its vector result.
    pub async fn query(&self, promql: &str) -> Result<Vec<Sample>, Error> {
        let uri = format!("{}/api/v1/query?query={}", self.url, encode(promql));
        let body = self.get(&uri).await?;
        parse_vector(&body)
    }

    /// GETs `uri` and returns the body, failing on a non-2xx status.
    async fn get(&self, uri: &str) -> Result<Bytes, Error> {
        crate::http::send("GET", uri, None)
            .await
            .map_err(Error::Prometheus)
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.supervised.stop();
    }
}

#[derive(Deserialize)]
struct QueryResponse {
    status: String,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    data: Option<QueryData>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct QueryData {
    result_type: String,
    result: Vec<VectorItem>,
}

#[derive(Deserialize)]
struct VectorItem {
    metric: BTreeMap<String, String>,
    value: (f64, String),
}

fn parse_vector(body: &[u8]) -> Result<Vec<Sample>, Error> {
    let response: QueryResponse = serde_json::from_slice(body).map_err(|e| {
        Error::Prometheus(format!(
            "unexpected answer ({e}): {}",
            String::from_utf8_lossy(body)
        ))
    })?;
    if response.status != "success" {
        return Err(Error::Prometheus(format!(
            "query failed: {}",
            response.error.unwrap_or(response.status)
        )));
    }
    let data = response
        .data
        .ok_or_else(|| Error::Prometheus("successful answer without data".to_owned()))?;
    if data.result_type != "vector" {
        return Err(Error::Prometheus(format!(
            "expected a vector result, got {}",
            data.result_type
        )));
    }
    data.result
        .into_iter()
        .map(|item| {
            let value =
                item.value.1.parse::<f64>().map_err(|e| {
                    Error::Prometheus(format!("sample value {:?}: {e}", item.value.1))
                })?;
            Ok(Sample {
                metric: item.metric,
                value,
            })
        })
        .collect()
}

/// Percent-encodes a query-string value (everything but RFC 3986 unreserved characters).
fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len() * 3);
    for byte in value.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(byte as char)
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_promql() {
        assert_eq!(
            encode(r#"sum(rate(x{a="b c"}[1m]))"#),
            "sum%28rate%28x%7Ba%3D%22b%20c%22%7D%5B1m%5D%29%29"
        );
    }

    #[test]
    fn parses_a_vector_answer() {
        let body = br#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"__name__":"up","job":"j"},"value":[1700000000.5,"1"]}]}}"#;
        let samples = parse_vector(body).unwrap();
        assert_eq!(samples.len(), 1);
        assert_eq!(samples[0].metric["job"], "j");
        assert_eq!(samples[0].value, 1.0);
    }

    #[test]
    fn reports_query_errors() {
        let body = br#"{"status":"error","errorType":"bad_data","error":"parse error"}"#;
        let err = parse_vector(body).unwrap_err().to_string();
        assert!(err.contains("parse error"), "{err}");
    }
}
