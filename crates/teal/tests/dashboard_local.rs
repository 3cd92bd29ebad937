//! Local mode's dashboard in a real browser: a daemon with the sample app
//! under steady traffic releases v2; headless Chromium opens the dashboard
//! afterwards and shows the phase, the live color and, in the chart, the
//! traffic of both colors around the switch.

mod browser_support;
mod local_support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use browser_support::{Picture, dump_dom, http_get, screenshot};
use local_support::{cli, get, healthy_daemon, text, wait_until};

/// `GET /dashboard.json` of the daemon.
fn dashboard(control: SocketAddr) -> serde_json::Value {
    let (status, body) = http_get(control, "/dashboard.json", "127.0.0.1");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Cumulative requests of `color` in the newest sample.
fn counted(d: &serde_json::Value, color: &str) -> u64 {
    d["samples"]
        .as_array()
        .and_then(|s| s.last())
        .and_then(|s| s["colors"][color]["requests"].as_u64())
        .unwrap_or(0)
}

#[test]
fn the_dashboard_shows_the_release_and_the_traffic_of_both_colors() {
    let setup = healthy_daemon("dashboard", "");
    let control: SocketAddr = std::fs::read_to_string(setup.daemon.state_dir.join("control.addr"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();

    // Without a token the dashboard answers, the control API does not, and a
    // non-loopback Host (DNS rebinding) is refused.
    let (status, page) = http_get(control, "/", "127.0.0.1");
    assert_eq!(status, 200);
    assert!(page.contains("<canvas id=\"chart\""));
    assert_eq!(http_get(control, "/v1/status", "127.0.0.1").0, 401);
    let (status, body) = http_get(control, "/dashboard.json", "rebound.example:80");
    assert_eq!(status, 403, "{body}");
    // No process details leave through the page.
    let d = dashboard(control);
    assert!(
        d["status"]["colors"]["blue"].get("replicas").is_none(),
        "{d}"
    );

    // Steady production traffic, as in the demo.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = std::thread::spawn({
        let stop = stop.clone();
        let port = setup.port;
        move || {
            while !stop.load(Ordering::Relaxed) {
                let _ = get(port, &[]);
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    });
    wait_until(Duration::from_secs(30), "blue traffic sampled", || {
        (counted(&dashboard(control), "blue") > 20).then_some(())
    });
    let o = cli(&setup.config, &["deploy", "--revision", "v2"]);
    assert!(o.status.success(), "{}", text(&o));
    let after_switch = counted(&dashboard(control), "green");
    wait_until(Duration::from_secs(30), "green traffic sampled", || {
        (counted(&dashboard(control), "green") > after_switch + 20).then_some(())
    });
    stop.store(true, Ordering::Relaxed);
    traffic.join().unwrap();

    let url = format!("http://{control}/");
    let dom = dump_dom(&url, &setup.dir.0);
    let phase = dom
        .split("id=\"phase\"")
        .nth(1)
        .and_then(|s| s.split('>').nth(1))
        .and_then(|s| s.split('<').next())
        .unwrap_or_default();
    assert_eq!(phase, "Healthy", "{dom}");
    let live = dom.split("id=\"live\"").nth(1).unwrap_or_default();
    assert!(
        live.starts_with("><span class=\"chip green\">green</span> <span>v2</span>"),
        "{live}"
    );
    assert!(dom.contains("<td>v2</td>"), "history row of v2: {dom}");
    assert!(dom.contains("<td>promoted</td>"), "{dom}");
    assert!(dom.contains("updated "), "the page never got data: {dom}");

    let png = screenshot(&url, &setup.dir.0, "dashboard.png");
    let keep = std::env::temp_dir().join("teal-dashboard-local.png");
    std::fs::copy(&png, &keep).unwrap();
    let pic = Picture::open(&png);
    assert_eq!((pic.width, pic.height), (1280, 900));
    assert!(pic.distinct_colors() > 50, "a blank page");
    // Both colors' lines are drawn in the chart (rows 200..470 of the page at
    // this window size: below the cards, above the legend; no chip is there).
    let blue = pic.count_near([0x2f, 0x6f, 0xde], 40, 200..470);
    let green = pic.count_near([0x1f, 0x9d, 0x55], 40, 200..470);
    assert!(
        blue > 300 && green > 300,
        "blue {blue}, green {green} pixels; screenshot kept at {}",
        keep.display()
    );
}
