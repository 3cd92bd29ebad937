//! The BlueGreen's `scale` subresource: `kubectl scale`, a changed
//! `spec.replicas` and autoscalers resize the live color, and releases cut
//! over at the size asked for then.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use kube::api::{Patch, PatchParams};
use serde_json::json;
use support::case;
use teal_core::Color;
use teal_testenv::{TestEnv, wait_for};

fn kubectl(ns: &str, args: &[&str]) -> String {
    let out = TestEnv::shared()
        .kubectl()
        .arg("-n")
        .arg(ns)
        .args(args)
        .output()
        .expect("run kubectl");
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn kubectl_scale_and_a_changed_spec_replicas_resize_the_live_color() {
    let mut c = case("scale").await;
    c.create_workload("web", "web:1", 3, BTreeMap::new()).await;
    c.create_bluegreen(
        "web",
        json!({"workloadRef": {"kind": "Deployment", "name": "web"}}),
    )
    .await
    .unwrap();
    c.start_controller();
    let st = c
        .wait_status("adoption", "web", |s| {
            s.phase.as_deref() == Some("Healthy") && s.replicas == Some(3)
        })
        .await;
    assert_eq!(
        st.selector.as_deref(),
        Some("teal.dev/bluegreen=web,teal.dev/color=blue"),
        "the scale subresource selects the live color's pods only"
    );
    let bg = c.bluegreens().get("web").await.unwrap();
    assert_eq!(
        bg.spec.replicas,
        Some(3),
        "the adopted size is recorded in spec.replicas, which the scale subresource serves"
    );
    let scale = c.bluegreens().get_scale("web").await.unwrap();
    assert_eq!(scale.spec.and_then(|s| s.replicas), Some(3));
    assert_eq!(
        scale.status.and_then(|s| s.selector).as_deref(),
        Some("teal.dev/bluegreen=web,teal.dev/color=blue")
    );

    kubectl(&c.ns, &["scale", "bluegreen/web", "--replicas", "5"]);
    let st = c
        .wait_status("blue at 5", "web", |s| {
            s.phase.as_deref() == Some("Healthy") && s.replicas == Some(5)
        })
        .await;
    assert_eq!(st.active_color, Some(Color::Blue));
    assert_eq!(c.replicas("web-blue").await, Some(5));
    wait_for("5 ready blue pods", Duration::from_secs(60), || async {
        let ready = c.ready("web-blue").await;
        if ready == 5 {
            Ok(())
        } else {
            Err(format!("{ready} ready"))
        }
    })
    .await;
    let st = c
        .wait_status("healthy", "web", |s| s.phase.as_deref() == Some("Healthy"))
        .await;
    assert_eq!(st.message.as_deref(), Some("live"));
    assert_eq!(c.replicas("web-green").await, None, "nothing runs in green");

    // As a GitOps tool or `kubectl patch` would change it.
    c.bluegreens()
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 2}})),
        )
        .await
        .unwrap();
    c.wait_status("blue at 2", "web", |s| {
        s.phase.as_deref() == Some("Healthy") && s.replicas == Some(2)
    })
    .await;
    assert_eq!(c.replicas("web-blue").await, Some(2));
    assert_eq!(c.replicas("web").await, Some(0), "the workload stays at 0");
}

/// A release while the BlueGreen was scaled to 5 (3 at adoption) cuts over
/// to the new color at 5 ready replicas, never fewer; the preview keeps its
/// configured size.
#[tokio::test]
async fn a_release_cuts_over_at_the_current_size() {
    let mut c = case("scale-release").await;
    c.create_workload("web", "web:1", 3, BTreeMap::new()).await;
    c.create_bluegreen(
        "web",
        json!({"workloadRef": {"kind": "Deployment", "name": "web"},
               "preview": {"replicas": 1},
               "promotion": {"mode": "manual"},
               "scaleDownDelay": "2s", "progressDeadline": "60s"}),
    )
    .await
    .unwrap();
    c.start_controller();
    c.wait_status("adoption", "web", |s| s.phase.as_deref() == Some("Healthy"))
        .await;

    c.set_image("web", "web:2", BTreeMap::new()).await;
    c.wait_status("awaiting promotion", "web", |s| {
        s.phase.as_deref() == Some("AwaitingPromotion")
    })
    .await;
    kubectl(&c.ns, &["scale", "bluegreen/web", "--replicas", "5"]);
    c.wait_status("blue at 5", "web", |s| s.replicas == Some(5))
        .await;
    assert_eq!(c.replicas("web-blue").await, Some(5));
    assert_eq!(
        c.replicas("web-green").await,
        Some(1),
        "the preview keeps its size"
    );

    // Watch the live Service from here on: when it selects green, green
    // must already have 5 ready replicas.
    let services = c.services();
    let deployments = c.deployments();
    let watcher = tokio::spawn(async move {
        loop {
            let svc = services.get("web").await.unwrap();
            let color = svc
                .spec
                .and_then(|s| s.selector)
                .and_then(|s| s.get("teal.dev/color").cloned());
            if color.as_deref() == Some("green") {
                let d = deployments.get("web-green").await.unwrap();
                return (d.spec.replicas, d.status.and_then(|s| s.ready_replicas));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    c.command("web", "promote").await;
    let (replicas, ready) = tokio::time::timeout(Duration::from_secs(90), watcher)
        .await
        .expect("the live Service switched to green")
        .unwrap();
    assert_eq!(replicas, Some(5), "green was scaled to the current size");
    assert!(
        ready.unwrap_or(0) >= 5,
        "green had {ready:?} ready replicas when it took production traffic"
    );
    let st = c
        .wait_status("v2 promoted", "web", |s| {
            s.phase.as_deref() == Some("Healthy") && s.active_color == Some(Color::Green)
        })
        .await;
    assert_eq!(st.replicas, Some(5));
    assert_eq!(
        st.selector.as_deref(),
        Some("teal.dev/bluegreen=web,teal.dev/color=green"),
        "the scale subresource follows the live color"
    );
    assert_eq!(
        c.bluegreens().get("web").await.unwrap().spec.replicas,
        Some(5)
    );
}
