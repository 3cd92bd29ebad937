//! The BlueGreen's `scale` subresource and autoscalers.
//!
//! `spec.replicas` is the live color's size: `kubectl scale`, a
//! HorizontalPodAutoscaler or KEDA set it through the `scale` subresource,
//! which reads `status.replicas` (the live color's Deployment) and
//! `status.selector` (the live color's pods only, so an autoscaler measures
//! the pods that take production traffic). The release engine resizes the
//! live color when it changes and cuts over at the size asked for then.

use kube::api::Patch;
use kube::{Api, ResourceExt};
use teal_api::bluegreen::labels;
use teal_api::{BlueGreen, BlueGreenStatus};
use teal_core::release::Machine;

use crate::cache::Cache;
use crate::objects;

/// The `scale` subresource's status: the live color's replicas and a
/// selector of its pods; both unset until a color serves.
pub fn scale_status(
    bg: &BlueGreen,
    machine: &Machine,
    cache: &Cache,
    status: &mut BlueGreenStatus,
) {
    let name = bg.name_any();
    let ns = bg.namespace().unwrap_or_default();
    let live = machine.routing.map(|r| r.active);
    status.selector = live.map(|c| format!("{}={name},{}={c}", labels::BLUEGREEN, labels::COLOR));
    status.replicas = live.map(|c| {
        cache
            .deployment(&ns, &objects::color_deployment_name(&name, c))
            .and_then(|d| d.status)
            .and_then(|s| s.replicas)
            .unwrap_or(0)
    });
}

/// What the status message adds while the live color grows or shrinks to
/// a new size.
pub fn resizing_message(machine: &Machine) -> Option<String> {
    let (color, ready, to) = machine.resizing()?;
    Some(format!("scaling {color} to {to} replicas ({ready} ready)"))
}

/// Writes the live color's size into an unset `spec.replicas`, so that the
/// `scale` subresource serves it: an autoscaler does not act on a target
/// whose scale reads 0. Written with teal's field manager, once, and only
/// over the version of `bg` given: a size set since (`kubectl scale`, an
/// autoscaler) is never overwritten by this one.
pub async fn record_replicas(api: &Api<BlueGreen>, bg: &BlueGreen, replicas: u32) {
    // A larger spec.preview.replicas would have the apiserver refuse it.
    let preview_larger = bg.spec.preview.replicas.is_some_and(|p| p > replicas);
    if bg.spec.replicas.is_some() || preview_larger {
        return;
    }
    let patch = serde_json::json!({
        "metadata": {"resourceVersion": bg.resource_version()},
        "spec": {"replicas": replicas},
    });
    let id = format!("{}/{}", bg.namespace().unwrap_or_default(), bg.name_any());
    match api
        .patch(
            &bg.name_any(),
            &crate::reconcile::patch_params(),
            &Patch::Merge(patch),
        )
        .await
    {
        Ok(_) => {}
        // Changed since: the next reconcile sees whether it is still unset.
        Err(kube::Error::Api(e)) if e.code == 409 => {
            tracing::debug!(bluegreen = %id, "spec.replicas not recorded: the BlueGreen changed");
        }
        // The BlueGreen still works at the adopted size; only its scale
        // subresource reads 0 until spec.replicas is set.
        Err(e) => tracing::warn!(bluegreen = %id, "cannot record spec.replicas {replicas}: {e}"),
    }
}

/// The condition type that tells how autoscalers relate to a BlueGreen.
pub const CONDITION: &str = "Autoscaling";
/// Its reason while a HorizontalPodAutoscaler targets the workload.
pub const TARGETS_WORKLOAD: &str = "HPATargetsWorkload";
/// Its reason while one targets the BlueGreen (and none the workload).
pub const TARGETS_BLUEGREEN: &str = "HPATargetsBlueGreen";

/// What a HorizontalPodAutoscaler scales (`spec.scaleTargetRef`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub api_version: String,
    pub kind: String,
    pub name: String,
}

/// How an autoscaler relates to a BlueGreen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Concern {
    /// It targets the workload, which teal keeps at 0 replicas.
    Workload,
    /// It targets the BlueGreen's scale subresource.
    BlueGreen,
}

/// The target of a HorizontalPodAutoscaler (any version: `scaleTargetRef`
/// is the same in autoscaling/v1 and v2).
pub fn target(hpa: &kube::core::DynamicObject) -> Option<Target> {
    let r = hpa.data.get("spec")?.get("scaleTargetRef")?;
    let field = |k: &str| {
        r.get(k)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string()
    };
    Some(Target {
        api_version: field("apiVersion"),
        kind: field("kind"),
        name: field("name"),
    })
}

/// Whether an autoscaler of `target` (in the BlueGreen's namespace) scales
/// the BlueGreen or its workload.
pub fn concerns(bg: &BlueGreen, target: Option<&Target>) -> Option<Concern> {
    let t = target?;
    let group = t.api_version.split_once('/').map_or("", |(g, _)| g);
    if t.kind == "Deployment" && group == "apps" && t.name == bg.spec.workload_ref.name {
        return Some(Concern::Workload);
    }
    if t.kind == "BlueGreen" && group == "teal.dev" && Some(&t.name) == bg.metadata.name.as_ref() {
        return Some(Concern::BlueGreen);
    }
    None
}

/// The `Autoscaling` condition from the HorizontalPodAutoscalers in the
/// BlueGreen's namespace (watched from the first call on): `False` while one
/// targets the workload — it cannot act on a Deployment teal keeps at 0
/// replicas, and the message says how to point it at the BlueGreen —,
/// `True` while one targets the BlueGreen, none when no autoscaler concerns
/// it. `None` while the autoscalers are not cached yet: keep what status
/// says.
pub fn autoscaler_condition(
    bg: &BlueGreen,
    cache: &Cache,
) -> Option<Option<(bool, String, String)>> {
    cache.watch(crate::cache::Extra::Autoscalers);
    let ns = bg.namespace().unwrap_or_default();
    let hpas = cache.extra_in(crate::cache::Extra::Autoscalers, &ns)?;
    let mut on_workload = Vec::new();
    let mut on_bluegreen = Vec::new();
    for h in &hpas {
        let name = h.name_any();
        match concerns(bg, target(h).as_ref()) {
            Some(Concern::Workload) => on_workload.push(name),
            Some(Concern::BlueGreen) => on_bluegreen.push(name),
            None => {}
        }
    }
    on_workload.sort();
    on_bluegreen.sort();
    let bg_name = bg.name_any();
    let workload = &bg.spec.workload_ref.name;
    if !on_workload.is_empty() {
        let message = format!(
            "HorizontalPodAutoscaler {} targets Deployment {workload}, which teal keeps at 0 replicas: it scales nothing. Set its scaleTargetRef to {{apiVersion: teal.dev/v1alpha1, kind: BlueGreen, name: {bg_name}}} to autoscale the live color (see docs/kubernetes.md, Autoscaling)",
            on_workload.join(", ")
        );
        return Some(Some((false, TARGETS_WORKLOAD.into(), message)));
    }
    if !on_bluegreen.is_empty() {
        let message = format!(
            "HorizontalPodAutoscaler {} sets spec.replicas through the scale subresource",
            on_bluegreen.join(", ")
        );
        return Some(Some((true, TARGETS_BLUEGREEN.into(), message)));
    }
    Some(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bluegreen() -> BlueGreen {
        serde_json::from_value(json!({
            "apiVersion": "teal.dev/v1alpha1", "kind": "BlueGreen",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"workloadRef": {"kind": "Deployment", "name": "web-app"}}
        }))
        .unwrap()
    }

    fn hpa(api_version: &str, kind: &str, name: &str) -> kube::core::DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "h", "namespace": "shop"},
            "spec": {"scaleTargetRef": {"apiVersion": api_version, "kind": kind, "name": name},
                     "maxReplicas": 3}
        }))
        .unwrap()
    }

    #[test]
    fn an_autoscaler_concerns_a_bluegreen_through_its_workload_or_itself() {
        let bg = bluegreen();
        let of = |v, k, n| concerns(&bg, target(&hpa(v, k, n)).as_ref());
        assert_eq!(
            of("apps/v1", "Deployment", "web-app"),
            Some(Concern::Workload)
        );
        assert_eq!(
            of("teal.dev/v1alpha1", "BlueGreen", "web"),
            Some(Concern::BlueGreen)
        );
        assert_eq!(of("apps/v1", "Deployment", "web"), None);
        assert_eq!(of("apps/v1", "StatefulSet", "web-app"), None);
        assert_eq!(of("argoproj.io/v1alpha1", "Rollout", "web"), None);
        assert_eq!(of("teal.dev/v1alpha1", "BlueGreen", "other"), None);
        let no_target: kube::core::DynamicObject = serde_json::from_value(json!({
            "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "h"}, "spec": {}
        }))
        .unwrap();
        assert_eq!(concerns(&bg, target(&no_target).as_ref()), None);
    }
}
