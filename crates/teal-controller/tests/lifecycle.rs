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
    c.wait_status("scale-down delay", "shop", |s| {
        s.phase.as_deref() == Some("ScaleDownDelay")
    })
    .await;
    assert_eq!(c.selector_color("shop").await.as_deref(), Some("green"));
    assert_eq!(
        c.replicas("shop-blue").await,
        Some(3),
        "blue stays up during the scale-down delay"
    );
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
    // Router type `service` has no preview header: the event names the
    // preview Service.
    let events = c.events("shop").await;
    let preview: Vec<_> = events.iter().filter(|e| e.1 == "PreviewReady").collect();
    assert!(
        preview
            .iter()
            .all(|e| e.2.contains("through Service shop-preview") && !e.2.contains("header")),
        "{preview:?}"
    );
    // The workload's scale to 0 is written under teal's field manager, so a
    // GitOps tool's server-side apply of `replicas` names who owns it.
    let workload = c.deployments().get("shop").await.unwrap();
    let owners: Vec<_> = workload
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter(|f| {
            f.fields_v1
                .as_ref()
                .is_some_and(|v| v.0.pointer("/f:spec/f:replicas").is_some())
        })
        .map(|f| f.manager.unwrap_or_default())
        .collect();
    assert_eq!(owners, ["teal-controller"], "owners of spec.replicas");
}

fn spec(extra: serde_json::Value) -> serde_json::Value {
    let mut s = json!({
        "workloadRef": {"kind": "Deployment", "name": "shop"},
        "scaleDownDelay": "2s",
        "progressDeadline": "60s"
    });
    for (k, v) in extra.as_object().unwrap() {
        s[k] = v.clone();
    }
    s
}

async fn healthy(extra: serde_json::Value, prefix: &str) -> (support::Case, String) {
    let mut c = case(prefix).await;
    c.create_workload("shop", "shop:1", 3, BTreeMap::new())
        .await;
    c.create_bluegreen("shop", spec(extra)).await.unwrap();
    c.start_controller();
    let st = c
        .wait_status("adoption", "shop", |s| {
            s.phase.as_deref() == Some("Healthy")
        })
        .await;
    (c, st.active_revision.unwrap())
}

fn sim(key: &str, value: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(key.to_string(), value.to_string())])
}

#[tokio::test]
async fn manual_promotion_with_a_smaller_preview() {
    let (c, v1) = healthy(
        json!({"promotion": {"mode": "manual"}, "preview": {"replicas": 1}}),
        "manual",
    )
    .await;
    c.set_image("shop", "shop:2", BTreeMap::new()).await;
    let st = c
        .wait_status("awaiting promotion", "shop", |s| {
            s.phase.as_deref() == Some("AwaitingPromotion")
        })
        .await;
    assert_eq!(st.preview_color, Some(teal_core::Color::Green));
    assert_eq!(
        c.replicas("shop-green").await,
        Some(1),
        "preview runs 1 replica"
    );
    assert_eq!(
        c.selector_color("shop").await.as_deref(),
        Some("blue"),
        "production untouched"
    );
    assert_eq!(
        c.selector_color("shop-preview").await.as_deref(),
        Some("green")
    );
    assert_eq!(st.active_revision.as_deref(), Some(v1.as_str()));

    c.command("shop", "promote").await;
    let st = c
        .wait_status("promoted", "shop", |s| {
            s.active_color == Some(teal_core::Color::Green)
        })
        .await;
    assert_ne!(st.active_revision.as_deref(), Some(v1.as_str()));
    assert_eq!(
        c.replicas("shop-green").await,
        Some(3),
        "scaled to full size before cutover"
    );
    assert!(c.ready("shop-green").await >= 3);
    assert_eq!(c.selector_color("shop").await.as_deref(), Some("green"));
}

#[tokio::test]
async fn never_ready_pods_fail_at_the_progress_deadline() {
    let (c, v1) = healthy(json!({"progressDeadline": "5s"}), "deadline").await;
    c.set_image(
        "shop",
        "shop:2",
        sim(teal_testenv::sim::NEVER_READY, "true"),
    )
    .await;
    let st = c
        .wait_status("failed", "shop", |s| {
            s.history.iter().any(|h| h.outcome == "failed")
        })
        .await;
    let rec = st.history.iter().find(|h| h.outcome == "failed").unwrap();
    assert!(rec.reason.contains("progress deadline"), "{}", rec.reason);
    assert_eq!(st.active_revision.as_deref(), Some(v1.as_str()));
    assert_eq!(c.selector_color("shop").await.as_deref(), Some("blue"));
    assert_eq!(
        c.replicas("shop-green").await,
        Some(0),
        "the failed color is scaled down"
    );
    assert_eq!(c.ready("shop-blue").await, 3);
    assert!(
        c.event_reasons("shop")
            .await
            .iter()
            .any(|r| r == "DeadlineExceeded")
    );
}

#[tokio::test]
async fn crash_looping_pods_fail_the_release_before_the_deadline() {
    let (c, v1) = healthy(json!({"progressDeadline": "10m"}), "crash").await;
    c.set_image("shop", "shop:2", sim(teal_testenv::sim::CRASH_LOOP, "true"))
        .await;
    let st = c
        .wait_status("failed", "shop", |s| {
            s.history.iter().any(|h| h.outcome == "failed")
        })
        .await;
    let rec = st.history.iter().find(|h| h.outcome == "failed").unwrap();
    assert!(rec.reason.contains("crash-looping"), "{}", rec.reason);
    assert_eq!(st.active_revision.as_deref(), Some(v1.as_str()));
    assert_eq!(c.selector_color("shop").await.as_deref(), Some("blue"));
}

#[tokio::test]
async fn abort_during_preview_and_after_cutover() {
    let (c, v1) = healthy(
        json!({"promotion": {"mode": "manual"}, "scaleDownDelay": "5m"}),
        "abort",
    )
    .await;
    c.set_image("shop", "shop:2", BTreeMap::new()).await;
    c.wait_status("awaiting", "shop", |s| {
        s.phase.as_deref() == Some("AwaitingPromotion")
    })
    .await;
    c.command("shop", "abort").await;
    let st = c
        .wait_status("aborted", "shop", |s| s.phase.as_deref() == Some("Aborted"))
        .await;
    assert_eq!(st.active_revision.as_deref(), Some(v1.as_str()));
    assert_eq!(
        c.selector_color("shop-preview").await.as_deref(),
        Some("blue")
    );
    assert_eq!(c.replicas("shop-green").await, Some(0));

    // Retry, promote, then abort inside the scale-down window: instant revert.
    c.command("shop", "retry").await;
    c.wait_status("awaiting again", "shop", |s| {
        s.phase.as_deref() == Some("AwaitingPromotion")
    })
    .await;
    c.command("shop", "promote").await;
    c.wait_status("live", "shop", |s| {
        s.phase.as_deref() == Some("ScaleDownDelay")
    })
    .await;
    assert_eq!(c.selector_color("shop").await.as_deref(), Some("green"));
    assert_eq!(
        c.replicas("shop-blue").await,
        Some(3),
        "blue kept for rollback"
    );
    c.command("shop", "abort").await;
    let st = c
        .wait_status("reverted", "shop", |s| {
            s.active_color == Some(teal_core::Color::Blue)
        })
        .await;
    assert_eq!(st.active_revision.as_deref(), Some(v1.as_str()));
    assert_eq!(c.selector_color("shop").await.as_deref(), Some("blue"));
}

#[tokio::test]
async fn rollback_inside_and_outside_the_scale_down_window() {
    // The window is long enough that a loaded machine still acts on the
    // first rollback inside it.
    let (c, v1) = healthy(json!({"scaleDownDelay": "15s"}), "rollback").await;
    c.set_image("shop", "shop:2", BTreeMap::new()).await;
    c.wait_status("in window", "shop", |s| {
        s.phase.as_deref() == Some("ScaleDownDelay")
    })
    .await;
    c.command("shop", "rollback").await;
    let st = c
        .wait_status("rolled back", "shop", |s| {
            s.phase.as_deref() == Some("RolledBack")
        })
        .await;
    assert_eq!(st.active_revision.as_deref(), Some(v1.as_str()));
    assert_eq!(c.selector_color("shop").await.as_deref(), Some("blue"));
    // Release v2 fully, then roll back after the window: v1 is redeployed.
    c.command("shop", "retry").await;
    let st = c
        .wait_status("v2 done", "shop", |s| {
            s.phase.as_deref() == Some("Healthy") && s.active_color == Some(teal_core::Color::Green)
        })
        .await;
    let v2 = st.active_revision.clone().unwrap();
    assert_eq!(c.replicas("shop-blue").await, Some(0));
    c.command("shop", "rollback").await;
    let st = c
        .wait_status("v1 redeployed", "shop", |s| {
            s.active_revision.as_deref() == Some(v1.as_str())
        })
        .await;
    assert_eq!(st.active_color, Some(teal_core::Color::Blue));
    assert_eq!(c.selector_color("shop").await.as_deref(), Some("blue"));
    assert_ne!(v1, v2);
    // Each switch is an event of its own, saying where traffic went: the
    // switch to blue that redeployed v1 is not counted as a repeat of the
    // switch to green.
    let switches: Vec<_> = c
        .events("shop")
        .await
        .into_iter()
        .filter(|e| e.1 == "Switched")
        .map(|e| e.2)
        .collect();
    assert!(
        switches.iter().any(|n| n.contains("switched to green"))
            && switches
                .iter()
                .any(|n| n.contains("to blue") && n.contains(v1.as_str())),
        "{switches:?}"
    );
}

/// The ports of Service `name`, as `name/port->target`.
async fn service_ports(c: &support::Case, name: &str) -> Vec<String> {
    let s = c.services().get(name).await.unwrap();
    s.spec
        .and_then(|s| s.ports)
        .unwrap_or_default()
        .into_iter()
        .map(|p| {
            let target = match p.target_port {
                Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n)) => {
                    n.to_string()
                }
                Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(s)) => s,
                None => String::new(),
            };
            format!("{}/{}->{target}", p.name.unwrap_or_default(), p.port)
        })
        .collect()
}

#[tokio::test]
async fn after_a_rollback_the_services_carry_the_ports_of_the_colors_they_select() {
    let (c, v1) = healthy(json!({"scaleDownDelay": "30s"}), "ports").await;
    let old = vec!["http/8080->http".to_string()];
    assert_eq!(service_ports(&c, "shop").await, old);
    // v2 changes the container port's name and number.
    let patch = json!({"spec": {"template": {"spec": {"containers": [{
        "name": "app",
        "image": "shop:2",
        "ports": [{"name": "web", "containerPort": 9090}]
    }]}}}});
    c.deployments()
        .patch(
            "shop",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(patch),
        )
        .await
        .unwrap();
    c.wait_status("v2 live", "shop", |s| {
        s.phase.as_deref() == Some("ScaleDownDelay")
    })
    .await;
    let new = vec!["web/9090->web".to_string()];
    assert_eq!(c.selector_color("shop").await.as_deref(), Some("green"));
    assert_eq!(service_ports(&c, "shop").await, new);
    c.command("shop", "rollback").await;
    let st = c
        .wait_status("rolled back", "shop", |s| {
            s.phase.as_deref() == Some("RolledBack")
        })
        .await;
    assert_eq!(st.active_revision.as_deref(), Some(v1.as_str()));
    // Blue runs v1 again, and the live Service must reach its port: the
    // workload's template (v2) is not what the live pods run.
    assert_eq!(c.selector_color("shop").await.as_deref(), Some("blue"));
    assert_eq!(service_ports(&c, "shop").await, old);
    assert_eq!(
        c.selector_color("shop-preview").await.as_deref(),
        Some("blue")
    );
    assert_eq!(service_ports(&c, "shop-preview").await, old);
}

#[tokio::test]
async fn a_newer_revision_supersedes_the_release_in_preview() {
    let (c, _v1) = healthy(json!({"promotion": {"mode": "manual"}}), "supersede").await;
    c.set_image("shop", "shop:2", BTreeMap::new()).await;
    let st = c
        .wait_status("v2 in preview", "shop", |s| {
            s.phase.as_deref() == Some("AwaitingPromotion")
        })
        .await;
    let v2 = st.preview_revision.unwrap();
    c.set_image("shop", "shop:3", BTreeMap::new()).await;
    let st = c
        .wait_status("v3 in preview", "shop", |s| {
            s.phase.as_deref() == Some("AwaitingPromotion")
                && s.preview_revision.as_deref() != Some(v2.as_str())
        })
        .await;
    assert!(
        st.history
            .iter()
            .any(|h| h.revision == v2 && h.outcome == "superseded")
    );
    c.command("shop", "promote").await;
    let st = c
        .wait_status("v3 live", "shop", |s| {
            s.active_color == Some(teal_core::Color::Green)
        })
        .await;
    assert_ne!(
        st.active_revision.as_deref(),
        Some(v2.as_str()),
        "the superseded revision never goes live"
    );
}

#[tokio::test]
async fn deleting_the_bluegreen_hands_traffic_back_to_the_workload() {
    let (c, _v1) = healthy(json!({}), "delete").await;
    assert_eq!(c.replicas("shop").await, Some(0));
    c.bluegreens()
        .delete("shop", &Default::default())
        .await
        .unwrap();
    teal_testenv::wait_for(
        "the BlueGreen to be gone",
        std::time::Duration::from_secs(60),
        || async {
            match c.bluegreens().get_opt("shop").await {
                Ok(None) => Ok(()),
                Ok(Some(_)) => Err("still there (finalizer)".to_string()),
                Err(e) => Err(e.to_string()),
            }
        },
    )
    .await;
    assert_eq!(
        c.replicas("shop").await,
        Some(3),
        "the workload runs its replicas again"
    );
    assert!(c.ready("shop").await >= 3);
    let svc = c.services().get("shop").await.expect("the Service stays");
    let sel = svc.spec.unwrap().selector.unwrap();
    assert_eq!(sel.get("app").map(String::as_str), Some("shop"));
    assert!(!sel.contains_key("teal.dev/color"), "{sel:?}");
}

#[tokio::test]
async fn a_service_owned_by_someone_else_is_reported() {
    let mut c = case("conflict").await;
    c.create_workload("shop", "shop:1", 1, BTreeMap::new())
        .await;
    let svc: k8s_openapi::api::core::v1::Service = serde_json::from_value(json!({
        "metadata": {"name": "shop"},
        "spec": {"selector": {"app": "shop"}, "ports": [{"port": 80}]}
    }))
    .unwrap();
    c.services()
        .create(&Default::default(), &svc)
        .await
        .unwrap();
    c.create_bluegreen("shop", spec(json!({}))).await.unwrap();
    c.start_controller();
    let st = c
        .wait_status("conflict reported", "shop", |s| {
            s.conditions
                .iter()
                .any(|x| x.type_ == "Ready" && x.status == "False" && x.reason == "ServiceConflict")
        })
        .await;
    assert!(st.message.unwrap().contains("spec.service.name"));
    assert_eq!(
        st.phase.as_deref(),
        Some("Conflict"),
        "shown by kubectl get bg"
    );
    assert_eq!(c.replicas("shop").await, Some(1), "nothing was touched");
    assert_eq!(c.replicas("shop-blue").await, None);
}

type RequestLog = std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>;

/// A client for the test control plane that records every request it sends
/// (method and URI).
async fn recording_client() -> (kube::Client, RequestLog) {
    let path = teal_testenv::TestEnv::shared().kubeconfig_path();
    let kubeconfig = kube::config::Kubeconfig::read_from(path).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    let log = RequestLog::default();
    let record = log.clone();
    let layer = tower::util::MapRequestLayer::new(move |req: http::Request<kube::client::Body>| {
        record
            .lock()
            .unwrap()
            .push((req.method().to_string(), req.uri().to_string()));
        req
    });
    let client = kube::client::ClientBuilder::try_from(config)
        .unwrap()
        .with_layer(&layer)
        .build();
    (client, log)
}

/// One reconcile of `name` with `ctx`; returns its requeue and the requests
/// it sent (the caches' own LIST and WATCH requests, which all carry a
/// label selector, left out).
async fn reconcile_once(
    c: &support::Case,
    name: &str,
    ctx: &std::sync::Arc<teal_controller::reconcile::Context>,
    log: &RequestLog,
) -> (kube::runtime::controller::Action, Vec<(String, String)>) {
    let bg = c.bluegreens().get(name).await.unwrap();
    log.lock().unwrap().clear();
    let requeue = teal_controller::reconcile::reconcile(std::sync::Arc::new(bg), ctx.clone())
        .await
        .unwrap();
    let sent = log
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, uri)| !uri.contains("labelSelector="))
        .cloned()
        .collect();
    (requeue, sent)
}

#[tokio::test]
async fn an_idle_reconcile_sends_no_request_and_a_changed_service_is_written_back() {
    use futures_util::StreamExt;
    use kube::Api;
    use std::time::Duration;
    use teal_controller::reconcile::{Context, IDLE_RESYNC_MS};

    let (mut c, _) = healthy(json!({}), "idle").await;
    // From here on only the reconciles this test runs act.
    c.stop_controller();
    let (client, log) = recording_client().await;
    let (cache, feeds) = teal_controller::cache::Cache::new(
        Api::namespaced(client.clone(), &c.ns),
        Api::namespaced(client.clone(), &c.ns),
        Api::namespaced(client.clone(), &c.ns),
        Api::namespaced(client.clone(), &c.ns),
    );
    tokio::spawn(feeds.pods.for_each(|_| async {}));
    tokio::spawn(feeds.deployments.for_each(|_| async {}));
    tokio::spawn(feeds.replica_sets.for_each(|_| async {}));
    tokio::spawn(feeds.services.for_each(|_| async {}));
    tokio::spawn(feeds.workloads.for_each(|_| async {}));
    let ctx = std::sync::Arc::new(Context {
        client: client.clone(),
        recorder: teal_controller::events::Recorder::new(
            client.clone(),
            kube::runtime::events::Reporter {
                controller: "teal-test".into(),
                instance: None,
            },
        ),
        metrics: teal_controller::Metrics::default(),
        cache,
        written: Default::default(),
        workloads: Default::default(),
        router_image: None,
    });
    tokio::time::timeout(Duration::from_secs(60), ctx.cache.ready())
        .await
        .expect("the caches list what exists");

    // The stopped controller may have left a last write undone (say, the
    // workload's scale-down): the first reconciles finish it, and then one
    // with nothing to do sends nothing at all: no GET of the workload or
    // the Services, no apply of Services that are as wanted, no status.
    let mut seen = Vec::new();
    let mut idle = None;
    for _ in 0..10 {
        let (requeue, sent) = reconcile_once(&c, "shop", &ctx, &log).await;
        if sent.is_empty() {
            idle = Some(requeue);
            break;
        }
        seen.push(sent);
        let after = c.bluegreens().get("shop").await.unwrap();
        eprintln!(
            "DEBUG status {}",
            serde_json::to_string(&after.status).unwrap()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let requeue = idle.unwrap_or_else(|| panic!("every reconcile sent requests: {seen:#?}"));
    assert_eq!(
        requeue,
        kube::runtime::controller::Action::requeue(Duration::from_millis(IDLE_RESYNC_MS)),
        "a Healthy BlueGreen waits for watch events, with a long resync"
    );
    let (_, sent) = reconcile_once(&c, "shop", &ctx, &log).await;
    assert!(sent.is_empty(), "a second idle reconcile sent {sent:?}");

    // Someone points the live Service elsewhere: once the cache saw it, a
    // reconcile writes teal's selector back.
    let patch = json!({"spec": {"selector": {"teal.dev/color": "green"}}});
    c.services()
        .patch(
            "shop",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(patch),
        )
        .await
        .unwrap();
    let ns = c.ns.clone();
    teal_testenv::wait_for(
        "the cache to see the changed selector",
        Duration::from_secs(60),
        || {
            let color = ctx
                .cache
                .service(&ns, "shop")
                .and_then(|s| s.spec?.selector?.get("teal.dev/color").cloned());
            async move {
                match color.as_deref() {
                    Some("green") => Ok(()),
                    other => Err(format!("selector color {other:?}")),
                }
            }
        },
    )
    .await;
    let (_, sent) = reconcile_once(&c, "shop", &ctx, &log).await;
    assert!(
        sent.iter()
            .any(|(m, uri)| m == "PATCH" && uri.contains("/services/shop?")),
        "the live Service is applied again: {sent:?}"
    );
    assert_eq!(c.selector_color("shop").await.as_deref(), Some("blue"));
}

/// The image of the `app` container of Deployment `name`.
async fn image_of(c: &support::Case, name: &str) -> Option<String> {
    c.deployments()
        .get_opt(name)
        .await
        .unwrap()?
        .spec
        .template
        .spec?
        .containers
        .first()?
        .image
        .clone()
}

#[tokio::test]
async fn an_unreadable_engine_state_changes_nothing_and_says_so() {
    let (mut c, _v1) = healthy(json!({"promotion": {"mode": "manual"}}), "unreadable").await;
    c.set_image("shop", "shop:2", BTreeMap::new()).await;
    c.wait_status("awaiting promotion", "shop", |s| {
        s.phase.as_deref() == Some("AwaitingPromotion")
    })
    .await;
    c.stop_controller();
    // A phase this version does not know (a newer teal's, or a hand edit).
    let patch = json!({"status": {"engine": {"machine": {"release": {"phase": "Teleporting"}}}}});
    c.bluegreens()
        .patch_status(
            "shop",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(patch),
        )
        .await
        .unwrap();
    let before = (
        c.selector_color("shop").await,
        c.selector_color("shop-preview").await,
        image_of(&c, "shop-blue").await,
        image_of(&c, "shop-green").await,
        c.replicas("shop-blue").await,
        c.replicas("shop-green").await,
        c.replicas("shop").await,
    );
    assert_eq!(before.2.as_deref(), Some("shop:1"));
    c.start_controller();
    let st = c
        .wait_status("the unreadable state reported", "shop", |s| {
            s.conditions.iter().any(|x| {
                x.type_ == "Ready" && x.status == "False" && x.reason == "EngineStateUnreadable"
            })
        })
        .await;
    let msg = st.message.unwrap_or_default();
    assert!(
        msg.contains("status.engine") && msg.contains("Teleporting"),
        "{msg}"
    );
    // Give a wrongly adopting controller time to act, then compare.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let after = (
        c.selector_color("shop").await,
        c.selector_color("shop-preview").await,
        image_of(&c, "shop-blue").await,
        image_of(&c, "shop-green").await,
        c.replicas("shop-blue").await,
        c.replicas("shop-green").await,
        c.replicas("shop").await,
    );
    assert_eq!(before, after, "nothing changed");
    let warned = c
        .events("shop")
        .await
        .into_iter()
        .any(|e| e.0 == "Warning" && e.1 == "EngineStateUnreadable");
    assert!(warned, "a Warning Event says why");
}

#[tokio::test]
async fn deleting_after_a_rollback_hands_back_the_revision_that_was_live() {
    let (c, v1) = healthy(json!({"scaleDownDelay": "15s"}), "delete-rolledback").await;
    c.set_image("shop", "shop:2", BTreeMap::new()).await;
    c.wait_status("in window", "shop", |s| {
        s.phase.as_deref() == Some("ScaleDownDelay")
    })
    .await;
    c.command("shop", "rollback").await;
    c.wait_status("rolled back", "shop", |s| {
        s.phase.as_deref() == Some("RolledBack") && s.active_revision.as_deref() == Some(&v1)
    })
    .await;
    assert_eq!(image_of(&c, "shop").await.as_deref(), Some("shop:2"));
    c.bluegreens()
        .delete("shop", &Default::default())
        .await
        .unwrap();
    teal_testenv::wait_for(
        "the BlueGreen to be gone",
        std::time::Duration::from_secs(90),
        || async {
            match c.bluegreens().get_opt("shop").await {
                Ok(None) => Ok(()),
                Ok(Some(_)) => Err("still there (finalizer)".to_string()),
                Err(e) => Err(e.to_string()),
            }
        },
    )
    .await;
    assert_eq!(
        image_of(&c, "shop").await.as_deref(),
        Some("shop:1"),
        "the workload runs what was live, not the rolled-back revision"
    );
    assert_eq!(c.replicas("shop").await, Some(3));
    let sel = c
        .services()
        .get("shop")
        .await
        .unwrap()
        .spec
        .unwrap()
        .selector
        .unwrap();
    assert_eq!(sel.get("app").map(String::as_str), Some("shop"));
    let warned = c
        .events("shop")
        .await
        .into_iter()
        .any(|e| e.1 == "LiveRevisionRestored" && e.2.contains(&v1));
    assert!(warned, "an Event says what was done");
}
