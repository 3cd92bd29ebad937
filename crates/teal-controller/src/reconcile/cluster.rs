//! One BlueGreen's view of the cluster: its objects read from the watch
//! caches, and the writes teal makes to them.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{PodTemplateSpec, Service};
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event as KubeEvent, EventType};
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use teal_api::BlueGreen;
use teal_api::bluegreen::labels;
use teal_core::Color;

use super::status::color_index;
use super::{Context, Error, MANAGER};
use crate::objects::{self, revision_of};
use crate::routers;

pub struct Cluster<'a> {
    pub bg: &'a BlueGreen,
    pub name: String,
    pub ns: String,
    pub deployments: Api<Deployment>,
    pub services: Api<Service>,
    pub bluegreens: Api<BlueGreen>,
    pub ctx: &'a Context,
}

impl<'a> Cluster<'a> {
    pub fn new(bg: &'a BlueGreen, ctx: &'a Context) -> Cluster<'a> {
        let ns = bg.namespace().unwrap_or_default();
        Cluster {
            bg,
            name: bg.name_any(),
            deployments: Api::namespaced(ctx.client.clone(), &ns),
            services: Api::namespaced(ctx.client.clone(), &ns),
            bluegreens: Api::namespaced(ctx.client.clone(), &ns),
            ns,
            ctx,
        }
    }

    /// `namespace/name`, for logs.
    pub fn id(&self) -> String {
        format!("{}/{}", self.ns, self.name)
    }

    /// Publishes an Event about the BlueGreen; a failure is only logged.
    pub async fn event(&self, warning: bool, reason: &str, note: String) {
        self.event_of(warning, reason, note, "Release").await
    }

    pub async fn event_of(&self, warning: bool, reason: &str, note: String, action: &str) {
        let ev = KubeEvent {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.into(),
            note: Some(note.chars().take(1000).collect()),
            action: action.into(),
            secondary: None,
        };
        if let Err(e) = self
            .ctx
            .recorder
            .publish(&ev, &self.bg.object_ref(&()))
            .await
        {
            tracing::warn!("cannot publish event: {e}");
        }
    }

    /// From the watch cache: no request to the apiserver.
    pub fn color_deployment(&self, color: Color) -> Option<Deployment> {
        let name = objects::color_deployment_name(&self.name, color);
        self.ctx.cache.deployment(&self.ns, &name)
    }

    /// The revision a color's Deployment runs (its annotation).
    pub fn running_revision(&self, color: Color) -> Option<String> {
        self.color_deployment(color).and_then(|d| {
            d.metadata
                .annotations
                .and_then(|mut a| a.remove(labels::REVISION))
        })
    }

    pub async fn apply_deployment(&self, d: &Deployment) -> Result<(), Error> {
        server_side_apply(&self.deployments, d).await
    }

    /// Sets a color Deployment's replicas; one that is gone is left so.
    pub async fn scale(&self, color: Color, replicas: i32) -> Result<(), Error> {
        let name = objects::color_deployment_name(&self.name, color);
        let patch = serde_json::json!({"spec": {"replicas": replicas}});
        match self
            .deployments
            .patch(&name, &super::patch_params(), &Patch::Merge(patch))
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Sets the workload's replicas.
    pub async fn scale_workload(&self, replicas: i32) -> Result<(), Error> {
        let patch = serde_json::json!({"spec": {"replicas": replicas}});
        self.deployments
            .patch(
                &self.bg.spec.workload_ref.name,
                &super::patch_params(),
                &Patch::Merge(patch),
            )
            .await?;
        Ok(())
    }

    /// The ports of each color's Services: from the template the color's
    /// Deployment runs (`deployed` by this reconcile, else the cache's), or
    /// the workload's `template` for a color with no Deployment yet. After
    /// a rollback the live color runs an older revision than the workload's
    /// template: its Services keep that revision's ports.
    pub fn color_ports(
        &self,
        template: &PodTemplateSpec,
        deployed: &[Option<PodTemplateSpec>; 2],
    ) -> routers::ColorPorts {
        let mut ports = [Vec::new(), Vec::new()];
        for c in Color::ALL {
            let running = match &deployed[color_index(c)] {
                Some(t) => Some(t.clone()),
                None => self.color_deployment(c).map(|d| d.spec.template),
            };
            ports[color_index(c)] =
                objects::service_ports(self.bg, Some(running.as_ref().unwrap_or(template)));
        }
        let [blue, green] = ports;
        routers::ColorPorts { blue, green }
    }

    /// The pod template of `revision`: the workload's if it is current,
    /// else the one a color's Deployment still runs, read from the
    /// apiserver (the cache keeps color Deployments without it: see
    /// `cache::keep::color_deployment`).
    pub async fn template_of(
        &self,
        revision: &str,
        workload: &Deployment,
    ) -> Result<Option<PodTemplateSpec>, Error> {
        let t = &workload.spec.template;
        if revision_of(t) == revision {
            return Ok(Some(t.clone()));
        }
        for c in Color::ALL {
            if self.running_revision(c).as_deref() != Some(revision) {
                continue;
            }
            let name = objects::color_deployment_name(&self.name, c);
            let Some(d) = self.deployments.get_opt(&name).await? else {
                continue;
            };
            let (runs, t) = objects::color_template(d);
            if runs.as_deref() == Some(revision) {
                return Ok(Some(t));
            }
        }
        Ok(None)
    }
}

/// Server-side apply of a whole object with teal's field manager (taking
/// over fields another manager set, as the owner of these objects).
async fn server_side_apply<K>(api: &Api<K>, obj: &K) -> Result<(), Error>
where
    K: Resource<DynamicType = ()>
        + Clone
        + Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    let mut body = serde_json::to_value(obj).map_err(Error::serialize("a Deployment"))?;
    body["apiVersion"] = K::api_version(&()).into();
    body["kind"] = K::kind(&()).into();
    if let Some(m) = body.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        m.remove("managedFields");
    }
    api.patch(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(body),
    )
    .await?;
    Ok(())
}
