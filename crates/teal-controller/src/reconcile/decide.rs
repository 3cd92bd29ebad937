//! Decide: what the release engine does with what a reconcile saw. Pure:
//! no request, no clock (the time is given), so tests call it directly.

use std::time::Duration;

use kube::ResourceExt;
use teal_analysis::QueryVars;
use teal_api::bluegreen::AnalysisStatus;
use teal_api::spec::AnalysisStageSpec;
use teal_api::{BlueGreen, BlueGreenStatus};
use teal_core::Color;
use teal_core::release::{Action, Command, Input, Machine, Millis, Stage};

use super::observe::Observation;
use super::status::{analysis_status, color_index};
use super::{EngineState, IDLE_RESYNC_MS, parse_command, policy};
use crate::objects;

/// An analysis check to start in the background: the stage's spec, the
/// values its queries use, and the engine as it was when the check fell
/// due (which release it belongs to).
#[derive(Debug, Clone)]
pub struct CheckToStart {
    pub stage: Stage,
    pub spec: AnalysisStageSpec,
    pub vars: QueryVars,
    pub machine: Machine,
}

/// What the engine decided.
#[derive(Debug)]
pub struct Decision {
    pub state: EngineState,
    /// The actions to carry out, in order.
    pub queue: Vec<Action>,
    /// The engine changes where traffic goes: its state is written before
    /// the switch (see `crate::checkpoint`).
    pub switches: bool,
    /// A BlueGreen adopted by this reconcile (no state before).
    pub adopted: bool,
    /// A new value of the command annotation, read now.
    pub last_command: Option<String>,
    /// The annotation's value when it is no command teal knows.
    pub invalid_command: Option<String>,
    /// Commands the engine refused, and why.
    pub rejected: Vec<String>,
    /// The analysis as recorded with the check that came in.
    pub recorded_analysis: Option<AnalysisStatus>,
    pub start_check: Option<CheckToStart>,
}

/// Feeds the engine what `seen` holds, at `now`.
pub fn decide(bg: &BlueGreen, old: &BlueGreenStatus, seen: &Observation, now: Millis) -> Decision {
    let mut queue = Vec::new();
    let adopted = seen.saved.is_none();
    let mut state = match seen.saved.clone() {
        Some(mut s) => {
            let replicas = bg
                .spec
                .replicas
                .map(|r| r as u32)
                .unwrap_or(s.machine.policy.replicas);
            s.machine.policy = policy(bg, replicas);
            queue.extend(crate::checkpoint::unconfirmed_switch(&s));
            s
        }
        None => {
            let replicas = bg
                .spec
                .replicas
                .or(seen.workload.spec.replicas)
                .unwrap_or(1)
                .max(1) as u32;
            let (m, actions) = Machine::new(policy(bg, replicas), seen.revision.clone());
            queue.extend(actions);
            EngineState {
                machine: m,
                analysis: None,
                seq: 0,
                command: None,
            }
        }
    };
    let live = state.machine.routing.map(|r| r.active);
    let observed = Color::ALL
        .into_iter()
        .map(|c| {
            let o = &seen.colors[color_index(c)];
            objects::color_status(
                c,
                o.deployment.as_ref(),
                &o.replica_sets,
                &o.pods,
                live == Some(c),
            )
        })
        .collect();
    // An operator command given through the annotation.
    let (mut command, mut last_command, mut invalid_command) = (None, None, None);
    if let Some(value) = &seen.command
        && old.last_command.as_ref() != Some(value)
    {
        last_command = Some(value.clone());
        // Already consumed when a checkpoint saved the state it led to but
        // the reconcile ended before status said so: do not apply it twice.
        let consumed = state.command.as_ref() == Some(value);
        state.command = Some(value.clone());
        match parse_command(value) {
            _ if consumed => {}
            Some(cmd) => command = Some(cmd),
            None => invalid_command = Some(value.clone()),
        }
    }
    let mut inputs = first_inputs(seen.revision.clone(), observed, command);
    let (recorded_analysis, start_check) = analysis(bg, &mut state, seen, now, &mut inputs);
    inputs.extend(seen.hooks.clone());
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
    let switches = queue.iter().any(|a| matches!(a, Action::Route(_)));
    // Keep the routes written (and re-check an unconfirmed switch) on every
    // reconcile, also when the router type changed.
    if let Some(r) = state.machine.routing
        && !switches
    {
        queue.insert(0, Action::Route(r));
    }
    queue.extend(redeploys(&state.machine, &queue, &seen.running));
    Decision {
        state,
        queue,
        switches,
        adopted,
        last_command,
        invalid_command,
        rejected,
        recorded_analysis,
        start_check,
    }
}

/// The analysis stage under way: the verdict of a check that came in (an
/// input to the engine, and the analysis as recorded with it), and the
/// next check if one is due.
fn analysis(
    bg: &BlueGreen,
    state: &mut EngineState,
    seen: &Observation,
    now: Millis,
    inputs: &mut Vec<Input>,
) -> (Option<AnalysisStatus>, Option<CheckToStart>) {
    let machine = state.machine.clone();
    let Some(a) = state.analysis.as_mut() else {
        return (None, None);
    };
    let spec = match a.stage {
        Stage::PrePromotion => bg.spec.analysis.pre_promotion.clone(),
        Stage::PostPromotion => bg.spec.analysis.post_promotion.clone(),
    };
    let Some(spec) = spec else {
        return (None, None);
    };
    let mut recorded = None;
    if let Some((mut ms, hooks)) = seen.check.clone() {
        spec.mark_dry_run(&mut ms);
        let verdict = a.run.record_checks(ms, hooks);
        // Recorded now: a verdict ends the stage before status is written.
        recorded = Some(analysis_status(a));
        if let Some(v) = verdict {
            inputs.push(Input::Analysis {
                stage: a.stage,
                revision: a.revision.clone(),
                verdict: v,
            });
        }
    }
    let mut start = None;
    if now >= a.next_check {
        // A check still under way (a slow endpoint) delays the next one
        // by an interval; none runs twice at once.
        a.next_check = now + spec.interval.as_millis();
        start = Some(CheckToStart {
            stage: a.stage,
            vars: QueryVars {
                name: bg.name_any(),
                namespace: bg.namespace().unwrap_or_default(),
                color: a.color,
                revision: a.revision.clone(),
                service: objects::service_name(bg),
            },
            spec,
            machine,
        });
    }
    (recorded, start)
}

/// A color Deployment that is missing or runs another revision than the
/// engine asked for is written again: a write refused earlier (an
/// admission policy, a quota) is retried once the cause is gone.
fn redeploys(m: &Machine, queue: &[Action], running: &[Option<String>; 2]) -> Vec<Action> {
    let mut out = Vec::new();
    for (color, req) in &m.requested {
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
        if running[color_index(*color)].as_ref() != Some(&rev) {
            out.push(Action::Deploy {
                color: *color,
                revision: rev,
                replicas: req.replicas,
            });
        }
    }
    out
}

/// The inputs of a reconcile known before any analysis or hook: the
/// desired revision, what each color runs now, then the operator's command.
/// A command acts on the latest observation, never on one from an earlier
/// reconcile: a promote would otherwise cut over to a color whose pods went
/// away since.
pub fn first_inputs(
    revision: String,
    observed: Vec<teal_core::release::ColorStatus>,
    command: Option<Command>,
) -> Vec<Input> {
    std::iter::once(Input::Revision(revision))
        .chain(observed.into_iter().map(Input::Observed))
        .chain(command.map(Input::Command))
        .collect()
}

/// How a reconcile's end bears on the next one.
#[derive(Debug, Default, Clone, Copy)]
pub struct Pending {
    /// The router confirmed the routes.
    pub routed: bool,
    /// The apiserver refused a color Deployment.
    pub refused: bool,
    /// A metric template is missing.
    pub templates_missing: bool,
}

/// How a refused color Deployment is written again when no release polls
/// faster.
pub const REFUSED_RETRY_MS: Millis = 10_000;

/// When to reconcile again if no watch event comes first. Watches wake a
/// reconcile on every change of the BlueGreen, its workload, color
/// Deployments, Pods and Services; what they do not see (deadlines,
/// analysis checks, router acknowledgements, hook rounds) runs on a timer.
/// A BlueGreen with nothing of that pending is only re-read now and then,
/// to heal anything a watch may have missed.
pub fn requeue_after(state: &EngineState, p: Pending, now: Millis) -> Duration {
    let m = &state.machine;
    let idle = m.release.as_ref().is_none_or(|r| r.phase.is_terminal())
        && state.analysis.is_none()
        && p.routed;
    let longest = if idle { IDLE_RESYNC_MS } else { 30_000 };
    let wait = [
        m.next_deadline(),
        state.analysis.as_ref().map(|a| a.next_check),
    ]
    .into_iter()
    .flatten()
    .map(|t| t.saturating_sub(now))
    .min()
    .unwrap_or(longest)
    .clamp(200, longest);
    // While a color is starting, poll readiness quickly (watches on
    // Deployments also trigger reconciles); a refused write is tried again
    // soon, also with no release under way (a first adoption).
    let wait = if m.in_progress() {
        wait.min(2_000)
    } else if p.refused {
        wait.min(REFUSED_RETRY_MS)
    } else if p.templates_missing {
        // Templates are not watched: look again soon for one created.
        wait.min(crate::templates::RETRY_MS)
    } else {
        wait
    };
    Duration::from_millis(wait)
}
