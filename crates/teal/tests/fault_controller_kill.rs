//! Fault: the `teal controller` process SIGKILLed at random points, 50 times
//! across ten releases. Every release must end exactly once, promoted, with
//! the right color live; the live Service may switch only to a ready color,
//! and exactly once per release (a resumed controller never switches twice).
//!
//! The kill points come from a seed printed at the start; set
//! `TEAL_FAULT_SEED` to replay a run.

mod k8s_support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_support::{
    ControllerProcess, Rng, apply_deploy_files, kubectl, live_color, set_image, wait_healthy,
};
use kube::Api;
use kube::api::{WatchEvent, WatchParams};
use teal_api::BlueGreen;
use teal_testenv::{TestEnv, wait_for};

const RELEASES: usize = 10;
const KILLS_PER_RELEASE: usize = 5;
const CONTROLLER_ARGS: &[&str] = &["--no-leader-election", "--metrics-addr", "127.0.0.1:0"];

/// Every change of the live Service's selector, checked as it happens: the
/// new color's Deployment must have ready replicas.
#[derive(Default)]
struct Switches {
    to: Vec<String>,
    violations: Vec<String>,
}

async fn observe_switches(client: kube::Client, ns: String, out: Arc<Mutex<Switches>>) {
    let svcs: Api<Service> = Api::namespaced(client.clone(), &ns);
    let deps: Api<Deployment> = Api::namespaced(client, &ns);
    let mut last: Option<String> = None;
    let mut rv = "0".to_string();
    loop {
        let wp = WatchParams::default()
            .fields("metadata.name=shop")
            .timeout(60);
        let Ok(stream) = svcs.watch(&wp, &rv).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let mut stream = stream.boxed();
        while let Some(ev) = stream.next().await {
            let svc = match ev {
                Ok(WatchEvent::Added(s)) | Ok(WatchEvent::Modified(s)) => s,
                Ok(WatchEvent::Error(_)) => {
                    rv = "0".into();
                    break;
                }
                Ok(_) => continue,
                Err(_) => break,
            };
            if let Some(v) = &svc.metadata.resource_version {
                rv = v.clone();
            }
            let color = svc
                .spec
                .and_then(|s| s.selector)
                .and_then(|s| s.get("teal.dev/color").cloned());
            let Some(color) = color else { continue };
            if last.as_deref() == Some(color.as_str()) {
                continue;
            }
            let first = last.is_none();
            last = Some(color.clone());
            if first {
                continue;
            }
            let ready = deps
                .get(&format!("shop-{color}"))
                .await
                .ok()
                .and_then(|d| d.status)
                .and_then(|s| s.ready_replicas)
                .unwrap_or(0);
            let mut o = out.lock().unwrap();
            if ready < 1 {
                o.violations
                    .push(format!("switched to {color} with {ready} ready replicas"));
            }
            o.to.push(color);
        }
    }
}

#[tokio::test]
async fn fifty_sigkills_across_ten_releases() {
    let env = TestEnv::shared();
    apply_deploy_files(env, &["crd.yaml"]);
    let ns = env.namespace("fault-kill").await;
    let manifest = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: shop}
spec:
  replicas: 2
  selector: {matchLabels: {app: shop}}
  template:
    metadata: {labels: {app: shop}}
    spec: {containers: [{name: app, image: "shop:1", ports: [{name: http, containerPort: 8080}]}]}
---
apiVersion: teal.dev/v1alpha1
kind: BlueGreen
metadata: {name: shop}
spec:
  workloadRef: {kind: Deployment, name: shop}
  scaleDownDelay: 1s
  progressDeadline: 120s
"#;
    kubectl(env, &["apply", "-n", &ns, "-f", "-"], Some(manifest));
    let client = env.client();
    let bgs: Api<BlueGreen> = Api::namespaced(client.clone(), &ns);
    let deps: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let mut rng = Rng::from_env();
    let seed = rng.0;

    let mut ctl = ControllerProcess::start(env, &ns, CONTROLLER_ARGS);
    let healthy_at = |want: Option<String>| {
        let bgs = bgs.clone();
        async move { wait_healthy(&bgs, "shop", want.as_deref()).await }
    };
    healthy_at(None).await;
    let switches = Arc::new(Mutex::new(Switches::default()));
    let observer = tokio::spawn(observe_switches(
        client.clone(),
        ns.clone(),
        switches.clone(),
    ));
    // Let the observer see the current selector first.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut kills = 0;
    for release in 0..RELEASES {
        let image = format!("shop:{}", release + 2);
        set_image(&deps, "shop", &image).await;
        for _ in 0..KILLS_PER_RELEASE {
            tokio::time::sleep(Duration::from_millis(50 + rng.below(1500))).await;
            drop(ctl);
            kills += 1;
            tokio::time::sleep(Duration::from_millis(rng.below(300))).await;
            ctl = ControllerProcess::start(env, &ns, CONTROLLER_ARGS);
        }
        let d = deps.get("shop").await.unwrap();
        let want = teal_controller::objects::revision_of(&d.spec.template);
        let st = healthy_at(Some(want.clone())).await;
        let records: Vec<_> = st.history.iter().filter(|h| h.revision == want).collect();
        assert_eq!(
            records.len(),
            1,
            "release {release} (seed {seed}): {:?}",
            st.history
        );
        assert_eq!(records[0].outcome, "promoted", "seed {seed}");
        assert_eq!(
            live_color(&client, &ns, "shop").await.as_deref(),
            st.active_color.map(|c| c.as_str()),
            "seed {seed}"
        );
        // The observer has seen the switch of this release, and only one.
        wait_for(
            "the observer to see the switch",
            Duration::from_secs(30),
            || {
                let n = switches.lock().unwrap().to.len();
                async move {
                    if n > release {
                        Ok(())
                    } else {
                        Err(format!("{n} switches"))
                    }
                }
            },
        )
        .await;
        let s = switches.lock().unwrap();
        assert_eq!(s.to.len(), release + 1, "seed {seed}: switches {:?}", s.to);
        assert_eq!(
            s.to.last().map(String::as_str),
            st.active_color.map(|c| c.as_str())
        );
    }
    assert!(kills >= 50);
    observer.abort();
    let s = switches.lock().unwrap();
    assert!(s.violations.is_empty(), "seed {seed}: {:?}", s.violations);
    drop(ctl);
}
