//! On deletion of a BlueGreen: give the workload its replicas back, wait
//! until it is available, point the live Service at it and leave the
//! Service behind (the color Deployments go with the BlueGreen).

use std::sync::Arc;

use kube::api::Patch;
use kube::runtime::controller::Action as Requeue;
use teal_api::BlueGreen;
use teal_api::bluegreen::labels;

use super::cluster::Cluster;
use super::{Context, EngineState, Error, HandingBack, MANAGER};
use crate::objects::{self, revision_of};
use crate::routers;

pub async fn cleanup(bg: Arc<BlueGreen>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    let c = Cluster::new(&bg, &ctx);
    let workload_name = &bg.spec.workload_ref.name;
    let state = bg
        .status
        .as_ref()
        .and_then(|s| s.engine.clone())
        .and_then(|v| serde_json::from_value::<EngineState>(v).ok());
    let replicas = state
        .as_ref()
        .map(|s| s.machine.policy.replicas as i32)
        .or(bg.spec.replicas)
        .unwrap_or(1);
    let Some(workload) = c.deployments.get_opt(workload_name).await? else {
        return Ok(Requeue::await_change());
    };
    // Traffic goes back to what is live, not to a template teal rolled back
    // (or has not released yet): the workload gets the live revision's
    // template first.
    if let Some(live) = state
        .as_ref()
        .filter(|s| s.machine.routing.is_some())
        .map(|s| s.machine.active.revision.clone())
        && revision_of(&workload.spec.template) != live
        && let Some(template) = c.template_of(&live, &workload).await?
    {
        let mut restored = workload.clone();
        restored.spec.template = template;
        restored.metadata.managed_fields = None;
        let params = kube::api::PostParams {
            field_manager: Some(MANAGER.into()),
            ..Default::default()
        };
        c.deployments
            .replace(workload_name, &params, &restored)
            .await?;
        let note = format!(
            "BlueGreen deleted while {live} was live and Deployment {workload_name} named revision {}: its template was set back to {live}, so that traffic goes back to what was live; apply the newer template again to release it",
            revision_of(&workload.spec.template)
        );
        c.event(true, "LiveRevisionRestored", note).await;
        return Err(HandingBack::LiveRevisionRestored {
            revision: live,
            workload: workload_name.clone(),
        }
        .into());
    }
    if workload.spec.replicas != Some(replicas) {
        c.scale_workload(replicas).await?;
    }
    // Judge readiness on a fresh read, after the scale-up was accepted.
    let workload = c.deployments.get(workload_name).await?;
    let st = workload.status.clone().unwrap_or_default();
    let current = st.observed_generation.unwrap_or(0) >= workload.metadata.generation.unwrap_or(0);
    let serving = [
        st.updated_replicas,
        st.ready_replicas,
        st.available_replicas,
    ]
    .iter()
    .all(|n| n.unwrap_or(0) >= replicas);
    if !current || !serving {
        // Not yet: the finalizer stays until the workload serves again.
        return Err(HandingBack::WorkloadNotAvailable {
            workload: workload_name.clone(),
            replicas,
        }
        .into());
    }
    let svc_name = objects::service_name(&bg);
    if let Some(svc) = c.services.get_opt(&svc_name).await?
        && objects::owned_by(&svc.metadata, &bg)
    {
        let selector = workload
            .spec
            .selector
            .match_labels
            .clone()
            .unwrap_or_default();
        // A merge patch replaces the selector map only key by key: clear
        // teal's keys explicitly.
        let mut sel = serde_json::Map::new();
        for (k, v) in &selector {
            sel.insert(k.clone(), serde_json::Value::String(v.clone()));
        }
        sel.insert(labels::BLUEGREEN.into(), serde_json::Value::Null);
        sel.insert(labels::COLOR.into(), serde_json::Value::Null);
        let patch = serde_json::json!({
            "metadata": {"ownerReferences": null, "labels": {labels::BLUEGREEN: null}},
            "spec": {"selector": sel},
        });
        c.services
            .patch(&svc_name, &super::patch_params(), &Patch::Merge(patch))
            .await?;
    }
    let ports = objects::service_ports(&bg, Some(&workload.spec.template));
    routers::release(&ctx.client, &bg, &routers::ColorPorts::same(ports)).await?;
    let note = format!(
        "BlueGreen deleted: Deployment {workload_name} runs {replicas} replicas again and Service {svc_name} selects it"
    );
    c.event_of(false, "Released", note, "Cleanup").await;
    Ok(Requeue::await_change())
}
