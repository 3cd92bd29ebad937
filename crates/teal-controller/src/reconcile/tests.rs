//! The reconcile's steps without a cluster: the decision and the status
//! as pure functions, and whole reconciles against a scripted apiserver
//! that checks each request teal makes.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use serde_json::json;
use teal_api::{BlueGreen, BlueGreenStatus};
use teal_core::Color;
use teal_core::release::{Action, Command, Input, Machine, Phase, Policy, Promotion, Routing};

use super::decide::{self, Pending, decide, first_inputs};
use super::observe::{ColorObjects, Observation};
use super::status::{self, Blocked, Facts, desired, notices, reason};
use super::{EngineState, Error};
use crate::objects::revision_of;

fn bluegreen(spec: serde_json::Value) -> BlueGreen {
    let mut s = json!({"workloadRef": {"kind": "Deployment", "name": "web"}});
    s.as_object_mut()
        .unwrap()
        .extend(spec.as_object().cloned().unwrap_or_default());
    serde_json::from_value(json!({
        "apiVersion": "teal.dev/v1alpha1",
        "kind": "BlueGreen",
        "metadata": {
            "name": "shop", "namespace": "prod", "uid": "u-1", "generation": 1,
            "resourceVersion": "7", "finalizers": [super::FINALIZER],
        },
        "spec": s,
    }))
    .unwrap()
}

fn workload(image: &str) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "prod"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "app", "image": image,
                    "ports": [{"name": "http", "containerPort": 8080}]}]}
            }
        }
    }))
    .unwrap()
}

/// A color's Deployment running `revision`, `ready` of 2 replicas ready
/// (and as many ready pods).
fn color(c: Color, revision: &str, ready: i32) -> ColorObjects {
    let deployment = serde_json::from_value(json!({
        "metadata": {"name": format!("shop-{c}"), "namespace": "prod", "generation": 1,
            "annotations": {"teal.dev/revision": revision}},
        "spec": {"replicas": 2, "selector": {}, "template": {}},
        "status": {"observedGeneration": 1, "replicas": 2, "updatedReplicas": ready,
            "availableReplicas": ready, "readyReplicas": ready},
    }))
    .unwrap();
    let pods = (0..ready)
        .map(|i| -> Pod {
            serde_json::from_value(json!({
                "metadata": {"name": format!("shop-{c}-{i}"),
                    "labels": {"teal.dev/revision": revision}},
                "status": {"conditions": [{"type": "Ready", "status": "True"}]},
            }))
            .unwrap()
        })
        .collect();
    ColorObjects {
        deployment: Some(deployment),
        replica_sets: Vec::new(),
        pods,
    }
}

fn seen(w: Deployment, saved: Option<EngineState>, colors: [ColorObjects; 2]) -> Observation {
    let running = [0, 1].map(|i| {
        colors[i]
            .deployment
            .as_ref()
            .and_then(|d| d.metadata.annotations.as_ref())
            .and_then(|a| a.get("teal.dev/revision").cloned())
    });
    Observation {
        revision: revision_of(&w.spec.template),
        workload: w,
        saved,
        colors,
        running,
        command: None,
        check: None,
        hooks: None,
        autoscaler: None,
        templates: None,
    }
}

/// Runs decisions as reconciles would (status written between them),
/// until the engine asks for nothing new; the router confirms every
/// switch. Returns the last decision's state.
fn settle(bg: &BlueGreen, mut o: Observation, now: u64) -> (EngineState, BlueGreenStatus) {
    let mut old = BlueGreenStatus::default();
    for _ in 0..10 {
        let mut d = decide(bg, &old, &o, now);
        for a in d.queue.clone() {
            if let Action::Route(r) = a {
                let more = d
                    .state
                    .machine
                    .handle(now, Input::Routed { active: r.active });
                d.state.machine = d.state.machine.clone();
                drop(more);
            }
        }
        old.last_command = d.last_command.or(old.last_command);
        o.saved = Some(d.state.clone());
        if d.queue.iter().all(|a| matches!(a, Action::Route(_))) {
            return (d.state, old);
        }
    }
    panic!("the engine kept deciding");
}

fn healthy_on_blue() -> (BlueGreen, Deployment, EngineState) {
    let bg = bluegreen(json!({}));
    let w = workload("shop:v1");
    let rev = revision_of(&w.spec.template);
    let blue = color(Color::Blue, &rev, 2);
    let o = seen(w.clone(), None, [blue, ColorObjects::default()]);
    let (state, _) = settle(&bg, o, 1_000);
    assert_eq!(state.machine.phase_name(), "Healthy");
    (bg, w, state)
}

#[test]
fn a_first_reconcile_adopts_the_workload_and_deploys_blue() {
    let bg = bluegreen(json!({}));
    let w = workload("shop:v1");
    let d = decide(
        &bg,
        &BlueGreenStatus::default(),
        &seen(w.clone(), None, Default::default()),
        1_000,
    );
    assert!(d.adopted);
    let rev = revision_of(&w.spec.template);
    assert!(
        d.queue.iter().any(|a| matches!(a, Action::Deploy { color: Color::Blue, revision, replicas: 2 } if *revision == rev)),
        "{:?}",
        d.queue
    );
    assert!(!d.switches);
}

#[test]
fn a_new_template_starts_a_release_on_the_idle_color() {
    let (bg, _, state) = healthy_on_blue();
    let v1 = state.machine.active.revision.clone();
    let w2 = workload("shop:v2");
    let o = seen(
        w2.clone(),
        Some(state),
        [color(Color::Blue, &v1, 2), ColorObjects::default()],
    );
    let d = decide(&bg, &BlueGreenStatus::default(), &o, 2_000);
    let v2 = revision_of(&w2.spec.template);
    assert!(
        d.queue.iter().any(
            |a| matches!(a, Action::Deploy { color: Color::Green, revision, .. } if *revision == v2)
        ),
        "{:?}",
        d.queue
    );
    // The live routes are written again, but that is no switch.
    assert!(matches!(
        d.queue[0],
        Action::Route(Routing {
            active: Color::Blue,
            ..
        })
    ));
    assert!(!d.switches);
}

#[test]
fn a_color_deployment_that_went_missing_is_deployed_again() {
    let (bg, w, state) = healthy_on_blue();
    let o = seen(w, Some(state), Default::default());
    let d = decide(&bg, &BlueGreenStatus::default(), &o, 2_000);
    assert!(
        d.queue.iter().any(|a| matches!(
            a,
            Action::Deploy {
                color: Color::Blue,
                ..
            }
        )),
        "{:?}",
        d.queue
    );
}

#[test]
fn a_command_is_fed_once_and_an_unknown_one_is_reported() {
    let (bg, w, state) = healthy_on_blue();
    let rev = state.machine.active.revision.clone();
    let mut o = seen(
        w,
        Some(state),
        [color(Color::Blue, &rev, 2), ColorObjects::default()],
    );
    o.command = Some("bogus/1".into());
    let d = decide(&bg, &BlueGreenStatus::default(), &o, 2_000);
    assert_eq!(d.invalid_command.as_deref(), Some("bogus/1"));
    assert_eq!(d.last_command.as_deref(), Some("bogus/1"));
    // Nothing to roll back to: the engine refuses, and says why.
    o.command = Some("rollback/2".into());
    let d = decide(&bg, &BlueGreenStatus::default(), &o, 2_000);
    assert_eq!(d.rejected.len(), 1, "{:?}", d.rejected);
    // Status already names it: not read again.
    let old = BlueGreenStatus {
        last_command: Some("rollback/2".into()),
        ..Default::default()
    };
    let d = decide(&bg, &old, &o, 2_000);
    assert!(d.last_command.is_none() && d.rejected.is_empty());
    // Saved with the state it led to, but status did not say so: not again.
    let mut consumed = o.clone();
    if let Some(s) = consumed.saved.as_mut() {
        s.command = Some("rollback/2".into());
    }
    let d = decide(&bg, &BlueGreenStatus::default(), &consumed, 2_000);
    assert_eq!(d.last_command.as_deref(), Some("rollback/2"));
    assert!(d.rejected.is_empty(), "{:?}", d.rejected);
}

#[test]
fn a_promote_is_judged_on_the_observation_of_the_same_reconcile() {
    use teal_core::release::ColorStatus;
    let policy = Policy {
        replicas: 3,
        preview_replicas: None,
        promotion: Promotion::Manual {
            auto_promote_after_ms: None,
        },
        pre_promotion_analysis: false,
        post_promotion_analysis: false,
        progress_deadline_ms: 60_000,
        scale_down_delay_ms: 300_000,
        hooks: Default::default(),
    };
    let seen = |color, revision: &str, ready| ColorStatus {
        color,
        revision: Some(revision.into()),
        ready_replicas: ready,
        failure: None,
    };
    let feed = |m: &mut Machine, inputs: Vec<Input>| {
        let mut actions = Vec::new();
        for i in inputs {
            actions.extend(m.handle(1_000, i).unwrap_or_default());
        }
        actions
    };
    let (mut m, _) = Machine::new(policy, "v1");
    let blue = || vec![seen(Color::Blue, "v1", 3)];
    feed(&mut m, first_inputs("v1".into(), blue(), None));
    // One reconcile of release v2 with green's pods ready as given.
    let mut reconcile = |green_ready, command| {
        let mut observed = blue();
        observed.push(seen(Color::Green, "v2", green_ready));
        let actions = feed(&mut m, first_inputs("v2".into(), observed, command));
        let phase = m.release.as_ref().map(|r| r.phase);
        let to_green = actions
            .iter()
            .any(|a| matches!(a, Action::Route(r) if r.active == Color::Green));
        (phase, to_green)
    };
    reconcile(0, None);
    assert_eq!(reconcile(3, None), (Some(Phase::AwaitingPromotion), false));
    // Green's pods went away since the last reconcile; the operator
    // promotes in this one.
    let promote = Some(Command::Promote { full: false });
    assert_eq!(reconcile(0, promote), (Some(Phase::ScalingUp), false));
    assert_eq!(reconcile(3, None), (Some(Phase::CuttingOver), true));
}

#[test]
fn the_next_reconcile_comes_soon_only_while_something_is_pending() {
    let (_, _, state) = healthy_on_blue();
    let routed = Pending {
        routed: true,
        ..Default::default()
    };
    let ms = |p| decide::requeue_after(&state, p, 1_000).as_millis() as u64;
    assert_eq!(ms(routed), super::IDLE_RESYNC_MS);
    assert_eq!(
        ms(Pending::default()),
        30_000,
        "the router has not confirmed"
    );
    let refused = Pending {
        refused: true,
        ..routed
    };
    assert_eq!(ms(refused), decide::REFUSED_RETRY_MS);
    let missing = Pending {
        templates_missing: true,
        ..routed
    };
    assert_eq!(ms(missing), crate::templates::RETRY_MS);
}

fn facts(state: &EngineState) -> Facts {
    Facts {
        generation: Some(3),
        revision: state.machine.active.revision.clone(),
        routed: true,
        live_replicas: Some(2),
        ..Default::default()
    }
}

fn cond<'a>(s: &'a BlueGreenStatus, kind: &str) -> (&'a str, &'a str) {
    let c = s.conditions.iter().find(|c| c.type_ == kind).unwrap();
    (c.status.as_str(), c.reason.as_str())
}

#[test]
fn a_serving_bluegreen_is_healthy_ready_available_and_idle() {
    let (_, _, state) = healthy_on_blue();
    let s = desired(
        &Default::default(),
        "shop",
        &state.machine,
        None,
        facts(&state),
    );
    assert_eq!(s.phase.as_deref(), Some("Healthy"));
    assert_eq!(s.active_color, Some(Color::Blue));
    assert_eq!(s.message.as_deref(), Some("live"));
    assert_eq!(s.observed_generation, Some(3));
    assert_eq!(
        s.selector.as_deref(),
        Some("teal.dev/bluegreen=shop,teal.dev/color=blue")
    );
    assert_eq!(s.replicas, Some(2));
    assert_eq!(cond(&s, status::kind::READY), ("True", reason::RECONCILED));
    assert_eq!(cond(&s, status::kind::AVAILABLE), ("True", reason::SERVING));
    assert_eq!(cond(&s, status::kind::PROGRESSING), ("False", reason::IDLE));
    assert!(notices(&Default::default(), &s).is_empty());
}

#[test]
fn a_refused_deployment_is_a_ready_false_condition_and_one_notice() {
    let (_, _, state) = healthy_on_blue();
    let refused = Facts {
        refused: Some("the apiserver refused Deployment prod/shop-green: quota".into()),
        ..facts(&state)
    };
    let s = desired(
        &Default::default(),
        "shop",
        &state.machine,
        None,
        refused.clone(),
    );
    assert_eq!(
        cond(&s, status::kind::READY),
        ("False", reason::DEPLOYMENT_REFUSED)
    );
    let n = notices(&Default::default(), &s);
    assert_eq!(n.len(), 1);
    assert!(n[0].logged && n[0].message.contains("quota"));
    // The next reconcile, refused alike: no second notice, same transition time.
    let again = desired(&s, "shop", &state.machine, None, refused);
    assert!(notices(&s, &again).is_empty());
    assert_eq!(
        again.conditions[0].last_transition_time,
        s.conditions[0].last_transition_time
    );
}

#[test]
fn an_adopted_bluegreen_whose_router_has_not_confirmed_is_initializing() {
    let (_, _, state) = healthy_on_blue();
    let mut old = BlueGreenStatus::default();
    status::set_condition(
        &mut old,
        status::condition(
            status::kind::ROUTED,
            false,
            "AwaitingAcknowledgement",
            "no router pod is ready",
            None,
        ),
    );
    let f = Facts {
        routed: false,
        ..facts(&state)
    };
    let s = desired(&old, "shop", &state.machine, None, f);
    assert_eq!(s.phase.as_deref(), Some(status::INITIALIZING_PHASE));
    assert_eq!(
        s.message.as_deref(),
        Some("waiting for the router to take the traffic: no router pod is ready")
    );
}

#[test]
fn a_verdict_recorded_in_this_reconcile_stays_after_its_stage_ended() {
    let (_, _, state) = healthy_on_blue();
    let recorded = teal_api::bluegreen::AnalysisStatus {
        stage: "prePromotion".into(),
        revision: "r2".into(),
        checks: 3,
        failures: 3,
        inconclusive: 0,
        errors: 0,
        metrics: Vec::new(),
        history: Vec::new(),
        verdict: Some("fail: errors above 5".into()),
    };
    let f = Facts {
        recorded_analysis: Some(recorded.clone()),
        ..facts(&state)
    };
    let s = desired(&Default::default(), "shop", &state.machine, None, f);
    assert_eq!(s.analysis, Some(recorded));
}

#[test]
fn a_blocked_bluegreen_says_why_and_a_conflict_shows_in_the_phase() {
    let old = BlueGreenStatus {
        phase: Some("Healthy".into()),
        ..Default::default()
    };
    let b =
        Blocked::WorkloadNotFound("Deployment prod/web (spec.workloadRef) does not exist".into());
    let s = status::blocked(&old, Some(2), &b);
    assert_eq!(
        cond(&s, status::kind::READY),
        ("False", reason::WORKLOAD_NOT_FOUND)
    );
    assert_eq!(s.phase.as_deref(), Some("Healthy"));
    assert_eq!(s.message.as_deref(), Some(b.message()));
    let s = status::blocked(&old, Some(2), &Blocked::ServiceConflict("taken".into()));
    assert_eq!(s.phase.as_deref(), Some(status::CONFLICT_PHASE));
    assert_eq!(b.retry_ms(), 30_000);
    assert_eq!(Blocked::EngineUnreadable(String::new()).retry_ms(), 60_000);
}

#[test]
fn a_cleared_status_field_is_sent_as_null() {
    let old = BlueGreenStatus {
        preview_color: Some(Color::Green),
        phase: Some("Previewing".into()),
        ..Default::default()
    };
    let new = BlueGreenStatus {
        phase: Some("Healthy".into()),
        ..Default::default()
    };
    let p = status::merge_diff(
        &serde_json::to_value(&old).unwrap(),
        serde_json::to_value(new).unwrap(),
    );
    assert_eq!(p["previewColor"], serde_json::Value::Null);
    assert!(p.as_object().unwrap().contains_key("previewColor"));
    assert_eq!(p["phase"], "Healthy");
}

// ---- Whole reconciles against a scripted apiserver ----

/// One request the apiserver expects, and its answer.
#[derive(Clone)]
struct Exchange {
    method: &'static str,
    /// The path, with the query string if any.
    path: String,
    status: u16,
    answer: serde_json::Value,
}

fn expect(method: &'static str, path: &str, status: u16, answer: serde_json::Value) -> Exchange {
    Exchange {
        method,
        path: path.into(),
        status,
        answer,
    }
}

fn not_found() -> serde_json::Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404})
}

/// The requests seen, with their bodies.
type Seen = Arc<Mutex<Vec<(String, String, serde_json::Value)>>>;

/// A client whose apiserver answers `script` in order and fails the test
/// on any request out of it.
fn scripted(script: Vec<Exchange>) -> (kube::Client, Seen) {
    use http_body_util::BodyExt;
    let script = Arc::new(Mutex::new(VecDeque::from(script)));
    let seen: Seen = Arc::default();
    let log = seen.clone();
    let svc = tower::service_fn(move |req: http::Request<kube::client::Body>| {
        let script = script.clone();
        let log = log.clone();
        async move {
            let method = req.method().to_string();
            let path = req
                .uri()
                .path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_default();
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let body = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
            log.lock()
                .unwrap()
                .push((method.clone(), path.clone(), body));
            let next = script.lock().unwrap().pop_front();
            let (status, answer) = match next {
                Some(e) if e.method == method && e.path == path => (e.status, e.answer),
                Some(e) => panic!("expected {} {}, got {method} {path}", e.method, e.path),
                None => panic!("unexpected request {method} {path}"),
            };
            let bytes = bytes::Bytes::from(serde_json::to_vec(&answer).unwrap());
            Ok::<_, std::convert::Infallible>(
                http::Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(http_body_util::Full::new(bytes))
                    .unwrap(),
            )
        }
    });
    (kube::Client::new(svc, "default"), seen)
}

fn context(client: kube::Client) -> Arc<super::Context> {
    use kube::Api;
    let (cache, _feeds) = crate::cache::Cache::new(
        Api::all(client.clone()),
        Api::all(client.clone()),
        Api::all(client.clone()),
        Api::all(client.clone()),
    );
    let reporter = kube::runtime::events::Reporter {
        controller: "teal-controller".into(),
        instance: None,
    };
    Arc::new(super::Context {
        recorder: crate::events::Recorder::new(client.clone(), reporter),
        client,
        metrics: Default::default(),
        cache,
        written: Default::default(),
        workloads: Default::default(),
        router_image: None,
    })
}

/// The workload `shop:v1` read from the apiserver (no cache here).
fn the_workload() -> Exchange {
    let w = serde_json::to_value(workload("shop:v1")).unwrap();
    expect("GET", WORKLOAD, 200, w)
}

/// The status patch, answered with `answer`.
fn status_patch(answer: serde_json::Value) -> Exchange {
    expect(
        "PATCH",
        &format!("{BG}/status?&{MANAGER_QUERY}"),
        200,
        answer,
    )
}

/// The reads of a reconcile that finds the workload and neither of the
/// Services of router type `service` (the live one and the preview).
fn observed_without_services() -> Vec<Exchange> {
    vec![
        the_workload(),
        expect("GET", &format!("{SERVICES}/shop"), 404, not_found()),
        expect("GET", &format!("{SERVICES}/shop-preview"), 404, not_found()),
    ]
}

const BG: &str = "/apis/teal.dev/v1alpha1/namespaces/prod/bluegreens/shop";
const WORKLOAD: &str = "/apis/apps/v1/namespaces/prod/deployments/web";
const SERVICES: &str = "/api/v1/namespaces/prod/services";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/prod/events";
const MANAGER_QUERY: &str = "fieldManager=teal-controller";

async fn reconcile(
    bg: BlueGreen,
    script: Vec<Exchange>,
) -> (
    Result<kube::runtime::controller::Action, Error>,
    Vec<(String, String, serde_json::Value)>,
) {
    let (client, seen) = scripted(script);
    let r = super::reconcile(Arc::new(bg), context(client)).await;
    let seen = seen.lock().unwrap().clone();
    (r, seen)
}

#[tokio::test]
async fn a_missing_workload_is_one_read_and_one_status_patch() {
    let bg = bluegreen(json!({"router": {"type": "service"}}));
    let answer = serde_json::to_value(&bg).unwrap();
    let (r, seen) = reconcile(
        bg,
        vec![
            expect("GET", WORKLOAD, 404, not_found()),
            status_patch(answer),
        ],
    )
    .await;
    assert_eq!(
        r.unwrap(),
        kube::runtime::controller::Action::requeue(std::time::Duration::from_secs(30))
    );
    let status = &seen[1].2["status"];
    assert_eq!(
        status["conditions"][0]["reason"],
        reason::WORKLOAD_NOT_FOUND
    );
    assert_eq!(
        status["message"],
        "Deployment prod/web (spec.workloadRef) does not exist"
    );
    assert_eq!(status["observedGeneration"], 1);
}

#[tokio::test]
async fn a_service_of_someone_else_is_a_conflict_and_nothing_is_written_but_status() {
    let bg = bluegreen(json!({"router": {"type": "service"}}));
    let answer = serde_json::to_value(&bg).unwrap();
    let theirs = json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "shop", "namespace": "prod"}, "spec": {"selector": {"app": "web"}}});
    let (r, seen) = reconcile(
        bg,
        vec![
            the_workload(),
            expect("GET", &format!("{SERVICES}/shop"), 200, theirs),
            status_patch(answer),
        ],
    )
    .await;
    assert!(r.is_ok(), "{r:?}");
    let status = &seen[2].2["status"];
    assert_eq!(status["phase"], status::CONFLICT_PHASE);
    assert_eq!(status["conditions"][0]["reason"], reason::SERVICE_CONFLICT);
}

#[tokio::test]
async fn an_unreadable_engine_state_changes_nothing_and_warns_once() {
    let mut bg = bluegreen(json!({"router": {"type": "service"}}));
    bg.status = Some(BlueGreenStatus {
        engine: Some(json!({"machine": "from a newer teal"})),
        ..Default::default()
    });
    let answer = serde_json::to_value(&bg).unwrap();
    let (r, seen) = reconcile(
        bg,
        [
            observed_without_services(),
            vec![expect("POST", &format!("{EVENTS}?"), 201, json!({}))],
            vec![status_patch(answer)],
        ]
        .concat(),
    )
    .await;
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(seen[3].2["reason"], reason::ENGINE_UNREADABLE);
    assert_eq!(seen[3].2["type"], "Warning");
    let status = &seen[4].2["status"];
    assert_eq!(status["conditions"][0]["reason"], reason::ENGINE_UNREADABLE);
    assert_eq!(status["engine"], json!({"machine": "from a newer teal"}));
}

#[tokio::test]
async fn a_first_reconcile_writes_blue_then_the_status_then_the_size() {
    let bg = bluegreen(json!({"router": {"type": "service"}}));
    // The status write answers with the BlueGreen's next version.
    let mut answer = serde_json::to_value(&bg).unwrap();
    answer["metadata"]["resourceVersion"] = json!("8");
    let (r, seen) = reconcile(
        bg,
        [
            observed_without_services(),
            vec![expect("POST", &format!("{EVENTS}?"), 201, json!({}))],
            vec![
            expect(
                "PATCH",
                "/apis/apps/v1/namespaces/prod/deployments/shop-blue?&force=true&fieldManager=teal-controller",
                200,
                json!({}),
            ),
            status_patch(answer.clone()),
            expect("PATCH", &format!("{BG}?&{MANAGER_QUERY}"), 200, answer),
            ],
        ]
        .concat(),
    )
    .await;
    // No release under way: the watch on blue's Deployment wakes it.
    assert_eq!(
        r.unwrap(),
        kube::runtime::controller::Action::requeue(std::time::Duration::from_millis(
            super::IDLE_RESYNC_MS
        ))
    );
    assert_eq!(seen[3].2["reason"], "Adopted");
    let blue = &seen[4].2;
    assert_eq!(blue["spec"]["replicas"], 2);
    assert_eq!(blue["spec"]["revisionHistoryLimit"], 1);
    assert_eq!(
        blue["spec"]["template"]["spec"]["containers"][0]["image"],
        "shop:v1"
    );
    let status = &seen[5].2["status"];
    assert_eq!(status["phase"], "Initializing", "{status}");
    assert_eq!(status["message"], "waiting for the first color to be ready");
    assert!(status["engine"]["machine"].is_object());
    // The size, only over the version the status write returned: a size
    // set since then (kubectl scale, an autoscaler) is not overwritten.
    assert_eq!(
        seen[6].2,
        json!({"metadata": {"resourceVersion": "8"}, "spec": {"replicas": 2}})
    );
}
