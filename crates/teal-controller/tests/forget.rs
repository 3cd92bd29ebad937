//! What the controller keeps in memory per BlueGreen (hook answers, hook
//! rounds, notifiers with the URLs they read from Secrets, analysis checks,
//! write sequence numbers, recent Events) goes when the BlueGreen is
//! deleted: 1,000 BlueGreens with an event webhook and a notifier each
//! start a release, then are deleted, and
//! `teal_controller_bluegreen_state_entries` returns to 0 for every map.
//! The namespace allows no pods (a ResourceQuota), so the test costs the
//! control plane objects, not pods.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{ResourceQuota, Secret};
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};
use serde_json::json;
use support::{case, metric_sum, scrape};
use teal_testenv::receiver::Receiver;
use teal_testenv::wait_for;

const BLUEGREENS: usize = 1_000;

/// The per-BlueGreen entries the controller reports, by map.
async fn state(addr: SocketAddr) -> BTreeMap<String, f64> {
    let text = wait_for("the controller's metrics", Duration::from_secs(30), || {
        scrape(addr)
    })
    .await;
    let mut out = BTreeMap::new();
    for map in [
        "bluegreens_known",
        "hook_answers",
        "hook_rounds",
        "notifiers",
        "analysis_checks",
        "write_sequences",
        "recent_events",
        "workload_index",
    ] {
        let label = format!("map=\"{map}\"");
        out.insert(
            map.to_string(),
            metric_sum(&text, "teal_controller_bluegreen_state_entries", |l| {
                l.contains(&label)
            }),
        );
    }
    out
}

/// The resident memory of this process (the controller runs in it), KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn per_bluegreen_state_goes_with_the_bluegreen() {
    let hooks = Receiver::start(200).await;
    let mut c = case("forget").await;
    let quotas: Api<ResourceQuota> = Api::namespaced(c.client.clone(), &c.ns);
    let q: ResourceQuota = serde_json::from_value(json!({
        "metadata": {"name": "no-pods"},
        "spec": {"hard": {"pods": "0"}}
    }))
    .unwrap();
    quotas.create(&PostParams::default(), &q).await.unwrap();
    wait_for("the quota counted", Duration::from_secs(30), || {
        let quotas = quotas.clone();
        async move {
            let q = quotas.get("no-pods").await.map_err(|e| e.to_string())?;
            match q.status.and_then(|s| s.used) {
                Some(_) => Ok(()),
                None => Err("not counted yet".to_string()),
            }
        }
    })
    .await;
    let secrets: Api<Secret> = Api::namespaced(c.client.clone(), &c.ns);
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "notify-url"},
        "stringData": {"url": hooks.url("/notify")}
    }))
    .unwrap();
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();

    let rss_before = rss_kib();
    let c_ref = &c;
    let hook_url = hooks.url("/event");
    futures_util::stream::iter(0..BLUEGREENS)
        .map(|i| {
            let hook_url = hook_url.clone();
            async move {
                let name = format!("app{i}");
                c_ref
                    .create_workload(&name, "app:1", 0, BTreeMap::new())
                    .await;
                c_ref
                    .create_bluegreen(
                        &name,
                        json!({
                            "workloadRef": {"kind": "Deployment", "name": name},
                            "progressDeadline": "600s",
                            "webhooks": [{"name": "audit", "type": "event", "url": hook_url, "timeout": "2s", "retries": 0}],
                            "notifications": [{"name": "team", "type": "webhook",
                                "secretRef": {"name": "notify-url", "key": "url"},
                                "events": ["started", "failed"]}]
                        }),
                    )
                    .await
                    .unwrap();
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;
    let addr = c.start_counted_controller(None).await;
    let c_ref = &c;
    let bgs = c.bluegreens();
    wait_for("every BlueGreen adopted", Duration::from_secs(600), || {
        let bgs = bgs.clone();
        async move {
            let list = bgs
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?;
            let n = list
                .items
                .iter()
                .filter(|b| b.status.as_ref().is_some_and(|s| s.engine.is_some()))
                .count();
            if n == BLUEGREENS {
                Ok(())
            } else {
                Err(format!("{n} adopted"))
            }
        }
    })
    .await;
    // A release of each: its event webhook is called and its notifier
    // built (with the URL from the Secret).
    futures_util::stream::iter(0..BLUEGREENS)
        .map(|i| async move {
            c_ref
                .set_image(&format!("app{i}"), "app:2", BTreeMap::new())
                .await
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;
    let full = wait_for(
        "an answer and a notifier for every BlueGreen",
        Duration::from_secs(600),
        || async move {
            let s = state(addr).await;
            if s["hook_answers"] >= BLUEGREENS as f64 && s["notifiers"] >= BLUEGREENS as f64 {
                Ok(s)
            } else {
                Err(format!("{s:?}"))
            }
        },
    )
    .await;
    let rss_full = rss_kib();
    assert_eq!(full["workload_index"], BLUEGREENS as f64, "{full:?}");

    // The workloads first: each BlueGreen's clean-up then has nothing to
    // hand back and ends at once.
    let deployments = c.deployments();
    deployments
        .delete_collection(
            &DeleteParams::default(),
            &ListParams::default().labels("!teal.dev/bluegreen"),
        )
        .await
        .unwrap();
    bgs.delete_collection(&DeleteParams::default(), &ListParams::default())
        .await
        .unwrap();
    wait_for("every BlueGreen gone", Duration::from_secs(600), || {
        let bgs = bgs.clone();
        async move {
            let n = bgs
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?
                .items
                .len();
            if n == 0 {
                Ok(())
            } else {
                Err(format!("{n} left"))
            }
        }
    })
    .await;
    let left = wait_for(
        "no per-BlueGreen entry left",
        Duration::from_secs(30),
        || async move {
            let s = state(addr).await;
            if s.values().all(|n| *n == 0.0) {
                Ok(s)
            } else {
                Err(format!("{s:?}"))
            }
        },
    )
    .await;
    println!(
        "per-BlueGreen entries with {BLUEGREENS} BlueGreens: {full:?}; after deleting them: {left:?}; RSS {rss_before} KiB before, {rss_full} KiB with them, {} KiB after",
        rss_kib()
    );
}
