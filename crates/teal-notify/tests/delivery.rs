//! Webhook calls and notification delivery against real HTTP receivers on
//! loopback: payloads per service, retries, signatures, failing notifiers.

use std::collections::BTreeMap;
use std::time::Duration;

use teal_api::Duration as SpecDuration;
use teal_api::hooks::{NotificationEvent, NotifierType, WebhookSpec, WebhookType};
use teal_core::Color;
use teal_core::hooks::HookKind;
use teal_notify::message::signature;
use teal_notify::webhook::{self, HookColors, HookPayload};
use teal_notify::{Backoff, Notification, Notifier, Secret, Target};
use teal_testenv::receiver::Receiver;

fn payload() -> HookPayload {
    HookPayload {
        name: "shop".into(),
        namespace: "prod".into(),
        kind: String::new(),
        phase: "Previewing".into(),
        revision: "v2".into(),
        colors: HookColors {
            active: Some(Color::Blue),
            release: Color::Green,
        },
        event: None,
        metadata: BTreeMap::new(),
    }
}

fn hook(kind: WebhookType, url: String, retries: u32) -> WebhookSpec {
    WebhookSpec {
        name: "smoke".into(),
        kind,
        url,
        timeout: SpecDuration::from_secs(5),
        retries,
        metadata: BTreeMap::from([("suite".to_string(), "checkout".to_string())]),
    }
}

fn rolled_back() -> Notification {
    Notification {
        event: NotificationEvent::RolledBack,
        name: "shop".into(),
        namespace: "prod".into(),
        revision: "v3".into(),
        phase: "RolledBack".into(),
        message: "pre-promotion analysis failed: error-rate = 0.3 is above the maximum 0.01".into(),
        at: 1,
    }
}

fn fast() -> Backoff {
    Backoff {
        first: Duration::from_millis(50),
        max: Duration::from_millis(200),
        attempts: 4,
    }
}

fn target(name: &str, kind: NotifierType, url: String) -> Target {
    Target {
        name: name.into(),
        kind,
        url: Secret::new(url),
        hmac: None,
        events: vec![],
    }
}

#[tokio::test]
async fn a_webhook_gets_the_release_and_its_metadata() {
    let r = Receiver::start(200).await;
    let res = webhook::call(
        &hook(WebhookType::PreRollout, r.url("/smoke"), 0),
        &payload(),
    )
    .await;
    assert!(res.passed(), "{res:?}");
    assert_eq!(res.kind, HookKind::PreRollout);
    let got = r.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].path, "/smoke");
    assert_eq!(got[0].headers["content-type"], "application/json");
    let body = got[0].json();
    assert_eq!(body["name"], "shop");
    assert_eq!(body["namespace"], "prod");
    assert_eq!(body["type"], "pre-rollout");
    assert_eq!(body["phase"], "Previewing");
    assert_eq!(body["revision"], "v2");
    assert_eq!(body["colors"]["active"], "blue");
    assert_eq!(body["colors"]["release"], "green");
    assert_eq!(body["metadata"]["suite"], "checkout");
}

#[tokio::test]
async fn a_webhook_is_retried_after_a_500_and_not_after_a_403() {
    let r = Receiver::start(200).await;
    r.script(&[500, 502]);
    let res = webhook::call(&hook(WebhookType::Rollout, r.url("/"), 2), &payload()).await;
    assert_eq!(res.status, Some(200));
    assert_eq!(r.received().len(), 3, "two retries after 500 and 502");

    let r = Receiver::start(403).await;
    let res = webhook::call(
        &hook(WebhookType::ConfirmPromotion, r.url("/"), 2),
        &payload(),
    )
    .await;
    assert_eq!(res.status, Some(403));
    assert!(!res.passed());
    assert_eq!(
        r.received().len(),
        1,
        "a 4xx is an answer, not a failure to retry"
    );
}

#[tokio::test]
async fn an_unreachable_or_slow_webhook_fails_with_the_cause() {
    // A port nothing listens on: bind, note the port, close.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    let res = webhook::call(
        &hook(
            WebhookType::PreRollout,
            format!("http://127.0.0.1:{port}/"),
            1,
        ),
        &payload(),
    )
    .await;
    assert_eq!(res.status, None);
    let why = res.describe();
    assert!(
        why.starts_with("pre-rollout webhook \"smoke\" failed:"),
        "{why}"
    );

    // Accepts the connection, never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let _keep = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let mut h = hook(WebhookType::Rollout, format!("http://{addr}/"), 0);
    h.timeout = SpecDuration::from_millis(300);
    let res = webhook::call(&h, &payload()).await;
    assert_eq!(res.error.as_deref(), Some("no answer within 300ms"));
}

#[tokio::test]
async fn every_service_gets_its_own_payload_format() {
    let r = Receiver::start(200).await;
    let n = Notifier::start(
        vec![
            target("slack", NotifierType::Slack, r.url("/slack")),
            target("teams", NotifierType::Teams, r.url("/teams")),
            target("discord", NotifierType::Discord, r.url("/discord")),
            target("chat", NotifierType::Googlechat, r.url("/chat")),
            target("hook", NotifierType::Webhook, r.url("/hook")),
        ],
        fast(),
    );
    n.notify(&rolled_back());
    let got = r.wait_for(5).await;
    let by = |p: &str| got.iter().find(|x| x.path == p).unwrap().json();
    let summary = "prod/shop: v3 rolled back: pre-promotion analysis failed: error-rate = 0.3 is above the maximum 0.01";

    let slack = by("/slack");
    assert_eq!(slack["text"], summary);
    assert_eq!(slack["attachments"][0]["color"], "#a30200");
    assert_eq!(slack["attachments"][0]["fields"][0]["title"], "Event");
    assert_eq!(slack["attachments"][0]["fields"][0]["value"], "rolledBack");

    let teams = by("/teams");
    assert_eq!(teams["@type"], "MessageCard");
    assert_eq!(teams["@context"], "https://schema.org/extensions");
    assert_eq!(teams["summary"], summary);
    assert_eq!(teams["themeColor"], "a30200");
    assert_eq!(teams["sections"][0]["facts"][1]["name"], "Revision");
    assert_eq!(teams["sections"][0]["facts"][1]["value"], "v3");

    let discord = by("/discord");
    assert_eq!(discord["content"], summary);
    assert_eq!(discord["embeds"][0]["color"], 0xa30200);
    assert_eq!(discord["embeds"][0]["title"], "prod/shop v3");
    assert_eq!(discord["embeds"][0]["fields"][0]["inline"], true);

    assert_eq!(by("/chat"), serde_json::json!({"text": summary}));

    let hook = by("/hook");
    assert_eq!(hook["event"], "rolledBack");
    assert_eq!(hook["revision"], "v3");
    assert_eq!(hook["namespace"], "prod");
    assert!(
        hook["message"]
            .as_str()
            .unwrap()
            .contains("error-rate = 0.3")
    );
}

#[tokio::test]
async fn a_signed_webhook_verifies_with_the_shared_key() {
    let r = Receiver::start(200).await;
    let mut t = target("signed", NotifierType::Webhook, r.url("/"));
    t.hmac = Some(Secret::new("s3cr3t-key"));
    let n = Notifier::start(vec![t], fast());
    n.notify(&rolled_back());
    let got = r.wait_for(1).await;
    let sig = got[0].headers["x-teal-signature"].to_str().unwrap();
    assert_eq!(sig, signature(b"s3cr3t-key", &got[0].body));
    assert_ne!(sig, signature(b"another-key", &got[0].body));
    // Independent check with ring's verifier over the received bytes.
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"s3cr3t-key");
    let hex = sig.strip_prefix("sha256=").unwrap();
    let tag: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    ring::hmac::verify(&key, &got[0].body, &tag).expect("signature verifies");
}

#[tokio::test]
async fn deliveries_are_retried_with_backoff_then_given_up() {
    let r = Receiver::start(200).await;
    r.script(&[500, 503]);
    let n = Notifier::start(
        vec![target("flaky", NotifierType::Slack, r.url("/"))],
        fast(),
    );
    n.notify(&rolled_back());
    r.wait_for(3).await;
    wait_until(|| n.stats()["flaky"].delivered == 1).await;
    let s = &n.stats()["flaky"];
    assert_eq!(s.failed_attempts, 2);
    assert_eq!(s.last_error.as_deref(), Some("answered 503"));

    let dead = Receiver::start(500).await;
    let n = Notifier::start(
        vec![target("dead", NotifierType::Slack, dead.url("/"))],
        fast(),
    );
    n.notify(&rolled_back());
    wait_until(|| n.stats()["dead"].given_up == 1).await;
    assert_eq!(dead.received().len(), 4, "attempts: 4");
    assert_eq!(n.stats()["dead"].delivered, 0);
}

#[tokio::test]
async fn a_failing_notifier_does_not_hold_the_others_and_filters_apply() {
    let dead = Receiver::start(500).await;
    let ok = Receiver::start(200).await;
    let mut only_promoted = target("promoted-only", NotifierType::Webhook, ok.url("/p"));
    only_promoted.events = vec![NotificationEvent::Promoted];
    let n = Notifier::start(
        vec![
            target("dead", NotifierType::Slack, dead.url("/")),
            target("ok", NotifierType::Webhook, ok.url("/all")),
            only_promoted,
        ],
        Backoff {
            first: Duration::from_secs(30),
            max: Duration::from_secs(30),
            attempts: 5,
        },
    );
    // `notify` returns at once even though "dead" will wait 30s to retry.
    for _ in 0..3 {
        n.notify(&rolled_back());
    }
    let mut promoted = rolled_back();
    promoted.event = NotificationEvent::Promoted;
    n.notify(&promoted);
    let got = ok.wait_for(5).await;
    assert_eq!(got.iter().filter(|g| g.path == "/all").count(), 4);
    let p: Vec<_> = got.iter().filter(|g| g.path == "/p").collect();
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].json()["event"], "promoted");
}

#[tokio::test]
async fn secrets_stay_out_of_debug_output_and_errors() {
    let t = Target {
        name: "s".into(),
        kind: NotifierType::Slack,
        url: Secret::new("https://hooks.slack.com/services/T000/B000/XXXXSECRET"),
        hmac: Some(Secret::new("hmac-SECRET")),
        events: vec![],
    };
    let dbg = format!("{t:?}");
    assert!(!dbg.contains("SECRET"), "{dbg}");
    // A refused connection's error names the cause, not the URL.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    let url = format!("http://127.0.0.1:{port}/services/TOKENSECRET");
    let n = Notifier::start(vec![target("x", NotifierType::Slack, url)], fast());
    n.notify(&rolled_back());
    wait_until(|| n.stats()["x"].given_up == 1).await;
    let e = n.stats()["x"].last_error.clone().unwrap();
    assert!(
        !e.contains("TOKENSECRET") && !e.contains(&port.to_string()),
        "{e}"
    );
}

async fn wait_until(f: impl Fn() -> bool) {
    for _ in 0..600 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("condition not met in time");
}
