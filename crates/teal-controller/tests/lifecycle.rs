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
