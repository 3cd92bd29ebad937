//! The read-only dashboard of local mode, served on the daemon's control
//! port: `GET /` is one HTML page (inline JS, no build step) that polls
//! `GET /dashboard.json` every second — the release (phase, colors,
//! analysis, history) and the last minutes of per-color traffic counted by
//! the router, so a page opened after a switch still shows it. Production
//! and preview traffic are counted apart: a request the preview route sends
//! to the idle color is preview traffic of that color, never production.
//!
//! Both need no token: they change nothing, the control port is loopback
//! only, and requests whose Host is not a loopback name are refused (so a
//! web page cannot read them through DNS rebinding). Pids, ports and
//! commands of the app's processes are left out.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use serde::Serialize;
use teal_core::Color;
use teal_serve::page::{page, respond};

use crate::engine::Engine;

const PAGE: &str = include_str!("local.html");
/// Samples kept: five minutes at one per second.
const SAMPLES: usize = 300;
const EVERY: Duration = Duration::from_secs(1);

/// Cumulative counters of one color at one instant.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Counts {
    pub requests: u64,
    pub errors: u64,
}

/// The router's counters at one instant (ms since the Unix epoch):
/// production traffic of each color, and preview traffic (requests the
/// preview route sent to a color that is not live).
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub at: u64,
    pub production: ColorCounts,
    pub preview: ColorCounts,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ColorCounts {
    pub blue: Counts,
    pub green: Counts,
}

/// Keeps the traffic history and answers the dashboard's requests.
#[derive(Clone)]
pub struct Dashboard {
    engine: Engine,
    samples: Arc<Mutex<VecDeque<Sample>>>,
}

/// Whether the Host header names a loopback address (or none is given).
pub fn loopback_host<B>(req: &Request<B>) -> bool {
    let Some(host) = req.headers().get(http::header::HOST) else {
        return true;
    };
    let Ok(host) = host.to_str() else {
        return false;
    };
    let name = match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Dashboard {
    /// Starts sampling the router's counters once a second.
    pub fn start(engine: Engine) -> Dashboard {
        let d = Dashboard {
            engine,
            samples: Arc::default(),
        };
        let weak = Arc::downgrade(&d.samples);
        let router = d.engine.router.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(EVERY);
            loop {
                tick.tick().await;
                let Some(samples) = weak.upgrade() else {
                    return;
                };
                let counts = |stats: &dyn Fn(Color) -> teal_core::ColorStats| {
                    let of = |c: Color| {
                        let s = stats(c);
                        Counts {
                            requests: s.requests(),
                            errors: s.server_errors(),
                        }
                    };
                    ColorCounts {
                        blue: of(Color::Blue),
                        green: of(Color::Green),
                    }
                };
                let sample = Sample {
                    at: now_ms(),
                    production: counts(&|c| router.production_stats(c)),
                    preview: counts(&|c| router.preview_stats(c)),
                };
                let mut q = samples.lock().unwrap_or_else(|e| e.into_inner());
                if q.len() == SAMPLES {
                    q.pop_front();
                }
                q.push_back(sample);
            }
        });
        d
    }

    /// The traffic history, oldest first.
    pub fn samples(&self) -> Vec<Sample> {
        let q = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        q.iter().cloned().collect()
    }

    /// What `/dashboard.json` answers: the status without process details,
    /// and the samples.
    pub fn snapshot(&self) -> serde_json::Value {
        let mut status = serde_json::to_value(&*self.engine.status()).unwrap_or_default();
        if let Some(colors) = status.get_mut("colors").and_then(|c| c.as_object_mut()) {
            for detail in colors.values_mut() {
                if let Some(d) = detail.as_object_mut() {
                    d.remove("replicas");
                }
            }
        }
        serde_json::json!({ "status": status, "samples": self.samples() })
    }

    /// Answers `GET /` and `GET /dashboard.json`; `None` for any other request.
    pub fn route<B>(&self, req: &Request<B>) -> Option<Response<Full<Bytes>>> {
        let path = req.uri().path();
        if req.method() != Method::GET || !matches!(path, "/" | "/dashboard.json") {
            return None;
        }
        if !loopback_host(req) {
            return Some(respond(
                StatusCode::FORBIDDEN,
                "text/plain; charset=utf-8",
                "the dashboard answers only to a loopback Host (127.0.0.1, [::1] or localhost)\n",
            ));
        }
        Some(match path {
            "/" => respond(StatusCode::OK, "text/html; charset=utf-8", page(PAGE)),
            _ => respond(
                StatusCode::OK,
                "application/json",
                serde_json::to_vec(&self.snapshot()).unwrap_or_default(),
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_host(host: &str) -> Request<()> {
        Request::builder()
            .uri("/")
            .header(http::header::HOST, host)
            .body(())
            .unwrap()
    }

    #[test]
    fn only_loopback_hosts_are_served() {
        for ok in [
            "127.0.0.1:7000",
            "localhost:1",
            "[::1]:80",
            "127.3.2.1",
            "LOCALHOST",
        ] {
            assert!(loopback_host(&with_host(ok)), "{ok}");
        }
        for bad in [
            "evil.example:7000",
            "10.0.0.1:80",
            "0.0.0.0",
            "localhost.evil.example",
        ] {
            assert!(!loopback_host(&with_host(bad)), "{bad}");
        }
    }

    #[test]
    fn the_page_carries_the_stylesheet() {
        let p = page(PAGE);
        assert!(!p.contains("/*STYLE*/") && !p.contains("/*SCRIPT*/"));
        assert!(p.contains("function poll("));
        assert!(p.contains("--blue"));
    }
}
