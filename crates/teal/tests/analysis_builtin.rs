//! Built-in metrics on Kubernetes with router type `teal`, end to end:
//! the `teal controller` process and the test apiserver on the host; real
//! `teal router --kubernetes-bluegreen` processes (playing the two router
//! pods kwok runs) and real `teal sample-app` upstreams (playing the app
//! pods) in a network namespace, each on its pod's address. The test sends
//! preview traffic (the preview header) to both router replicas while
//! pre-promotion analysis runs; the replicas publish their counters in
//! their Leases and the controller measures each check's window, summed
//! over the replicas.
//!
//! A release whose preview traffic fails 30% (`sample-app --error-rate
//! 0.3`) is rolled back before cutover, status naming the metric and its
//! value; the next, healthy release passes and goes live.

mod k8s_support;
mod netns_support;
mod router_support;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kube::api::{Patch, PatchParams};
use netns_support::{BG, Cluster, wait_color_pods};
use serde_json::json;
use teal_core::Color;
use teal_testenv::netns::NetNs;
use teal_testenv::wait_for;

/// One HTTP/1.1 request with the preview header (from a thread inside the
/// namespace); the status code, or `None` when the connection failed.
fn preview_get(addr: SocketAddr) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: shop\r\nx-version: preview\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut response = String::new();
    s.read_to_string(&mut response).ok()?;
    response.split_whitespace().nth(1)?.parse().ok()
}

/// Preview requests to every router replica in turn, one every 20 ms, from
/// a thread inside the namespace, until dropped (at most three minutes).
struct Load {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(ns: &NetNs, routers: &[SocketAddr]) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let path = format!("/run/netns/{}", ns.name());
        let (routers, flag) = (routers.to_vec(), stop.clone());
        let thread = std::thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap();
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let started = Instant::now();
            let mut i = 0;
            while !flag.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(180) {
                preview_get(routers[i % routers.len()]);
                i += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Load {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

const SPEC: &str = "  preview: {header: {name: x-version, value: preview}}
  analysis:
    prePromotion:
      interval: 4s
      checks: 3
      metrics:
        - {name: success-rate, builtin: successRate, min: 90}
        - {name: latency-p99, builtin: latencyP99, max: 500}
";

/// Releases `image` on green with upstreams started with `extra`
/// arguments, and sends preview traffic once both replicas preview green;
/// returns green's addresses and revision, and the load.
async fn release_green(
    c: &mut Cluster,
    image: &str,
    extra: &[&str],
) -> (Vec<IpAddr>, String, Load) {
    let before: Vec<String> = router_support::kubernetes::color_pods(&c.pods, BG, "green")
        .await
        .into_iter()
        .map(|(_, rev)| rev)
        .collect();
    let patch =
        json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": image}]}}}});
    c.deployments
        .patch(BG, &PatchParams::default(), &Patch::Strategic(patch))
        .await
        .unwrap();
    let green = wait_for(
        "green pods of the new revision",
        Duration::from_secs(90),
        || {
            let (pods, before) = (c.pods.clone(), before.clone());
            async move {
                let v = wait_color_pods(&pods, "green", 2).await;
                if v.iter().all(|(_, rev)| !before.contains(rev)) {
                    Ok(v)
                } else {
                    Err(format!("{v:?}"))
                }
            }
        },
    )
    .await;
    for (ip, rev) in &green {
        c.world.upstream_with(*ip, "green", rev, extra);
    }
    let st = k8s_support::wait_bluegreen(&c.bgs, BG, "green previewed", 120, |st| {
        st.router
            .as_ref()
            .is_some_and(|r| r.preview == Some(Color::Green))
    })
    .await;
    netns_support::wait_leases(&c.leases, &c.router_names, st.router.unwrap().generation).await;
    let load = Load::start(&c.world.ns, &c.router_addrs);
    let rev = green[0].1.clone();
    (green.into_iter().map(|(ip, _)| ip).collect(), rev, load)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builtin_metrics_from_the_router_replicas_gate_the_cutover() {
    let mut c = Cluster::start("builtin", SPEC, "").await;

    // v2 fails 30% of its requests: rolled back before cutover.
    let (green_ips, v2, load) = release_green(&mut c, "shop:2", &["--error-rate", "0.3"]).await;
    let st = k8s_support::wait_bluegreen(&c.bgs, BG, "v2 fails its analysis", 150, |st| {
        st.history
            .iter()
            .any(|h| h.revision == v2 && h.outcome != "promoted")
            && st.phase.as_deref() != Some("Analyzing")
    })
    .await;
    drop(load);
    let h = st.history.iter().find(|h| h.revision == v2).unwrap();
    assert!(
        h.reason.contains("success-rate = ") && h.reason.contains("is below the minimum 90"),
        "metric and value named: {h:?}"
    );
    assert_eq!(st.active_color, Some(Color::Blue), "traffic never left v1");
    let a = st.analysis.clone().expect("analysis in status");
    let sr = a.metrics.iter().find(|m| m.name == "success-rate").unwrap();
    let v = sr.value.expect("a measured success rate");
    assert!(
        (40.0..90.0).contains(&v),
        "30% errors measured as {v}: {a:?}"
    );
    assert!(
        a.verdict.as_deref().is_some_and(|v| v.starts_with("fail")),
        "{a:?}"
    );
    // Both replicas counted green's preview traffic, in their Leases.
    for pod in &c.router_names {
        let l = c.leases.get(pod).await.unwrap();
        let stats = l
            .metadata
            .annotations
            .unwrap_or_default()
            .get("teal.dev/stats")
            .cloned()
            .unwrap_or_default();
        let r: serde_json::Value = serde_json::from_str(&stats).unwrap();
        let responses = &r["colors"]["green"]["preview"]["responses"];
        assert!(
            responses[1].as_u64().unwrap() > 0 && responses[4].as_u64().unwrap() > 0,
            "{pod}: {stats}"
        );
    }
    c.world.stop(&green_ips);

    // v3 is healthy: the analysis passes on what the replicas measured.
    let (_, v3, load) = release_green(&mut c, "shop:3", &[]).await;
    let st = k8s_support::wait_bluegreen(&c.bgs, BG, "v3 passes its analysis", 150, |st| {
        st.phase.as_deref() == Some("AwaitingPromotion")
            && st.desired_revision.as_deref() == Some(v3.as_str())
    })
    .await;
    drop(load);
    let a = st.analysis.clone().expect("analysis in status");
    assert_eq!(a.verdict.as_deref(), Some("pass"), "{a:?}");
    assert_eq!(a.checks, 3, "{a:?}");
    let value = |name: &str| {
        a.metrics
            .iter()
            .find(|m| m.name == name)
            .and_then(|m| m.value)
    };
    assert_eq!(value("success-rate"), Some(100.0), "{a:?}");
    assert!(value("latency-p99").is_some_and(|p| p < 500.0), "{a:?}");
    c.bgs
        .patch(
            BG,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"teal.dev/command": "promote/1"}}})),
        )
        .await
        .unwrap();
    k8s_support::wait_bluegreen(&c.bgs, BG, "v3 live on green", 120, |st| {
        st.active_color == Some(Color::Green) && st.active_revision.as_deref() == Some(v3.as_str())
    })
    .await;
}
