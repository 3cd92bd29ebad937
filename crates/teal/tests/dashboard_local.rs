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
use local_support::{PreviewTraffic, cli, get, healthy_daemon, text, wait_until};

/// `GET /dashboard.json` of the daemon.
fn dashboard(control: SocketAddr) -> serde_json::Value {
    let (status, body) = http_get(control, "/dashboard.json", "127.0.0.1");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Cumulative `traffic` (production or preview) requests of `color` in the
/// newest sample.
fn counted_as(d: &serde_json::Value, traffic: &str, color: &str) -> u64 {
    let newest = d["samples"].as_array().and_then(|s| s.last());
    let n = newest.map(|s| &s[traffic][color]["requests"]);
    n.and_then(|n| n.as_u64())
        .unwrap_or_else(|| panic!("no {traffic} count of {color} in {newest:?}"))
}

/// Cumulative production requests of `color` in the newest sample.
fn counted(d: &serde_json::Value, color: &str) -> u64 {
    counted_as(d, "production", color)
}

fn control_of(setup: &local_support::Setup) -> SocketAddr {
    std::fs::read_to_string(setup.daemon.state_dir.join("control.addr"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Production requests in a loop until `stop`.
fn production_traffic(port: u16, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let _ = get(port, &[]);
            std::thread::sleep(Duration::from_millis(10));
        }
    })
}

#[test]
fn preview_requests_count_as_preview_of_the_idle_color_not_as_its_production() {
    let setup = healthy_daemon("dashpreview", "promotion: {mode: manual}\n");
    let control = control_of(&setup);
    let o = cli(&setup.config, &["deploy", "--revision", "v2", "--no-wait"]);
    assert!(o.status.success(), "{}", text(&o));
    setup.daemon.wait_phase("AwaitingPromotion");

    // Production to blue and preview to green, both steady.
    let stop = Arc::new(AtomicBool::new(false));
    let production = production_traffic(setup.port, stop.clone());
    let preview = PreviewTraffic::start(setup.port);
    let before = dashboard(control);
    wait_until(Duration::from_secs(30), "preview traffic sampled", || {
        let d = dashboard(control);
        (counted_as(&d, "preview", "green") > counted_as(&before, "preview", "green") + 20
            && counted(&d, "blue") > counted(&before, "blue") + 20)
            .then_some(())
    });
    drop(preview);
    stop.store(true, Ordering::Relaxed);
    production.join().unwrap();

    // Not one production request reached green before the switch, and no
    // preview request counted as blue's.
    let d = dashboard(control);
    assert_eq!(counted(&d, "green"), 0, "{d}");
    assert_eq!(counted_as(&d, "preview", "blue"), 0, "{d}");
    assert_eq!(d["status"]["phase"], "AwaitingPromotion");
    for s in d["samples"].as_array().unwrap() {
        for traffic in ["production", "preview"] {
            for color in ["blue", "green"] {
                assert_eq!(s[traffic][color]["errors"], 0, "no 5xx: {s}");
            }
        }
    }

    // After the switch green's production traffic is counted as such.
    let o = cli(&setup.config, &["promote"]);
    assert!(o.status.success(), "{}", text(&o));
    wait_until(Duration::from_secs(20), "v2 live", || {
        (get(setup.port, &[]).and_then(|r| r.version).as_deref() == Some("v2")).then_some(())
    });
    wait_until(Duration::from_secs(10), "green production sampled", || {
        (counted(&dashboard(control), "green") > 0).then_some(())
    });
}

#[test]
fn the_dashboard_shows_the_release_and_the_traffic_of_both_colors() {
    let setup = healthy_daemon("dashboard", "");
    let control = control_of(&setup);

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
    let traffic = production_traffic(setup.port, stop.clone());
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
