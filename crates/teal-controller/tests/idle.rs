//! An idle BlueGreen costs no request to the apiserver, with every router
//! type: once it is Healthy and its routing confirmed, reconciles (woken
//! here by touching an annotation of the BlueGreen that teal does not
//! read) read everything from watch caches and write nothing, as counted
//! by the controller's own `teal_controller_api_requests_total`. A route
//! edited by hand is still put back.
//!
//! The request counter is one per process: the tests of this binary take
//! turns (see [`LOCK`]).

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};
use kube::core::DynamicObject;
use serde_json::{Value, json};
use support::{Case, case, metric_sum, scrape};
use teal_testenv::wait_for;

/// One counted controller at a time in this process.
static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How many reconciles the idle window is made of.
const TOUCHES: u32 = 6;

fn spec(router: Value) -> Value {
    json!({
        "workloadRef": {"kind": "Deployment", "name": "shop"},
        "progressDeadline": "60s",
        "promotion": {"mode": "manual"},
        "preview": {"header": {"name": "X-Version", "value": "preview"}},
        "router": router,
    })
}

/// Requests the controller sent, watches left out (one long-running
/// request each, re-opened now and then whatever the reconciles do).
fn requests(metrics: &str) -> f64 {
    metric_sum(metrics, "teal_controller_api_requests_total", |l| {
        !l.contains("\"WATCH\"")
    })
}

fn reconciles(metrics: &str) -> f64 {
    metric_sum(metrics, "teal_controller_reconciles_total", |_| true)
}

async fn metrics(addr: SocketAddr) -> String {
    wait_for("the controller's metrics", Duration::from_secs(30), || {
        scrape(addr)
    })
    .await
}

async fn healthy_and_routed(c: &Case) {
    c.wait_status("Healthy, routed, idle", "shop", |s| {
        let cond = |t: &str| {
            s.conditions
                .iter()
                .find(|c| c.type_ == t)
                .map(|c| (c.status.clone(), c.reason.clone()))
        };
        s.phase.as_deref() == Some("Healthy")
            && cond("Routed") == Some(("True".into(), "Routed".into()))
            && cond("Progressing").is_some_and(|(_, r)| r == "Idle")
    })
    .await;
}

/// Waits until the controller has sent nothing for 3 s, then wakes
/// [`TOUCHES`] reconciles of the idle BlueGreen and returns how many
/// requests they sent, printing the window's counts.
async fn idle_requests(c: &Case, addr: SocketAddr, what: &str) -> f64 {
    let mut last = requests(&metrics(addr).await);
    assert!(last > 0.0, "the controller's requests are counted");
    let mut quiet = 0;
    for _ in 0..120 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = requests(&metrics(addr).await);
        if now == last {
            quiet += 1;
            if quiet == 6 {
                break;
            }
        } else {
            quiet = 0;
            last = now;
        }
    }
    let before = metrics(addr).await;
    for i in 0..TOUCHES {
        let patch = json!({"metadata": {"annotations": {"example.com/touched": i.to_string()}}});
        c.bluegreens()
            .patch("shop", &PatchParams::default(), &Patch::Merge(patch))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = metrics(addr).await;
    let woken = reconciles(&after) - reconciles(&before);
    let sent = requests(&after) - requests(&before);
    let by_verb: Vec<String> = after
        .lines()
        .filter(|l| l.starts_with("teal_controller_api_requests_total{"))
        .map(|l| {
            let series = l.rsplit_once(' ').map(|(s, _)| s).unwrap_or(l);
            let d = metric_sum(&after, "teal_controller_api_requests_total", |x| {
                series.ends_with(&format!("{{{x}}}"))
            }) - metric_sum(&before, "teal_controller_api_requests_total", |x| {
                series.ends_with(&format!("{{{x}}}"))
            });
            format!("{series} +{d}")
        })
        .collect();
    eprintln!("{what}: {woken} idle reconciles sent {sent} requests ({by_verb:?})");
    assert!(
        woken >= f64::from(TOUCHES) / 2.0,
        "{what}: touching the BlueGreen {TOUCHES} times woke only {woken} reconciles"
    );
    sent
}

/// Applies `patch` to `name` as someone other than teal (a merge patch).
async fn edit_by_hand(api: &Api<DynamicObject>, name: &str, patch: Value) {
    api.patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
}

/// Waits until `spec` of `name` is `want` again.
async fn wait_spec(what: &str, api: &Api<DynamicObject>, name: &str, want: &Value) {
    wait_for(what, Duration::from_secs(60), || {
        let api = api.clone();
        async move {
            let o = api.get(name).await.map_err(|e| e.to_string())?;
            if &o.data["spec"] == want {
                Ok(())
            } else {
                Err(format!("spec is {}\nwant    {}", o.data["spec"], want))
            }
        }
    })
    .await
}

/// A namespace with workload `shop` and a BlueGreen `shop` with `router`,
/// and a counted controller.
async fn setup(prefix: &str, router: Value, crds: bool, image: Option<&str>) -> (Case, SocketAddr) {
    let mut c = case(prefix).await;
    if crds {
        tokio::task::spawn_blocking(support::install_router_crds)
            .await
            .unwrap();
    }
    c.create_workload("shop", "shop:1", 2, BTreeMap::new())
        .await;
    c.create_bluegreen("shop", spec(router)).await.unwrap();
    let addr = c.start_counted_controller(image).await;
    (c, addr)
}

#[tokio::test]
async fn idle_with_router_type_service_sends_no_request() {
    let _turn = LOCK.lock().await;
    let (c, addr) = setup("idle-svc", json!({"type": "service"}), false, None).await;
    healthy_and_routed(&c).await;
    assert_eq!(idle_requests(&c, addr, "service").await, 0.0);
}

#[tokio::test]
async fn idle_with_router_type_istio_sends_no_request_and_a_hand_edit_is_undone() {
    let _turn = LOCK.lock().await;
    let (c, addr) = setup(
        "idle-istio",
        json!({"type": "istio", "istio": {"hosts": ["shop", "shop.example.com"]}}),
        true,
        None,
    )
    .await;
    healthy_and_routed(&c).await;
    assert_eq!(idle_requests(&c, addr, "istio").await, 0.0);

    // Someone points production at the idle color.
    let want = c.virtual_services().get("shop").await.unwrap().data["spec"].clone();
    edit_by_hand(
        &c.virtual_services(),
        "shop",
        json!({"spec": {"http": [{"name": "teal-active", "route": [{"destination": {"host": "shop", "subset": "green"}}]}]}}),
    )
    .await;
    wait_spec(
        "teal's routes put back",
        &c.virtual_services(),
        "shop",
        &want,
    )
    .await;
    assert_eq!(idle_requests(&c, addr, "istio, after the edit").await, 0.0);
}

#[tokio::test]
async fn idle_with_an_adopted_virtual_service_sends_no_request_and_a_hand_edit_is_undone() {
    let _turn = LOCK.lock().await;
    let mut c = case("idle-istio-adopt").await;
    tokio::task::spawn_blocking(support::install_router_crds)
        .await
        .unwrap();
    c.create_user_virtual_service(json!({})).await;
    c.create_workload("shop", "shop:1", 2, BTreeMap::new())
        .await;
    c.create_bluegreen(
        "shop",
        spec(json!({"type": "istio", "istio": {"virtualService": "front"}})),
    )
    .await
    .unwrap();
    let addr = c.start_counted_controller(None).await;
    healthy_and_routed(&c).await;
    assert_eq!(idle_requests(&c, addr, "istio, adopted").await, 0.0);

    let want = c.virtual_services().get("front").await.unwrap().data["spec"].clone();
    let mut http = want["http"].as_array().unwrap().clone();
    let active = http
        .iter_mut()
        .find(|r| r["name"] == "teal-active")
        .unwrap();
    active["route"][0]["destination"]["subset"] = "green".into();
    edit_by_hand(
        &c.virtual_services(),
        "front",
        json!({"spec": {"http": http}}),
    )
    .await;
    wait_spec(
        "teal's active route put back",
        &c.virtual_services(),
        "front",
        &want,
    )
    .await;
}

#[tokio::test]
async fn idle_with_router_type_gateway_api_sends_no_request_and_a_hand_edit_is_undone() {
    let _turn = LOCK.lock().await;
    let (c, addr) = setup(
        "idle-gw",
        json!({"type": "gatewayAPI", "gatewayAPI": {"parentRefs": [{"name": "public"}], "hostnames": ["shop.example.com"]}}),
        true,
        None,
    )
    .await;
    healthy_and_routed(&c).await;
    assert_eq!(idle_requests(&c, addr, "gatewayAPI").await, 0.0);

    // Someone swaps the weights.
    let want = c.http_routes().get("shop").await.unwrap().data["spec"].clone();
    let mut rules = want["rules"].as_array().unwrap().clone();
    let active = rules
        .iter_mut()
        .find(|r| r["name"] == "teal-active")
        .unwrap();
    active["backendRefs"][0]["weight"] = 0.into();
    active["backendRefs"][1]["weight"] = 100.into();
    edit_by_hand(&c.http_routes(), "shop", json!({"spec": {"rules": rules}})).await;
    wait_spec("teal's weights put back", &c.http_routes(), "shop", &want).await;
    assert_eq!(
        idle_requests(&c, addr, "gatewayAPI, after the edit").await,
        0.0
    );
}

#[tokio::test]
async fn idle_with_an_adopted_http_route_sends_no_request_and_a_hand_edit_is_undone() {
    let _turn = LOCK.lock().await;
    let mut c = case("idle-gw-adopt").await;
    tokio::task::spawn_blocking(support::install_router_crds)
        .await
        .unwrap();
    c.create_user_http_route().await;
    c.create_workload("shop", "shop:1", 2, BTreeMap::new())
        .await;
    c.create_bluegreen(
        "shop",
        spec(json!({"type": "gatewayAPI", "gatewayAPI": {"httpRoute": "front"}})),
    )
    .await
    .unwrap();
    let addr = c.start_counted_controller(None).await;
    healthy_and_routed(&c).await;
    assert_eq!(idle_requests(&c, addr, "gatewayAPI, adopted").await, 0.0);

    let want = c.http_routes().get("front").await.unwrap().data["spec"].clone();
    let mut rules = want["rules"].as_array().unwrap().clone();
    rules.retain(|r| r["name"] != "teal-preview");
    edit_by_hand(&c.http_routes(), "front", json!({"spec": {"rules": rules}})).await;
    wait_spec(
        "teal's preview rule put back",
        &c.http_routes(),
        "front",
        &want,
    )
    .await;
}

/// Plays the router replicas of BlueGreen `shop`: every ready router pod's
/// Lease reports the route generation in `status.router`.
async fn play_routers(client: kube::Client, ns: String) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), &ns);
    let bgs: Api<teal_api::BlueGreen> = Api::namespaced(client, &ns);
    loop {
        let generation = bgs
            .get("shop")
            .await
            .ok()
            .and_then(|b| b.status?.router)
            .map(|r| r.generation);
        let list = pods
            .list(&ListParams::default().labels("teal.dev/router=shop"))
            .await;
        if let (Some(g), Ok(list)) = (generation, list) {
            for p in list.items {
                let name = p.metadata.name.clone().unwrap_or_default();
                let lease = json!({
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {"name": name, "labels": {"teal.dev/router": "shop"},
                                 "annotations": {"teal.dev/route-generation": g.to_string()}},
                    "spec": {"holderIdentity": name},
                });
                let _ = leases
                    .patch(
                        &name,
                        &PatchParams::apply("router-stand-in").force(),
                        &Patch::Apply(lease),
                    )
                    .await;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test]
async fn idle_with_router_type_teal_sends_no_request_and_a_hand_edit_is_undone() {
    let _turn = LOCK.lock().await;
    let (c, addr) = setup(
        "idle-teal",
        json!({"type": "teal", "teal": {"replicas": 2}}),
        false,
        Some("teal:test"),
    )
    .await;
    let routers = tokio::spawn(play_routers(c.client.clone(), c.ns.clone()));
    healthy_and_routed(&c).await;
    let sent = idle_requests(&c, addr, "teal").await;
    assert_eq!(sent, 0.0);

    // Someone scales the router by hand.
    let patch = json!({"spec": {"replicas": 5}});
    c.deployments()
        .patch("shop-router", &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
    let deployments = c.deployments();
    wait_for(
        "the router's replicas put back",
        Duration::from_secs(60),
        || async {
            let d = deployments
                .get("shop-router")
                .await
                .map_err(|e| e.to_string())?;
            match d.spec.replicas {
                Some(2) => Ok(()),
                r => Err(format!("replicas {r:?}")),
            }
        },
    )
    .await;
    routers.abort();
}
