//! Invalid webhooks and notifiers are refused by the real apiserver (schema
//! and CEL rules from the generated CRD), with messages naming the field.

mod support;

use serde_json::json;
use support::case;

fn with(key: &str, value: serde_json::Value) -> serde_json::Value {
    let mut s = json!({"workloadRef": {"kind": "Deployment", "name": "shop"}, "replicas": 3});
    s[key] = value;
    s
}

#[tokio::test]
async fn invalid_hooks_and_notifiers_are_rejected_naming_the_field() {
    let c = case("invalid-hooks").await;
    let cases: Vec<(&str, serde_json::Value, &[&str])> = vec![
        (
            "unknown webhook type",
            with(
                "webhooks",
                json!([{"name": "a", "type": "pre-promotion", "url": "http://x"}]),
            ),
            &["spec.webhooks[0].type", "pre-promotion"],
        ),
        (
            "webhook url not http(s)",
            with(
                "webhooks",
                json!([{"name": "a", "type": "rollout", "url": "ftp://x"}]),
            ),
            &["spec.webhooks[0].url"],
        ),
        (
            "retries out of range",
            with(
                "webhooks",
                json!([{"name": "a", "type": "event", "url": "http://x", "retries": 11}]),
            ),
            &["spec.webhooks[0].retries", "10"],
        ),
        (
            "unparsable timeout",
            with(
                "webhooks",
                json!([{"name": "a", "type": "event", "url": "http://x", "timeout": "soon"}]),
            ),
            &["spec.webhooks[0].timeout"],
        ),
        (
            "two webhooks with one name (status.hooks is keyed by name)",
            with(
                "webhooks",
                json!([
                    {"name": "smoke", "type": "event", "url": "http://x"},
                    {"name": "smoke", "type": "pre-rollout", "url": "http://y"}
                ]),
            ),
            &["spec.webhooks[1]", "Duplicate value", "smoke"],
        ),
        (
            "two notifiers with one name",
            with(
                "notifications",
                json!([
                    {"name": "n", "type": "slack", "url": "http://x"},
                    {"name": "n", "type": "webhook", "url": "http://y"}
                ]),
            ),
            &["spec.notifications[1]", "Duplicate value"],
        ),
        (
            "unknown notifier type",
            with(
                "notifications",
                json!([{"name": "n", "type": "pagerduty", "url": "http://x"}]),
            ),
            &["spec.notifications[0].type", "pagerduty"],
        ),
        (
            "notifier without url or secretRef",
            with("notifications", json!([{"name": "n", "type": "slack"}])),
            &[
                "spec.notifications[0].url",
                "exactly one of url and secretRef",
            ],
        ),
        (
            "notifier with url and secretRef",
            with(
                "notifications",
                json!([{"name": "n", "type": "slack", "url": "http://x", "secretRef": {"name": "s", "key": "url"}}]),
            ),
            &[
                "spec.notifications[0].url",
                "exactly one of url and secretRef",
            ],
        ),
        (
            "notifier url not http(s)",
            with(
                "notifications",
                json!([{"name": "n", "type": "slack", "url": "hooks.slack.com/x"}]),
            ),
            &["spec.notifications[0].url", "http://"],
        ),
        (
            "hmac on a non-webhook notifier",
            with(
                "notifications",
                json!([{"name": "n", "type": "slack", "url": "http://x", "hmacSecretRef": {"name": "k", "key": "key"}}]),
            ),
            &[
                "spec.notifications[0].hmacSecretRef",
                "only applies to type webhook",
            ],
        ),
        (
            "secretRef without key",
            with(
                "notifications",
                json!([{"name": "n", "type": "slack", "secretRef": {"name": "s"}}]),
            ),
            &["spec.notifications[0].secretRef", "name and key"],
        ),
        (
            "unknown notification event",
            with(
                "notifications",
                json!([{"name": "n", "type": "slack", "url": "http://x", "events": ["exploded"]}]),
            ),
            &["spec.notifications[0].events[0]", "exploded"],
        ),
    ];
    for (i, (what, spec, wants)) in cases.into_iter().enumerate() {
        let err = c
            .create_raw(&format!("bad-{i}"), spec)
            .await
            .expect_err(what)
            .to_string();
        for want in wants {
            assert!(err.contains(want), "{what}: {want:?} not in {err}");
        }
    }
    // A valid spec with both is accepted.
    c.create_raw(
        "good",
        with(
            "notifications",
            json!([
                {"name": "team", "type": "slack", "secretRef": {"name": "s", "key": "url"}, "events": ["promoted"]},
                {"name": "audit", "type": "webhook", "url": "https://audit.example/teal", "hmacSecretRef": {"name": "k", "key": "key"}}
            ]),
        ),
    )
    .await
    .expect("a valid spec is accepted");
}
