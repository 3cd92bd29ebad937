//! Router type `teal` end to end with real traffic: the `teal controller`
//! process and the test apiserver run on the host's loopback; real `teal
//! router --kubernetes-bluegreen` processes (playing the router pods kwok
//! runs) and real `teal sample-app` upstreams (playing the app pods) run in
//! a network namespace the test creates, each listening on the very address
//! kwok gave its pod. Keep-alive client load, also inside the namespace,
//! runs through a whole release: new image, preview, promote, the switch
//! acknowledged by every router replica, scale-down.
//!
//! Asserted: no request fails; every request that started after
//! `status.router.switchConfirmedAt` is answered by the new color; every
//! request that ended before `switchRequestedAt` by the old one; the preview
//! header reaches only the preview color, and a wrong header value does not.
//! The second test takes the header value from a Secret and stops one router
//! replica (SIGSTOP) across the switch: the switch stays unconfirmed until
//! the replica resumes and reports it.
//!
//! Clocks: the status times are Unix milliseconds the controller read from
//! the system clock (truncated), and the requests are stamped with the same
//! clock of the same machine (a network namespace does not have its own
//! clock). A confirmation recorded as `c` happened before `c + 1` ms, so
//! "started after the confirmation" is judged as starting at or after
//! `c + 1` ms; "ended before the request" as ending before `r` ms.

mod k8s_support;
mod netns_support;
mod router_support;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use kube::api::{Patch, PatchParams};
use netns_support::{BG, Cluster};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use router_support::kubernetes::{color_pods, lease_generation, wait_switch_reported};
use serde_json::json;
use teal_api::bluegreen::RouterStatus;
use teal_core::Color;
use teal_testenv::netns::NetNs;
use teal_testenv::wait_for;

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_micros() as i64
}

/// What a client sends.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mark {
    /// No preview header.
    Plain,
    /// The preview header with its value.
    Preview,
    /// The preview header with a wrong value: production traffic.
    Guess,
}

/// One answered request.
#[derive(Debug)]
struct Sample {
    start_us: i64,
    end_us: i64,
    color: String,
    version: String,
    mark: Mark,
}

#[derive(Default)]
struct Report {
    samples: Vec<Sample>,
    failures: Vec<String>,
    /// Per connection: what it sent and the colors that answered it, in
    /// order, repeats left out.
    connections: Vec<(Mark, Vec<String>)>,
}

/// One keep-alive HTTP/1.1 connection (made inside the namespace) sending
/// `GET /` back to back, with `header` if given, until `stop`.
async fn client(
    stream: std::net::TcpStream,
    mark: Mark,
    header: Option<(String, String)>,
    stop: Arc<AtomicBool>,
) -> Report {
    let mut report = Report::default();
    let mut sender = router_support::http1_client(stream).await;
    while !stop.load(Ordering::Relaxed) {
        let mut req = Request::get("/").header("host", "shop.test");
        if let Some((name, value)) = &header {
            req = req.header(name, value);
        }
        let req = req.body(Empty::<Bytes>::new()).unwrap();
        let start_us = now_us();
        let answer = async {
            let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            if status != StatusCode::OK {
                return Err(format!("{status}: {}", String::from_utf8_lossy(&body)));
            }
            serde_json::from_slice::<serde_json::Value>(&body).map_err(|e| e.to_string())
        }
        .await;
        match answer {
            Ok(v) => report.samples.push(Sample {
                start_us,
                end_us: now_us(),
                color: v["color"].as_str().unwrap_or_default().to_string(),
                version: v["version"].as_str().unwrap_or_default().to_string(),
                mark,
            }),
            Err(e) => {
                report
                    .failures
                    .push(format!("{mark:?} request at {start_us} µs: {e}"));
                break;
            }
        }
    }
    let mut colors: Vec<String> = report.samples.iter().map(|s| s.color.clone()).collect();
    colors.dedup();
    report.connections.push((mark, colors));
    report
}

/// Client connections running until [`Load::finish`].
struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Report>>,
}

impl Load {
    fn new() -> Load {
        Load {
            stop: Arc::new(AtomicBool::new(false)),
            tasks: Vec::new(),
        }
    }

    /// `n` more connections made inside `ns`, spread over `routers`.
    fn start(
        &mut self,
        ns: &NetNs,
        routers: &[SocketAddr],
        n: usize,
        mark: Mark,
        header: Option<(&str, &str)>,
    ) {
        for i in 0..n {
            let stream = ns.connect(routers[i % routers.len()]).unwrap();
            let header = header.map(|(n, v)| (n.to_string(), v.to_string()));
            self.tasks.push(tokio::spawn(client(
                stream,
                mark,
                header,
                self.stop.clone(),
            )));
        }
    }

    async fn finish(self) -> Report {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Report::default();
        for t in self.tasks {
            let r = t.await.unwrap();
            all.samples.extend(r.samples);
            all.failures.extend(r.failures);
            all.connections.extend(r.connections);
        }
        all
    }
}

impl Cluster {
    fn load(&self, load: &mut Load, n: usize, mark: Mark, header: Option<(&str, &str)>) {
        load.start(&self.world.ns, &self.router_addrs, n, mark, header);
    }

    /// Promotes; returns the time (Unix ms) just before.
    async fn promote(&self) -> i64 {
        let at = now_us() / 1000;
        self.bgs
            .patch(
                BG,
                &PatchParams::default(),
                &Patch::Merge(
                    json!({"metadata": {"annotations": {"teal.dev/command": "promote/1"}}}),
                ),
            )
            .await
            .unwrap();
        at
    }

    /// Waits for the confirmed switch to green after a promotion at
    /// `promoted` (Unix ms); checks every router replica's Lease reports its
    /// generation, and that the status times lie between the promotion and
    /// now on the test's clock (they are comparable to the request times).
    async fn confirmed(&self, promoted: i64) -> RouterStatus {
        let st = k8s_support::wait_bluegreen(
            &self.bgs,
            BG,
            "the switch to green confirmed",
            120,
            |st| {
                st.router.as_ref().is_some_and(|r| {
                    r.active == Some(Color::Green) && r.switch_confirmed_at.is_some()
                })
            },
        )
        .await;
        let seen = now_us() / 1000;
        let r = st.router.unwrap();
        let (requested, confirmed) = (
            r.switch_requested_at.unwrap(),
            r.switch_confirmed_at.unwrap(),
        );
        assert!(
            promoted <= requested && requested <= confirmed && confirmed <= seen,
            "promoted at {promoted}, requested at {requested}, confirmed at {confirmed}, seen at {seen}: \
             the controller's clock is not the test's"
        );
        for pod in &self.router_names {
            assert!(
                lease_generation(&self.leases, pod).await >= Some(r.generation),
                "switch confirmed before router {pod} reported generation {}",
                r.generation
            );
        }
        r
    }

    /// Waits for the scale-down of blue, then stops blue's upstreams (as the
    /// kubelet would) while the load goes on for a moment.
    async fn scale_down(&mut self, green_rev: &str) {
        let st = k8s_support::wait_healthy(&self.bgs, BG, Some(green_rev)).await;
        assert_eq!(st.active_color, Some(Color::Green));
        wait_for("blue's pods gone", Duration::from_secs(90), || async {
            let left = color_pods(&self.pods, BG, "blue").await;
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("{left:?}"))
            }
        })
        .await;
        let blue: Vec<IpAddr> = self.blue.iter().map(|(ip, _)| *ip).collect();
        self.world.stop(&blue);
        tokio::time::sleep(Duration::from_secs(2)).await;
    }

    /// Lets the release finish (scale-down), stops the load and judges it.
    async fn finish(&mut self, load: Load, r: &RouterStatus, green_rev: &str) {
        self.scale_down(green_rev).await;
        let report = load.finish().await;
        let [before, after, previewed, guessed] = judge(&report, r, &self.blue[0].1, green_rev);
        assert!(
            before > 0 && after > 0 && previewed > 0 && guessed > 0,
            "too few requests judged"
        );
    }
}

/// Checks a release's requests against the switch times in `r`: none
/// failed; each connection saw blue then green (preview: green only); those
/// that started after the confirmation (and every preview request) were
/// served by green at `green_rev`; production requests that ended before
/// the switch was requested by blue at `blue_rev`. Returns the
/// judged counts: (before, after, previewed, guessed before).
fn judge(report: &Report, r: &RouterStatus, blue_rev: &str, green_rev: &str) -> [usize; 4] {
    assert!(
        report.failures.is_empty(),
        "{} failed requests, first: {:?}",
        report.failures.len(),
        report.failures.first()
    );
    // Every connection was opened before the switch and lasted past it:
    // keep-alive connections move to green at the switch, and never back.
    for (mark, colors) in &report.connections {
        let want: &[&str] = match mark {
            Mark::Preview => &["green"],
            Mark::Plain | Mark::Guess => &["blue", "green"],
        };
        assert_eq!(colors, want, "colors on one {mark:?} connection, in order");
    }
    let requested = r.switch_requested_at.unwrap();
    let confirmed = r.switch_confirmed_at.unwrap();
    let (green, blue) = (("green", green_rev), ("blue", blue_rev));
    let mut n = [0; 4];
    for s in &report.samples {
        let served = (s.color.as_str(), s.version.as_str());
        if s.mark == Mark::Preview {
            assert_eq!(served, green, "preview request {s:?}");
            n[2] += 1;
        } else if s.start_us >= (confirmed + 1) * 1000 {
            assert_eq!(
                served, green,
                "request started after the switch confirmed at {confirmed} ms: {s:?}"
            );
            n[1] += 1;
        } else if s.end_us < requested * 1000 {
            assert_eq!(
                served, blue,
                "request ended before the switch requested at {requested} ms: {s:?}"
            );
            n[0] += 1;
            if s.mark == Mark::Guess {
                n[3] += 1;
            }
        }
    }
    eprintln!(
        "{} requests: {} before the switch, {} after its confirmation ({} ms after the request), {} previews, {} wrong preview values",
        report.samples.len(),
        n[0],
        n[1],
        confirmed - requested,
        n[2],
        n[3]
    );
    n
}

#[tokio::test]
async fn a_release_through_teal_routers_in_a_network_namespace_serves_every_request_from_the_right_color()
 {
    let mut c = Cluster::start(
        "tealnetns",
        "  preview: {header: {name: x-version, value: preview}}\n",
        "",
    )
    .await;
    // Production load from here to the end.
    let mut load = Load::new();
    c.load(&mut load, 16, Mark::Plain, None);
    let green = c.preview_green().await;
    c.load(&mut load, 4, Mark::Preview, Some(("x-version", "preview")));
    c.load(&mut load, 2, Mark::Guess, Some(("x-version", "green")));
    tokio::time::sleep(Duration::from_secs(2)).await;

    let promoted = c.promote().await;
    let r = c.confirmed(promoted).await;
    c.finish(load, &r, &green[0].1).await;
}

#[tokio::test]
async fn a_stopped_router_replica_holds_the_switch_and_the_secret_header_reaches_the_preview() {
    let token = format!("pv-{}", now_us());
    let secret = format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: preview-token}}\nstringData: {{token: \"{token}\"}}\n"
    );
    let mut c = Cluster::start(
        "tealnetnsstop",
        "  preview:\n    header: {name: x-preview}\n    headerValueFrom: {secretKeyRef: {name: preview-token, key: token}}\n",
        &secret,
    )
    .await;
    let mut load = Load::new();
    c.load(&mut load, 16, Mark::Plain, None);
    let green = c.preview_green().await;
    c.load(&mut load, 4, Mark::Preview, Some(("x-preview", &token)));
    // A guess (the literal example value) is production traffic.
    c.load(&mut load, 2, Mark::Guess, Some(("x-preview", "preview")));
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Replica 0 stops (its connections wait), then the switch is requested.
    let stopped = Pid::from_raw(c.routers[0].pid() as i32);
    kill(stopped, Signal::SIGSTOP).unwrap();
    let gen_before = c
        .bgs
        .get(BG)
        .await
        .unwrap()
        .status
        .unwrap()
        .router
        .unwrap()
        .generation;
    let promoted = c.promote().await;
    let (running, held) = (c.router_names[1].clone(), c.router_names[0].clone());
    let target = wait_switch_reported(&c.bgs, &c.leases, BG, &running, gen_before).await;
    // However long it stays stopped, the switch stays unconfirmed, and the
    // Routed condition names the replica it waits for.
    for _ in 0..10 {
        let st = c.bgs.get(BG).await.unwrap().status.unwrap();
        let r = st.router.clone().unwrap();
        assert_eq!(st.phase.as_deref(), Some("CuttingOver"), "{r:?}");
        assert_eq!(
            r.switch_confirmed_at, None,
            "confirmed while {held} is stopped"
        );
        let routed = st.conditions.iter().find(|c| c.type_ == "Routed").unwrap();
        assert_eq!(routed.reason, "AwaitingAcknowledgement");
        assert!(routed.message.contains(&held), "{}", routed.message);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_ne!(lease_generation(&c.leases, &held).await, Some(target));

    let resumed_ms = now_us() / 1000;
    kill(stopped, Signal::SIGCONT).unwrap();
    let r = c.confirmed(promoted).await;
    assert_eq!(r.generation, target);
    assert!(
        r.switch_confirmed_at.unwrap() >= resumed_ms,
        "confirmed at {:?}, before the stopped replica resumed at {resumed_ms}",
        r.switch_confirmed_at
    );
    c.finish(load, &r, &green[0].1).await;
}
