//! Webhooks and notifications in the controller, against a real control
//! plane and real receivers on loopback: the confirm-promotion gate holds
//! the release until it answers 2xx, a failing pre-rollout hook ends the
//! release before traffic, a Slack notifier whose URL is in a Secret hears
//! about the release, a notifier that always fails holds nothing, and the
//! Secret's value appears in no status, Event or log line.

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::PostParams;
use serde_json::json;
use support::{case, log};
use teal_testenv::receiver::Receiver;

fn spec(extra: serde_json::Value) -> serde_json::Value {
    let mut s = json!({
        "workloadRef": {"kind": "Deployment", "name": "shop"},
        "scaleDownDelay": "1s",
        "progressDeadline": "120s"
    });
    for (k, v) in extra.as_object().unwrap() {
        s[k] = v.clone();
    }
    s
}

/// Event lines about `name`: "Type Reason: note".
async fn events(c: &support::Case, name: &str) -> Vec<String> {
    c.events(name)
        .await
        .into_iter()
        .map(|(t, r, n)| format!("{t} {r}: {n}"))
        .collect()
}

async fn create_secret(c: &support::Case, name: &str, key: &str, value: &str) {
    let api: Api<Secret> = Api::namespaced(c.client.clone(), &c.ns);
    let s: Secret = serde_json::from_value(json!({
        "metadata": {"name": name},
        "stringData": {key: value}
    }))
    .unwrap();
    api.create(&PostParams::default(), &s).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_gate_holds_until_2xx_and_a_slack_notifier_from_a_secret_hears_about_it() {
    let log = log();
    let gate = Receiver::start(403).await;
    let slack = Receiver::start(200).await;
    let broken = Receiver::start(500).await;
    let mut c = case("hooks-gate").await;
    create_secret(
        &c,
        "slack-hook",
        "url",
        &slack.url("/services/T0/B0/SLACKSECRETTOKEN"),
    )
    .await;
    c.create_workload("shop", "shop:1", 2, BTreeMap::new())
        .await;
    c.create_bluegreen(
        "shop",
        spec(json!({
            "webhooks": [{"name": "approve", "type": "confirm-promotion", "url": gate.url("/approve"), "timeout": "2s", "retries": 0}],
            "notifications": [
                {"name": "team", "type": "slack", "secretRef": {"name": "slack-hook", "key": "url"}, "events": ["started", "awaitingPromotion", "promoted"]},
                {"name": "broken", "type": "webhook", "url": broken.url("/always-500")}
            ]
        })),
    )
    .await
    .unwrap();
    c.start_controller();
    c.wait_status("adoption", "shop", |s| {
        s.phase.as_deref() == Some("Healthy")
    })
    .await;

    c.set_image("shop", "shop:2", BTreeMap::new()).await;
    let st = c
        .wait_status("the gate holds the release", "shop", |s| {
            s.phase.as_deref() == Some("AwaitingPromotion")
                && s.message.as_deref().is_some_and(|m| m.contains("approve"))
        })
        .await;
    let msg = st.message.unwrap();
    assert!(
        msg.contains("confirm-promotion") && msg.contains("403"),
        "status names the hook and its answer: {msg}"
    );
    // Asked again while closed.
    let asked = gate.wait_for(2).await;
    let body = asked[0].json();
    assert_eq!(body["name"], "shop");
    assert_eq!(body["namespace"], c.ns.as_str());
    assert_eq!(body["type"], "confirm-promotion");
    assert_eq!(body["colors"]["release"], "green");
    assert_eq!(body["colors"]["active"], "blue");
    assert_eq!(
        c.selector_color("shop").await.as_deref(),
        Some("blue"),
        "no cutover while the gate is closed"
    );

    gate.set_default(200);
    let st = c
        .wait_status("v2 promoted once the gate opened", "shop", |s| {
            s.history.iter().any(|h| h.outcome == "promoted")
        })
        .await;
    assert_eq!(c.selector_color("shop").await.as_deref(), Some("green"));
    let v2 = st.desired_revision.clone().unwrap();
    let st = c
        .wait_status("the gate's 2xx in status.hooks", "shop", |s| {
            s.hooks.iter().any(|h| h.name == "approve" && h.passed)
        })
        .await;
    let h = st.hooks.iter().find(|h| h.name == "approve").unwrap();
    assert_eq!(h.kind, teal_api::hooks::WebhookType::ConfirmPromotion);
    assert_eq!(h.code, Some(200));
    assert_eq!(h.attempts, 1);
    assert_eq!(h.revision, v2);
    assert!(h.message.contains("answered 200"), "{h:?}");
    assert!(!h.time.is_empty());

    // Slack got started, awaitingPromotion and promoted, in Slack's format.
    let mut texts = Vec::new();
    for _ in 0..600 {
        texts = slack
            .received()
            .iter()
            .map(|r| r.json()["text"].as_str().unwrap_or_default().to_string())
            .collect();
        if texts
            .iter()
            .any(|t| t.contains("promoted") || t.contains("Promoted"))
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let got = slack.received();
    assert!(
        got.iter()
            .all(|r| r.path == "/services/T0/B0/SLACKSECRETTOKEN"),
        "posted to the Secret's URL"
    );
    assert!(got.len() >= 3, "started, awaiting, promoted: {texts:#?}");
    assert!(
        texts.iter().all(|t| t.contains("shop")),
        "texts name the BlueGreen: {texts:#?}"
    );
    assert!(
        texts.iter().any(|t| t.contains(&v2)),
        "a text names the revision {v2}: {texts:#?}"
    );
    assert!(got.iter().all(|r| r.json()["attachments"].is_array()));
    // The notifier that always fails was tried and held nothing.
    assert!(!broken.wait_for(1).await.is_empty());

    // A rotated Secret is used from the next notification on.
    let secrets: Api<Secret> = Api::namespaced(c.client.clone(), &c.ns);
    secrets
        .patch(
            "slack-hook",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(
                json!({"stringData": {"url": slack.url("/services/T0/B1/ROTATEDSECRET")}}),
            ),
        )
        .await
        .unwrap();
    c.set_image("shop", "shop:3", BTreeMap::new()).await;
    c.wait_status("v3 promoted", "shop", |s| {
        s.history.iter().filter(|h| h.outcome == "promoted").count() >= 2
    })
    .await;
    let mut rotated = 0;
    for _ in 0..600 {
        rotated = slack
            .received()
            .iter()
            .filter(|r| r.path == "/services/T0/B1/ROTATEDSECRET")
            .count();
        if rotated >= 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(rotated >= 2, "v3's notifications went to the rotated URL");

    // The Secret's value is nowhere.
    let bg = c.bluegreens().get("shop").await.unwrap();
    let status = serde_json::to_string(&bg.status).unwrap();
    for secret in ["SLACKSECRETTOKEN", "ROTATEDSECRET"] {
        assert!(!status.contains(secret), "{status}");
    }
    let evs = events(&c, "shop").await;
    assert!(
        evs.iter().all(|e| !e.contains("SLACKSECRETTOKEN")),
        "{evs:#?}"
    );
    let text = String::from_utf8_lossy(&log.lock().unwrap()).to_string();
    assert!(!text.is_empty(), "the controller's log was captured");
    assert!(
        !text.contains("SLACKSECRETTOKEN") && !text.contains("ROTATEDSECRET"),
        "the Secret's value is in the log"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_pre_rollout_hook_ends_the_release_before_traffic() {
    let _ = log();
    let pre = Receiver::start(500).await;
    let mut c = case("hooks-pre").await;
    c.create_workload("shop", "shop:1", 2, BTreeMap::new())
        .await;
    c.create_bluegreen(
        "shop",
        spec(json!({
            "webhooks": [{"name": "smoke", "type": "pre-rollout", "url": pre.url("/smoke"), "timeout": "2s", "retries": 1, "metadata": {"suite": "checkout"}}]
        })),
    )
    .await
    .unwrap();
    c.start_controller();
    let st = c
        .wait_status("adoption", "shop", |s| {
            s.phase.as_deref() == Some("Healthy")
        })
        .await;
    let v1 = st.active_revision.unwrap();

    c.set_image("shop", "shop:2", BTreeMap::new()).await;
    let st = c
        .wait_status("v2 fails on its pre-rollout hook", "shop", |s| {
            s.history.iter().any(|h| h.outcome == "failed")
        })
        .await;
    let rec = st.history.iter().find(|h| h.outcome == "failed").unwrap();
    let why = format!(
        "{} | {}",
        rec.reason,
        st.message.clone().unwrap_or_default()
    );
    assert!(
        why.contains("smoke") && why.contains("500"),
        "the hook and its answer are named: {why}"
    );
    assert_eq!(st.active_revision.as_deref(), Some(v1.as_str()));
    assert_eq!(
        c.selector_color("shop").await.as_deref(),
        Some("blue"),
        "v2 never took traffic"
    );
    let st = c
        .wait_status("the hook's answer in status.hooks", "shop", |s| {
            s.hooks.iter().any(|h| h.name == "smoke")
        })
        .await;
    let h = st.hooks.iter().find(|h| h.name == "smoke").unwrap();
    assert!(!h.passed);
    assert_eq!(h.code, Some(500));
    assert_eq!(h.attempts, 2, "one call and one retry: {h:?}");
    assert_eq!(h.message, "pre-rollout webhook \"smoke\" answered 500");
    let calls = pre.received();
    assert_eq!(calls.len(), 2, "one call and one retry after a 500");
    let body = calls[0].json();
    assert_eq!(body["type"], "pre-rollout");
    assert_eq!(body["metadata"]["suite"], "checkout");
    assert_eq!(body["revision"], rec.revision.as_str());
    let evs = events(&c, "shop").await;
    assert!(
        evs.iter()
            .any(|e| e.starts_with("Warning") && e.contains("smoke")),
        "a Warning Event names the hook: {evs:#?}"
    );
}

/// Accepts connections and never answers; counts them.
async fn silent_server() -> (String, Arc<Mutex<Vec<tokio::net::TcpStream>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/slow", listener.local_addr().unwrap());
    let held = Arc::new(Mutex::new(Vec::new()));
    let h = held.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            h.lock().unwrap().push(s);
        }
    });
    (url, held)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hook_that_does_not_answer_holds_no_reconcile() {
    let _ = log();
    let (url, held) = silent_server().await;
    let mut c = case("hooks-slow").await;
    c.create_workload("shop", "shop:1", 2, BTreeMap::new())
        .await;
    c.create_bluegreen(
        "shop",
        spec(json!({
            "webhooks": [{"name": "slow", "type": "pre-rollout", "url": url, "timeout": "300s", "retries": 0}]
        })),
    )
    .await
    .unwrap();
    c.start_controller();
    c.wait_status("adoption", "shop", |s| {
        s.phase.as_deref() == Some("Healthy")
    })
    .await;
    c.set_image("shop", "shop:2", BTreeMap::new()).await;
    teal_testenv::wait_for(
        "the pre-rollout call",
        std::time::Duration::from_secs(60),
        || {
            let n = held.lock().unwrap().len();
            async move {
                if n >= 1 {
                    Ok(())
                } else {
                    Err("no call yet".to_string())
                }
            }
        },
    )
    .await;
    // The call is open (it may last 300s); the controller still acts.
    c.command("shop", "abort").await;
    let st = c
        .wait_status("the abort, while the hook is still open", "shop", |s| {
            s.history.iter().any(|h| h.outcome == "aborted")
        })
        .await;
    assert_eq!(c.selector_color("shop").await.as_deref(), Some("blue"));
    assert!(st.active_revision.is_some());
    assert_eq!(
        held.lock().unwrap().len(),
        1,
        "the round was called once, not again by every reconcile while it was open"
    );
}
