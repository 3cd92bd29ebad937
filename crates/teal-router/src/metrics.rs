//! Prometheus text exposition of the router's per-color figures.

use std::fmt::Write;

use teal_core::{Color, LATENCY_BUCKETS_SECONDS};

use crate::Router;

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

pub(crate) fn render(router: &Router) -> String {
    let mut out = String::with_capacity(4096);
    let stats: Vec<_> = Color::ALL.iter().map(|c| (*c, router.stats(*c))).collect();
    let (generation, table) = router.try_current();

    let _ = writeln!(
        out,
        "# HELP teal_router_requests_total Responses sent, by color and status class.\n# TYPE teal_router_requests_total counter"
    );
    for (color, s) in &stats {
        for (i, class) in CLASSES.iter().enumerate() {
            let _ = writeln!(
                out,
                "teal_router_requests_total{{color=\"{color}\",class=\"{class}\"}} {}",
                s.responses_by_class[i]
            );
        }
    }

    let _ = writeln!(
        out,
        "# HELP teal_router_preview_requests_total The part of teal_router_requests_total the preview route sent to a color other than the live one (production is the rest), by color and status class.\n# TYPE teal_router_preview_requests_total counter"
    );
    for color in Color::ALL {
        let s = router.preview_stats(color);
        for (i, class) in CLASSES.iter().enumerate() {
            let _ = writeln!(
                out,
                "teal_router_preview_requests_total{{color=\"{color}\",class=\"{class}\"}} {}",
                s.responses_by_class[i]
            );
        }
    }

    let _ = writeln!(
        out,
        "# HELP teal_router_request_duration_seconds Time from request to response headers.\n# TYPE teal_router_request_duration_seconds histogram"
    );
    for (color, s) in &stats {
        let mut cumulative = 0u64;
        for (i, bound) in LATENCY_BUCKETS_SECONDS.iter().enumerate() {
            cumulative += s.latency_counts.get(i).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "teal_router_request_duration_seconds_bucket{{color=\"{color}\",le=\"{bound}\"}} {cumulative}"
            );
        }
        let total: u64 = s.latency_counts.iter().sum();
        let _ = writeln!(
            out,
            "teal_router_request_duration_seconds_bucket{{color=\"{color}\",le=\"+Inf\"}} {total}"
        );
        let _ = writeln!(
            out,
            "teal_router_request_duration_seconds_sum{{color=\"{color}\"}} {}",
            s.latency_sum_us as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "teal_router_request_duration_seconds_count{{color=\"{color}\"}} {total}"
        );
    }

    let mut counter = |name: &str, help: &str, value: &dyn Fn(Color) -> u64, kind: &str| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for color in Color::ALL {
            let _ = writeln!(out, "{name}{{color=\"{color}\"}} {}", value(color));
        }
    };
    counter(
        "teal_router_router_errors_total",
        "Responses the router produced itself (502, 503, 504).",
        &|c| stats[crate::idx(c)].1.router_errors,
        "counter",
    );
    counter(
        "teal_router_upstream_connect_errors_total",
        "Failed connection attempts to upstream endpoints.",
        &|c| stats[crate::idx(c)].1.connect_errors,
        "counter",
    );
    counter(
        "teal_router_upstream_retries_total",
        "Requests sent to another endpoint of their color after a failed connect.",
        &|c| router.retries_and_ejections(c).0,
        "counter",
    );
    counter(
        "teal_router_upstream_ejections_total",
        "Endpoints ejected for a cooldown after a failed connect.",
        &|c| router.retries_and_ejections(c).1,
        "counter",
    );
    counter(
        "teal_router_upstream_ejected_endpoints",
        "Endpoints of the installed table skipped now (cooling down).",
        &|c| router.ejected_endpoints(c).len() as u64,
        "gauge",
    );
    counter(
        "teal_router_in_flight",
        "Requests being proxied plus open upgraded connections.",
        &|c| router.in_flight(c),
        "gauge",
    );
    counter(
        "teal_router_upgrades_open",
        "Open upgraded (e.g. WebSocket) connections.",
        &|c| router.upgrades_open(c),
        "gauge",
    );
    counter(
        "teal_router_upstream_idle_connections",
        "Idle pooled upstream connections.",
        &|c| router.idle_upstream_connections(c) as u64,
        "gauge",
    );
    counter(
        "teal_router_active_color",
        "1 for the color that receives default traffic.",
        &|c| u64::from(table.as_ref().is_some_and(|t| t.active == c)),
        "gauge",
    );
    let _ = writeln!(
        out,
        "# HELP teal_router_route_generation Generation of the installed route table (0: none).\n# TYPE teal_router_route_generation gauge\nteal_router_route_generation {generation}"
    );
    out
}
