//! The reconcile loop: observe the workload and both colors, feed the
//! release engine, carry out what it decides, record status.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::events::Recorder;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{PodTemplateSpec, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action as Requeue;
use kube::runtime::events::{Event as KubeEvent, EventType};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Api, Client, Resource, ResourceExt};
use serde::{Deserialize, Serialize};
use teal_api::bluegreen::{
    AnalysisStatus, CheckValues, MetricValue, ReleaseRecord, annotations, labels,
};
use teal_api::{BlueGreen, BlueGreenStatus};
use teal_core::Color;
use teal_core::analysis::Run;
use teal_core::release::{
    Action, Command, EventKind, Input, Machine, Millis, Policy, Stage, Verdict,
};

use crate::metrics::Metrics;
use crate::objects::{self, color_status, revision_of};
use crate::routers;

/// The field manager of teal's server-side applies.
pub const MANAGER: &str = "teal-controller";
/// The phase shown while a Service teal would write belongs to someone
/// else; the engine's own phase is shown again once the conflict is gone.
pub const CONFLICT_PHASE: &str = "Conflict";

/// The condition reason while `status.engine` cannot be read.
pub const ENGINE_UNREADABLE: &str = "EngineStateUnreadable";

/// The engine state stored in status: `None` when there is none (a first
/// adoption), an error naming the field when there is one this version
/// cannot read (written by a newer teal, or edited by hand). teal then
/// changes nothing for the BlueGreen: traffic stays where it is.
pub fn restore_engine(stored: Option<&serde_json::Value>) -> Result<Option<EngineState>, String> {
    let Some(v) = stored else {
        return Ok(None);
    };
    serde_json::from_value(v.clone()).map(Some).map_err(|e| {
        format!(
            "status.engine cannot be read ({e}): teal changes nothing for this BlueGreen and traffic stays where it is; run the teal version that wrote it, or see docs/kubernetes.md (Upgrades) for how to start over"
        )
    })
}

/// Parameters of teal's merge patches: named after teal's field manager,
/// so that a GitOps tool's server-side apply of a field teal changed (the
/// workload's `spec.replicas`) conflicts with `teal-controller`, not with
/// "unknown" (docs/kubernetes.md, GitOps).
pub fn patch_params() -> PatchParams {
    PatchParams {
        field_manager: Some(MANAGER.into()),
        ..PatchParams::default()
    }
}

/// Finalizer that restores the workload when a BlueGreen is deleted.
pub const FINALIZER: &str = "teal.dev/cleanup";
/// How often a BlueGreen with nothing in progress is reconciled when no
/// watch event wakes it.
pub const IDLE_RESYNC_MS: u64 = 300_000;

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Metrics,
    /// Pods and color Deployments, fed by watches.
    pub cache: crate::cache::Cache,
    /// What this process last wrote per BlueGreen (stale-read guard).
    pub written: crate::checkpoint::Written,
    /// The image of router type `teal`'s router pods.
    pub router_image: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("{0}")]
    State(String),
}

impl Error {
    pub fn metric_label(&self) -> &'static str {
        if self.is_stale_read() {
            return "conflict";
        }
        use kube::runtime::finalizer::Error as F;
        match self {
            Error::Kube(_) => "kube",
            Error::State(_) => "state",
            // What apply or cleanup returned, under the finalizer's wrapper.
            Error::Finalizer(f) => match f.as_ref() {
                F::ApplyFailed(e) | F::CleanupFailed(e) => e.metric_label(),
                _ => "finalizer",
            },
        }
    }

    /// Adding or removing the finalizer was refused because the BlueGreen
    /// read from the watch cache was older than the apiserver's (the patch
    /// tests the list it read: 422; or a stale resourceVersion: 409). The
    /// watch event with the newer object is on its way: retry soon, without
    /// a warning.
    pub fn is_stale_read(&self) -> bool {
        use kube::runtime::finalizer::Error as F;
        match self {
            Error::Finalizer(f) => matches!(
                f.as_ref(),
                F::AddFinalizer(kube::Error::Api(e)) | F::RemoveFinalizer(kube::Error::Api(e))
                    if e.code == 422 || e.code == 409
            ),
            _ => false,
        }
    }
}

/// The controller's durable state for one BlueGreen, kept in status.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EngineState {
    pub machine: Machine,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<RunningAnalysis>,
    /// Grows with every write of a changed state (see `checkpoint::Written`).
    #[serde(default)]
    pub seq: u64,
    /// The last operator command (annotation value) fed to the machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
}

/// An analysis stage in progress: checks run on reconciles as they fall due.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunningAnalysis {
    pub stage: Stage,
    pub color: Color,
    pub revision: String,
    pub run: Run,
    pub next_check: Millis,
}

fn now_ms() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0)
}

pub async fn reconcile(bg: Arc<BlueGreen>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    let ns = bg.namespace().unwrap_or_default();
    let api: Api<BlueGreen> = Api::namespaced(ctx.client.clone(), &ns);
    let started = std::time::Instant::now();
    let r = finalizer(&api, FINALIZER, bg, |event| async {
        match event {
            Finalizer::Apply(bg) => apply(bg, ctx.clone()).await,
            Finalizer::Cleanup(bg) => {
                let done = cleanup(bg.clone(), ctx.clone()).await;
                if done.is_ok() {
                    forget(&bg, &ctx);
                }
                done
            }
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    ctx.metrics.reconciled(started.elapsed());
    r
}

/// Drops everything this process keeps in memory for `bg` (it was
/// deleted): hook answers and rounds, its notifier with the URLs it read
/// from Secrets, an analysis check under way, its last write's sequence
/// number and its recent Events.
pub fn forget(bg: &BlueGreen, ctx: &Context) {
    let uid = bg.uid().unwrap_or_default();
    crate::hooks::forget(bg);
    crate::checks::forget(bg);
    ctx.recorder.forget(&uid);
    ctx.written.forget(&uid);
}

pub fn error_policy(_bg: Arc<BlueGreen>, error: &Error, ctx: Arc<Context>) -> Requeue {
    ctx.metrics.failed(error.metric_label());
    if error.is_stale_read() {
        tracing::debug!("reconcile read a stale BlueGreen, again in a moment: {error}");
        return Requeue::requeue(STALE_READ_RETRY);
    }
    tracing::warn!("reconcile failed: {error}");
    Requeue::requeue(Duration::from_secs(5))
}

/// After a finalizer write refused for a stale cached BlueGreen: long enough
/// for the watch event already under way, far shorter than the 5 s of other
/// errors.
const STALE_READ_RETRY: Duration = Duration::from_millis(500);

struct Cluster<'a> {
    bg: &'a BlueGreen,
    name: String,
    deployments: Api<Deployment>,
    services: Api<Service>,
    ns: String,
    ctx: &'a Context,
}

fn condition(
    type_: &str,
    ok: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
) -> Condition {
    Condition {
        type_: type_.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time: Time(k8s_openapi::jiff::Timestamp::now()),
    }
}

impl Cluster<'_> {
    async fn event(&self, warning: bool, reason: &str, note: String) {
        let ev = KubeEvent {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.into(),
            note: Some(note.chars().take(1000).collect()),
            action: "Release".into(),
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
    async fn color_deployment(&self, color: Color) -> Result<Option<Deployment>, Error> {
        let name = objects::color_deployment_name(&self.name, color);
        Ok(self.ctx.cache.deployment(&self.ns, &name))
    }

    async fn observe(
        &self,
        color: Color,
        live: bool,
    ) -> Result<teal_core::release::ColorStatus, Error> {
        let dep = self.color_deployment(color).await?;
        let (replica_sets, pods) = if dep.is_some() {
            (
                self.ctx.cache.replica_sets(&self.ns, &self.name, color),
                self.ctx.cache.pods(&self.ns, &self.name, color),
            )
        } else {
            (Vec::new(), Vec::new())
        };
        Ok(color_status(
            color,
            dep.as_ref(),
            &replica_sets,
            &pods,
            live,
        ))
    }

    async fn apply_deployment(&self, d: &Deployment) -> Result<(), Error> {
        server_side_apply(&self.deployments, d).await
    }

    async fn scale(&self, color: Color, replicas: i32) -> Result<(), Error> {
        let name = objects::color_deployment_name(&self.name, color);
        let patch = serde_json::json!({"spec": {"replicas": replicas}});
        match self
            .deployments
            .patch(
                &name,
                &crate::reconcile::patch_params(),
                &Patch::Merge(patch),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// The ports of each color's Services: from the template the color's
    /// Deployment runs (`deployed` by this reconcile, else the cache's), or
    /// the workload's `template` for a color with no Deployment yet. After
    /// a rollback the live color runs an older revision than the workload's
    /// template: its Services keep that revision's ports.
    async fn color_ports(
        &self,
        template: &PodTemplateSpec,
        deployed: &[Option<PodTemplateSpec>; 2],
    ) -> Result<routers::ColorPorts, Error> {
        let mut ports = [Vec::new(), Vec::new()];
        for c in Color::ALL {
            let running = match &deployed[color_index(c)] {
                Some(t) => Some(t.clone()),
                None => self.color_deployment(c).await?.map(|d| d.spec.template),
            };
            ports[color_index(c)] =
                objects::service_ports(self.bg, Some(running.as_ref().unwrap_or(template)));
        }
        let [blue, green] = ports;
        Ok(routers::ColorPorts { blue, green })
    }

    /// The pod template of `revision`: the workload's if it is current,
    /// else the one still kept in a color's Deployment.
    async fn template_of(
        &self,
        revision: &str,
        workload: &Deployment,
    ) -> Result<Option<PodTemplateSpec>, Error> {
        let t = &workload.spec.template;
        if revision_of(t) == revision {
            return Ok(Some(t.clone()));
        }
        for c in Color::ALL {
            if let Some(d) = self.color_deployment(c).await?
                && d.metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(labels::REVISION))
                    .map(String::as_str)
                    == Some(revision)
            {
                let mut t = d.spec.template;
                if let Some(l) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
                    l.remove(labels::BLUEGREEN);
                    l.remove(labels::COLOR);
                    l.remove(labels::REVISION);
                }
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
    let mut body = serde_json::to_value(obj).map_err(|e| Error::State(e.to_string()))?;
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

fn policy(bg: &BlueGreen, replicas: u32) -> Policy {
    let s = &bg.spec;
    Policy {
        replicas,
        preview_replicas: s.preview.replicas,
        promotion: s.promotion.to_core(),
        pre_promotion_analysis: s.analysis.pre_promotion.is_some(),
        post_promotion_analysis: s.analysis.post_promotion.is_some(),
        progress_deadline_ms: s.progress_deadline.as_millis(),
        scale_down_delay_ms: s.scale_down_delay.as_millis(),
        hooks: teal_api::hooks::hook_policy(&s.webhooks),
    }
}

/// How testers reach the idle color, for the PreviewReady event: the
/// preview Service with router type `service`, else the preview header or
/// cookie (the header's value is never shown: it may be a secret).
pub fn preview_reached(bg: &BlueGreen) -> String {
    use teal_api::bluegreen::RouterKind;
    let p = &bg.spec.preview;
    if bg.spec.router.kind == RouterKind::Service {
        return format!("through Service {}", objects::preview_service_name(bg));
    }
    match (&p.header, &p.cookie) {
        (Some(h), _) => format!("with the preview header {}", h.name),
        (None, Some(c)) => format!("with the preview cookie {}", c.name),
        (None, None) => "(set spec.preview.header to reach it through the router)".into(),
    }
}

fn parse_command(value: &str) -> Option<Command> {
    let verb = value.split('/').next().unwrap_or(value);
    Some(match verb {
        "promote" => Command::Promote { full: false },
        "promote-full" => Command::Promote { full: true },
        "abort" => Command::Abort,
        "rollback" => Command::Rollback,
        "retry" => Command::Retry,
        _ => return None,
    })
}

async fn apply(bg: Arc<BlueGreen>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    crate::hooks::track(&bg);
    let ns = bg.namespace().unwrap_or_default();
    let name = bg.name_any();
    let client = ctx.client.clone();
    let cluster = Cluster {
        bg: &bg,
        name: name.clone(),
        deployments: Api::namespaced(client.clone(), &ns),
        services: Api::namespaced(client.clone(), &ns),
        ns: ns.clone(),
        ctx: &ctx,
    };
    let bgs: Api<BlueGreen> = Api::namespaced(client.clone(), &ns);
    let generation = bg.metadata.generation;
    let old_status = bg.status.clone().unwrap_or_default();
    let mut status = old_status.clone();
    status.observed_generation = generation;

    // The workload: from the watch cache; read from the apiserver only
    // when the cache does not have it (yet).
    let workload = match ctx.cache.workload(&ns, &bg.spec.workload_ref.name) {
        Some(w) => Some(w),
        None => {
            cluster
                .deployments
                .get_opt(&bg.spec.workload_ref.name)
                .await?
        }
    };
    let Some(workload) = workload else {
        let msg = format!(
            "Deployment {}/{} (spec.workloadRef) does not exist",
            ns, bg.spec.workload_ref.name
        );
        set_condition(
            &mut status,
            condition("Ready", false, "WorkloadNotFound", &msg, generation),
        );
        status.message = Some(msg);
        write_status(&bgs, &name, &old_status, status).await?;
        return Ok(Requeue::requeue(Duration::from_secs(30)));
    };
    let template = workload.spec.template.clone();
    let revision = revision_of(&template);
    let workload_replicas = workload.spec.replicas;

    // Services must be ours (or not exist yet). The cache holds only
    // teal-labelled Services: one it lacks is read from the apiserver.
    // The preview Service is written by router type `service` only.
    let mut ours = vec![objects::service_name(&bg)];
    if bg.spec.router.kind == teal_api::bluegreen::RouterKind::Service {
        ours.push(objects::preview_service_name(&bg));
    }
    for svc_name in ours {
        let found = match ctx.cache.service(&ns, &svc_name) {
            Some(s) => Some(s),
            None => cluster.services.get_opt(&svc_name).await?,
        };
        if let Some(s) = found
            && !objects::owned_by(&s.metadata, &bg)
        {
            let msg = format!(
                "Service {ns}/{svc_name} exists and is not managed by this BlueGreen: delete it, or set spec.service.name to another name"
            );
            set_condition(
                &mut status,
                condition("Ready", false, "ServiceConflict", &msg, generation),
            );
            // `kubectl get bg` shows it in the PHASE column.
            status.phase = Some(CONFLICT_PHASE.into());
            status.message = Some(msg);
            write_status(&bgs, &name, &old_status, status).await?;
            return Ok(Requeue::requeue(Duration::from_secs(30)));
        }
    }

    // The engine: restored from status, or new on first adoption. A state
    // that is there but cannot be read is no adoption: adopting would apply
    // the workload's template to the live color without a release.
    let saved: Option<EngineState> = match restore_engine(old_status.engine.as_ref()) {
        Ok(s) => s,
        Err(msg) => {
            set_condition(
                &mut status,
                condition("Ready", false, ENGINE_UNREADABLE, &msg, generation),
            );
            if old_status.message.as_deref() != Some(msg.as_str()) {
                cluster.event(true, ENGINE_UNREADABLE, msg.clone()).await;
            }
            status.message = Some(msg);
            write_status(&bgs, &name, &old_status, status).await?;
            return Ok(Requeue::requeue(Duration::from_secs(60)));
        }
    };
    let uid = bg.uid().unwrap_or_default();
    if ctx
        .written
        .is_stale(&uid, saved.as_ref().map_or(0, |s| s.seq))
    {
        // The cache has not caught up with our own last write yet.
        return Ok(Requeue::requeue(Duration::from_millis(200)));
    }
    let now = now_ms();
    let mut queue: Vec<Action> = Vec::new();
    let mut state = match saved {
        Some(mut s) => {
            let replicas = bg
                .spec
                .replicas
                .map(|r| r as u32)
                .unwrap_or(s.machine.policy.replicas);
            s.machine.policy = policy(&bg, replicas);
            queue.extend(crate::checkpoint::unconfirmed_switch(&s));
            s
        }
        None => {
            let replicas = bg.spec.replicas.or(workload_replicas).unwrap_or(1).max(1) as u32;
            let (m, actions) = Machine::new(policy(&bg, replicas), revision.clone());
            queue.extend(actions);
            cluster
                .event(
                    false,
                    "Adopted",
                    format!(
                        "adopting Deployment {} at revision {revision}",
                        bg.spec.workload_ref.name
                    ),
                )
                .await;
            EngineState {
                machine: m,
                analysis: None,
                seq: 0,
                command: None,
            }
        }
    };

    let live = state.machine.routing.map(|r| r.active);
    let mut observed = Vec::new();
    for c in Color::ALL {
        observed.push(cluster.observe(c, live == Some(c)).await?);
    }
    // An operator command given through the annotation.
    let mut command = None;
    if let Some(cmd_value) = bg.annotations().get(annotations::COMMAND).cloned()
        && status.last_command.as_deref() != Some(cmd_value.as_str())
    {
        status.last_command = Some(cmd_value.clone());
        // Already consumed when a checkpoint saved the state it led to but
        // the reconcile ended before status said so: do not apply it twice.
        let consumed = state.command.as_deref() == Some(cmd_value.as_str());
        state.command = Some(cmd_value.clone());
        match parse_command(&cmd_value) {
            _ if consumed => {}
            Some(cmd) => command = Some(cmd),
            None => {
                cluster
                    .event(
                        true,
                        "InvalidCommand",
                        format!(
                            "{} {cmd_value:?}: use promote, promote-full, abort, rollback or retry",
                            annotations::COMMAND
                        ),
                    )
                    .await
            }
        }
    }
    let mut inputs = first_inputs(revision.clone(), observed, command);
    // Analysis checks: started in the background when due (see
    // checks.rs), recorded on the reconcile after they are done.
    if let Some(a) = state.analysis.as_mut() {
        let spec = match a.stage {
            Stage::PrePromotion => bg.spec.analysis.pre_promotion.clone(),
            Stage::PostPromotion => bg.spec.analysis.post_promotion.clone(),
        };
        if let Some(spec) = spec {
            if let Some((mut ms, hooks)) =
                crate::checks::take(&bg, &state.machine, a.stage, &a.revision)
            {
                spec.mark_dry_run(&mut ms);
                let verdict = a.run.record_checks(ms, hooks);
                // Recorded now: a verdict ends the stage before status is written.
                status.analysis = Some(analysis_status(a));
                if let Some(v) = verdict {
                    inputs.push(Input::Analysis {
                        stage: a.stage,
                        revision: a.revision.clone(),
                        verdict: v,
                    });
                }
            }
            if now >= a.next_check {
                let vars = teal_analysis::QueryVars {
                    name: name.clone(),
                    namespace: ns.clone(),
                    color: a.color,
                    revision: a.revision.clone(),
                    service: objects::service_name(&bg),
                };
                // A check still under way (a slow endpoint) delays the
                // next one by an interval; none runs twice at once.
                crate::checks::start(&ctx.client, &bg, &state.machine, a.stage, &spec, vars);
                a.next_check = now + spec.interval.as_millis();
            }
        }
    }
    inputs.extend(crate::hooks::due(&bg, &state.machine));
    inputs.push(Input::Tick);

    let mut rejected = Vec::new();
    for input in inputs {
        let is_cmd = matches!(input, Input::Command(_));
        match state.machine.handle(now, input) {
            Ok(a) => queue.extend(a),
            Err(e) if is_cmd => rejected.push(e.to_string()),
            Err(_) => {}
        }
    }
    for r in rejected {
        cluster
            .event(
                true,
                "CommandRejected",
                format!("BlueGreen {ns}/{name}: {r}"),
            )
            .await;
    }

    // Carry out the actions; a switch of the live Service is confirmed as
    // soon as the apiserver accepted it.
    // Replaying an unconfirmed switch restores exactly the stored state: the
    // checkpoint is then the same state again (no write, so no watch event
    // waking this controller at once if the confirmation keeps failing).
    if queue.iter().any(|a| matches!(a, Action::Route(_)))
        && old_status.engine.as_ref() != Some(&crate::checkpoint::stored_form(&state)?)
    {
        state.seq += 1;
    }
    crate::checkpoint::before_routing(&bgs, &bg, &state, &queue).await?;
    ctx.written.record(&uid, state.seq);
    // Templates written by this reconcile, newer than the cache's.
    let mut deployed: [Option<PodTemplateSpec>; 2] = [None, None];
    // Keep the routes written (and re-check an unconfirmed switch) on every
    // reconcile, also when the router type changed.
    if let Some(r) = state.machine.routing
        && !queue.iter().any(|a| matches!(a, Action::Route(_)))
    {
        queue.insert(0, Action::Route(r));
    }
    // A color Deployment that is missing or runs another revision than
    // the engine asked for is written again: a write refused earlier (an
    // admission policy, a quota) is retried once the cause is gone.
    for (color, req) in &state.machine.requested {
        let Some(rev) = req.revision.clone() else {
            continue;
        };
        if req.replicas == 0
            || queue
                .iter()
                .any(|a| matches!(a, Action::Deploy { color: c, .. } if c == color))
        {
            continue;
        }
        let running = cluster.color_deployment(*color).await?.and_then(|d| {
            d.metadata
                .annotations
                .and_then(|mut a| a.remove(labels::REVISION))
        });
        if running.as_ref() != Some(&rev) {
            queue.push(Action::Deploy {
                color: *color,
                revision: rev,
                replicas: req.replicas,
            });
        }
    }
    // Why the apiserver refused a color Deployment, if it did.
    let mut refused: Option<String> = None;
    let mut routed = true;
    let mut i = 0;
    while i < queue.len() {
        let action = queue[i].clone();
        i += 1;
        match action {
            Action::Deploy {
                color,
                revision: rev,
                replicas,
            } => {
                let Some(t) = cluster.template_of(&rev, &workload).await? else {
                    return Err(Error::State(format!(
                        "no pod template is known for revision {rev}"
                    )));
                };
                let d = objects::color_deployment(&bg, color, &rev, &t, replicas as i32);
                match cluster.apply_deployment(&d).await {
                    Ok(()) => deployed[color_index(color)] = Some(t),
                    // Refused (admission, quota, an invalid object): it will
                    // not pass by itself. The reconcile goes on so that the
                    // release is recorded and its progress deadline runs;
                    // the write is tried again on the next reconciles.
                    Err(Error::Kube(kube::Error::Api(e))) if refusal(e.code) => {
                        refused = Some(format!(
                            "the apiserver refused Deployment {ns}/{}: {}",
                            d.name_any(),
                            e.message
                        ));
                    }
                    Err(e) => return Err(e),
                }
            }
            Action::Scale { color, replicas } => cluster.scale(color, replicas as i32).await?,
            Action::Retire { color } => cluster.scale(color, 0).await?,
            Action::Route(routing) => {
                let ports = cluster.color_ports(&template, &deployed).await?;
                let target = routers::Target {
                    client: &client,
                    bg: &bg,
                    ns: &ns,
                    ports: &ports,
                    cache: Some(&ctx.cache),
                    settled: false,
                    router_image: ctx.router_image.as_deref(),
                };
                let ack = match routers::route(&target, routing, &mut status.router).await {
                    Ok(ack) => ack,
                    Err(e) => {
                        let c = routers::routed_condition(Err(&e), generation);
                        let mut failed = old_status.clone();
                        let news = routers::is_news(&failed.conditions, &c);
                        set_condition(&mut failed, c);
                        // Only the condition: the engine state a checkpoint
                        // may have written in this reconcile stays.
                        let patch =
                            serde_json::json!({"status": {"conditions": failed.conditions}});
                        bgs.patch_status(
                            &name,
                            &crate::reconcile::patch_params(),
                            &Patch::Merge(patch),
                        )
                        .await?;
                        if news {
                            cluster.event(true, "RouteFailed", e.to_string()).await;
                        }
                        return Err(e);
                    }
                };
                routed = ack == routers::Ack::Confirmed;
                let c = routers::routed_condition(Ok(&ack), generation);
                if routers::is_news(&old_status.conditions, &c) && c.status == "False" {
                    cluster.event(true, &c.reason, c.message.clone()).await;
                }
                set_condition(&mut status, c);
                if ack == routers::Ack::Confirmed {
                    queue.extend(
                        state
                            .machine
                            .handle(
                                now_ms(),
                                Input::Routed {
                                    active: routing.active,
                                },
                            )
                            .unwrap_or_default(),
                    );
                }
            }
            Action::StartAnalysis {
                stage,
                color,
                revision: rev,
            } => {
                let spec = match stage {
                    Stage::PrePromotion => bg.spec.analysis.pre_promotion.clone(),
                    Stage::PostPromotion => bg.spec.analysis.post_promotion.clone(),
                };
                if let Some(spec) = spec {
                    crate::checks::begin(&ctx.client, &bg, &state.machine, stage, &rev);
                    state.analysis = Some(RunningAnalysis {
                        stage,
                        color,
                        revision: rev,
                        run: Run::new(spec.limits()),
                        next_check: spec.first_check_ms(now),
                    });
                }
            }
            Action::StopAnalysis => state.analysis = None,
            // Called in the background; the answers come in on a later reconcile.
            Action::RunHooks { kind, .. } => crate::hooks::start_round(&bg, &state.machine, kind),
            Action::Event(e) => {
                ctx.metrics.event(&e);
                if let Some(problem) =
                    crate::hooks::on_event(&ctx.client, &bg, &state.machine, &e).await
                {
                    cluster.event(true, "NotificationFailed", problem).await;
                }
                if let Some(r) = state
                    .machine
                    .release
                    .as_ref()
                    .filter(|r| r.phase.is_terminal() && r.revision == e.revision)
                    && matches!(
                        e.kind,
                        EventKind::Succeeded
                            | EventKind::RolledBack
                            | EventKind::Aborted
                            | EventKind::Failed
                            | EventKind::Superseded
                    )
                {
                    let secs = now_ms().saturating_sub(r.started_at) as f64 / 1000.0;
                    ctx.metrics.release_ended(&format!("{:?}", e.kind), secs);
                }
                let message = match e.kind {
                    EventKind::PreviewReady => {
                        format!("{} {}", e.message, preview_reached(&bg))
                    }
                    _ => e.message.clone(),
                };
                // Each release step in the log too, at info (warn when it
                // went wrong).
                if e.kind.is_warning() {
                    tracing::warn!(bluegreen = %format!("{ns}/{name}"), revision = %e.revision, event = ?e.kind, "{message}");
                } else {
                    tracing::info!(bluegreen = %format!("{ns}/{name}"), revision = %e.revision, event = ?e.kind, "{message}");
                }
                cluster
                    .event(e.kind.is_warning(), &format!("{:?}", e.kind), message)
                    .await;
            }
        }
    }
    if let Some(a) = &state.analysis
        && a.run.verdict.is_some()
    {
        state.analysis = None;
    }

    // Once a color serves, the workload itself runs nothing.
    if state.machine.routing.is_some() && workload_replicas != Some(0) {
        let patch = serde_json::json!({"spec": {"replicas": 0}});
        cluster
            .deployments
            .patch(
                &bg.spec.workload_ref.name,
                &crate::reconcile::patch_params(),
                &Patch::Merge(patch),
            )
            .await?;
    }

    // Status.
    let m = &state.machine;
    status.phase = Some(m.phase_name());
    status.active_color = m.routing.map(|r| r.active);
    status.active_revision = m.routing.map(|_| m.active.revision.clone());
    status.preview_color = m.preview();
    status.preview_revision = m
        .preview()
        .and_then(|c| m.requested.get(&c))
        .and_then(|r| r.revision.clone());
    status.desired_revision = Some(revision);
    status.message = Some(match &m.release {
        Some(r) => r.message.clone(),
        None if m.routing.is_none() => "waiting for the first color to be ready".into(),
        None => "live".into(),
    });
    if !m.in_progress()
        && let Some(resizing) = crate::autoscaling::resizing_message(m)
    {
        status.message = Some(resizing);
    }
    crate::autoscaling::scale_status(&bg, m, &ctx.cache, &mut status);
    // Adopted, but the router has not taken the traffic yet (router type
    // teal: no router pod ready, so no live Service): not Healthy until it has.
    if !routed && m.routing.is_some() && m.release.is_none() && m.history.is_empty() {
        let why = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Routed")
            .map(|c| c.message.clone())
            .unwrap_or_default();
        status.phase = Some("Initializing".into());
        status.message = Some(format!("waiting for the router to take the traffic: {why}"));
    }
    status.history = m.history.iter().map(ReleaseRecord::from).collect();
    crate::hooks::record_status(&bg, &mut status.hooks);
    if let Some(a) = &state.analysis {
        status.analysis = Some(analysis_status(a));
    }
    let healthy = m.phase_name() == "Healthy";
    match &refused {
        None => set_condition(
            &mut status,
            condition("Ready", true, "Reconciled", "", generation),
        ),
        Some(why) => {
            let c = condition("Ready", false, DEPLOYMENT_REFUSED, why, generation);
            let news = condition_is_news(&old_status, &c);
            set_condition(&mut status, c);
            if news {
                tracing::warn!(bluegreen = %format!("{ns}/{name}"), "{why}");
                cluster.event(true, DEPLOYMENT_REFUSED, why.clone()).await;
            }
        }
    }
    set_condition(
        &mut status,
        condition(
            "Available",
            m.routing.is_some() && m.phase_name() != "Degraded",
            if m.routing.is_some() {
                "Serving"
            } else {
                "NotServing"
            },
            "",
            generation,
        ),
    );
    let message = status.message.clone().unwrap_or_default();
    set_condition(
        &mut status,
        condition(
            "Progressing",
            m.in_progress(),
            if m.in_progress() {
                "Releasing"
            } else if healthy {
                "Idle"
            } else {
                "Stopped"
            },
            &message,
            generation,
        ),
    );
    // An autoscaler of the workload scales nothing: say so, once.
    match crate::autoscaling::autoscaler_condition(&bg, &ctx.cache) {
        Some(Some((ok, reason, message))) => {
            let c = condition(
                crate::autoscaling::CONDITION,
                ok,
                &reason,
                &message,
                generation,
            );
            if !ok && routers::is_news(&old_status.conditions, &c) {
                cluster.event(true, &reason, message).await;
            }
            set_condition(&mut status, c);
        }
        Some(None) => status
            .conditions
            .retain(|c| c.type_ != crate::autoscaling::CONDITION),
        None => {}
    }
    // Metric templates that cannot be used: say which field, before a
    // release needs them.
    let templates = crate::templates::condition(&ctx.client, &bg).await;
    let templates_missing = templates.as_ref().is_some_and(|(ok, _)| !ok);
    match templates {
        Some((ok, message)) => {
            let reason = if ok {
                crate::templates::RESOLVED
            } else {
                crate::templates::UNRESOLVED
            };
            let c = condition(
                crate::templates::CONDITION,
                ok,
                reason,
                &message,
                generation,
            );
            if !ok && routers::is_news(&old_status.conditions, &c) {
                cluster.event(true, reason, message).await;
            }
            set_condition(&mut status, c);
        }
        None => status
            .conditions
            .retain(|c| c.type_ != crate::templates::CONDITION),
    }
    let next = state.machine.next_deadline();
    let next_check = state.analysis.as_ref().map(|a| a.next_check);
    let unchanged = old_status.engine.as_ref() == Some(&crate::checkpoint::stored_form(&state)?);
    if !unchanged {
        state.seq += 1;
    }
    status.engine = Some(crate::checkpoint::engine_value(
        old_status.engine.as_ref(),
        &state,
    )?);
    write_status(&bgs, &name, &old_status, status).await?;
    ctx.written.record(&uid, state.seq);
    crate::autoscaling::record_replicas(&bgs, &bg, state.machine.policy.replicas).await;

    // Watches wake a reconcile on every change of the BlueGreen, its
    // workload, color Deployments, Pods and Services; what they do not see
    // (deadlines, analysis checks, router acknowledgements, hook rounds)
    // runs on a timer. A BlueGreen with nothing of that pending is only
    // re-read now and then, to heal anything a watch may have missed.
    let idle = state
        .machine
        .release
        .as_ref()
        .is_none_or(|r| r.phase.is_terminal())
        && state.analysis.is_none()
        && routed;
    let longest = if idle { IDLE_RESYNC_MS } else { 30_000 };
    let now = now_ms();
    let wait = [next, next_check]
        .into_iter()
        .flatten()
        .map(|t| t.saturating_sub(now))
        .min()
        .unwrap_or(longest)
        .clamp(200, longest);
    // While a color is starting, poll readiness quickly (watches on
    // Deployments also trigger reconciles); a refused write is tried again
    // soon, also with no release under way (a first adoption).
    let wait = if state.machine.in_progress() {
        wait.min(2_000)
    } else if refused.is_some() {
        wait.min(REFUSED_RETRY_MS)
    } else if templates_missing {
        // Templates are not watched: look again soon for one created.
        wait.min(crate::templates::RETRY_MS)
    } else {
        wait
    };
    Ok(Requeue::requeue(Duration::from_millis(wait)))
}

/// The reason of the `Ready=False` condition while a watch fails.
pub const WATCH_FAILED: &str = "WatchFailed";

/// Reports in `bg`'s status that the controller cannot watch what it needs
/// (`errors`: "resource: error"), so it does not act on the BlueGreen yet.
pub async fn watch_failed(bg: &BlueGreen, ctx: &Context, errors: &[String]) {
    let ns = bg.namespace().unwrap_or_default();
    let bgs: Api<BlueGreen> = Api::namespaced(ctx.client.clone(), &ns);
    let old = bg.status.clone().unwrap_or_default();
    let mut status = old.clone();
    let msg = format!(
        "the controller cannot watch what it needs and acts on no BlueGreen until it can (check its RBAC): {}",
        errors.join("; ")
    );
    set_condition(
        &mut status,
        condition(
            "Ready",
            false,
            WATCH_FAILED,
            &msg.chars().take(2000).collect::<String>(),
            bg.metadata.generation,
        ),
    );
    if let Err(e) = write_status(&bgs, &bg.name_any(), &old, status).await {
        tracing::warn!(
            "cannot report the failing watches in {ns}/{}: {e}",
            bg.name_any()
        );
    }
}

/// The reason of the `Ready=False` condition (and of the Warning Event)
/// when the apiserver refuses a color Deployment.
pub const DEPLOYMENT_REFUSED: &str = "DeploymentRefused";

/// How soon a refused color Deployment is written again when no release
/// polls faster.
const REFUSED_RETRY_MS: Millis = 10_000;

/// An apiserver answer that refuses the object itself (admission denied,
/// quota exceeded, invalid), as opposed to a conflict or an outage.
fn refusal(code: u16) -> bool {
    matches!(code, 400 | 403 | 422)
}

/// Whether `c` says something `old` did not (another status, reason or
/// message): worth an Event and a log line.
fn condition_is_news(old: &BlueGreenStatus, c: &Condition) -> bool {
    !old.conditions.iter().any(|o| {
        o.type_ == c.type_ && o.status == c.status && o.reason == c.reason && o.message == c.message
    })
}

fn analysis_status(a: &RunningAnalysis) -> AnalysisStatus {
    AnalysisStatus {
        stage: match a.stage {
            Stage::PrePromotion => "prePromotion".into(),
            Stage::PostPromotion => "postPromotion".into(),
        },
        revision: a.revision.clone(),
        checks: a.run.checks,
        failures: a.run.failures,
        inconclusive: a.run.inconclusive,
        errors: a.run.errors,
        metrics: a.run.last.iter().map(MetricValue::from).collect(),
        history: a
            .run
            .history
            .iter()
            .map(|c| CheckValues {
                check: c.check,
                metrics: c.measurements.iter().map(MetricValue::from).collect(),
            })
            .collect(),
        verdict: a.run.verdict.as_ref().map(|v| match v {
            Verdict::Pass => "pass".into(),
            Verdict::Fail(r) => format!("fail: {r}"),
            Verdict::Inconclusive(r) => format!("inconclusive: {r}"),
        }),
    }
}

fn set_condition(status: &mut BlueGreenStatus, mut c: Condition) {
    if let Some(old) = status.conditions.iter_mut().find(|o| o.type_ == c.type_) {
        if old.status == c.status {
            c.last_transition_time = old.last_transition_time.clone();
        }
        *old = c;
    } else {
        status.conditions.push(c);
    }
}

async fn write_status(
    api: &Api<BlueGreen>,
    name: &str,
    old: &BlueGreenStatus,
    new: BlueGreenStatus,
) -> Result<(), Error> {
    if *old == new {
        return Ok(());
    }
    let old = serde_json::to_value(old).map_err(|e| Error::State(e.to_string()))?;
    let new = serde_json::to_value(&new).map_err(|e| Error::State(e.to_string()))?;
    let patch = serde_json::json!({ "status": merge_diff(&old, new) });
    api.patch_status(
        name,
        &crate::reconcile::patch_params(),
        &Patch::Merge(patch),
    )
    .await?;
    Ok(())
}

/// A JSON merge patch from `old` to `new`: fields `new` no longer has are
/// set to null, so they are removed rather than kept from `old`.
fn merge_diff(old: &serde_json::Value, new: serde_json::Value) -> serde_json::Value {
    match (old, new) {
        (serde_json::Value::Object(o), serde_json::Value::Object(mut n)) => {
            for k in o.keys() {
                if !n.contains_key(k) {
                    n.insert(k.clone(), serde_json::Value::Null);
                }
            }
            for (k, v) in n.iter_mut() {
                if let Some(ov) = o.get(k) {
                    *v = merge_diff(ov, v.take());
                }
            }
            serde_json::Value::Object(n)
        }
        (_, n) => n,
    }
}

/// On deletion: give the workload its replicas back, wait until it is
/// available, point the live Service at it and leave the Service behind
/// (the color Deployments go with the BlueGreen).
async fn cleanup(bg: Arc<BlueGreen>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    let ns = bg.namespace().unwrap_or_default();
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), &ns);
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
    let Some(workload) = deployments.get_opt(&bg.spec.workload_ref.name).await? else {
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
    {
        let cluster = Cluster {
            bg: &bg,
            name: bg.name_any(),
            deployments: deployments.clone(),
            services: services.clone(),
            ns: ns.clone(),
            ctx: &ctx,
        };
        if let Some(template) = cluster.template_of(&live, &workload).await? {
            let mut restored = workload.clone();
            restored.spec.template = template;
            restored.metadata.managed_fields = None;
            deployments
                .replace(
                    &bg.spec.workload_ref.name,
                    &kube::api::PostParams {
                        field_manager: Some(MANAGER.into()),
                        ..Default::default()
                    },
                    &restored,
                )
                .await?;
            cluster
                .event(
                    true,
                    "LiveRevisionRestored",
                    format!(
                        "BlueGreen deleted while {live} was live and Deployment {} named revision {}: its template was set back to {live}, so that traffic goes back to what was live; apply the newer template again to release it",
                        bg.spec.workload_ref.name,
                        revision_of(&workload.spec.template)
                    ),
                )
                .await;
            return Err(Error::State(format!(
                "restored the live revision {live} in Deployment {} before handing its traffic back",
                bg.spec.workload_ref.name
            )));
        }
    }
    if workload.spec.replicas != Some(replicas) {
        let patch = serde_json::json!({"spec": {"replicas": replicas}});
        deployments
            .patch(
                &bg.spec.workload_ref.name,
                &crate::reconcile::patch_params(),
                &Patch::Merge(patch),
            )
            .await?;
    }
    // Judge readiness on a fresh read, after the scale-up was accepted.
    let workload = deployments.get(&bg.spec.workload_ref.name).await?;
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
        return Err(Error::State(format!(
            "waiting for Deployment {} to have {replicas} available replicas before handing its traffic back",
            bg.spec.workload_ref.name
        )));
    }
    let selector = workload
        .spec
        .selector
        .match_labels
        .clone()
        .unwrap_or_default();
    let svc_name = objects::service_name(&bg);
    if let Some(svc) = services.get_opt(&svc_name).await?
        && objects::owned_by(&svc.metadata, &bg)
    {
        let patch = serde_json::json!({
            "metadata": {"ownerReferences": null, "labels": {labels::BLUEGREEN: null}},
            "spec": {"selector": selector},
        });
        // A merge patch replaces the selector map only key by key: clear
        // teal's keys explicitly.
        let mut sel = serde_json::Map::new();
        for (k, v) in &selector {
            sel.insert(k.clone(), serde_json::Value::String(v.clone()));
        }
        sel.insert(labels::BLUEGREEN.into(), serde_json::Value::Null);
        sel.insert(labels::COLOR.into(), serde_json::Value::Null);
        let mut patch = patch;
        patch["spec"]["selector"] = serde_json::Value::Object(sel);
        services
            .patch(
                &svc_name,
                &crate::reconcile::patch_params(),
                &Patch::Merge(patch),
            )
            .await?;
    }
    routers::release(
        &ctx.client,
        &bg,
        &routers::ColorPorts::same(objects::service_ports(&bg, Some(&workload.spec.template))),
    )
    .await?;
    let recorder = &ctx.recorder;
    let ev = KubeEvent {
        type_: EventType::Normal,
        reason: "Released".into(),
        note: Some(format!(
            "BlueGreen deleted: Deployment {} runs {replicas} replicas again and Service {svc_name} selects it",
            bg.spec.workload_ref.name
        )),
        action: "Cleanup".into(),
        secondary: None,
    };
    let _ = recorder.publish(&ev, &bg.object_ref(&())).await;
    Ok(Requeue::await_change())
}

/// The inputs of a reconcile known before any analysis or hook: the
/// desired revision, what each color runs now, then the operator's command.
/// A command acts on the latest observation, never on one from an earlier
/// reconcile: a promote would otherwise cut over to a color whose pods went
/// away since.
fn first_inputs(
    revision: String,
    observed: Vec<teal_core::release::ColorStatus>,
    command: Option<Command>,
) -> Vec<Input> {
    std::iter::once(Input::Revision(revision))
        .chain(observed.into_iter().map(Input::Observed))
        .chain(command.map(Input::Command))
        .collect()
}

fn color_index(c: Color) -> usize {
    match c {
        Color::Blue => 0,
        Color::Green => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_kind_is_exported_from_the_start() {
        let errors = [
            Error::State(String::new()),
            Error::Kube(kube::Error::LinesCodecMaxLineLengthExceeded),
        ];
        for e in &errors {
            assert!(crate::metrics::ERROR_KINDS.contains(&e.metric_label()));
        }
        assert!(crate::metrics::ERROR_KINDS.contains(&"finalizer"));
        assert!(crate::metrics::ERROR_KINDS.contains(&"conflict"));
        let text = crate::metrics::Metrics::default().render();
        for kind in crate::metrics::ERROR_KINDS {
            assert!(
                text.contains(&format!(
                    "teal_controller_reconcile_errors_total{{kind=\"{kind}\"}} 0"
                )),
                "{text}"
            );
        }
    }

    #[test]
    fn a_promote_is_judged_on_the_observation_of_the_same_reconcile() {
        use teal_core::release::{ColorStatus, Phase, Policy, Promotion};
        let policy = Policy {
            replicas: 3,
            preview_replicas: None,
            promotion: Promotion::Manual {
                auto_promote_after_ms: None,
            },
            pre_promotion_analysis: false,
            post_promotion_analysis: false,
            progress_deadline_ms: 60_000,
            scale_down_delay_ms: 300_000,
            hooks: Default::default(),
        };
        let seen = |color, revision: &str, ready| ColorStatus {
            color,
            revision: Some(revision.into()),
            ready_replicas: ready,
            failure: None,
        };
        let feed = |m: &mut Machine, inputs: Vec<Input>| {
            let mut actions = Vec::new();
            for i in inputs {
                actions.extend(m.handle(1_000, i).unwrap_or_default());
            }
            actions
        };
        let (mut m, _) = Machine::new(policy, "v1");
        let blue = || vec![seen(Color::Blue, "v1", 3)];
        feed(&mut m, first_inputs("v1".into(), blue(), None));
        // One reconcile of release v2 with green's pods ready as given.
        let mut reconcile = |green_ready, command| {
            let mut observed = blue();
            observed.push(seen(Color::Green, "v2", green_ready));
            let actions = feed(&mut m, first_inputs("v2".into(), observed, command));
            let phase = m.release.as_ref().map(|r| r.phase);
            let to_green = actions
                .iter()
                .any(|a| matches!(a, Action::Route(r) if r.active == Color::Green));
            (phase, to_green)
        };
        reconcile(0, None);
        assert_eq!(reconcile(3, None), (Some(Phase::AwaitingPromotion), false));
        // Green's pods went away since the last reconcile; the operator
        // promotes in this one.
        let promote = Some(Command::Promote { full: false });
        assert_eq!(reconcile(0, promote), (Some(Phase::ScalingUp), false));
        assert_eq!(reconcile(3, None), (Some(Phase::CuttingOver), true));
    }

    fn api_error(code: u16) -> kube::Error {
        kube::Error::Api(
            kube::core::Status::failure("refused", "Invalid")
                .with_code(code)
                .boxed(),
        )
    }

    #[test]
    fn a_finalizer_write_refused_for_a_stale_read_is_a_conflict_not_a_failure() {
        use kube::runtime::finalizer::Error as F;
        let add = |code| Error::Finalizer(Box::new(F::AddFinalizer(api_error(code))));
        let remove = |code| Error::Finalizer(Box::new(F::RemoveFinalizer(api_error(code))));
        for e in [add(422), add(409), remove(422), remove(409)] {
            assert!(e.is_stale_read(), "{e}");
            assert_eq!(e.metric_label(), "conflict");
        }
        for e in [
            add(403),
            remove(500),
            Error::Finalizer(Box::new(F::ApplyFailed(Error::State("x".into())))),
            Error::Kube(api_error(422)),
        ] {
            assert!(!e.is_stale_read(), "{e}");
            assert_ne!(e.metric_label(), "conflict");
        }
    }

    #[test]
    fn an_error_of_apply_or_cleanup_keeps_its_kind_under_the_finalizer() {
        use kube::runtime::finalizer::Error as F;
        let wrapped = |f: F<Error>| Error::Finalizer(Box::new(f));
        assert_eq!(
            wrapped(F::ApplyFailed(Error::State("x".into()))).metric_label(),
            "state"
        );
        assert_eq!(
            wrapped(F::CleanupFailed(Error::Kube(api_error(500)))).metric_label(),
            "kube"
        );
        assert_eq!(
            wrapped(F::AddFinalizer(api_error(403))).metric_label(),
            "finalizer"
        );
    }

    #[test]
    fn a_cleared_status_field_is_sent_as_null() {
        let old = BlueGreenStatus {
            preview_color: Some(Color::Green),
            phase: Some("Previewing".into()),
            ..Default::default()
        };
        let new = BlueGreenStatus {
            phase: Some("Healthy".into()),
            ..Default::default()
        };
        let p = merge_diff(
            &serde_json::to_value(&old).unwrap(),
            serde_json::to_value(&new).unwrap(),
        );
        assert_eq!(p["previewColor"], serde_json::Value::Null);
        assert!(p.as_object().unwrap().contains_key("previewColor"));
        assert_eq!(p["phase"], "Healthy");
    }
}
