//! TLS on the client listener of a real `teal router`: HTTP/1.1 and HTTP/2
//! chosen by ALPN, certificate reload on SIGHUP, bad files refused, and
//! cutover under TLS load with zero failed requests.

mod router_support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use router_support::*;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// A CA and a server certificate it signed for `localhost` and 127.0.0.1,
/// written as `cert.pem` (leaf, then CA) and `key.pem` into `dir`; returns
/// the CA certificate PEM.
fn issue(dir: &Path, ca_name: &str) -> String {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, ca_name);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    std::fs::write(dir.join("cert.pem"), format!("{}{}", leaf.pem(), ca.pem())).unwrap();
    std::fs::write(dir.join("key.pem"), leaf_key.serialize_pem()).unwrap();
    ca.pem()
}

/// A TLS client trusting only `ca_pem`, offering `alpn`.
fn connector(ca_pem: &str, alpn: &[&[u8]]) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    TlsConnector::from(Arc::new(config))
}

async fn tls(connector: &TlsConnector, addr: SocketAddr) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

fn echo_request() -> Request<Empty<Bytes>> {
    Request::get("/echo")
        .header("host", "teal.test")
        .body(Empty::new())
        .unwrap()
}

async fn json(resp: http::Response<hyper::body::Incoming>) -> (StatusCode, serde_json::Value) {
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or_default())
}

fn tls_router(dir: &Path, routes: &str) -> RouterProc {
    let cert = dir.join("cert.pem").display().to_string();
    let key = dir.join("key.pem").display().to_string();
    router(Some(routes), &["--tls-cert", &cert, "--tls-key", &key])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_picks_http1_or_h2_and_sighup_reloads_the_certificate() {
    let blue = app("blue", "v1");
    let green = app("green", "v2");
    let dir = temp_dir();
    let ca = issue(&dir, "teal test CA one");
    let r = tls_router(&dir, &table("blue", blue.addr, green.addr));

    // HTTP/1.1 by ALPN.
    let stream = tls(&connector(&ca, &[b"http/1.1"]), r.proxy).await.unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (mut h1, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    for _ in 0..3 {
        h1.ready().await.unwrap();
        let (status, body) = json(h1.send_request(echo_request()).await.unwrap()).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["color"], "blue");
        assert_eq!(body["headers"]["x-forwarded-proto"][0], "https");
    }

    // HTTP/2 by ALPN (the router offers h2 first).
    let stream = tls(&connector(&ca, &[b"h2", b"http/1.1"]), r.proxy)
        .await
        .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (h2, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut streams = Vec::new();
    for _ in 0..8 {
        let mut h2 = h2.clone();
        streams.push(tokio::spawn(async move {
            let req = Request::get("https://teal.test/echo")
                .body(Empty::<Bytes>::new())
                .unwrap();
            let resp = h2.send_request(req).await.unwrap();
            assert_eq!(resp.version(), http::Version::HTTP_2);
            json(resp).await
        }));
    }
    for s in streams {
        let (status, body) = s.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["color"], "blue");
        assert_eq!(body["headers"]["x-forwarded-proto"][0], "https");
    }

    // Cleartext on the TLS port is not served.
    let resp = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        let stream = TcpStream::connect(r.proxy).await.unwrap();
        let (mut s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        s.send_request(echo_request()).await
    })
    .await
    .expect("the router closes a cleartext connection on its TLS port");
    assert!(resp.is_err(), "cleartext request got {resp:?}");

    // A broken key file on SIGHUP: the current certificate stays.
    std::fs::write(dir.join("key.pem"), "not a key").unwrap();
    let hup = |pid: u32| {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGHUP,
        )
        .unwrap()
    };
    hup(r.proc.pid());
    let old = connector(&ca, &[b"http/1.1"]);
    assert!(tls(&old, r.proxy).await.is_ok());

    // A new certificate from another CA on SIGHUP: new connections get it.
    let ca2 = issue(&dir, "teal test CA two");
    hup(r.proc.pid());
    let new = connector(&ca2, &[b"http/1.1"]);
    eventually("the reloaded certificate is served", || async {
        tls(&new, r.proxy).await.is_ok()
    })
    .await;
    assert!(
        tls(&old, r.proxy).await.is_err(),
        "the old CA no longer verifies"
    );
    // The connection made before the reload keeps working.
    h1.ready().await.unwrap();
    let (status, _) = json(h1.send_request(echo_request()).await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_certificate_files_are_refused_naming_the_file() {
    let dir = temp_dir();
    issue(&dir, "teal test CA");
    let other = temp_dir();
    issue(&other, "another CA");
    let run = |cert: &Path, key: &Path| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_teal"))
            .args(["router", "--listen", "127.0.0.1:0", "--admin"])
            .arg(format!("unix:{}", dir.join("admin.sock").display()))
            .arg("--tls-cert")
            .arg(cert)
            .arg("--tls-key")
            .arg(key)
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = run(&dir.join("missing.pem"), &dir.join("key.pem"));
    assert!(
        err.contains("certificate file") && err.contains("missing.pem"),
        "{err}"
    );
    let err = run(&dir.join("key.pem"), &dir.join("key.pem"));
    assert!(err.contains("no certificate found"), "{err}");
    let err = run(&dir.join("cert.pem"), &dir.join("cert.pem"));
    assert!(
        err.contains("key file") && err.contains("no private key"),
        "{err}"
    );
    let err = run(&dir.join("cert.pem"), &other.join("key.pem"));
    assert!(err.contains("does not match the certificate"), "{err}");

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_teal"))
        .args(["router", "--tls-cert"])
        .arg(dir.join("cert.pem"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tls-key"));
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_dir_all(other);
}

struct Sample {
    start: Instant,
    end: Instant,
    color: String,
}

/// Requests back to back on one TLS connection (HTTP/1.1 or HTTP/2 by
/// ALPN) until `stop`; every answer must be a 200 from a known color.
async fn tls_client(
    connector: TlsConnector,
    proxy: SocketAddr,
    stop: Arc<AtomicBool>,
) -> Result<Vec<Sample>, String> {
    let stream = tls(&connector, proxy).await.map_err(|e| e.to_string())?;
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    let io = TokioIo::new(stream);
    let mut samples = Vec::new();
    let check = |resp: http::Response<hyper::body::Incoming>, start| async move {
        let (status, body) = json(resp).await;
        if status != StatusCode::OK {
            return Err(format!("status {status}: {body}"));
        }
        Ok(Sample {
            start,
            end: Instant::now(),
            color: body["color"].as_str().unwrap_or_default().to_string(),
        })
    };
    if h2 {
        let (mut s, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        while !stop.load(Ordering::Relaxed) {
            let start = Instant::now();
            let resp = s
                .send_request(
                    Request::get("https://teal.test/echo")
                        .body(Empty::<Bytes>::new())
                        .unwrap(),
                )
                .await
                .map_err(|e| format!("h2 request failed: {e}"))?;
            samples.push(check(resp, start).await?);
        }
    } else {
        let (mut s, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        while !stop.load(Ordering::Relaxed) {
            s.ready()
                .await
                .map_err(|e| format!("h1 connection closed: {e}"))?;
            let start = Instant::now();
            let resp = s
                .send_request(echo_request())
                .await
                .map_err(|e| format!("h1 request failed: {e}"))?;
            samples.push(check(resp, start).await?);
        }
    }
    Ok(samples)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cutover_under_tls_load_fails_nothing_and_is_exact() {
    let blue = app("blue", "v1");
    let green = app("green", "v2");
    let dir = temp_dir();
    let ca = issue(&dir, "teal test CA");
    let r = tls_router(&dir, &table("blue", blue.addr, green.addr));

    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for i in 0..24 {
        let alpn: &[&[u8]] = if i % 3 == 0 { &[b"h2"] } else { &[b"http/1.1"] };
        clients.push(tokio::spawn(tls_client(
            connector(&ca, alpn),
            r.proxy,
            stop.clone(),
        )));
    }
    let swaps = swap_back_and_forth(r.admin, blue.addr, green.addr, 20).await;
    stop.store(true, Ordering::Relaxed);

    let mut samples = Vec::new();
    for c in clients {
        let done = c.await.unwrap().expect("a TLS client saw a failed request");
        samples.extend(done.into_iter().map(|s| (s.start, s.end, s.color)));
    }
    let checked = check_exact(&samples, "blue", &swaps);
    assert!(
        checked > 200,
        "too few requests to judge: {checked} of {}",
        samples.len()
    );
    let _ = std::fs::remove_dir_all(dir);
}
