//! Arbitrary bytes as an upstream's answer, behind a real router over
//! loopback: the router must answer the client with an HTTP/1 response or
//! close, never hang or crash, and still proxy a good exchange afterwards.
//! Each upstream connection reads one request head, writes the input and
//! closes, so a body that the input leaves open ends there.
#![no_main]

#[path = "../support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use teal_router::{Color, RouteTable, RouterConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Env {
    router: SocketAddr,
    answer: Arc<Mutex<Vec<u8>>>,
    _rt: tokio::runtime::Runtime,
}

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let rt = support::runtime();
        let answer = Arc::new(Mutex::new(Vec::new()));
        let shared = answer.clone();
        let router = rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let upstream = listener.local_addr().unwrap();
            tokio::spawn(async move {
                while let Ok((mut s, _)) = listener.accept().await {
                    let bytes = shared.lock().unwrap().clone();
                    tokio::spawn(async move {
                        let mut head = Vec::new();
                        let mut buf = [0u8; 4096];
                        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                            match s.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => head.extend_from_slice(&buf[..n]),
                            }
                        }
                        let _ = s.write_all(&bytes).await;
                        let _ = s.shutdown().await;
                    });
                }
            });
            let table = RouteTable {
                active: Color::Blue,
                preview: None,
                endpoints: BTreeMap::from([(Color::Blue, vec![upstream])]),
            };
            let config = RouterConfig {
                workers: 1,
                upstream_timeout: Duration::from_secs(5),
                upstream_body_timeout: Duration::from_secs(5),
                ..RouterConfig::default()
            };
            support::serve(config, table).await
        });
        Env {
            router,
            answer,
            _rt: rt,
        }
    })
}

/// One request with `answer` as the upstream's reply; what the client got.
fn exchange(env: &Env, answer: &[u8]) -> Vec<u8> {
    *env.answer.lock().unwrap() = answer.to_vec();
    let mut s = TcpStream::connect(env.router).expect("the router accepts connections");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(b"GET /fuzz HTTP/1.1\r\nhost: fuzz\r\nconnection: close\r\n\r\n")
        .expect("the router reads a request");
    let mut out = Vec::new();
    let read = s.read_to_end(&mut out);
    assert!(
        !matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut),
        "the router neither answered nor closed for {:?}",
        String::from_utf8_lossy(&answer[..answer.len().min(200)])
    );
    out
}

fuzz_target!(|data: &[u8]| {
    let env = env();
    let got = exchange(env, data);
    if !got.is_empty() {
        assert!(
            got.starts_with(b"HTTP/1.1 "),
            "not an HTTP/1.1 response: {:?} for upstream bytes {:?}",
            String::from_utf8_lossy(&got[..got.len().min(200)]),
            String::from_utf8_lossy(&data[..data.len().min(200)])
        );
    }
    let ok = exchange(env, b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
    let text = String::from_utf8_lossy(&ok);
    assert!(
        text.starts_with("HTTP/1.1 200") && text.ends_with("\r\n\r\nok"),
        "the router no longer proxies a good exchange after {:?}: {text:?}",
        String::from_utf8_lossy(&data[..data.len().min(200)])
    );
});
