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

/// `kubectl apply` of `manifest` in `ns`.
fn apply(ns: &str, manifest: &str) {
    use std::io::Write;
    let mut child = TestEnv::shared()
        .kubectl()
        .args(["apply", "-n", ns, "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run kubectl");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(manifest.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "kubectl apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A HorizontalPodAutoscaler `name` of `kind`/`target` on CPU (no metrics
/// API here: it acts only on a size outside `min..=max`).
fn hpa(name: &str, api_version: &str, kind: &str, target: &str, min: i32, max: i32) -> String {
    format!(
        "apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {{name: {name}}}
spec:
  scaleTargetRef: {{apiVersion: {api_version}, kind: {kind}, name: {target}}}
  minReplicas: {min}
  maxReplicas: {max}
  metrics:
    - type: Resource
      resource: {{name: cpu, target: {{type: Utilization, averageUtilization: 60}}}}
"
    )
}

/// The BlueGreen's condition `type_`, if any.
fn condition<'a>(
    st: &'a teal_api::BlueGreenStatus,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    st.conditions.iter().find(|c| c.type_ == type_)
}

/// Creates the BlueGreen `web` of Deployment `web` with the fields of
/// `extra` in its spec, and starts the controller.
async fn start(c: &mut support::Case, extra: serde_json::Value) {
    let mut spec = json!({"workloadRef": {"kind": "Deployment", "name": "web"}});
    for (k, v) in extra.as_object().into_iter().flatten() {
        spec[k] = v.clone();
    }
    c.create_bluegreen("web", spec).await.unwrap();
    c.start_controller();
}

#[tokio::test]
async fn kubectl_scale_and_a_changed_spec_replicas_resize_the_live_color() {
    let mut c = case("scale").await;
    c.create_workload("web", "web:1", 3, BTreeMap::new()).await;
    start(&mut c, json!({})).await;
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
    start(
        &mut c,
        json!({"preview": {"replicas": 1},
               "promotion": {"mode": "manual"},
               "scaleDownDelay": "2s", "progressDeadline": "60s"}),
    )
    .await;
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

/// An HPA left on the workload Deployment scales nothing once teal keeps it
/// at 0: the BlueGreen says so in a condition and a Warning Event, naming
/// what to change; pointed at the BlueGreen, the condition says it scales
/// the BlueGreen, and without an HPA there is no condition.
#[tokio::test]
async fn an_hpa_on_the_workload_is_reported_with_what_to_change() {
    let mut c = case("hpa-workload").await;
    c.create_workload("web", "web:1", 3, BTreeMap::new()).await;
    apply(&c.ns, &hpa("web", "apps/v1", "Deployment", "web", 2, 6));
    start(&mut c, json!({})).await;
    let st = c
        .wait_status("the Autoscaling condition", "web", |s| {
            s.phase.as_deref() == Some("Healthy")
                && condition(s, "Autoscaling").is_some_and(|c| c.reason == "HPATargetsWorkload")
        })
        .await;
    let cond = condition(&st, "Autoscaling").unwrap();
    assert_eq!(cond.status, "False");
    assert!(
        cond.message
            .contains("HorizontalPodAutoscaler web targets Deployment web")
            && cond
                .message
                .contains("{apiVersion: teal.dev/v1alpha1, kind: BlueGreen, name: web}"),
        "{}",
        cond.message
    );
    let events = c.events("web").await;
    assert!(
        events
            .iter()
            .any(|(t, r, n)| t == "Warning" && r == "HPATargetsWorkload" && n == &cond.message),
        "{events:?}"
    );

    apply(
        &c.ns,
        &hpa("web", "teal.dev/v1alpha1", "BlueGreen", "web", 2, 6),
    );
    let st = c
        .wait_status("the HPA targets the BlueGreen", "web", |s| {
            condition(s, "Autoscaling").is_some_and(|c| c.reason == "HPATargetsBlueGreen")
        })
        .await;
    assert_eq!(condition(&st, "Autoscaling").unwrap().status, "True");

    kubectl(&c.ns, &["delete", "hpa", "web"]);
    c.wait_status("no Autoscaling condition", "web", |s| {
        condition(s, "Autoscaling").is_none()
    })
    .await;
    let warnings = c
        .events("web")
        .await
        .into_iter()
        .filter(|(_, r, _)| r == "HPATargetsWorkload")
        .count();
    assert_eq!(warnings, 1, "the Warning is given once");
}
