//! Arbitrary bytes sent to a real router over loopback, in front of a real
//! upstream for each color, with a header and a cookie preview route. After
//! every input the router must still proxy a well-formed request, and what
//! it answered (if anything) must be an HTTP/1 response.
#![no_main]

#[path = "../support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use libfuzzer_sys::fuzz_target;
use teal_router::{Color, CookieMatch, HeaderMatch, PreviewRoute, RouteTable, RouterConfig};

struct Env {
    router: SocketAddr,
    _rt: tokio::runtime::Runtime,
}

/// An upstream that reads the whole request body and answers with its color.
async fn upstream(color: &'static str) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| async move {
                        let _ = req.into_body().collect().await;
                        Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(color))))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let rt = support::runtime();
        let router = rt.block_on(async {
            let blue = upstream("blue").await;
            let green = upstream("green").await;
            let table = RouteTable {
                active: Color::Blue,
                preview: Some(PreviewRoute {
                    color: Color::Green,
                    header: Some(HeaderMatch {
                        name: "x-teal-preview".into(),
                        value: "1".into(),
                    }),
                    cookie: Some(CookieMatch {
                        name: "teal".into(),
                        value: "green".into(),
                    }),
                }),
                endpoints: BTreeMap::from([(Color::Blue, vec![blue]), (Color::Green, vec![green])]),
            };
            let config = RouterConfig {
                workers: 1,
                ..RouterConfig::default()
            };
            support::serve(config, table).await
        });
        Env { router, _rt: rt }
    })
}

/// Sends `bytes`, closes the write side when `half_close`, reads until the
/// router closes.
fn exchange(addr: SocketAddr, bytes: &[u8], half_close: bool) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).expect("the router accepts connections");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    // The router may close early (bad request): a failed write is fine.
    let _ = s.write_all(bytes);
    if half_close {
        let _ = s.shutdown(Shutdown::Write);
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

fuzz_target!(|data: &[u8]| {
    let env = env();
    let answer = exchange(env.router, data, true);
    if !answer.is_empty() && !data.starts_with(b"PRI ") {
        assert!(
            answer.starts_with(b"HTTP/1."),
            "not an HTTP/1 response: {:?}",
            String::from_utf8_lossy(&answer[..answer.len().min(200)])
        );
    }
    let ok = exchange(
        env.router,
        b"GET /health HTTP/1.1\r\nhost: fuzz\r\nx-teal-preview: 1\r\nconnection: close\r\n\r\n",
        false,
    );
    let text = String::from_utf8_lossy(&ok);
    assert!(
        text.starts_with("HTTP/1.1 200") && text.ends_with("green"),
        "the router no longer proxies a good request after {:?}: {text:?}",
        String::from_utf8_lossy(data)
    );
});
