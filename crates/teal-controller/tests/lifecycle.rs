//! Release lifecycle against a real control plane (apiserver, controller
//! manager, scheduler, kwok nodes).

mod support;

use std::collections::BTreeMap;

use serde_json::json;
use support::case;

#[tokio::test]
async fn adoption_then_auto_promotion_switches_the_service() {
    let mut c = case("auto").await;
    c.create_workload("shop", "shop:1", 3, BTreeMap::new())
        .await;
    c.create_bluegreen(
        "shop",
        json!({"workloadRef": {"kind": "Deployment", "name": "shop"}, "scaleDownDelay": "2s", "progressDeadline": "60s"}),
    )
    .await
    .unwrap();
    c.start_controller();

    let st = c
        .wait_status("adoption", "shop", |s| {
            s.phase.as_deref() == Some("Healthy")
        })
        .await;
    assert_eq!(st.active_color, Some(teal_core::Color::Blue));
    let v1 = st.active_revision.clone().unwrap();
    assert_eq!(c.ready("shop-blue").await, 3);
    assert_eq!(c.selector_color("shop").await.as_deref(), Some("blue"));
    assert_eq!(
        c.selector_color("shop-preview").await.as_deref(),
        Some("blue")
    );
    assert_eq!(
        c.replicas("shop").await,
        Some(0),
        "the workload is scaled to zero once blue serves"
    );

    c.set_image("shop", "shop:2", BTreeMap::new()).await;
    c.wait_status("scale-down delay", "shop", |s| {
        s.phase.as_deref() == Some("ScaleDownDelay")
    })
    .await;
    assert_eq!(c.selector_color("shop").await.as_deref(), Some("green"));
    assert_eq!(
        c.replicas("shop-blue").await,
        Some(3),
        "blue stays up during the scale-down delay"
    );
    let st = c
        .wait_status("v2 promoted", "shop", |s| {
            s.history.iter().any(|h| h.outcome == "promoted")
                && s.phase.as_deref() == Some("Healthy")
        })
        .await;
    let v2 = st.active_revision.clone().unwrap();
    assert_ne!(v1, v2);
    assert_eq!(st.active_color, Some(teal_core::Color::Green));
    assert_eq!(c.selector_color("shop").await.as_deref(), Some("green"));
    assert_eq!(
        c.replicas("shop-blue").await,
        Some(0),
        "blue scaled down after the delay"
    );
    assert_eq!(c.replicas("shop-green").await, Some(3));
    let reasons = c.event_reasons("shop").await;
    for want in [
        "Adopted",
        "ReleaseStarted",
        "PreviewReady",
        "Switched",
        "Succeeded",
    ] {
        assert!(
            reasons.iter().any(|r| r == want),
            "missing event {want}: {reasons:?}"
        );
    }
}

fn spec(extra: serde_json::Value) -> serde_json::Value {
    let mut s = json!({
        "workloadRef": {"kind": "Deployment", "name": "shop"},
        "scaleDownDelay": "2s",
        "progressDeadline": "60s"
    });
    for (k, v) in extra.as_object().unwrap() {
        s[k] = v.clone();
    }
    s
}

async fn healthy(extra: serde_json::Value, prefix: &str) -> (support::Case, String) {
    let mut c = case(prefix).await;
    c.create_workload("shop", "shop:1", 3, BTreeMap::new())
        .await;
    c.create_bluegreen("shop", spec(extra)).await.unwrap();
    c.start_controller();
    let st = c
        .wait_status("adoption", "shop", |s| {
            s.phase.as_deref() == Some("Healthy")
        })
        .await;
    (c, st.active_revision.unwrap())
}

fn sim(key: &str, value: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(key.to_string(), value.to_string())])
}

#[tokio::test]
async fn manual_promotion_with_a_smaller_preview() {
    let (c, v1) = healthy(
        json!({"promotion": {"mode": "manual"}, "preview": {"replicas": 1}}),
        "manual",
    )
    .await;
    c.set_image("shop", "shop:2", BTreeMap::new()).await;
    let st = c
        .wait_status("awaiting promotion", "shop", |s| {
            s.phase.as_deref() == Some("AwaitingPromotion")
        })
        .await;
    assert_eq!(st.preview_color, Some(teal_core::Color::Green));
    assert_eq!(
        c.replicas("shop-green").await,
        Some(1),
        "preview runs 1 replica"
    );
    assert_eq!(
        c.selector_color("shop").await.as_deref(),
        Some("blue"),
        "production untouched"
    );
    assert_eq!(
        c.selector_color("shop-preview").await.as_deref(),
        Some("green")
    );
    assert_eq!(st.active_revision.as_deref(), Some(v1.as_str()));

    c.command("shop", "promote").await;
    let st = c
        .wait_status("promoted", "shop", |s| {
            s.active_color == Some(teal_core::Color::Green)
        })
        .await;
    assert_ne!(st.active_revision.as_deref(), Some(v1.as_str()));
    assert_eq!(
        c.replicas("shop-green").await,
        Some(3),
        "scaled to full size before cutover"
    );
    assert!(c.ready("shop-green").await >= 3);
    assert_eq!(c.selector_color("shop").await.as_deref(), Some("green"));
}

#[tokio::test]
async fn never_ready_pods_fail_at_the_progress_deadline() {
    let (c, v1) = healthy(json!({"progressDeadline": "5s"}), "deadline").await;
    c.set_image(
        "shop",
        "shop:2",
        sim(teal_testenv::sim::NEVER_READY, "true"),
    )
    .await;
    let st = c
        .wait_status("failed", "shop", |s| {
            s.history.iter().any(|h| h.outcome == "failed")
        })
        .await;
    let rec = st.history.iter().find(|h| h.outcome == "failed").unwrap();
    assert!(rec.reason.contains("progress deadline"), "{}", rec.reason);
    assert_eq!(st.active_revision.as_deref(), Some(v1.as_str()));
    assert_eq!(c.selector_color("shop").await.as_deref(), Some("blue"));
    assert_eq!(
        c.replicas("shop-green").await,
        Some(0),
        "the failed color is scaled down"
    );
    assert_eq!(c.ready("shop-blue").await, 3);
    assert!(
        c.event_reasons("shop")
            .await
            .iter()
            .any(|r| r == "DeadlineExceeded")
    );
}

#[tokio::test]
async fn crash_looping_pods_fail_the_release_before_the_deadline() {
    let (c, v1) = healthy(json!({"progressDeadline": "10m"}), "crash").await;
    c.set_image("shop", "shop:2", sim(teal_testenv::sim::CRASH_LOOP, "true"))
        .await;
    let st = c
        .wait_status("failed", "shop", |s| {
            s.history.iter().any(|h| h.outcome == "failed")
        })
        .await;
    let rec = st.history.iter().find(|h| h.outcome == "failed").unwrap();
    assert!(rec.reason.contains("crash-looping"), "{}", rec.reason);
    assert_eq!(st.active_revision.as_deref(), Some(v1.as_str()));
    assert_eq!(c.selector_color("shop").await.as_deref(), Some("blue"));
}

#[tokio::test]
async fn abort_during_preview_and_after_cutover() {
    let (c, v1) = healthy(
        json!({"promotion": {"mode": "manual"}, "scaleDownDelay": "5m"}),
        "abort",
    )
    .await;
    c.set_image("shop", "shop:2", BTreeMap::new()).await;
    c.wait_status("awaiting", "shop", |s| {
        s.phase.as_deref() == Some("AwaitingPromotion")
    })
    .await;
    c.command("shop", "abort").await;
    let st = c
        .wait_status("aborted", "shop", |s| s.phase.as_deref() == Some("Aborted"))
        .await;
    assert_eq!(st.active_revision.as_deref(), Some(v1.as_str()));
    assert_eq!(
        c.selector_color("shop-preview").await.as_deref(),
        Some("blue")
    );
    assert_eq!(c.replicas("shop-green").await, Some(0));

    // Retry, promote, then abort inside the scale-down window: instant revert.
    c.command("shop", "retry").await;
    c.wait_status("awaiting again", "shop", |s| {
        s.phase.as_deref() == Some("AwaitingPromotion")
    })
    .await;
    c.command("shop", "promote").await;
    c.wait_status("live", "shop", |s| {
        s.phase.as_deref() == Some("ScaleDownDelay")
    })
    .await;
    assert_eq!(c.selector_color("shop").await.as_deref(), Some("green"));
    assert_eq!(
        c.replicas("shop-blue").await,
        Some(3),
        "blue kept for rollback"
    );
    c.command("shop", "abort").await;
    let st = c
        .wait_status("reverted", "shop", |s| {
            s.active_color == Some(teal_core::Color::Blue)
        })
        .await;
    assert_eq!(st.active_revision.as_deref(), Some(v1.as_str()));
    assert_eq!(c.selector_color("shop").await.as_deref(), Some("blue"));
}

#[tokio::test]
async fn rollback_inside_and_outside_the_scale_down_window() {
    // The window is long enough that a loaded machine still acts on the
    // first rollback inside it.
    let (c, v1) = healthy(json!({"scaleDownDelay": "15s"}), "rollback").await;
    c.set_image("shop", "shop:2", BTreeMap::new()).await;
    c.wait_status("in window", "shop", |s| {
        s.phase.as_deref() == Some("ScaleDownDelay")
    })
    .await;
    c.command("shop", "rollback").await;
    let st = c
        .wait_status("rolled back", "shop", |s| {
            s.phase.as_deref() == Some("RolledBack")
        })
        .await;
    assert_eq!(st.active_revision.as_deref(), Some(v1.as_str()));
    assert_eq!(c.selector_color("shop").await.as_deref(), Some("blue"));

    // Release v2 fully, then roll back after the window: v1 is redeployed.
    c.command("shop", "retry").await;
    let st = c
        .wait_status("v2 done", "shop", |s| {
            s.phase.as_deref() == Some("Healthy") && s.active_color == Some(teal_core::Color::Green)
        })
        .await;
    let v2 = st.active_revision.clone().unwrap();
    assert_eq!(c.replicas("shop-blue").await, Some(0));
    c.command("shop", "rollback").await;
    let st = c
        .wait_status("v1 redeployed", "shop", |s| {
            s.active_revision.as_deref() == Some(v1.as_str())
        })
        .await;
    assert_eq!(st.active_color, Some(teal_core::Color::Blue));
    assert_eq!(c.selector_color("shop").await.as_deref(), Some("blue"));
    assert_ne!(v1, v2);
}

#[tokio::test]
async fn a_newer_revision_supersedes_the_release_in_preview() {
    let (c, _v1) = healthy(json!({"promotion": {"mode": "manual"}}), "supersede").await;
    c.set_image("shop", "shop:2", BTreeMap::new()).await;
    let st = c
        .wait_status("v2 in preview", "shop", |s| {
            s.phase.as_deref() == Some("AwaitingPromotion")
        })
        .await;
    let v2 = st.preview_revision.unwrap();
    c.set_image("shop", "shop:3", BTreeMap::new()).await;
    let st = c
        .wait_status("v3 in preview", "shop", |s| {
            s.phase.as_deref() == Some("AwaitingPromotion")
                && s.preview_revision.as_deref() != Some(v2.as_str())
        })
        .await;
    assert!(
        st.history
            .iter()
            .any(|h| h.revision == v2 && h.outcome == "superseded")
    );
    c.command("shop", "promote").await;
    let st = c
        .wait_status("v3 live", "shop", |s| {
            s.active_color == Some(teal_core::Color::Green)
        })
        .await;
    assert_ne!(
        st.active_revision.as_deref(),
        Some(v2.as_str()),
        "the superseded revision never goes live"
    );
}

#[tokio::test]
async fn deleting_the_bluegreen_hands_traffic_back_to_the_workload() {
    let (c, _v1) = healthy(json!({}), "delete").await;
    assert_eq!(c.replicas("shop").await, Some(0));
    c.bluegreens()
        .delete("shop", &Default::default())
        .await
        .unwrap();
    teal_testenv::wait_for(
        "the BlueGreen to be gone",
        std::time::Duration::from_secs(60),
        || async {
            match c.bluegreens().get_opt("shop").await {
                Ok(None) => Ok(()),
                Ok(Some(_)) => Err("still there (finalizer)".to_string()),
                Err(e) => Err(e.to_string()),
            }
        },
    )
    .await;
    assert_eq!(
        c.replicas("shop").await,
        Some(3),
        "the workload runs its replicas again"
    );
    assert!(c.ready("shop").await >= 3);
    let svc = c.services().get("shop").await.expect("the Service stays");
    let sel = svc.spec.unwrap().selector.unwrap();
    assert_eq!(sel.get("app").map(String::as_str), Some("shop"));
    assert!(!sel.contains_key("teal.dev/color"), "{sel:?}");
}

#[tokio::test]
async fn a_service_owned_by_someone_else_is_reported() {
    let mut c = case("conflict").await;
    c.create_workload("shop", "shop:1", 1, BTreeMap::new())
        .await;
    let svc: k8s_openapi::api::core::v1::Service = serde_json::from_value(json!({
        "metadata": {"name": "shop"},
        "spec": {"selector": {"app": "shop"}, "ports": [{"port": 80}]}
    }))
    .unwrap();
    c.services()
        .create(&Default::default(), &svc)
        .await
        .unwrap();
    c.create_bluegreen("shop", spec(json!({}))).await.unwrap();
    c.start_controller();
    let st = c
        .wait_status("conflict reported", "shop", |s| {
            s.conditions
                .iter()
                .any(|x| x.type_ == "Ready" && x.status == "False" && x.reason == "ServiceConflict")
        })
        .await;
    assert!(st.message.unwrap().contains("spec.service.name"));
    assert_eq!(c.replicas("shop").await, Some(1), "nothing was touched");
    assert_eq!(c.replicas("shop-blue").await, None);
}
