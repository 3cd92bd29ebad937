//! `teal router --kubernetes-bluegreen NAME`: the router follows a BlueGreen
//! from inside the cluster. It watches the BlueGreen (`status.router`:
//! active and preview color, route generation; `spec.preview`: the match)
//! and the EndpointSlices of the per-color Services, installs the route
//! table they describe, and then reports the generation it serves in a
//! Lease named after its pod, which the controller reads to confirm a
//! switch. The same Lease carries the replica's response totals by color
//! (`teal.dev/traffic`, rewritten at most every few seconds when they
//! changed), which `teal get` and `teal watch` sum over the replicas, and
//! its counters for built-in analysis metrics (`teal.dev/stats`: preview
//! and production apart, with latency histograms), which the controller
//! reads at every analysis check.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::Context;
use futures_util::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use serde_json::json;
use teal_api::BlueGreen;
use teal_controller::builtin::{ColorCounts, STATS_ANNOTATION, StatsReport};
use teal_controller::objects;
use teal_controller::routers::teal::{GENERATION_ANNOTATION, ROUTER_LABEL, TRAFFIC_ANNOTATION};
use teal_core::Color;
use teal_router::{CookieMatch, HeaderMatch, PreviewRoute, RouteTable, Router};

use super::kube::traffic::{self, Classes};

/// Who this router replica is.
#[derive(Clone)]
pub struct Follow {
    pub namespace: Option<String>,
    pub bluegreen: String,
    pub pod_name: String,
    pub pod_uid: Option<String>,
}

/// The route table a BlueGreen and the per-color EndpointSlices describe,
/// with the generation it belongs to; `None` while the BlueGreen has no
/// routing yet.
/// `header_value` is the preview header's value read from
/// `spec.preview.headerValueFrom`, when the spec names a Secret.
pub fn table(
    bg: &BlueGreen,
    slices: &[EndpointSlice],
    header_value: Option<&str>,
) -> Option<(i64, RouteTable)> {
    let st = bg.status.as_ref()?.router.as_ref()?;
    let active = st.active?;
    let mut endpoints: BTreeMap<Color, Vec<SocketAddr>> = BTreeMap::new();
    for c in Color::ALL {
        let svc = objects::color_service_name(bg, c);
        let mut addrs = Vec::new();
        for s in slices.iter().filter(|s| {
            s.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("kubernetes.io/service-name"))
                == Some(&svc)
        }) {
            let Some(port) = s
                .ports
                .as_ref()
                .and_then(|p| p.first())
                .and_then(|p| p.port)
            else {
                continue;
            };
            for e in s.endpoints.iter().flatten() {
                if e.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                    continue;
                }
                for a in &e.addresses {
                    if let Ok(ip) = a.parse::<IpAddr>() {
                        let addr = SocketAddr::new(ip, port as u16);
                        if !addrs.contains(&addr) {
                            addrs.push(addr);
                        }
                    }
                }
            }
        }
        addrs.sort();
        endpoints.insert(c, addrs);
    }
    let p = &bg.spec.preview;
    let preview = st.preview.and_then(|color| {
        let header = p.header.as_ref().and_then(|h| {
            let value = match &p.header_value_from {
                Some(_) => header_value?.to_string(),
                None => h.value.clone(),
            };
            Some(HeaderMatch {
                name: h.name.clone(),
                value,
            })
        });
        let cookie = p.cookie.as_ref().map(|c| CookieMatch {
            name: c.name.clone(),
            value: c.value.clone(),
        });
        (header.is_some() || cookie.is_some()).then_some(PreviewRoute {
            color,
            header,
            cookie,
        })
    });
    Some((
        st.generation,
        RouteTable {
            active,
            preview,
            endpoints,
        },
    ))
}

/// Runs until the watches end (they retry on their own).
pub async fn follow(router: Router, f: Follow) -> anyhow::Result<()> {
    let client = Client::try_default().await.context(
        "--kubernetes-bluegreen: no Kubernetes configuration (in-cluster or KUBECONFIG)",
    )?;
    let ns = f
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_string());
    let bgs: Api<BlueGreen> = Api::namespaced(client.clone(), &ns);
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), &ns);
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), &ns);

    let (bg_store, bg_writer) = reflector::store();
    let (slice_store, slice_writer) = reflector::store();
    let bg_events = reflector::reflector(
        bg_writer,
        watcher(
            bgs,
            watcher::Config::default().fields(&format!("metadata.name={}", f.bluegreen)),
        ),
    )
    .default_backoff()
    .map(|e| e.map(|_| ()));
    let slice_events = reflector::reflector(
        slice_writer,
        watcher(
            slices,
            watcher::Config::default().labels("kubernetes.io/service-name"),
        ),
    )
    .default_backoff()
    .map(|e| e.map(|_| ()));
    let started = super::kube::now_ms();
    tokio::spawn(publish_traffic(
        router.clone(),
        f.clone(),
        leases.clone(),
        started,
    ));
    let mut events = std::pin::pin!(futures_util::stream::select(bg_events, slice_events));
    let mut reported: Option<i64> = None;
    let mut last_error = String::new();
    while let Some(ev) = events.next().await {
        if let Err(e) = ev {
            tracing::warn!("watch: {e}");
            continue;
        }
        if let Err(e) = sync(&router, &f, &leases, &bg_store, &slice_store, &mut reported).await {
            let msg = format!("{e:#}");
            if msg != last_error {
                tracing::warn!("{msg}");
                last_error = msg;
            }
            // Try again soon even without a new event (e.g. a Lease write
            // that failed).
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    Ok(())
}

async fn sync(
    router: &Router,
    f: &Follow,
    leases: &Api<k8s_openapi::api::coordination::v1::Lease>,
    bg_store: &Store<BlueGreen>,
    slice_store: &Store<EndpointSlice>,
    reported: &mut Option<i64>,
) -> anyhow::Result<()> {
    let Some(bg) = bg_store
        .state()
        .into_iter()
        .find(|b| b.metadata.name.as_deref() == Some(f.bluegreen.as_str()))
    else {
        return Ok(());
    };
    let slices: Vec<EndpointSlice> = slice_store.state().iter().map(|s| (**s).clone()).collect();
    let header_value = match &bg.spec.preview.header_value_from {
        Some(from) => Some(secret_value(leases, &from.secret_key_ref).await?),
        None => None,
    };
    let Some((generation, table)) = table(&bg, &slices, header_value.as_deref()) else {
        return Ok(());
    };
    let current = router.try_current().1;
    if current.as_ref() != Some(&table) {
        router
            .swap(table.clone())
            .with_context(|| format!("route generation {generation} cannot be served yet"))?;
        tracing::info!(
            generation,
            active = %table.active,
            preview = ?table.preview.as_ref().map(|p| p.color),
            "route table installed"
        );
    }
    if *reported != Some(generation) {
        report(leases, f, generation).await?;
        *reported = Some(generation);
    }
    Ok(())
}

/// Reads the preview header's value from its Secret (the router's Role
/// allows `get` on that one Secret).
async fn secret_value(
    leases: &Api<k8s_openapi::api::coordination::v1::Lease>,
    r: &teal_api::spec::SecretKeyRef,
) -> anyhow::Result<String> {
    let client: Client = leases.clone().into_client();
    let ns = leases.namespace().unwrap_or_default().to_string();
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client, &ns);
    let s = secrets.get(&r.name).await.with_context(|| {
        format!(
            "spec.preview.headerValueFrom.secretKeyRef: reading Secret {ns}/{}",
            r.name
        )
    })?;
    let value = s
        .data
        .as_ref()
        .and_then(|d| d.get(&r.key))
        .map(|b| {
            String::from_utf8_lossy(&b.0)
                .trim_end_matches(['\n', '\r'])
                .to_string()
        })
        .with_context(|| {
            format!(
                "spec.preview.headerValueFrom.secretKeyRef: Secret {ns}/{} has no key {:?}",
                r.name, r.key
            )
        })?;
    Ok(value)
}

/// Server-side applies this replica's Lease with `annotations`, as field
/// manager `manager`: holder = the pod, owned by the pod so it goes away
/// with it. The generation and the traffic have their own managers, so
/// neither write drops the other's annotation.
async fn apply_lease(
    leases: &Api<k8s_openapi::api::coordination::v1::Lease>,
    f: &Follow,
    manager: &str,
    annotations: serde_json::Value,
) -> kube::Result<()> {
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
        k8s_openapi::jiff::Timestamp::now(),
    );
    let mut meta = json!({
        "name": f.pod_name,
        "labels": {ROUTER_LABEL: f.bluegreen},
        "annotations": annotations,
    });
    if let Some(uid) = &f.pod_uid {
        meta["ownerReferences"] =
            json!([{"apiVersion": "v1", "kind": "Pod", "name": f.pod_name, "uid": uid}]);
    }
    let body = json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": meta,
        "spec": {"holderIdentity": f.pod_name, "renewTime": now},
    });
    leases
        .patch(
            &f.pod_name,
            &PatchParams::apply(manager).force(),
            &Patch::Apply(body),
        )
        .await
        .map(|_| ())
}

/// Reports the route generation this replica serves in its Lease.
async fn report(
    leases: &Api<k8s_openapi::api::coordination::v1::Lease>,
    f: &Follow,
    generation: i64,
) -> anyhow::Result<()> {
    apply_lease(
        leases,
        f,
        "teal-router",
        json!({GENERATION_ANNOTATION: generation.to_string()}),
    )
    .await
    .with_context(|| {
        format!(
            "reporting route generation {generation} in Lease {}",
            f.pod_name
        )
    })?;
    tracing::info!(generation, lease = %f.pod_name, "route generation reported");
    Ok(())
}

/// This replica's responses since it started, by color and status class.
fn counts(router: &Router) -> BTreeMap<Color, Classes> {
    Color::ALL
        .iter()
        .map(|c| (*c, Classes(router.stats(*c).responses_by_class)))
        .collect()
}

/// This replica's counters for built-in metrics: by color, preview and
/// production apart, with latency histograms.
fn stats(router: &Router, started: i64) -> StatsReport {
    StatsReport {
        started,
        colors: Color::ALL
            .iter()
            .map(|c| {
                let counts =
                    ColorCounts::new(&router.preview_stats(*c), &router.production_stats(*c));
                (*c, counts)
            })
            .filter(|(_, counts)| *counts != ColorCounts::default())
            .collect(),
    }
}

/// Publishes the response totals (`teal.dev/traffic`) and the counters of
/// built-in metrics (`teal.dev/stats`) in the Lease every
/// [`traffic::WRITE_INTERVAL`], when they changed since the last write
/// (nothing before the first response).
async fn publish_traffic(
    router: Router,
    f: Follow,
    leases: Api<k8s_openapi::api::coordination::v1::Lease>,
    started: i64,
) {
    let mut written = StatsReport {
        started,
        colors: BTreeMap::new(),
    };
    let mut tick = tokio::time::interval(traffic::WRITE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_error = String::new();
    loop {
        tick.tick().await;
        let now = stats(&router, started);
        if now == written {
            continue;
        }
        let report = traffic::Report::new(super::kube::now_ms(), counts(&router));
        let encoded =
            serde_json::to_string(&report).and_then(|t| Ok((t, serde_json::to_string(&now)?)));
        let (value, stats_value) = match encoded {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!("encoding the traffic report: {e}");
                continue;
            }
        };
        match apply_lease(
            &leases,
            &f,
            "teal-router-traffic",
            json!({TRAFFIC_ANNOTATION: value, STATS_ANNOTATION: stats_value}),
        )
        .await
        {
            Ok(()) => {
                written = now;
                last_error.clear();
            }
            Err(e) => {
                let msg = format!("publishing traffic in Lease {}: {e}", f.pod_name);
                if msg != last_error {
                    tracing::warn!("{msg}");
                    last_error = msg;
                }
            }
        }
    }
}
