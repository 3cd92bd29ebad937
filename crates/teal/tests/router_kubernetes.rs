//! Router type `teal` against the real control plane: the controller (the
//! `teal controller` binary) writes the router Deployment and per-color
//! Services; real `teal router --kubernetes-bluegreen` processes, started
//! by the test under the names of the router pods kwok runs, follow the
//! BlueGreen through a release: their route tables hold the pod addresses
//! of the per-color EndpointSlices, and a switch is confirmed only once
//! every ready router replica reports the new route generation.

mod k8s_support;
mod router_support;

use std::collections::BTreeMap;
use std::process::Command;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use router_support::Proc;
use router_support::kubernetes::{
    color_pods, controller, follow, lease_generation, ready_router_pods, wait_switch_reported,
};
use serde_json::json;
use teal_api::BlueGreen;
use teal_testenv::TestEnv;

/// A router replica on loopback.
fn router(env: &TestEnv, ns: &str, pod: &Pod) -> (Proc, std::net::SocketAddr) {
    follow(
        Command::new(env!("CARGO_BIN_EXE_teal")),
        env.kubeconfig_path(),
        ns,
        "shop",
        pod,
        "127.0.0.1:0",
    )
}

async fn create_workload(client: &kube::Client, ns: &str) {
    let d: k8s_openapi::api::apps::v1::Deployment = serde_json::from_value(json!({
        "metadata": {"name": "shop"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "shop"}},
            "template": {
                "metadata": {"labels": {"app": "shop"}},
                "spec": {"containers": [{"name": "app", "image": "shop:1",
                    "ports": [{"name": "http", "containerPort": 8080}]}]}
            }
        }
    }))
    .unwrap();
    Api::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &d)
        .await
        .unwrap();
}

async fn status(bgs: &Api<BlueGreen>) -> teal_api::BlueGreenStatus {
    bgs.get("shop").await.unwrap().status.unwrap_or_default()
}

async fn wait_phase(bgs: &Api<BlueGreen>, phase: &'static str) -> teal_api::BlueGreenStatus {
    k8s_support::wait_bluegreen(bgs, "shop", phase, 90, |st| {
        st.phase.as_deref() == Some(phase)
    })
    .await
}

/// Pod addresses of `color`, with port 8080, sorted.
async fn color_endpoints(pods: &Api<Pod>, color: &str) -> Vec<String> {
    color_pods(pods, "shop", color)
        .await
        .iter()
        .map(|(ip, _)| format!("{ip}:8080"))
        .collect()
}

#[tokio::test]
async fn teal_router_replicas_follow_a_release_and_acknowledge_the_switch() {
    let env = TestEnv::shared();
    k8s_support::apply_deploy_files(env, &["crd.yaml"]);
    let client = env.client();
    let ns = env.namespace("tealrouter").await;
    create_workload(&client, &ns).await;
    let bgs: Api<BlueGreen> = Api::namespaced(client.clone(), &ns);
    let bg: BlueGreen = serde_json::from_value(json!({
        "apiVersion": "teal.dev/v1alpha1", "kind": "BlueGreen",
        "metadata": {"name": "shop"},
        "spec": {
            "workloadRef": {"kind": "Deployment", "name": "shop"},
            "scaleDownDelay": "10m",
            "progressDeadline": "120s",
            "promotion": {"mode": "manual"},
            "preview": {"header": {"name": "x-version", "value": "preview"}},
            "router": {"type": "teal", "teal": {"replicas": 2}},
        }
    }))
    .unwrap();
    bgs.create(&PostParams::default(), &bg).await.unwrap();
    let _controller = controller(env, &ns);

    // The router Deployment runs (as kwok pods); the test plays their
    // processes.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let router_pods = ready_router_pods(&pods, "shop", 2).await;
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(client.clone(), &ns);
    let d = deployments.get("shop-router").await.unwrap();
    let c = &d.spec.template.spec.unwrap().containers[0];
    assert_eq!(c.image.as_deref(), Some("teal:test"));
    assert!(
        c.args
            .as_ref()
            .unwrap()
            .iter()
            .any(|a| a == "--kubernetes-bluegreen")
    );

    // Ready router pods that do not acknowledge the routes (no process plays
    // them yet): adopted, but not Healthy.
    let st = wait_phase(&bgs, "Initializing").await;
    assert!(
        st.message
            .as_deref()
            .is_some_and(|m| m.contains("waiting for the router")),
        "{:?}",
        st.message
    );

    let mut r1 = Some(router(env, &ns, &router_pods[0]));
    let r2 = router(env, &ns, &router_pods[1]);
    let pod2 = router_pods[1].metadata.name.clone().unwrap();
    let pod1 = router_pods[0].metadata.name.clone().unwrap();

    let st = wait_phase(&bgs, "Healthy").await;
    assert_eq!(st.active_color, Some(teal_core::Color::Blue));
    // The live Service is the router's front door.
    let svcs: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(client.clone(), &ns);
    let live = svcs.get("shop").await.unwrap().spec.unwrap();
    assert_eq!(
        live.selector.unwrap(),
        BTreeMap::from([("teal.dev/router".to_string(), "shop".to_string())])
    );

    // Each router serves blue's pod addresses from the EndpointSlices.
    let blue = color_endpoints(&pods, "blue").await;
    assert_eq!(blue.len(), 2);
    for admin in [r1.as_ref().unwrap().1, r2.1] {
        let want = blue.clone();
        router_support::eventually("router table on blue", || {
            let want = want.clone();
            async move {
                let (_, t) = router_support::generation(admin).await;
                t["active"] == "blue" && t["endpoints"]["blue"] == json!(want)
            }
        })
        .await;
    }

    // v2 in preview: the routers preview green.
    let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "shop:2"}]}}}});
    deployments
        .patch("shop", &PatchParams::default(), &Patch::Strategic(patch))
        .await
        .unwrap();
    wait_phase(&bgs, "AwaitingPromotion").await;
    let green = color_endpoints(&pods, "green").await;
    assert_eq!(green.len(), 2);
    for admin in [r1.as_ref().unwrap().1, r2.1] {
        let want = green.clone();
        router_support::eventually("router previews green", || {
            let want = want.clone();
            async move {
                let (_, t) = router_support::generation(admin).await;
                t["active"] == "blue"
                    && t["preview"]["color"] == "green"
                    && t["preview"]["header"]["name"] == "x-version"
                    && t["endpoints"]["green"] == json!(want)
            }
        })
        .await;
    }

    // One replica is down: the switch is requested but not confirmed.
    r1.take().unwrap().0.wait_kill();
    let gen_before = status(&bgs).await.router.unwrap().generation;
    bgs.patch(
        "shop",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"teal.dev/command": "promote/1"}}})),
    )
    .await
    .unwrap();
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let target = wait_switch_reported(&bgs, &leases, "shop", &pod2, gen_before).await;
    let st = status(&bgs).await;
    assert_eq!(
        st.phase.as_deref(),
        Some("CuttingOver"),
        "confirmed although router pod {pod1} never reported generation {target}"
    );
    assert!(st.router.as_ref().unwrap().switch_confirmed_at.is_none());
    assert!(st.router.as_ref().unwrap().switch_requested_at.is_some());

    // The replica comes back, serves the new table and reports it: confirmed.
    let r1 = router(env, &ns, &router_pods[0]);
    let st = wait_phase(&bgs, "ScaleDownDelay").await;
    let r = st.router.unwrap();
    assert_eq!(r.active, Some(teal_core::Color::Green));
    assert!(r.switch_confirmed_at >= r.switch_requested_at);
    assert_eq!(lease_generation(&leases, &pod1).await, Some(target));
    for admin in [r1.1, r2.1] {
        let (_, t) = router_support::generation(admin).await;
        assert_eq!(t["active"], "green");
        assert_eq!(t["endpoints"]["green"], json!(green));
    }
}

/// Router pods run in a namespace whose Pod Security admission enforces the `restricted`
/// profile: the pod template the controller writes passes it, and until a router pod is
/// ready the live Service keeps selecting the app's pods.
#[tokio::test]
async fn router_pods_are_admitted_where_pod_security_enforces_restricted() {
    let env = TestEnv::shared();
    k8s_support::apply_deploy_files(env, &["crd.yaml"]);
    let client = env.client();
    let ns = env.namespace("restricted").await;
    k8s_support::kubectl(
        env,
        &[
            "label",
            "namespace",
            &ns,
            "pod-security.kubernetes.io/enforce=restricted",
        ],
        None,
    );
    // The app itself complies, so that only the router's pods are in question.
    let d: k8s_openapi::api::apps::v1::Deployment = serde_json::from_value(json!({
        "metadata": {"name": "shop"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "shop"}},
            "template": {
                "metadata": {"labels": {"app": "shop"}},
                "spec": {
                    "securityContext": {"runAsNonRoot": true, "runAsUser": 65532,
                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [{"name": "app", "image": "shop:1",
                        "securityContext": {"allowPrivilegeEscalation": false,
                            "capabilities": {"drop": ["ALL"]}},
                        "ports": [{"name": "http", "containerPort": 8080}]}]
                }
            }
        }
    }))
    .unwrap();
    Api::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &d)
        .await
        .unwrap();
    let bgs: Api<BlueGreen> = Api::namespaced(client.clone(), &ns);
    let bg: BlueGreen = serde_json::from_value(json!({
        "apiVersion": "teal.dev/v1alpha1", "kind": "BlueGreen",
        "metadata": {"name": "shop"},
        "spec": {
            "workloadRef": {"kind": "Deployment", "name": "shop"},
            "router": {"type": "teal", "teal": {"replicas": 2}},
        }
    }))
    .unwrap();
    bgs.create(&PostParams::default(), &bg).await.unwrap();
    let _controller = controller(env, &ns);

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let router_pods = ready_router_pods(&pods, "shop", 2).await;
    for p in &router_pods {
        let spec = p.spec.as_ref().unwrap();
        let c = &spec.containers[0];
        let probe = c
            .readiness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap();
        assert_eq!(probe.path.as_deref(), Some("/readyz"));
        assert!(c.resources.as_ref().unwrap().requests.is_some());
    }
    let replica_sets: Api<k8s_openapi::api::apps::v1::ReplicaSet> =
        Api::namespaced(client.clone(), &ns);
    for rs in replica_sets.list(&Default::default()).await.unwrap() {
        let failures: Vec<String> = rs
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .into_iter()
            .filter(|c| c.type_.as_deref() == Some("ReplicaFailure"))
            .map(|c| c.message.unwrap_or_default())
            .collect();
        assert!(failures.is_empty(), "{:?}: {failures:?}", rs.metadata.name);
    }
}
