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
/// whose scale reads 0. Written with teal's field manager, once.
pub async fn record_replicas(api: &Api<BlueGreen>, bg: &BlueGreen, replicas: u32) {
    // A larger spec.preview.replicas would have the apiserver refuse it.
    let preview_larger = bg.spec.preview.replicas.is_some_and(|p| p > replicas);
    if bg.spec.replicas.is_some() || preview_larger {
        return;
    }
    let patch = serde_json::json!({"spec": {"replicas": replicas}});
    if let Err(e) = api
        .patch(
            &bg.name_any(),
            &crate::reconcile::patch_params(),
            &Patch::Merge(patch),
        )
        .await
    {
        // The BlueGreen still works at the adopted size; only its scale
        // subresource reads 0 until spec.replicas is set.
        tracing::warn!(
            bluegreen = %format!("{}/{}", bg.namespace().unwrap_or_default(), bg.name_any()),
            "cannot record spec.replicas {replicas}: {e}"
        );
    }
}
