//! Whom the controller calls for a BlueGreen's author: a webhook aimed at
//! the Kubernetes API server is not sent, and with an allow-list only its
//! hosts are called. The outcome is in `status.hooks`. Real control plane;
//! the "fine" hook is a receiver on loopback. (Link-local addresses are
//! refused by the same check; its unit tests in teal-notify cover them, as
//! this test sends nothing off the machine.)

mod support;

use std::collections::BTreeMap;

use serde_json::json;
use support::case;
use teal_testenv::receiver::Receiver;

fn hook(name: &str, url: &str) -> serde_json::Value {
    json!({"name": name, "type": "event", "url": url, "timeout": "2s", "retries": 0})
}

type Answers = BTreeMap<String, (bool, String)>;

/// Waits until status.hooks has answers for `names` at the revision now
/// desired, once that is not `before`; returns that revision, and each
/// hook's message and whether it passed.
async fn answers(c: &support::Case, names: &[&str], before: Option<&str>) -> (String, Answers) {
    let st = c
        .wait_status("the hooks' answers for the new revision", "shop", |s| {
            s.desired_revision.as_deref() != before
                && names.iter().all(|n| {
                    s.hooks
                        .iter()
                        .any(|h| h.name == *n && Some(&h.revision) == s.desired_revision.as_ref())
                })
        })
        .await;
    let answers = st
        .hooks
        .into_iter()
        .map(|h| (h.name, (h.passed, h.message)))
        .collect();
    (st.desired_revision.unwrap_or_default(), answers)
}

#[tokio::test(flavor = "multi_thread")]
async fn hooks_reach_neither_the_api_server_nor_link_local_addresses_and_follow_the_allow_list() {
    let fine = Receiver::start(200).await;
    let mut c = case("egress").await;
    let api = support::Case::api_server_url().await;
    let deny = teal_controller::api_server_addrs(&api).await;
    assert!(!deny.is_empty(), "the API server's address of {api}");
    c.create_workload("shop", "shop:1", 1, BTreeMap::new())
        .await;
    let secrets_url = format!(
        "{}/api/v1/namespaces/{}/secrets",
        api.to_string().trim_end_matches('/'),
        c.ns
    );
    c.create_bluegreen(
        "shop",
        json!({
            "workloadRef": {"kind": "Deployment", "name": "shop"},
            "scaleDownDelay": "1s",
            "webhooks": [
                hook("api", &secrets_url),
                hook("fine", &fine.url("/ok")),
            ]
        }),
    )
    .await
    .unwrap();
    let deny_all = deny.clone();
    c.start_controller_opts(move |o| {
        o.egress = teal_controller::Egress {
            allow: vec![],
            deny: deny_all,
        }
    });
    c.wait_status("adoption", "shop", |s| {
        s.phase.as_deref() == Some("Healthy")
    })
    .await;
    // A release fires the event hooks.
    c.set_image("shop", "shop:2", BTreeMap::new()).await;
    let (v2, got) = answers(&c, &["api", "fine"], None).await;
    println!("default policy: {got:#?}");
    let (passed, msg) = &got["api"];
    assert!(
        !passed && msg.contains("not sent") && msg.contains("Kubernetes API server"),
        "{msg}"
    );
    assert!(got["fine"].0, "{:?}", got["fine"]);
    let called = fine.received().len();
    assert!(called > 0);

    // With an allow-list, a host not on it is not called.
    c.stop_controller();
    c.start_controller_opts(move |o| {
        o.egress = teal_controller::Egress {
            allow: vec!["hooks.example.com".into(), "*.corp.example".into()],
            deny,
        }
    });
    c.set_image("shop", "shop:3", BTreeMap::new()).await;
    let (_, got) = answers(&c, &["fine"], Some(&v2)).await;
    println!("allow-list hooks.example.com, *.corp.example: {got:#?}");
    let (passed, msg) = &got["fine"];
    assert!(
        !passed && msg.contains("not in the controller's egress allow-list"),
        "{msg}"
    );
    assert_eq!(fine.received().len(), called, "the receiver was called");
}
