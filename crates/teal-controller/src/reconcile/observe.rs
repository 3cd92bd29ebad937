//! Observe: everything a reconcile decides on, read before anything is
//! decided — the workload, both colors' objects, whether teal's Services
//! are its own, the engine state kept in status, the operator's command,
//! and the answers of work running in the background (analysis checks,
//! hook rounds). Reads come from the watch caches; the apiserver is asked
//! only for what a cache does not hold (yet).

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use teal_api::BlueGreenStatus;
use teal_api::bluegreen::{RouterKind, annotations};
use teal_core::Color;
use teal_core::release::{Input, Stage};

use super::cluster::Cluster;
use super::status::Blocked;
use super::{EngineState, Error, restore_engine};
use crate::checks::Outcome;
use crate::objects::{self, revision_of};

/// A color's objects, as the caches hold them.
#[derive(Debug, Default, Clone)]
pub struct ColorObjects {
    pub deployment: Option<Deployment>,
    pub replica_sets: Vec<ReplicaSet>,
    pub pods: Vec<Pod>,
}

/// What one reconcile saw.
#[derive(Debug, Clone)]
pub struct Observation {
    pub workload: Deployment,
    /// The workload's revision (hash of its pod template).
    pub revision: String,
    /// The engine state kept in status; `None` before the first adoption.
    pub saved: Option<EngineState>,
    /// Blue's and green's objects.
    pub colors: [ColorObjects; 2],
    /// The revision each color's Deployment runs.
    pub running: [Option<String>; 2],
    /// The command annotation's value.
    pub command: Option<String>,
    /// A finished analysis check of the stage under way.
    pub check: Option<Outcome>,
    /// A finished round of hooks the release waits on.
    pub hooks: Option<Input>,
    /// The autoscaler condition (see `crate::autoscaling`).
    pub autoscaler: Option<Option<(bool, String, String)>>,
    /// The MetricTemplates condition (see `crate::templates`).
    pub templates: Option<(bool, String)>,
}

/// What a reconcile can go on with.
#[derive(Debug)]
pub enum Seen {
    Ready(Box<Observation>),
    /// It cannot: the status says why.
    Blocked(Blocked),
    /// The cached BlueGreen is older than this process's last write of it:
    /// wait for the watch to catch up.
    Stale,
}

/// Reads what the reconcile of `c.bg` decides on, or why it cannot go on.
pub async fn observe(c: &Cluster<'_>, old: &BlueGreenStatus) -> Result<Seen, Error> {
    let bg = c.bg;
    let ns = &c.ns;
    let workload_name = &bg.spec.workload_ref.name;
    // The workload: from the watch cache; read from the apiserver only
    // when the cache does not have it (yet).
    let workload = match c.ctx.cache.workload(ns, workload_name) {
        Some(w) => Some(w),
        None => c.deployments.get_opt(workload_name).await?,
    };
    let Some(workload) = workload else {
        return Ok(Seen::Blocked(Blocked::WorkloadNotFound(format!(
            "Deployment {ns}/{workload_name} (spec.workloadRef) does not exist"
        ))));
    };
    // Services must be ours (or not exist yet). The cache holds only
    // teal-labelled Services: one it lacks is read from the apiserver.
    // The preview Service is written by router type `service` only.
    let mut ours = vec![objects::service_name(bg)];
    if bg.spec.router.kind == RouterKind::Service {
        ours.push(objects::preview_service_name(bg));
    }
    for svc_name in ours {
        let found = match c.ctx.cache.service(ns, &svc_name) {
            Some(s) => Some(s),
            None => c.services.get_opt(&svc_name).await?,
        };
        if let Some(s) = found
            && !objects::owned_by(&s.metadata, bg)
        {
            return Ok(Seen::Blocked(Blocked::ServiceConflict(format!(
                "Service {ns}/{svc_name} exists and is not managed by this BlueGreen: delete it, or set spec.service.name to another name"
            ))));
        }
    }
    // A state that is there but cannot be read is no adoption: adopting
    // would apply the workload's template to the live color without a
    // release.
    let saved = match restore_engine(old.engine.as_ref()) {
        Ok(s) => s,
        Err(msg) => return Ok(Seen::Blocked(Blocked::EngineUnreadable(msg))),
    };
    let uid = bg.uid().unwrap_or_default();
    if c.ctx
        .written
        .is_stale(&uid, saved.as_ref().map_or(0, |s| s.seq))
    {
        return Ok(Seen::Stale);
    }
    let colors = Color::ALL.map(|color| {
        let deployment = c.color_deployment(color);
        if deployment.is_none() {
            return ColorObjects::default();
        }
        ColorObjects {
            replica_sets: c.ctx.cache.replica_sets(ns, &c.name, color),
            pods: c.ctx.cache.pods(ns, &c.name, color),
            deployment,
        }
    });
    let running = Color::ALL.map(|color| c.running_revision(color));
    // Work in the background: a check of the analysis stage under way, a
    // round of hooks the release waits on (started again if none is).
    let (check, hooks) = match &saved {
        Some(s) => (
            s.analysis.as_ref().and_then(|a| {
                let spec = match a.stage {
                    Stage::PrePromotion => &bg.spec.analysis.pre_promotion,
                    Stage::PostPromotion => &bg.spec.analysis.post_promotion,
                };
                spec.as_ref()?;
                crate::checks::take(bg, &s.machine, a.stage, &a.revision)
            }),
            crate::hooks::due(bg, &s.machine),
        ),
        None => (None, None),
    };
    Ok(Seen::Ready(Box::new(Observation {
        revision: revision_of(&workload.spec.template),
        workload,
        saved,
        colors,
        running,
        command: bg.annotations().get(annotations::COMMAND).cloned(),
        check,
        hooks,
        autoscaler: crate::autoscaling::autoscaler_condition(bg, &c.ctx.cache),
        templates: crate::templates::condition(&c.ctx.client, bg).await,
    })))
}
