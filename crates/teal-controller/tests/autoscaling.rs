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
use teal_testenv::metrics_api::ExternalMetrics;
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

/// A HorizontalPodAutoscaler `web` of the BlueGreen `web` on the external
/// metric `web_load`: one replica per 10 of it, between `min` and `max`,
/// scaling down as soon as the metric falls (no stabilization window).
fn hpa_on_load(min: i32, max: i32) -> String {
    format!(
        "apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {{name: web}}
spec:
  scaleTargetRef: {{apiVersion: teal.dev/v1alpha1, kind: BlueGreen, name: web}}
  minReplicas: {min}
  maxReplicas: {max}
  metrics:
    - type: External
      external:
        metric: {{name: web_load}}
        target: {{type: AverageValue, averageValue: '10'}}
  behavior:
    scaleDown: {{stabilizationWindowSeconds: 0}}
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

/// What was seen when the live Service `web` first selected green:
/// green's replicas asked for and ready, and the fewest replicas the
/// BlueGreen's scale subresource (what an autoscaler reads: spec and status)
/// showed until then.
struct Switch {
    replicas: i32,
    ready: i32,
    fewest_in_scale: i32,
}

/// Watches from now on until the live Service `web` selects green.
fn watch_switch_to_green(c: &support::Case) -> tokio::task::JoinHandle<Switch> {
    let services = c.services();
    let deployments = c.deployments();
    let bgs = c.bluegreens();
    tokio::spawn(async move {
        let mut fewest = i32::MAX;
        loop {
            let scale = bgs.get_scale("web").await.unwrap();
            let spec = scale.spec.and_then(|s| s.replicas).unwrap_or(0);
            let status = scale.status.map(|s| s.replicas).unwrap_or(0);
            fewest = fewest.min(spec).min(status);
            let svc = services.get("web").await.unwrap();
            let color = svc
                .spec
                .and_then(|s| s.selector)
                .and_then(|s| s.get("teal.dev/color").cloned());
            if color.as_deref() == Some("green") {
                let d = deployments.get("web-green").await.unwrap();
                return Switch {
                    replicas: d.spec.replicas.unwrap_or(0),
                    ready: d.status.and_then(|s| s.ready_replicas).unwrap_or(0),
                    fewest_in_scale: fewest,
                };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
}

/// Waits for [`watch_switch_to_green`]'s answer.
async fn switched(watch: tokio::task::JoinHandle<Switch>) -> Switch {
    tokio::time::timeout(Duration::from_secs(120), watch)
        .await
        .expect("the live Service switched to green")
        .unwrap()
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

    // When the live Service selects green, green must already have 5
    // ready replicas.
    let watch = watch_switch_to_green(&c);
    c.command("web", "promote").await;
    let sw = switched(watch).await;
    assert_eq!(sw.replicas, 5, "green was scaled to the current size");
    assert!(
        sw.ready >= 5,
        "green had {} ready replicas when it took production traffic",
        sw.ready
    );
    assert_eq!(sw.fewest_in_scale, 5);
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
    support::kubectl_apply(&c.ns, &hpa("web", "apps/v1", "Deployment", "web", 2, 6));
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

    support::kubectl_apply(
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

/// Waits until the HorizontalPodAutoscaler `web` reports `n` current and
/// desired replicas (its status follows on its next sync, 15 s).
async fn hpa_at(c: &support::Case, n: i32) {
    let api: kube::Api<k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler> =
        kube::Api::namespaced(c.client.clone(), &c.ns);
    wait_for(
        &format!("the HPA to report {n} replicas"),
        Duration::from_secs(60),
        || async {
            let st = api
                .get("web")
                .await
                .map_err(|e| e.to_string())?
                .status
                .unwrap_or_default();
            if st.current_replicas == Some(n) && st.desired_replicas == n {
                Ok(())
            } else {
                Err(format!(
                    "current {:?}, desired {}",
                    st.current_replicas, st.desired_replicas
                ))
            }
        },
    )
    .await;
}

/// Waits (the HPA controller syncs every 15 s and finds a new CRD's scale
/// subresource on its next discovery) until `web`'s live Deployment
/// `deployment` has `n` ready replicas and the BlueGreen reports them.
async fn live_at(c: &support::Case, deployment: &str, n: i32) {
    let api = c.bluegreens();
    wait_for(
        &format!("{deployment} at {n} ready replicas"),
        Duration::from_secs(150),
        || async {
            let bg = api.get("web").await.map_err(|e| e.to_string())?;
            let st = bg.status.clone().unwrap_or_default();
            let ready = c.ready(deployment).await;
            let ok = bg.spec.replicas == Some(n)
                && st.replicas == Some(n)
                && ready == n
                && st.phase.as_deref() == Some("Healthy");
            if ok {
                Ok(())
            } else {
                Err(format!(
                    "spec.replicas {:?}, status.replicas {:?}, {ready} ready, phase {:?}",
                    bg.spec.replicas, st.replicas, st.phase
                ))
            }
        },
    )
    .await;
}

/// Releases `web:2` while the BlueGreen is at `n` replicas: green takes
/// production traffic only once `n` of its replicas are ready, the scale
/// subresource an autoscaler reads never shows fewer meanwhile and, once
/// the release is recorded, selects green's pods, and green ends live at
/// `n`.
async fn release_at(c: &support::Case, n: i32) {
    let watch = watch_switch_to_green(c);
    c.set_image("web", "web:2", BTreeMap::new()).await;
    let sw = switched(watch).await;
    assert!(
        sw.ready >= n,
        "green had {} ready replicas when it took production traffic",
        sw.ready
    );
    assert_eq!(
        sw.fewest_in_scale, n,
        "the scale subresource read fewer than {n} replicas"
    );
    c.wait_status("v2 promoted", "web", |s| {
        s.phase.as_deref() == Some("Healthy")
            && s.active_color == Some(Color::Green)
            && s.history.iter().any(|h| h.outcome == "promoted")
    })
    .await;
    // Status (which the scale subresource serves) follows the switch on
    // the controller's next status write.
    let scale = c.bluegreens().get_scale("web").await.unwrap();
    assert_eq!(
        scale.status.and_then(|s| s.selector).as_deref(),
        Some("teal.dev/bluegreen=web,teal.dev/color=green")
    );
    live_at(c, "web-green", n).await;
}

/// The workload `web` at 2 replicas, adopted by the BlueGreen `web`
/// (previews at 1), live on blue.
async fn live_web_at_2(c: &mut support::Case) {
    c.create_workload("web", "web:1", 2, BTreeMap::new()).await;
    start(
        c,
        json!({"preview": {"replicas": 1},
               "scaleDownDelay": "2s", "progressDeadline": "120s"}),
    )
    .await;
    live_at(c, "web-blue", 2).await;
}

/// kube-controller-manager's HorizontalPodAutoscaler controller acts on a
/// BlueGreen through its scale subresource. There is no metrics API here,
/// so it is driven by its bounds, which it enforces without reading
/// metrics: raising minReplicas above the size scales the live color up,
/// a release keeps that size across the cutover, and lowering maxReplicas
/// below it scales the live color down.
#[tokio::test]
async fn the_hpa_controller_sizes_the_live_color_through_the_scale_subresource() {
    let mut c = case("hpa").await;
    live_web_at_2(&mut c).await;

    support::kubectl_apply(
        &c.ns,
        &hpa("web", "teal.dev/v1alpha1", "BlueGreen", "web", 4, 6),
    );
    live_at(&c, "web-blue", 4).await;
    hpa_at(&c, 4).await;
    let out = kubectl(&c.ns, &["get", "hpa", "web"]);
    assert!(out.contains("BlueGreen/web"), "{out}");

    // A release: green previews at 1, goes live at the 4 the HPA holds.
    release_at(&c, 4).await;
    // The HPA saw no change of size across the cutover.
    hpa_at(&c, 4).await;

    support::kubectl_apply(
        &c.ns,
        &hpa("web", "teal.dev/v1alpha1", "BlueGreen", "web", 1, 3),
    );
    live_at(&c, "web-green", 3).await;
    assert_eq!(c.replicas("web-blue").await, Some(0));
}

/// The HPA controller scales the live color on a metric that follows load
/// (an external metric, as KEDA or a Prometheus adapter serve, here from the
/// test's own metrics API): up when the load rises, across a release at the
/// size it holds, and the new live color down when the load falls.
#[tokio::test]
async fn the_hpa_follows_load_on_an_external_metric_across_a_release() {
    let mut c = case("hpa-load").await;
    let metrics = ExternalMetrics::start(c.client.clone()).await.unwrap();
    metrics.set("web_load", "20");
    live_web_at_2(&mut c).await;
    support::kubectl_apply(&c.ns, &hpa_on_load(1, 6));
    hpa_at(&c, 2).await;

    // The load rises to 50: five replicas of 10.
    metrics.set("web_load", "50");
    live_at(&c, "web-blue", 5).await;
    hpa_at(&c, 5).await;
    let out = kubectl(&c.ns, &["get", "hpa", "web"]);
    assert!(
        out.contains("BlueGreen/web") && out.contains("10/10 (avg)"),
        "{out}"
    );

    // A release while the HPA holds 5.
    release_at(&c, 5).await;

    // The load falls to 20: the HPA scales the new live color to 2.
    metrics.set("web_load", "20");
    live_at(&c, "web-green", 2).await;
    hpa_at(&c, 2).await;
    assert_eq!(c.replicas("web-blue").await, Some(0));
    assert!(metrics.asked().iter().all(|m| m == "web_load"));
}

/// The CRD's rules hold for the scale subresource too: an autoscaler
/// cannot take `spec.replicas` below `spec.preview.replicas` (nor to 0).
#[tokio::test]
async fn a_scale_below_the_preview_size_is_refused() {
    let c = case("scale-refused").await;
    c.create_bluegreen(
        "web",
        json!({"workloadRef": {"kind": "Deployment", "name": "web"},
               "replicas": 3, "preview": {"replicas": 2}}),
    )
    .await
    .unwrap();
    for (n, why) in [
        ("1", "spec.preview.replicas must not exceed spec.replicas"),
        (
            "0",
            "spec.replicas in body should be greater than or equal to 1",
        ),
    ] {
        let out = TestEnv::shared()
            .kubectl()
            .args(["-n", &c.ns, "scale", "bluegreen/web", "--replicas", n])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(why),
            "--replicas {n}: {err}"
        );
    }
    assert_eq!(
        c.bluegreens().get("web").await.unwrap().spec.replicas,
        Some(3)
    );
}
