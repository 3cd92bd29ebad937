//! The reconcile of one BlueGreen, in four steps, each in its own file:
//!
//! - [`observe`]: read the workload, both colors, the engine state kept in
//!   status, the operator's command and the answers of background work;
//! - [`decide`]: feed the release engine (pure: tests call it directly);
//! - [`act`]: carry out its actions (Deployments, routes, analysis, hooks,
//!   Events);
//! - [`status`]: the status as a value from the engine state and what the
//!   reconcile saw and did (pure), written as a merge patch of what changed.
//!
//! [`cleanup`] hands the workload its traffic back when a BlueGreen is
//! deleted; [`error`] says why a reconcile did not finish and when it is
//! tried again.

mod act;
mod cleanup;
mod cluster;
mod decide;
mod error;
mod observe;
mod status;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kube::api::PatchParams;
use kube::runtime::controller::Action as Requeue;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Api, Client, ResourceExt};
use serde::{Deserialize, Serialize};
use teal_api::BlueGreen;
use teal_core::Color;
use teal_core::analysis::Run;
use teal_core::release::{Command, Machine, Millis, Policy, Stage};

use crate::events::Recorder;
use crate::metrics::Metrics;
use crate::objects;

pub use error::{ERROR_KINDS, Error, HandingBack, Misconfigured};
pub use status::CONFLICT_PHASE;
pub use status::reason::{DEPLOYMENT_REFUSED, ENGINE_UNREADABLE, WATCH_FAILED};

/// The field manager of teal's server-side applies.
pub const MANAGER: &str = "teal-controller";

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
/// How soon a reconcile that read a BlueGreen older than this process's
/// last write of it looks again.
const STALE_RETRY: Duration = Duration::from_millis(200);

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Metrics,
    /// Pods and color Deployments, fed by watches.
    pub cache: crate::cache::Cache,
    /// What this process last wrote per BlueGreen (stale-read guard).
    pub written: crate::checkpoint::Written,
    /// Which BlueGreens release each workload.
    pub workloads: crate::index::Workloads,
    /// The image of router type `teal`'s router pods.
    pub router_image: Option<String>,
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
                let done = cleanup::cleanup(bg.clone(), ctx.clone()).await;
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
    ctx.workloads.forget(bg);
}

pub fn error_policy(_bg: Arc<BlueGreen>, error: &Error, ctx: Arc<Context>) -> Requeue {
    ctx.metrics.failed(error.metric_label());
    if error.is_warning() {
        tracing::warn!("reconcile failed: {error}");
    } else {
        tracing::debug!("reconcile to be continued: {error}");
    }
    Requeue::requeue(error.retry_after())
}

/// One reconcile of a BlueGreen that is not being deleted: observe,
/// decide, act, then write the status.
async fn apply(bg: Arc<BlueGreen>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    crate::hooks::track(&bg);
    ctx.workloads.note(&bg);
    let c = cluster::Cluster::new(&bg, &ctx);
    let old = bg.status.clone().unwrap_or_default();
    let seen = match observe::observe(&c, &old).await? {
        observe::Seen::Ready(seen) => seen,
        observe::Seen::Stale => return Ok(Requeue::requeue(STALE_RETRY)),
        observe::Seen::Blocked(b) => {
            if let status::Blocked::EngineUnreadable(msg) = &b
                && old.message.as_ref() != Some(msg)
            {
                c.event(true, ENGINE_UNREADABLE, msg.clone()).await;
            }
            let new = status::blocked(&old, bg.metadata.generation, &b);
            status::write(&c.bluegreens, &c.name, &old, new).await?;
            return Ok(Requeue::requeue(Duration::from_millis(b.retry_ms())));
        }
    };
    let now = now_ms();
    let mut d = decide::decide(&bg, &old, &seen, now);
    let done = act::act(&c, &seen, &mut d, &old, now).await?;
    let mut state = d.state;
    if old.engine.as_ref() != Some(&crate::checkpoint::stored_form(&state)?) {
        state.seq += 1;
    }
    let mut hooks = old.hooks.clone();
    crate::hooks::record_status(&bg, &mut hooks);
    let m = &state.machine;
    let live = m.routing.map(|r| r.active);
    let facts = status::Facts {
        generation: bg.metadata.generation,
        revision: seen.revision.clone(),
        engine: Some(crate::checkpoint::engine_value(
            old.engine.as_ref(),
            &state,
        )?),
        last_command: d.last_command,
        router: done.router,
        routed_condition: done.routed_condition,
        routed: done.routed,
        refused: done.refused.clone(),
        recorded_analysis: d.recorded_analysis,
        hooks,
        live_replicas: live.and_then(|color| {
            c.color_deployment(color)
                .and_then(|d| d.status)
                .and_then(|s| s.replicas)
        }),
        resizing: crate::autoscaling::resizing_message(m),
        autoscaler: seen.autoscaler.clone(),
        templates: seen.templates.clone(),
    };
    let new = status::desired(&old, &c.name, m, state.analysis.as_ref(), facts);
    for n in status::notices(&old, &new) {
        if n.logged {
            tracing::warn!(bluegreen = %c.id(), "{}", n.message);
        }
        c.event(true, &n.reason, n.message).await;
    }
    let written = status::write(&c.bluegreens, &c.name, &old, new).await?;
    ctx.written.record(&bg.uid().unwrap_or_default(), state.seq);
    // On the newest BlueGreen known: the cached one may predate a
    // `kubectl scale` that the write already shows.
    let newest = written.as_ref().unwrap_or(&bg);
    crate::autoscaling::record_replicas(&c.bluegreens, newest, state.machine.policy.replicas).await;
    let pending = decide::Pending {
        routed: done.routed,
        refused: done.refused.is_some(),
        templates_missing: seen.templates.as_ref().is_some_and(|(ok, _)| !ok),
    };
    Ok(Requeue::requeue(decide::requeue_after(
        &state,
        pending,
        now_ms(),
    )))
}

/// Reports in `bg`'s status that the controller cannot watch what it needs
/// (`errors`: "resource: error"), so it does not act on the BlueGreen yet.
pub async fn watch_failed(bg: &BlueGreen, ctx: &Context, errors: &[String]) {
    let ns = bg.namespace().unwrap_or_default();
    let bgs: Api<BlueGreen> = Api::namespaced(ctx.client.clone(), &ns);
    let old = bg.status.clone().unwrap_or_default();
    let mut new = old.clone();
    let msg = format!(
        "the controller cannot watch what it needs and acts on no BlueGreen until it can (check its RBAC): {}",
        errors.join("; ")
    );
    let msg: String = msg.chars().take(2000).collect();
    let c = status::condition(
        status::kind::READY,
        false,
        WATCH_FAILED,
        &msg,
        bg.metadata.generation,
    );
    status::set_condition(&mut new, c);
    if let Err(e) = status::write(&bgs, &bg.name_any(), &old, new).await {
        tracing::warn!(
            "cannot report the failing watches in {ns}/{}: {e}",
            bg.name_any()
        );
    }
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

#[cfg(test)]
mod tests;
