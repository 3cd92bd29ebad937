//! Errors the cluster gives the controller reach the BlueGreen's author:
//! a color Deployment the apiserver refuses (a ResourceQuota on
//! Deployments), pods a ReplicaSet cannot create (Pod Security admission
//! enforcing `restricted`), and a watch the controller is not allowed
//! (no RBAC on pods). Real control plane: kube-apiserver's admission and
//! kube-controller-manager's ReplicaSet conditions.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, ResourceQuota};
use k8s_openapi::api::rbac::v1::Role;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;
use support::case;

fn spec(deadline: &str) -> serde_json::Value {
    json!({
        "workloadRef": {"kind": "Deployment", "name": "shop"},
        "scaleDownDelay": "1s",
        "progressDeadline": deadline
    })
}

fn condition<'a>(
    st: &'a teal_api::BlueGreenStatus,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    st.conditions.iter().find(|c| c.type_ == type_)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_color_deployment_is_reported_and_the_deadline_ends_the_release() {
    let mut c = case("refused-deploy").await;
    c.adopted(spec("20s")).await;
    // The workload and the blue color: no room for a green Deployment.
    let quotas: Api<ResourceQuota> = Api::namespaced(c.client.clone(), &c.ns);
    let q: ResourceQuota = serde_json::from_value(json!({
        "metadata": {"name": "deployments"},
        "spec": {"hard": {"count/deployments.apps": "2"}}
    }))
    .unwrap();
    quotas.create(&PostParams::default(), &q).await.unwrap();
    teal_testenv::wait_for("the quota's usage counted", Duration::from_secs(30), || {
        let quotas = quotas.clone();
        async move {
            let q = quotas.get("deployments").await.map_err(|e| e.to_string())?;
            let used = q
                .status
                .and_then(|s| s.used)
                .and_then(|u| u.get("count/deployments.apps").cloned());
            match used {
                Some(u) if u.0 == "2" => Ok(()),
                other => Err(format!("used {other:?}")),
            }
        }
    })
    .await;

    let started = Instant::now();
    c.set_image("shop", "shop:2", BTreeMap::new()).await;
    let st = c
        .wait_status("the refusal in a condition", "shop", |s| {
            condition(s, "Ready")
                .is_some_and(|c| c.status == "False" && c.reason == "DeploymentRefused")
        })
        .await;
    let reported = started.elapsed();
    let ready = condition(&st, "Ready").unwrap();
    assert!(
        ready.message.contains("shop-green") && ready.message.contains("exceeded quota"),
        "{ready:?}"
    );
    let events = c.events("shop").await;
    assert!(
        events.iter().any(|(t, r, n)| t == "Warning"
            && r == "DeploymentRefused"
            && n.contains("exceeded quota")),
        "{events:#?}"
    );
    let st = c
        .wait_status("the progress deadline ends the release", "shop", |s| {
            s.history.iter().any(|h| h.outcome == "failed")
        })
        .await;
    let failed = started.elapsed();
    println!("refusal reported after {reported:?}; release failed after {failed:?}");
    assert!(reported < Duration::from_secs(15), "{reported:?}");
    assert!(
        st.message
            .as_deref()
            .is_some_and(|m| m.contains("progress deadline")),
        "{st:?}"
    );
    assert_eq!(c.selector_color("shop").await.as_deref(), Some("blue"));
}

#[tokio::test(flavor = "multi_thread")]
async fn pods_refused_by_pod_security_fail_the_release_early() {
    let mut c = case("refused-pods").await;
    c.adopted(spec("600s")).await;
    // From now on, pods must meet the restricted profile (the workload's
    // template does not: no securityContext).
    let namespaces: Api<Namespace> = Api::all(c.client.clone());
    namespaces
        .patch(
            &c.ns,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {
                "pod-security.kubernetes.io/enforce": "restricted"
            }}})),
        )
        .await
        .unwrap();

    let started = Instant::now();
    c.set_image("shop", "shop:2", BTreeMap::new()).await;
    let st = c
        .wait_status("the release failed on the refused pods", "shop", |s| {
            s.history.iter().any(|h| h.outcome == "failed")
        })
        .await;
    let took = started.elapsed();
    println!("release failed {took:?} after it started (progress deadline 600s)");
    let msg = st.message.clone().unwrap_or_default();
    assert!(
        msg.contains("ReplicaFailure") && msg.contains("PodSecurity"),
        "{msg}"
    );
    assert!(took < Duration::from_secs(30), "{took:?}");
    assert_eq!(c.selector_color("shop").await.as_deref(), Some("blue"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forbidden_watch_is_reported_in_a_condition_until_it_is_allowed() {
    let log = support::log();
    let mut c = case("refused-watch").await;
    c.create_workload("shop", "shop:1", 1, BTreeMap::new())
        .await;
    c.create_bluegreen("shop", spec("120s")).await.unwrap();
    // Everything the controller needs in the namespace but pods.
    let roles: Api<Role> = Api::namespaced(c.client.clone(), &c.ns);
    let mut role: Role = serde_json::from_value(json!({
        "metadata": {"name": "teal-limited"},
        "rules": [
            {"apiGroups": ["teal.dev"], "resources": ["bluegreens", "bluegreens/status", "bluegreens/finalizers"], "verbs": ["*"]},
            {"apiGroups": ["apps"], "resources": ["deployments", "replicasets"], "verbs": ["*"]},
            {"apiGroups": [""], "resources": ["services", "secrets", "events"], "verbs": ["*"]},
            {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["*"]}
        ]
    }))
    .unwrap();
    roles.create(&PostParams::default(), &role).await.unwrap();
    c.bind("teal-limited", ("Role", "teal-limited")).await;
    let started = Instant::now();
    c.start_controller_as("teal-limited").await;
    let st = c
        .wait_status("the forbidden watch in a condition", "shop", |s| {
            condition(s, "Ready").is_some_and(|c| c.status == "False" && c.reason == "WatchFailed")
        })
        .await;
    let took = started.elapsed();
    let ready = condition(&st, "Ready").unwrap();
    println!("watch failure reported after {took:?}: {}", ready.message);
    assert!(
        ready.message.contains("pods") && ready.message.contains("forbidden"),
        "{ready:?}"
    );
    // And in the log, at warning.
    let text = String::from_utf8_lossy(&log.lock().unwrap()).to_string();
    let line = text
        .lines()
        .find(|l| l.contains("watching pods:") && l.contains(&c.ns))
        .unwrap_or_default()
        .to_string();
    assert!(line.contains(" WARN "), "{line:?}");

    // Allowed now: the watch recovers and the BlueGreen is adopted.
    let mut rules = serde_json::to_value(role.rules.take().unwrap()).unwrap();
    rules
        .as_array_mut()
        .unwrap()
        .push(json!({"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}));
    roles
        .patch(
            "teal-limited",
            &PatchParams::default(),
            &Patch::Merge(json!({ "rules": rules })),
        )
        .await
        .unwrap();
    c.wait_status("adopted once allowed", "shop", |s| {
        s.phase.as_deref() == Some("Healthy")
            && condition(s, "Ready").is_some_and(|c| c.status == "True")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_name_too_long_for_a_label_value_is_reported() {
    let mut c = case("refused-name").await;
    // 64 characters: a valid BlueGreen name, not a valid label value.
    let name = format!("shop-{}", "x".repeat(59));
    c.create_workload("shop", "shop:1", 1, BTreeMap::new())
        .await;
    c.create_bluegreen(&name, spec("120s")).await.unwrap();
    c.start_controller();
    let st = c
        .wait_status("the refusal in a condition", &name, |s| {
            condition(s, "Ready")
                .is_some_and(|c| c.status == "False" && c.reason == "DeploymentRefused")
        })
        .await;
    let ready = condition(&st, "Ready").unwrap();
    println!("{}", ready.message);
    assert!(
        ready.message.contains("metadata.labels") && ready.message.contains("63"),
        "{ready:?}"
    );
    let events = c.events(&name).await;
    assert!(
        events
            .iter()
            .any(|(t, r, _)| t == "Warning" && r == "DeploymentRefused"),
        "{events:#?}"
    );
}
