//! What teal writes to the cluster: per-color Deployments and the live and
//! preview Services, built as plain objects from the BlueGreen and the
//! workload, and what it reads back from them.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, ReplicaSet};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec, Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;
use teal_api::BlueGreen;
use teal_api::bluegreen::labels;
use teal_core::Color;
use teal_core::release::ColorStatus;

/// Restarts of one container after which a pod counts as crash-looping.
const CRASH_RESTARTS: i32 = 3;

/// A stable short hash of a pod template: the revision name teal uses.
pub fn revision_of(template: &PodTemplateSpec) -> String {
    // FNV-1a over the canonical JSON (struct fields in declaration order,
    // maps sorted), so equal templates give equal revisions everywhere.
    let bytes = serde_json::to_vec(template).unwrap_or_default();
    format!("{:010x}", fnv1a(&bytes) & 0xff_ffff_ffff)
}

/// The 64-bit FNV-1a hash of `bytes`: stable across processes and versions.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

pub fn color_deployment_name(bg: &str, color: Color) -> String {
    format!("{bg}-{color}")
}

pub fn service_name(bg: &BlueGreen) -> String {
    bg.spec
        .service
        .name
        .clone()
        .unwrap_or_else(|| bg.metadata.name.clone().unwrap_or_default())
}

pub fn preview_service_name(bg: &BlueGreen) -> String {
    format!("{}-preview", service_name(bg))
}

pub fn owner(bg: &BlueGreen) -> OwnerReference {
    bg.controller_owner_ref(&())
        .expect("BlueGreen has a name and uid")
}

fn selector(bg: &str, color: Color) -> BTreeMap<String, String> {
    BTreeMap::from([
        (labels::BLUEGREEN.to_string(), bg.to_string()),
        (labels::COLOR.to_string(), color.to_string()),
    ])
}

/// The revision a color Deployment runs (its annotation) and its pod
/// template as the workload had it (without teal's labels).
pub fn color_template(d: Deployment) -> (Option<String>, PodTemplateSpec) {
    let revision = d
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(labels::REVISION))
        .cloned();
    let mut t = d.spec.template;
    if let Some(l) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        l.remove(labels::BLUEGREEN);
        l.remove(labels::COLOR);
        l.remove(labels::REVISION);
    }
    (revision, t)
}

/// The Deployment that runs `color` at `revision` from `template`.
pub fn color_deployment(
    bg: &BlueGreen,
    color: Color,
    revision: &str,
    template: &PodTemplateSpec,
    replicas: i32,
) -> Deployment {
    let name = bg.metadata.name.clone().unwrap_or_default();
    let mut template = template.clone();
    let meta = template.metadata.get_or_insert_with(ObjectMeta::default);
    let tl = meta.labels.get_or_insert_with(BTreeMap::new);
    tl.extend(selector(&name, color));
    tl.insert(labels::REVISION.into(), revision.into());
    let mut obj_labels = selector(&name, color);
    obj_labels.insert(labels::REVISION.into(), revision.into());
    Deployment {
        metadata: ObjectMeta {
            name: Some(color_deployment_name(&name, color)),
            namespace: bg.metadata.namespace.clone(),
            labels: Some(obj_labels),
            annotations: Some(BTreeMap::from([(
                labels::REVISION.to_string(),
                revision.to_string(),
            )])),
            owner_references: Some(vec![owner(bg)]),
            ..Default::default()
        },
        spec: DeploymentSpec {
            replicas: Some(replicas),
            // teal keeps the revisions (in the BlueGreen's status) and
            // rolls back by switching colors, never by a Deployment
            // rollback: one old ReplicaSet is enough to look at, and each
            // one more is kept in etcd and in the controller's cache
            // (Kubernetes' default is 10 per Deployment).
            revision_history_limit: Some(1),
            selector: LabelSelector {
                match_labels: Some(selector(&name, color)),
                ..Default::default()
            },
            template,
            ..Default::default()
        },
        status: None,
    }
}

/// Service ports: the spec's, or one per named container port.
pub fn service_ports(bg: &BlueGreen, template: Option<&PodTemplateSpec>) -> Vec<ServicePort> {
    if let Some(p) = &bg.spec.service.ports {
        return p.clone();
    }
    let mut ports = Vec::new();
    for c in template
        .and_then(|t| t.spec.as_ref())
        .map(|s| s.containers.as_slice())
        .unwrap_or(&[])
    {
        for p in c.ports.as_deref().unwrap_or(&[]) {
            ports.push(ServicePort {
                name: p.name.clone(),
                port: p.container_port,
                target_port: Some(match &p.name {
                    Some(n) => IntOrString::String(n.clone()),
                    None => IntOrString::Int(p.container_port),
                }),
                protocol: p.protocol.clone(),
                ..Default::default()
            });
        }
    }
    if ports.is_empty() {
        ports.push(ServicePort {
            name: Some("http".into()),
            port: 80,
            target_port: Some(IntOrString::Int(8080)),
            ..Default::default()
        });
    }
    // Several unnamed ports are not allowed in a Service: name them.
    if ports.len() > 1 {
        for (i, p) in ports.iter_mut().enumerate() {
            if p.name.is_none() {
                p.name = Some(format!("port-{i}"));
            }
        }
    }
    ports
}

/// A Service owned by teal selecting `color`'s pods.
pub fn service(bg: &BlueGreen, name: String, color: Color, ports: Vec<ServicePort>) -> Service {
    let bg_name = bg.metadata.name.clone().unwrap_or_default();
    service_selecting(bg, name, selector(&bg_name, color), ports)
}

/// A Service owned by teal selecting the pods of both colors (the host
/// whose subsets a mesh routes to).
pub fn both_colors_service(bg: &BlueGreen, name: String, ports: Vec<ServicePort>) -> Service {
    let bg_name = bg.metadata.name.clone().unwrap_or_default();
    let sel = BTreeMap::from([(labels::BLUEGREEN.to_string(), bg_name)]);
    service_selecting(bg, name, sel, ports)
}

/// The per-color Service of `color`: `<live service>-<color>`.
pub fn color_service_name(bg: &BlueGreen, color: Color) -> String {
    format!("{}-{color}", service_name(bg))
}

/// Labels selecting the pods of `color` of BlueGreen `bg`.
pub fn color_labels(bg: &str, color: Color) -> BTreeMap<String, String> {
    selector(bg, color)
}

/// The labels and owner reference of everything teal creates for `bg`.
pub fn owned_meta(bg: &BlueGreen, name: String) -> ObjectMeta {
    let bg_name = bg.metadata.name.clone().unwrap_or_default();
    ObjectMeta {
        name: Some(name),
        namespace: bg.metadata.namespace.clone(),
        labels: Some(BTreeMap::from([(labels::BLUEGREEN.to_string(), bg_name)])),
        owner_references: Some(vec![owner(bg)]),
        ..Default::default()
    }
}

fn service_selecting(
    bg: &BlueGreen,
    name: String,
    selector: BTreeMap<String, String>,
    ports: Vec<ServicePort>,
) -> Service {
    Service {
        metadata: owned_meta(bg, name),
        spec: Some(ServiceSpec {
            selector: Some(selector),
            ports: Some(ports),
            ..Default::default()
        }),
        status: None,
    }
}

/// Whether `current` already has what teal writes in `wanted`: its labels,
/// owner references, selector and ports (fields the apiserver defaults
/// compare as defaulted). Fields teal does not write are not compared.
pub fn service_as_wanted(current: &Service, wanted: &Service) -> bool {
    fn contains<T: PartialEq>(have: Option<&Vec<T>>, want: Option<&Vec<T>>) -> bool {
        let have = have.map(Vec::as_slice).unwrap_or_default();
        want.map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .all(|w| have.contains(w))
    }
    let (cm, wm) = (&current.metadata, &wanted.metadata);
    let labels_ok = wm
        .labels
        .iter()
        .flatten()
        .all(|(k, v)| cm.labels.as_ref().and_then(|l| l.get(k)) == Some(v));
    let owners_ok = contains(cm.owner_references.as_ref(), wm.owner_references.as_ref());
    let (Some(cs), Some(ws)) = (&current.spec, &wanted.spec) else {
        return false;
    };
    let port_key = |p: &ServicePort| {
        (
            p.name.clone(),
            p.port,
            p.protocol.clone().unwrap_or_else(|| "TCP".into()),
            p.target_port.clone().unwrap_or(IntOrString::Int(p.port)),
            p.app_protocol.clone(),
        )
    };
    let ports = |s: &ServiceSpec| {
        let mut v: Vec<_> = s.ports.iter().flatten().map(port_key).collect();
        v.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
        v
    };
    labels_ok
        && owners_ok
        && cs.selector.as_ref().filter(|s| !s.is_empty())
            == ws.selector.as_ref().filter(|s| !s.is_empty())
        && ports(cs) == ports(ws)
}

/// Whether `current` (an object read back, as JSON) already holds what a
/// server-side apply of `wanted` would write, so that the apply can be
/// skipped: the labels, annotations and owner references of `wanted` are
/// there, and every other top-level field (`spec`, `rules`…).
///
/// With `exact`, each of those fields must equal teal's, nothing added and
/// nothing left from an earlier apply: for routes, which teal writes out
/// with the defaults the apiserver would add, so that a hand-added or stale
/// field is always written over. Otherwise (objects the apiserver defaults,
/// such as a Deployment) `current` may hold more in an object, but every
/// value of `wanted` must be there and every list must have its length.
pub fn holds(current: &serde_json::Value, wanted: &serde_json::Value, exact: bool) -> bool {
    use serde_json::Value;
    fn contains(have: &Value, want: &Value) -> bool {
        match (have, want) {
            (Value::Object(h), Value::Object(w)) => w
                .iter()
                .all(|(k, v)| h.get(k).is_some_and(|hv| contains(hv, v))),
            (Value::Array(h), Value::Array(w)) => {
                h.len() == w.len() && h.iter().zip(w).all(|(h, w)| contains(h, w))
            }
            (h, w) => h == w,
        }
    }
    let (Some(have), Some(want)) = (current.as_object(), wanted.as_object()) else {
        return false;
    };
    let meta = |o: &serde_json::Map<String, Value>, key: &str| {
        o.get("metadata").and_then(|m| m.get(key)).cloned()
    };
    let meta_ok = ["labels", "annotations"]
        .iter()
        .all(|k| match meta(want, k) {
            None | Some(Value::Null) => true,
            Some(w) => contains(&meta(have, k).unwrap_or(Value::Null), &w),
        })
        && match meta(want, "ownerReferences") {
            Some(Value::Array(w)) => {
                let h = meta(have, "ownerReferences");
                let h = h.as_ref().and_then(Value::as_array);
                w.iter().all(|o| h.is_some_and(|h| h.contains(o)))
            }
            _ => true,
        };
    meta_ok
        && want
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "metadata" | "apiVersion" | "kind"))
            .all(|(k, w)| match have.get(k) {
                None => w.is_null(),
                Some(h) if exact => h == w,
                Some(h) => contains(h, w),
            })
}

/// Whether an existing Service belongs to this BlueGreen.
pub fn owned_by(meta: &ObjectMeta, bg: &BlueGreen) -> bool {
    let uid = bg.metadata.uid.as_deref();
    meta.owner_references
        .as_deref()
        .unwrap_or(&[])
        .iter()
        .any(|o| Some(o.uid.as_str()) == uid)
}

/// Available replicas of the ReplicaSet that runs `dep`'s current
/// revision at its full size, as its own controller reports them: owned by
/// `dep`, its pod template of `revision`, scaled to `wanted`, and its status
/// written for that scale (so pods of an earlier incarnation, before a
/// scale to zero, never count). 0 when there is no such ReplicaSet.
/// The live ReplicaSets `dep` controls whose template runs `revision`.
fn replica_sets_of<'a>(
    dep: &'a Deployment,
    replica_sets: &'a [ReplicaSet],
    revision: Option<&'a str>,
) -> impl Iterator<Item = &'a ReplicaSet> {
    let uid = dep.metadata.uid.as_deref();
    replica_sets
        .iter()
        .filter(move |rs| {
            uid.is_some()
                && rs
                    .metadata
                    .owner_references
                    .as_deref()
                    .unwrap_or(&[])
                    .iter()
                    .any(|o| o.controller == Some(true) && Some(o.uid.as_str()) == uid)
        })
        .filter(move |rs| {
            let template_revision = rs
                .spec
                .template
                .as_ref()
                .and_then(|t| t.metadata.as_ref())
                .and_then(|m| m.labels.as_ref())
                .and_then(|l| l.get(labels::REVISION))
                .map(String::as_str);
            revision.is_some() && template_revision == revision
        })
        .filter(|rs| rs.metadata.deletion_timestamp.is_none())
}

/// Why the ReplicaSet of `revision` cannot create its pods (its
/// `ReplicaFailure` condition, set by the ReplicaSet controller when the
/// apiserver refuses them: Pod Security admission, a ResourceQuota…).
fn replica_failure(
    dep: &Deployment,
    replica_sets: &[ReplicaSet],
    revision: Option<&str>,
) -> Option<String> {
    replica_sets_of(dep, replica_sets, revision).find_map(|rs| {
        let c = rs
            .status
            .as_ref()?
            .conditions
            .as_deref()?
            .iter()
            .find(|c| {
                c.type_.as_deref() == Some("ReplicaFailure") && c.status.as_deref() == Some("True")
            })?;
        Some(format!(
            "ReplicaSet {} cannot create pods (ReplicaFailure, {}): {}",
            rs.metadata.name.as_deref().unwrap_or("?"),
            c.reason.as_deref().unwrap_or("no reason"),
            c.message.as_deref().unwrap_or_default()
        ))
    })
}

fn replica_set_available(
    dep: &Deployment,
    replica_sets: &[ReplicaSet],
    revision: Option<&str>,
    wanted: i32,
) -> u32 {
    replica_sets_of(dep, replica_sets, revision)
        .filter(|rs| rs.spec.replicas == Some(wanted))
        .filter_map(|rs| {
            let st = rs.status.as_ref()?;
            (st.observed_generation.unwrap_or(0) >= rs.metadata.generation.unwrap_or(i64::MAX))
                .then(|| st.available_replicas.unwrap_or(0).clamp(0, wanted) as u32)
        })
        .max()
        .unwrap_or(0)
}

/// What the release engine needs to know of a color's Deployment and pods.
///
/// `live`: the color takes (or is being switched to take) production
/// traffic. Before a switch a replica counts only when the controllers'
/// status and the pods agree, so nothing is switched on a half-seen state.
/// The controllers' status is the Deployment's (once its controller has
/// seen teal's latest spec), or that of the ReplicaSet of the current
/// revision at teal's size (`replica_sets`, the color's): the Deployment's
/// counts and observedGeneration come with a status update that, under a
/// burst of releases, follows the ReplicaSet's by seconds. Once live, the pods alone
/// count, and a momentary 0 in the aggregated counts must not read as the
/// live color failing.
pub fn color_status(
    color: Color,
    dep: Option<&Deployment>,
    replica_sets: &[ReplicaSet],
    pods: &[Pod],
    live: bool,
) -> ColorStatus {
    let Some(dep) = dep else {
        return ColorStatus {
            color,
            revision: None,
            ready_replicas: 0,
            failure: None,
        };
    };
    let revision = dep
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(labels::REVISION))
        .cloned();
    let wanted = dep.spec.replicas.unwrap_or(1);
    let st = dep.status.clone().unwrap_or_default();
    let current = st.observed_generation.unwrap_or(0) >= dep.metadata.generation.unwrap_or(0);
    // Only replicas of the current template count, and only once the
    // Deployment controller has seen the current spec.
    let of_deployment = if current && wanted > 0 {
        st.updated_replicas
            .unwrap_or(0)
            .min(st.available_replicas.unwrap_or(0))
            .max(0) as u32
    } else {
        0
    };
    // The ReplicaSet's count needs no such check when the Deployment
    // controller is at most teal's latest write behind: the ReplicaSet of
    // teal's revision then only counts once scaled to teal's size, with its
    // status the ReplicaSet controller's for that scale. (The Deployment's
    // observedGeneration comes with its status update, the one that lags
    // under a burst.) Two or more writes behind, the ReplicaSet may be at
    // teal's size from before a write not acted on yet (a scale to zero and
    // back while the controller was busy): its pods would be deleted right
    // after, so only the Deployment's own counts, once current, say ready.
    let unseen_writes = dep.metadata.generation.unwrap_or(0) - st.observed_generation.unwrap_or(0);
    let of_replica_set = if wanted > 0 && unseen_writes <= 1 {
        replica_set_available(dep, replica_sets, revision.as_deref(), wanted)
    } else {
        0
    };
    let ready = of_deployment.max(of_replica_set);
    // Pods are the ground truth: a Deployment's counts can still include
    // pods that are being deleted right after a scale-down.
    let of_revision = |p: &&Pod| {
        p.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(labels::REVISION))
            == revision.as_ref()
    };
    let pods_ready = pods
        .iter()
        .filter(of_revision)
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .count() as u32;
    let ready = if live && wanted > 0 {
        pods_ready
    } else {
        ready.min(pods_ready)
    };
    let failure = pods
        .iter()
        .filter(|p| {
            p.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(labels::REVISION))
                == revision.as_ref()
        })
        .find_map(|p| {
            let statuses = p.status.as_ref()?.container_statuses.as_deref()?;
            statuses.iter().find_map(|cs| {
                let waiting = cs
                    .state
                    .as_ref()
                    .and_then(|s| s.waiting.as_ref())
                    .and_then(|w| w.reason.clone());
                let looping = waiting.as_deref() == Some("CrashLoopBackOff");
                (looping || cs.restart_count >= CRASH_RESTARTS).then(|| {
                    format!(
                        "pod {} container {} is crash-looping ({} restarts{})",
                        p.metadata.name.as_deref().unwrap_or("?"),
                        cs.name,
                        cs.restart_count,
                        waiting.map(|w| format!(", {w}")).unwrap_or_default()
                    )
                })
            })
        })
        .or_else(|| replica_failure(dep, replica_sets, revision.as_deref()));
    ColorStatus {
        color,
        revision,
        ready_replicas: ready,
        failure,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, PodSpec};
    use serde_json::json;

    fn route(subset: &str) -> serde_json::Value {
        json!({
            "metadata": {"name": "shop", "labels": {"teal.dev/bluegreen": "shop"},
                         "ownerReferences": [{"kind": "BlueGreen", "name": "shop", "uid": "u"}]},
            "spec": {"hosts": ["shop"], "http": [{"name": "teal-active", "route": [{"destination": {"host": "shop", "subset": subset}}]}]},
        })
    }

    #[test]
    fn a_route_holds_only_what_teal_writes_exactly() {
        let wanted = route("blue");
        let mut current = route("blue");
        current["metadata"]["resourceVersion"] = "7".into();
        current["metadata"]["labels"]["team"] = "web".into();
        current["metadata"]["ownerReferences"]
            .as_array_mut()
            .unwrap()
            .push(json!({"kind": "Other", "name": "x", "uid": "v"}));
        assert!(holds(&current, &wanted, true), "metadata may hold more");

        assert!(!holds(&route("green"), &wanted, true), "a changed route");
        let mut extra = route("blue");
        extra["spec"]["http"][0]["timeout"] = "1s".into();
        assert!(!holds(&extra, &wanted, true), "a field teal does not write");
        let mut stale = route("blue");
        stale["spec"]["gateways"] = json!(["mesh"]);
        assert!(
            !holds(&stale, &wanted, true),
            "a field teal no longer writes"
        );
        let mut unlabelled = route("blue");
        unlabelled["metadata"]["labels"] = json!({});
        assert!(!holds(&unlabelled, &wanted, true), "teal's label removed");
        let mut orphan = route("blue");
        orphan["metadata"]["ownerReferences"] = json!([]);
        assert!(!holds(&orphan, &wanted, true), "teal's owner removed");
        assert!(!holds(&serde_json::Value::Null, &wanted, true), "no object");
    }

    #[test]
    fn a_defaulted_object_holds_teal_s_values_and_list_lengths() {
        let wanted = json!({"metadata": {"name": "r"}, "spec": {"replicas": 2, "template": {"spec": {
            "containers": [{"name": "router", "args": ["a", "b"], "ports": [{"containerPort": 8080}]}]}}}});
        let mut current = wanted.clone();
        current["spec"]["strategy"] = json!({"type": "RollingUpdate"});
        current["spec"]["template"]["spec"]["containers"][0]["ports"][0]["protocol"] = "TCP".into();
        assert!(holds(&current, &wanted, false), "defaults added");
        assert!(!holds(&current, &wanted, true));
        let mut scaled = current.clone();
        scaled["spec"]["replicas"] = 5.into();
        assert!(!holds(&scaled, &wanted, false), "a changed value");
        let mut args = current.clone();
        args["spec"]["template"]["spec"]["containers"][0]["args"] = json!(["a", "b", "c"]);
        assert!(!holds(&args, &wanted, false), "a longer list");
        let mut sidecar = current;
        sidecar["spec"]["template"]["spec"]["containers"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "proxy"}));
        assert!(!holds(&sidecar, &wanted, false), "another container");
    }

    fn template(image: &str) -> PodTemplateSpec {
        PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some(BTreeMap::from([("app".to_string(), "shop".to_string())])),
                ..Default::default()
            }),
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "app".into(),
                    image: Some(image.into()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
        }
    }

    fn ready_pod(name: &str, revision: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": {labels::REVISION: revision}},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]},
        }))
        .unwrap()
    }

    #[test]
    fn a_live_color_counts_its_ready_pods_while_the_deployment_status_lags() {
        // The Deployment controller has seen the spec but still reports no
        // available replica; the three pods of the revision are Ready.
        let dep: Deployment = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "shop-green", "generation": 3,
                         "annotations": {labels::REVISION: "v2"}},
            "spec": {"replicas": 3, "selector": {}, "template": {}},
            "status": {"observedGeneration": 3},
        }))
        .unwrap();
        let pods: Vec<Pod> = ["a", "b", "c"].iter().map(|n| ready_pod(n, "v2")).collect();
        let idle = color_status(Color::Green, Some(&dep), &[], &pods, false);
        assert_eq!(idle.ready_replicas, 0, "before a switch both must agree");
        let live = color_status(Color::Green, Some(&dep), &[], &pods, true);
        assert_eq!(live.ready_replicas, 3);
        assert_eq!(live.revision.as_deref(), Some("v2"));
        // Pods of another revision never count.
        let old: Vec<Pod> = ["a", "b", "c"].iter().map(|n| ready_pod(n, "v1")).collect();
        assert_eq!(
            color_status(Color::Green, Some(&dep), &[], &old, true).ready_replicas,
            0
        );
    }

    fn replica_set(
        revision: &str,
        replicas: i32,
        generation: i64,
        observed: i64,
        available: i32,
    ) -> ReplicaSet {
        serde_json::from_value(json!({
            "metadata": {"name": format!("shop-green-{revision}"), "generation": generation,
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment",
                                              "name": "shop-green", "uid": "dep-uid", "controller": true}]},
            "spec": {"replicas": replicas, "selector": {},
                     "template": {"metadata": {"labels": {labels::REVISION: revision}}}},
            "status": {"replicas": replicas, "observedGeneration": observed,
                       "availableReplicas": available},
        }))
        .unwrap()
    }

    #[test]
    fn an_idle_color_is_ready_once_its_replica_set_and_pods_agree() {
        // The Deployment controller has seen teal's spec (it scaled the
        // ReplicaSet) but not yet aggregated the ReplicaSet's status.
        let dep: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "shop-green", "uid": "dep-uid", "generation": 4,
                         "annotations": {labels::REVISION: "v2"}},
            "spec": {"replicas": 3, "selector": {}, "template": {}},
            "status": {"observedGeneration": 4, "updatedReplicas": 3, "availableReplicas": 0},
        }))
        .unwrap();
        let pods: Vec<Pod> = ["a", "b", "c"].iter().map(|n| ready_pod(n, "v2")).collect();
        let ready = |rss: &[ReplicaSet], pods: &[Pod]| {
            color_status(Color::Green, Some(&dep), rss, pods, false).ready_replicas
        };
        assert_eq!(ready(&[], &pods), 0, "nothing says ready but the pods");
        assert_eq!(ready(&[replica_set("v2", 3, 7, 7, 3)], &pods), 3);
        // The pods must agree.
        assert_eq!(ready(&[replica_set("v2", 3, 7, 7, 3)], &pods[..2]), 2);
        // A ReplicaSet status not written for its latest scale (an earlier
        // incarnation, before a scale to zero and back) does not count.
        assert_eq!(ready(&[replica_set("v2", 3, 7, 6, 3)], &pods), 0);
        // Nor one of another revision, one not at full size, or one owned
        // by another Deployment.
        assert_eq!(ready(&[replica_set("v1", 3, 7, 7, 3)], &pods), 0);
        assert_eq!(ready(&[replica_set("v2", 2, 7, 7, 2)], &pods), 0);
        let mut foreign = replica_set("v2", 3, 7, 7, 3);
        foreign.metadata.owner_references.as_mut().unwrap()[0].uid = "other".into();
        assert_eq!(ready(&[foreign], &pods), 0);
        // The Deployment's status may lag (observedGeneration included):
        // the ReplicaSet at teal's size still counts; the Deployment's own
        // counts do not.
        let mut stale = dep.clone();
        let st = stale.status.as_mut().unwrap();
        st.observed_generation = Some(3);
        st.available_replicas = Some(3);
        let ready_stale = |rss: &[ReplicaSet]| {
            color_status(Color::Green, Some(&stale), rss, &pods, false).ready_replicas
        };
        assert_eq!(ready_stale(&[]), 0);
        assert_eq!(ready_stale(&[replica_set("v2", 3, 7, 7, 3)]), 3);
        assert_eq!(ready_stale(&[replica_set("v2", 1, 7, 7, 1)]), 0);
        // Two writes behind (scaled to zero and back to 3 before the
        // Deployment controller acted on either): the ReplicaSet still at 3
        // with its pods Ready is the incarnation about to go away.
        st_of(&mut stale).observed_generation = Some(2);
        let ready_behind = |rss: &[ReplicaSet]| {
            color_status(Color::Green, Some(&stale), rss, &pods, false).ready_replicas
        };
        assert_eq!(ready_behind(&[replica_set("v2", 3, 7, 7, 3)]), 0);
        // Once current, the Deployment's counts say ready again.
        let mut current = stale.clone();
        let st = st_of(&mut current);
        st.observed_generation = Some(4);
        st.updated_replicas = Some(3);
        st.available_replicas = Some(3);
        assert_eq!(
            color_status(Color::Green, Some(&current), &[], &pods, false).ready_replicas,
            3
        );
    }

    fn st_of(dep: &mut Deployment) -> &mut k8s_openapi::api::apps::v1::DeploymentStatus {
        dep.status.as_mut().unwrap()
    }

    #[test]
    fn revision_is_stable_and_changes_with_the_template() {
        let a = revision_of(&template("shop:1"));
        assert_eq!(a, revision_of(&template("shop:1")));
        assert_ne!(a, revision_of(&template("shop:2")));
        assert_eq!(a.len(), 10);
    }
}
