//! `type: teal`: teal's own L7 router in front of the colors.
//!
//! teal writes one Service per color (`<service>-blue`, `<service>-green`),
//! a router Deployment `<service>-router` running `teal router --kubernetes`
//! with its own ServiceAccount and Role, and the live Service `<service>`
//! selecting the router pods. Router replicas watch the BlueGreen (its
//! `status.router`: active, preview, generation) and the EndpointSlices of
//! the per-color Services, install the route table, and then report the
//! generation they serve in a Lease named after their pod
//! (annotation [`GENERATION_ANNOTATION`]). A switch is confirmed only when
//! every ready router pod reports it. Replicas also publish their response
//! totals by color and status class there (annotation
//! [`TRAFFIC_ANNOTATION`]), which `teal get` and `teal watch` show.

use std::collections::BTreeMap;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::ListParams;
use serde_json::{Value, json};
use teal_api::BlueGreen;
use teal_core::Color;
use teal_core::release::Routing;

use super::{Ack, Kind, Target};
use crate::cache::Extra;
use crate::objects;
use crate::reconcile::{Error, Misconfigured};

/// Label on router pods: the BlueGreen they route for.
pub const ROUTER_LABEL: &str = "teal.dev/router";
/// Annotation on a router replica's Lease: the route generation it serves.
pub const GENERATION_ANNOTATION: &str = "teal.dev/route-generation";
/// Annotation on a router replica's Lease: its responses since it started,
/// by color and status class (JSON).
pub const TRAFFIC_ANNOTATION: &str = "teal.dev/traffic";
/// The value of annotation `key` of each of `leases` that has it, with the
/// Lease's name (router replicas' reports).
pub fn annotated<'a>(
    leases: &'a [Lease],
    key: &'a str,
) -> impl Iterator<Item = (String, &'a String)> + 'a {
    leases.iter().filter_map(move |l| {
        let v = l.metadata.annotations.as_ref()?.get(key)?;
        Some((l.metadata.name.clone().unwrap_or_default(), v))
    })
}

/// Environment variable of the controller naming the router image (see
/// `Options::router_image`).
pub const IMAGE_ENV: &str = "TEAL_ROUTER_IMAGE";

/// Name of the router Deployment, ServiceAccount, Role and RoleBinding.
pub fn router_name(bg: &BlueGreen) -> String {
    format!("{}-router", objects::service_name(bg))
}

fn router_labels(bg: &BlueGreen) -> BTreeMap<String, String> {
    BTreeMap::from([(
        ROUTER_LABEL.to_string(),
        bg.metadata.name.clone().unwrap_or_default(),
    )])
}

/// The router port in its pods.
pub fn router_port(bg: &BlueGreen) -> i32 {
    bg.spec
        .router
        .teal
        .as_ref()
        .and_then(|t| t.port)
        .unwrap_or(8080)
}

/// The router pods' probe port: 9902, or 9903 when the router itself serves
/// on 9902.
fn probe_port(router_port: i32) -> i32 {
    if router_port == 9902 { 9903 } else { 9902 }
}

/// What router replicas may do: read their BlueGreen, watch EndpointSlices
/// of the namespace, write their own Lease, and read the preview header's
/// Secret if the spec names one.
pub fn role(bg: &BlueGreen) -> Value {
    let bg_name = bg.metadata.name.clone().unwrap_or_default();
    let mut rules = vec![
        json!({"apiGroups": ["teal.dev"], "resources": ["bluegreens"], "resourceNames": [bg_name], "verbs": ["get", "list", "watch"]}),
        json!({"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]}),
        json!({"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "patch"]}),
    ];
    // The preview header's value: `get` on that one Secret only.
    if let Some(from) = &bg.spec.preview.header_value_from {
        rules.push(json!({"apiGroups": [""], "resources": ["secrets"], "resourceNames": [from.secret_key_ref.name], "verbs": ["get"]}));
    }
    json!({
        "metadata": objects::owned_meta(bg, router_name(bg)),
        "rules": rules,
    })
}

pub fn role_binding(bg: &BlueGreen) -> Value {
    let name = router_name(bg);
    json!({
        "metadata": objects::owned_meta(bg, name.clone()),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": bg.metadata.namespace}],
    })
}

/// The router Deployment.
pub fn deployment(bg: &BlueGreen, image: &str) -> Value {
    let name = router_name(bg);
    let bg_name = bg.metadata.name.clone().unwrap_or_default();
    let replicas = bg
        .spec
        .router
        .teal
        .as_ref()
        .and_then(|t| t.replicas)
        .unwrap_or(2);
    let port = router_port(bg);
    let probe = probe_port(port);
    let field = |path: &str| json!({"valueFrom": {"fieldRef": {"fieldPath": path}}});
    let mut pod_name = field("metadata.name");
    pod_name["name"] = "POD_NAME".into();
    let mut pod_uid = field("metadata.uid");
    pod_uid["name"] = "POD_UID".into();
    json!({
        "metadata": objects::owned_meta(bg, name.clone()),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": router_labels(bg)},
            "template": {
                "metadata": {"labels": router_labels(bg)},
                "spec": {
                    "serviceAccountName": name,
                    "containers": [{
                        "name": "router",
                        "image": image,
                        "args": [
                            "router",
                            "--listen", format!("0.0.0.0:{port}"),
                            "--admin", "unix:/tmp/teal-router-admin.sock",
                            "--kubernetes-bluegreen", bg_name,
                            "--probe", format!("0.0.0.0:{probe}"),
                            // Not ready, still serving, while kube-proxy stops
                            // sending new connections to a pod going away.
                            "--shutdown-delay", "5s",
                        ],
                        "env": [pod_name, pod_uid],
                        "ports": [
                            {"name": "http", "containerPort": port},
                            {"name": "probe", "containerPort": probe},
                        ],
                        // Ready once a route table is installed: before that the
                        // replica could only answer 503.
                        "readinessProbe": {
                            "httpGet": {"path": "/readyz", "port": "probe"},
                            "periodSeconds": 1,
                            "failureThreshold": 2,
                        },
                        "livenessProbe": {
                            "httpGet": {"path": "/healthz", "port": "probe"},
                            "periodSeconds": 10,
                            "failureThreshold": 3,
                        },
                        "resources": {"requests": {"cpu": "50m", "memory": "32Mi"}},
                        // The `restricted` Pod Security profile: a router runs in any
                        // namespace its workload runs in.
                        "securityContext": {
                            "allowPrivilegeEscalation": false,
                            "readOnlyRootFilesystem": true,
                            "capabilities": {"drop": ["ALL"]},
                        },
                        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                    }],
                    "securityContext": {
                        "runAsNonRoot": true,
                        "runAsUser": 65532,
                        "runAsGroup": 65532,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "volumes": [{"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}],
                },
            },
        },
    })
}

/// Whether a pod is ready and not going away.
pub fn ready(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

pub async fn route(t: &Target<'_>, routing: Routing, generation: i64) -> Result<Ack, Error> {
    let Some(image) = t.router_image else {
        return Err(Misconfigured::NoRouterImage { env: IMAGE_ENV }.into());
    };
    let bg = t.bg;
    for c in Color::ALL {
        let svc = objects::service(
            bg,
            objects::color_service_name(bg, c),
            c,
            t.ports.of(c).to_vec(),
        );
        t.apply_service(&svc).await?;
    }
    let name = router_name(bg);
    t.apply(
        Kind::ServiceAccount,
        json!({"metadata": objects::owned_meta(bg, name.clone())}),
    )
    .await?;
    t.apply(Kind::Role, role(bg)).await?;
    t.apply(Kind::RoleBinding, role_binding(bg)).await?;
    t.apply(Kind::Deployment, deployment(bg, image)).await?;
    let ready = ready_router_pods(t).await?;
    if ready.is_empty() {
        // No replica can route yet (a router is ready once its route table is
        // installed). The live Service is left as it is: not created yet, or
        // still selecting what it selected (a Service adopted from a hand-made
        // setup or the service router keeps serving). Pointing it at the app's
        // pods meanwhile would pin every keep-alive connection opened until
        // then to those pods, past the router, until they go away.
        return Ok(Ack::Pending(format!(
            "no ready router pod ({ROUTER_LABEL}={}) yet",
            bg.metadata.name.as_deref().unwrap_or_default()
        )));
    }
    // The front door: the live Service, every port of the live color's to
    // the router.
    let mut ports = t.ports.of(routing.active).to_vec();
    for p in &mut ports {
        p.target_port =
            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(router_port(bg)));
    }
    let mut live = objects::service(bg, t.service(), Color::Blue, ports);
    if let Some(spec) = live.spec.as_mut() {
        spec.selector = Some(router_labels(bg));
    }
    t.apply_service(&live).await?;
    acknowledged(t, &ready, generation).await
}

/// The router pods that are ready (route table installed) and not going
/// away. While the routing is settled they come from the watch cache; a
/// switch reads them fresh.
async fn ready_router_pods(t: &Target<'_>) -> Result<Vec<Pod>, Error> {
    let bg_name = t.bg.metadata.name.clone().unwrap_or_default();
    if let Some(pods) = t
        .settled_cache()
        .filter(|c| c.caches(Extra::RouterLeases))
        .and_then(|c| c.extra_labelled(Extra::RouterPods, t.ns, ROUTER_LABEL, &bg_name))
    {
        return Ok(pods
            .iter()
            .filter_map(|p| p.clone().try_parse::<Pod>().ok())
            .filter(ready)
            .collect());
    }
    let pods: Api<Pod> = Api::namespaced(t.client.clone(), t.ns);
    let sel = format!("{ROUTER_LABEL}={bg_name}");
    let list = pods.list(&ListParams::default().labels(&sel)).await?;
    if let Some(c) = t.cache {
        c.watch(Extra::RouterPods);
        c.watch(Extra::RouterLeases);
    }
    Ok(list.items.into_iter().filter(ready).collect())
}

/// Confirmed when every ready router pod's Lease reports `generation`.
/// While the routing is settled, Leases come from the watch cache; a switch
/// is confirmed on a fresh read.
async fn acknowledged(t: &Target<'_>, ready: &[Pod], generation: i64) -> Result<Ack, Error> {
    let cached = t.settled_cache().filter(|c| c.caches(Extra::RouterLeases));
    let leases: Api<Lease> = Api::namespaced(t.client.clone(), t.ns);
    let mut behind = Vec::new();
    for p in ready {
        let pod = p.metadata.name.clone().unwrap_or_default();
        let annotations = match &cached {
            Some(c) => c
                .extra(Extra::RouterLeases, t.ns, &pod)
                .flatten()
                .and_then(|l| l.metadata.annotations),
            None => leases
                .get_opt(&pod)
                .await?
                .and_then(|l| l.metadata.annotations),
        };
        let served = annotations
            .and_then(|a| a.get(GENERATION_ANNOTATION).cloned())
            .and_then(|g| g.parse::<i64>().ok());
        if served.is_none_or(|g| g < generation) {
            behind.push(pod);
        }
    }
    if behind.is_empty() {
        Ok(Ack::Confirmed)
    } else {
        Ok(Ack::Pending(format!(
            "{} of {} ready router pods do not serve route generation {generation} yet: {}",
            behind.len(),
            ready.len(),
            behind.join(", ")
        )))
    }
}
