//! Webhooks and notifications in local mode, with real receivers on
//! loopback: the confirm-promotion gate holds the release until it answers
//! 2xx, a rollback hook rolls back, notifiers get the events, a notifier
//! that always fails does not hold anything, secrets stay secret.

mod local_support;

use std::time::Duration;

use local_support::*;
use teal_testenv::receiver::Receiver;

fn deploy(config: &std::path::Path, rev: &str) -> tokio::task::JoinHandle<std::process::Output> {
    let config = config.to_path_buf();
    let rev = rev.to_string();
    tokio::task::spawn_blocking(move || cli(&config, &["deploy", "--revision", &rev]))
}

async fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    for _ in 0..600 {
        if let Some(v) = f() {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_gate_holds_until_it_answers_2xx_and_notifiers_hear_about_it() {
    let gate = Receiver::start(403).await;
    let pre = Receiver::start(200).await;
    let slack = Receiver::start(200).await;
    let broken = Receiver::start(500).await;
    let dir = Scratch::new("hooks-gate");
    std::fs::write(
        dir.0.join("slack-url"),
        slack.url("/services/T0/B0/SECRETTOKEN"),
    )
    .unwrap();
    std::fs::write(
        dir.0.join("broken-url"),
        broken.url("/api/webhooks/1/BROKENSECRET"),
    )
    .unwrap();
    std::fs::write(dir.0.join("hmac-key"), "HMACSECRET\n").unwrap();
    let extra = format!(
        "webhooks:\n  - {{name: approve, type: confirm-promotion, url: '{}', timeout: 2s, retries: 0}}\n  - {{name: smoke, type: pre-rollout, url: '{}', metadata: {{suite: checkout}}}}\nnotifications:\n  - {{name: team, type: slack, secretRef: {{file: slack-url}}}}\n  - {{name: broken, type: discord, secretRef: {{file: broken-url}}}}\n  - {{name: signed, type: webhook, url: '{}', hmacSecretRef: {{file: hmac-key}}, events: [promoted]}}\n",
        gate.url("/gate"),
        pre.url("/smoke"),
        slack.url("/signed"),
    );
    let port = free_port();
    let config = write_config(&dir.0, port, &extra);
    let daemon = tokio::task::spawn_blocking({
        let config = config.clone();
        move || {
            let d = Daemon::start(&config);
            d.wait_phase("Healthy");
            d
        }
    })
    .await
    .unwrap();

    let release = deploy(&config, "v2");
    // Held at the gate: v1 stays live, the status names the hook and its answer.
    let status = eventually("the gate to hold the release", || {
        let s = daemon.status();
        let msg = s["release"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        (s["phase"] == "AwaitingPromotion" && msg.contains("answered 403")).then_some(s)
    })
    .await;
    assert_eq!(
        status["release"]["message"],
        "waiting for promotion: confirm-promotion webhook \"approve\" answered 403"
    );
    assert_eq!(status["release"]["waitingOn"], "confirm-promotion");
    assert_eq!(status["hooks"]["approve"]["status"], 403);
    assert_eq!(status["hooks"]["smoke"]["status"], 200);
    eventually("the gate to be asked again", || {
        (gate.received().len() >= 2).then_some(())
    })
    .await;
    assert_eq!(live_version(port).as_deref(), Some("v1"));
    assert!(
        !release.is_finished(),
        "deploy waits while the gate is closed"
    );

    // The pre-rollout hook got the release with its metadata.
    let smoke = pre.received();
    assert_eq!(smoke.len(), 1);
    let body = smoke[0].json();
    assert_eq!(body["type"], "pre-rollout");
    assert_eq!(body["revision"], "v2");
    assert_eq!(body["colors"]["release"], "green");
    assert_eq!(body["colors"]["active"], "blue");
    assert_eq!(body["metadata"]["suite"], "checkout");
    let asked = gate.received()[0].json();
    assert_eq!(asked["type"], "confirm-promotion");
    assert_eq!(asked["phase"], "AwaitingPromotion");

    // Open the gate: the release goes on by itself.
    gate.set_default(200);
    let o = release.await.unwrap();
    assert!(o.status.success(), "{}\n{}", text(&o), daemon.log());
    assert_eq!(live_version(port).as_deref(), Some("v2"));

    // Slack heard every step, in its own format.
    let texts: Vec<String> = eventually("slack notifications", || {
        let got: Vec<String> = slack
            .received()
            .iter()
            .filter(|r| r.path.starts_with("/services/"))
            .map(|r| r.json()["text"].as_str().unwrap_or_default().to_string())
            .collect();
        got.iter().any(|t| t.contains("v2 promoted")).then_some(got)
    })
    .await;
    assert!(
        texts
            .iter()
            .any(|t| t.starts_with("local: v2 release started")),
        "{texts:#?}"
    );
    assert!(
        texts.iter().any(|t| t.contains("v2 waiting for approval")),
        "{texts:#?}"
    );
    // The signed webhook got only `promoted`, signed with the file's key.
    let signed = eventually("the signed webhook", || {
        let s: Vec<_> = slack
            .received()
            .into_iter()
            .filter(|r| r.path == "/signed")
            .collect();
        (!s.is_empty()).then_some(s)
    })
    .await;
    assert_eq!(signed.len(), 1);
    assert_eq!(signed[0].json()["event"], "promoted");
    assert_eq!(
        signed[0].headers["x-teal-signature"].to_str().unwrap(),
        teal_notify::message::signature(b"HMACSECRET", &signed[0].body)
    );

    // The notifier that always fails was tried, and held nothing up.
    let s = eventually("failed deliveries in status", || {
        let s = daemon.status();
        (s["notifications"]["broken"]["failedAttempts"].as_u64() >= Some(1)).then_some(s)
    })
    .await;
    assert!(!broken.received().is_empty());
    assert_eq!(s["notifications"]["broken"]["delivered"], 0);
    assert_eq!(s["notifications"]["broken"]["lastError"], "answered 500");

    // Secret values appear nowhere: not in status (JSON or text), not in the log.
    let human = text(&cli(&config, &["status"]));
    assert!(
        human.contains("approve (confirm-promotion): answered 200"),
        "{human}"
    );
    assert!(human.contains("broken: 0 delivered"), "{human}");
    for secret in ["SECRETTOKEN", "BROKENSECRET", "HMACSECRET"] {
        assert!(!s.to_string().contains(secret), "{secret} in status");
        assert!(!human.contains(secret), "{secret} in status text");
        assert!(!daemon.log().contains(secret), "{secret} in the log");
    }
    drop(dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rollback_hook_answering_2xx_rolls_the_release_back() {
    let stop = Receiver::start(404).await;
    let tests = Receiver::start(200).await;
    let extra = format!(
        "analysis:\n  prePromotion:\n    interval: 1s\n    checks: 600\n    inconclusiveLimit: 600\n    metrics:\n      - {{name: success-rate, builtin: successRate, min: 0, minRequests: 1}}\nwebhooks:\n  - {{name: stop-button, type: rollback, url: '{}', retries: 0}}\n  - {{name: load-test, type: rollout, url: '{}'}}\n",
        stop.url("/rollback"),
        tests.url("/check"),
    );
    let setup = tokio::task::spawn_blocking(move || healthy_daemon("hooks-rollback", &extra))
        .await
        .unwrap();
    let preview = PreviewTraffic::start(setup.port);
    let release = deploy(&setup.config, "v2");
    // A few checks pass with the rollback hook answering 404.
    eventually("three checks", || {
        let s = setup.daemon.status();
        (s["analysis"]["run"]["checks"].as_u64() >= Some(3)).then_some(())
    })
    .await;
    assert_eq!(setup.daemon.status()["phase"], "Previewing");
    let check = tests.received()[0].json();
    assert_eq!(check["type"], "rollout");
    assert_eq!(check["phase"], "Previewing");
    stop.set_default(200);
    let o = release.await.unwrap();
    drop(preview);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let s = setup.daemon.status();
    let last = s["history"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["outcome"], "rolled_back");
    assert_eq!(
        last["reason"],
        "pre-promotion analysis failed: rollback webhook \"stop-button\" answered 200: rollback requested"
    );
    assert_eq!(live_version(setup.port).as_deref(), Some("v1"));
}
