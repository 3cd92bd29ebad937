//! Act: carry out what the engine decided — color Deployments, routes,
//! analysis stages, hooks, Events — and report what happened for the
//! status.

use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::ResourceExt;
use kube::api::Patch;
use teal_api::BlueGreenStatus;
use teal_api::bluegreen::{RouterStatus, annotations};
use teal_core::analysis::Run;
use teal_core::release::{Action, Event, EventKind, Input, Millis, Routing, Stage};

use super::cluster::Cluster;
use super::decide::Decision;
use super::observe::Observation;
use super::status::{color_index, set_condition};
use super::{EngineState, Error, RunningAnalysis, now_ms, preview_reached};
use crate::objects;
use crate::routers;

/// What carrying out the actions did.
#[derive(Debug, Default)]
pub struct Done {
    /// Templates written by this reconcile, newer than the cache's.
    pub deployed: [Option<PodTemplateSpec>; 2],
    /// Why the apiserver refused a color Deployment, if it did.
    pub refused: Option<String>,
    /// Whether the router confirmed the routes it was given.
    pub routed: bool,
    pub routed_condition: Option<Condition>,
    /// The router's record (the old status's unless routes were written).
    pub router: Option<RouterStatus>,
}

pub async fn act(
    c: &Cluster<'_>,
    seen: &Observation,
    d: &mut Decision,
    old: &BlueGreenStatus,
    now: Millis,
) -> Result<Done, Error> {
    announce(c, seen, d).await;
    if let Some(s) = d.start_check.take() {
        crate::checks::start(&c.ctx.client, c.bg, &s.machine, s.stage, &s.spec, s.vars);
    }
    // A switch of the live Service is confirmed as soon as the apiserver
    // accepted it. Replaying an unconfirmed switch restores exactly the
    // stored state: the checkpoint is then the same state again (no
    // write, so no watch event waking this controller at once if the
    // confirmation keeps failing).
    if d.switches {
        if old.engine.as_ref() != Some(&crate::checkpoint::stored_form(&d.state)?) {
            d.state.seq += 1;
        }
        crate::checkpoint::before_routing(&c.bluegreens, c.bg, &d.state, &d.queue).await?;
    }
    c.ctx
        .written
        .record(&c.bg.uid().unwrap_or_default(), d.state.seq);
    let mut done = Done {
        routed: true,
        router: old.router.clone(),
        ..Done::default()
    };
    let mut i = 0;
    while i < d.queue.len() {
        let action = d.queue[i].clone();
        i += 1;
        let more = carry_out(c, seen, &mut d.state, action, &mut done, old, now).await?;
        d.queue.extend(more);
    }
    if let Some(a) = &d.state.analysis
        && a.run.verdict.is_some()
    {
        d.state.analysis = None;
    }
    // Once a color serves, the workload itself runs nothing.
    if d.state.machine.routing.is_some() && seen.workload.spec.replicas != Some(0) {
        c.scale_workload(0).await?;
    }
    Ok(done)
}

/// Events about what the engine was told: a first adoption, a command it
/// does not know, commands it refused.
async fn announce(c: &Cluster<'_>, seen: &Observation, d: &Decision) {
    if d.adopted {
        let note = format!(
            "adopting Deployment {} at revision {}",
            c.bg.spec.workload_ref.name, seen.revision
        );
        c.event(false, "Adopted", note).await;
    }
    if let Some(value) = &d.invalid_command {
        let note = format!(
            "{} {value:?}: use promote, promote-full, abort, rollback or retry",
            annotations::COMMAND
        );
        c.event(true, "InvalidCommand", note).await;
    }
    for r in &d.rejected {
        let note = format!("BlueGreen {}: {r}", c.id());
        c.event(true, "CommandRejected", note).await;
    }
}

/// Carries out one action; returns the actions it led to (a confirmed
/// switch lets the engine go on).
async fn carry_out(
    c: &Cluster<'_>,
    seen: &Observation,
    state: &mut EngineState,
    action: Action,
    done: &mut Done,
    old: &BlueGreenStatus,
    now: Millis,
) -> Result<Vec<Action>, Error> {
    let bg = c.bg;
    match action {
        Action::Deploy {
            color,
            revision,
            replicas,
        } => {
            let Some(t) = c.template_of(&revision, &seen.workload).await? else {
                return Err(Error::NoTemplate { revision });
            };
            let d = objects::color_deployment(bg, color, &revision, &t, replicas as i32);
            match c.apply_deployment(&d).await {
                Ok(()) => done.deployed[color_index(color)] = Some(t),
                // Refused (admission, quota, an invalid object): it will
                // not pass by itself. The reconcile goes on so that the
                // release is recorded and its progress deadline runs; the
                // write is tried again on the next reconciles.
                Err(Error::Kube(kube::Error::Api(e))) if refusal(e.code) => {
                    done.refused = Some(format!(
                        "the apiserver refused Deployment {}/{}: {}",
                        c.ns,
                        d.name_any(),
                        e.message
                    ));
                }
                Err(e) => return Err(e),
            }
        }
        Action::Scale { color, replicas } => c.scale(color, replicas as i32).await?,
        Action::Retire { color } => c.scale(color, 0).await?,
        Action::Route(routing) => return route(c, seen, state, routing, done, old).await,
        Action::StartAnalysis {
            stage,
            color,
            revision,
        } => {
            let spec = match stage {
                Stage::PrePromotion => bg.spec.analysis.pre_promotion.as_ref(),
                Stage::PostPromotion => bg.spec.analysis.post_promotion.as_ref(),
            };
            if let Some(spec) = spec {
                crate::checks::begin(&c.ctx.client, bg, &state.machine, stage, &revision);
                state.analysis = Some(RunningAnalysis {
                    stage,
                    color,
                    revision,
                    run: Run::new(spec.limits()),
                    next_check: spec.first_check_ms(now),
                });
            }
        }
        Action::StopAnalysis => state.analysis = None,
        // Called in the background; the answers come in on a later reconcile.
        Action::RunHooks { kind, .. } => crate::hooks::start_round(bg, &state.machine, kind),
        Action::Event(e) => release_event(c, state, &e).await,
    }
    Ok(Vec::new())
}

/// Writes `routing` with the BlueGreen's router. A failure is recorded in
/// the Routed condition (only that: the engine state a checkpoint may have
/// written stays) and ends the reconcile.
async fn route(
    c: &Cluster<'_>,
    seen: &Observation,
    state: &mut EngineState,
    routing: Routing,
    done: &mut Done,
    old: &BlueGreenStatus,
) -> Result<Vec<Action>, Error> {
    let generation = c.bg.metadata.generation;
    let ports = c.color_ports(&seen.workload.spec.template, &done.deployed);
    let target = routers::Target {
        client: &c.ctx.client,
        bg: c.bg,
        ns: &c.ns,
        ports: &ports,
        cache: Some(&c.ctx.cache),
        settled: false,
        router_image: c.ctx.router_image.as_deref(),
    };
    let ack = match routers::route(&target, routing, &mut done.router).await {
        Ok(ack) => ack,
        Err(e) => {
            let cond = routers::routed_condition(Err(&e), generation);
            let mut failed = old.clone();
            let news = routers::is_news(&failed.conditions, &cond);
            set_condition(&mut failed, cond);
            let patch = serde_json::json!({"status": {"conditions": failed.conditions}});
            c.bluegreens
                .patch_status(&c.name, &super::patch_params(), &Patch::Merge(patch))
                .await?;
            if news {
                c.event(true, "RouteFailed", e.to_string()).await;
            }
            return Err(e);
        }
    };
    done.routed = ack == routers::Ack::Confirmed;
    let cond = routers::routed_condition(Ok(&ack), generation);
    if routers::is_news(&old.conditions, &cond) && cond.status == "False" {
        c.event(true, &cond.reason, cond.message.clone()).await;
    }
    done.routed_condition = Some(cond);
    if ack != routers::Ack::Confirmed {
        return Ok(Vec::new());
    }
    let routed = Input::Routed {
        active: routing.active,
    };
    Ok(state.machine.handle(now_ms(), routed).unwrap_or_default())
}

/// A step of the release: counted, handed to the notifiers, logged and
/// published as an Event.
async fn release_event(c: &Cluster<'_>, state: &EngineState, e: &Event) {
    let ctx = c.ctx;
    ctx.metrics.event(e);
    if let Some(problem) = crate::hooks::on_event(&ctx.client, c.bg, &state.machine, e).await {
        c.event(true, "NotificationFailed", problem).await;
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
        EventKind::PreviewReady => format!("{} {}", e.message, preview_reached(c.bg)),
        _ => e.message.clone(),
    };
    // Each release step in the log too, at info (warn when it went wrong).
    let id = c.id();
    if e.kind.is_warning() {
        tracing::warn!(bluegreen = %id, revision = %e.revision, event = ?e.kind, "{message}");
    } else {
        tracing::info!(bluegreen = %id, revision = %e.revision, event = ?e.kind, "{message}");
    }
    c.event(e.kind.is_warning(), &format!("{:?}", e.kind), message)
        .await;
}

/// An apiserver answer that refuses the object itself (admission denied,
/// quota exceeded, invalid), as opposed to a conflict or an outage.
fn refusal(code: u16) -> bool {
    matches!(code, 400 | 403 | 422)
}
