//! The BlueGreen's status as a value: what it should say, computed from
//! the engine's state and what this reconcile saw and did, with no
//! request to the apiserver. Tests call [`desired`] directly.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::Api;
use kube::api::Patch;
use teal_api::bluegreen::{
    AnalysisStatus, CheckValues, MetricValue, ReleaseRecord, RouterStatus, labels,
};
use teal_api::hooks::HookStatus;
use teal_api::{BlueGreen, BlueGreenStatus};
use teal_core::Color;
use teal_core::release::{Machine, Stage, Verdict};

use super::{Error, RunningAnalysis};

/// Condition types.
pub mod kind {
    pub const READY: &str = "Ready";
    pub const AVAILABLE: &str = "Available";
    pub const PROGRESSING: &str = "Progressing";
    pub const ROUTED: &str = "Routed";
}

/// Condition reasons set here.
pub mod reason {
    /// Ready: the reconcile went through.
    pub const RECONCILED: &str = "Reconciled";
    /// Ready=False: spec.workloadRef names no Deployment.
    pub const WORKLOAD_NOT_FOUND: &str = "WorkloadNotFound";
    /// Ready=False: a Service teal would write belongs to someone else.
    pub const SERVICE_CONFLICT: &str = "ServiceConflict";
    /// Ready=False: `status.engine` cannot be read.
    pub const ENGINE_UNREADABLE: &str = "EngineStateUnreadable";
    /// Ready=False: the apiserver refused a color Deployment.
    pub const DEPLOYMENT_REFUSED: &str = "DeploymentRefused";
    /// Ready=False: a watch the controller needs fails.
    pub const WATCH_FAILED: &str = "WatchFailed";
    /// Available: a color serves.
    pub const SERVING: &str = "Serving";
    pub const NOT_SERVING: &str = "NotServing";
    /// Progressing: a release is under way, none is, or one stopped.
    pub const RELEASING: &str = "Releasing";
    pub const IDLE: &str = "Idle";
    pub const STOPPED: &str = "Stopped";
}

/// The phase shown while a Service teal would write belongs to someone
/// else; the engine's own phase is shown again once the conflict is gone.
pub const CONFLICT_PHASE: &str = "Conflict";
/// The phase of an adopted BlueGreen whose router has not taken the
/// traffic yet.
pub const INITIALIZING_PHASE: &str = "Initializing";

/// Why a reconcile stopped before the engine ran: the status says so and
/// nothing else changes.
#[derive(Debug, Clone, PartialEq)]
pub enum Blocked {
    WorkloadNotFound(String),
    ServiceConflict(String),
    EngineUnreadable(String),
}

impl Blocked {
    pub fn reason(&self) -> &'static str {
        match self {
            Blocked::WorkloadNotFound(_) => reason::WORKLOAD_NOT_FOUND,
            Blocked::ServiceConflict(_) => reason::SERVICE_CONFLICT,
            Blocked::EngineUnreadable(_) => reason::ENGINE_UNREADABLE,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            Blocked::WorkloadNotFound(m)
            | Blocked::ServiceConflict(m)
            | Blocked::EngineUnreadable(m) => m,
        }
    }

    /// When to look again (a watch event wakes it sooner).
    pub fn retry_ms(&self) -> u64 {
        match self {
            Blocked::EngineUnreadable(_) => 60_000,
            _ => 30_000,
        }
    }
}

/// The status of a blocked BlueGreen.
pub fn blocked(old: &BlueGreenStatus, generation: Option<i64>, b: &Blocked) -> BlueGreenStatus {
    let mut status = old.clone();
    status.observed_generation = generation;
    let msg = b.message();
    set_condition(
        &mut status,
        condition(kind::READY, false, b.reason(), msg, generation),
    );
    if let Blocked::ServiceConflict(_) = b {
        // `kubectl get bg` shows it in the PHASE column.
        status.phase = Some(CONFLICT_PHASE.into());
    }
    status.message = Some(msg.to_string());
    status
}

/// What a reconcile saw and did, besides the engine's state.
#[derive(Debug, Default, Clone)]
pub struct Facts {
    pub generation: Option<i64>,
    /// The workload's revision.
    pub revision: String,
    /// The engine state as written to status.
    pub engine: Option<serde_json::Value>,
    /// The operator command last read from the annotation.
    pub last_command: Option<String>,
    /// What the router wrote (the old status's when nothing was routed).
    pub router: Option<RouterStatus>,
    /// The Routed condition (`None`: not routed in this reconcile, the old
    /// condition stays).
    pub routed_condition: Option<Condition>,
    /// Whether the router confirmed the routes it was given.
    pub routed: bool,
    /// Why the apiserver refused a color Deployment.
    pub refused: Option<String>,
    /// The analysis as recorded when a check came in (kept when its
    /// verdict ended the stage in this reconcile).
    pub recorded_analysis: Option<AnalysisStatus>,
    pub hooks: Vec<HookStatus>,
    /// The live color Deployment's current size (the scale subresource).
    pub live_replicas: Option<i32>,
    /// Message while the live color grows or shrinks.
    pub resizing: Option<String>,
    /// The autoscaler condition: `None` leaves it, `Some(None)` removes it.
    pub autoscaler: Option<Option<(bool, String, String)>>,
    /// The MetricTemplates condition: `None` removes it.
    pub templates: Option<(bool, String)>,
}

/// The autoscaler condition's type (see `crate::autoscaling`).
use crate::autoscaling::CONDITION as AUTOSCALER;
use crate::templates::CONDITION as TEMPLATES;

/// The status the BlueGreen should have.
pub fn desired(
    old: &BlueGreenStatus,
    name: &str,
    m: &Machine,
    analysis: Option<&RunningAnalysis>,
    f: Facts,
) -> BlueGreenStatus {
    let g = f.generation;
    let mut status = old.clone();
    status.observed_generation = g;
    if f.last_command.is_some() {
        status.last_command = f.last_command;
    }
    status.router = f.router;
    if let Some(c) = f.routed_condition {
        set_condition(&mut status, c);
    }
    if let Some(a) = f.recorded_analysis {
        status.analysis = Some(a);
    }
    status.phase = Some(m.phase_name());
    status.active_color = m.routing.map(|r| r.active);
    status.active_revision = m.routing.map(|_| m.active.revision.clone());
    status.preview_color = m.preview();
    status.preview_revision = m
        .preview()
        .and_then(|c| m.requested.get(&c))
        .and_then(|r| r.revision.clone());
    status.desired_revision = Some(f.revision);
    status.message = Some(match &m.release {
        Some(r) => r.message.clone(),
        None if m.routing.is_none() => "waiting for the first color to be ready".into(),
        None => "live".into(),
    });
    if !m.in_progress()
        && let Some(resizing) = f.resizing
    {
        status.message = Some(resizing);
    }
    let live = m.routing.map(|r| r.active);
    status.selector = live.map(|c| format!("{}={name},{}={c}", labels::BLUEGREEN, labels::COLOR));
    status.replicas = live.map(|_| f.live_replicas.unwrap_or(0));
    // Adopted, but the router has not taken the traffic yet (router type
    // teal: no router pod ready, so no live Service): not Healthy until it has.
    if !f.routed && m.routing.is_some() && m.release.is_none() && m.history.is_empty() {
        let why = status
            .conditions
            .iter()
            .find(|c| c.type_ == kind::ROUTED)
            .map(|c| c.message.clone())
            .unwrap_or_default();
        status.phase = Some(INITIALIZING_PHASE.into());
        status.message = Some(format!("waiting for the router to take the traffic: {why}"));
    }
    status.history = m.history.iter().map(ReleaseRecord::from).collect();
    status.hooks = f.hooks;
    if let Some(a) = analysis {
        status.analysis = Some(analysis_status(a));
    }
    let ready = match &f.refused {
        None => condition(kind::READY, true, reason::RECONCILED, "", g),
        Some(why) => condition(kind::READY, false, reason::DEPLOYMENT_REFUSED, why, g),
    };
    set_condition(&mut status, ready);
    let serving = m.routing.is_some();
    set_condition(
        &mut status,
        condition(
            kind::AVAILABLE,
            serving && m.phase_name() != "Degraded",
            if serving {
                reason::SERVING
            } else {
                reason::NOT_SERVING
            },
            "",
            g,
        ),
    );
    let message = status.message.clone().unwrap_or_default();
    let progressing = if m.in_progress() {
        reason::RELEASING
    } else if m.phase_name() == "Healthy" {
        reason::IDLE
    } else {
        reason::STOPPED
    };
    set_condition(
        &mut status,
        condition(kind::PROGRESSING, m.in_progress(), progressing, &message, g),
    );
    match f.autoscaler {
        Some(Some((ok, reason, message))) => {
            set_condition(&mut status, condition(AUTOSCALER, ok, &reason, &message, g))
        }
        Some(None) => status.conditions.retain(|c| c.type_ != AUTOSCALER),
        None => {}
    }
    match f.templates {
        Some((ok, message)) => {
            let reason = if ok {
                crate::templates::RESOLVED
            } else {
                crate::templates::UNRESOLVED
            };
            set_condition(&mut status, condition(TEMPLATES, ok, reason, &message, g));
        }
        None => status.conditions.retain(|c| c.type_ != TEMPLATES),
    }
    status.engine = f.engine;
    status
}

/// A Warning Event (and for a refused Deployment a log line) to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    pub reason: String,
    pub message: String,
    /// Also logged at WARN.
    pub logged: bool,
}

/// Conditions of `new` that went wrong since `old`, each worth an Event
/// once (not again on every reconcile).
pub fn notices(old: &BlueGreenStatus, new: &BlueGreenStatus) -> Vec<Notice> {
    let mut out = Vec::new();
    for c in &new.conditions {
        if c.status != "False" {
            continue;
        }
        let news = match c.type_.as_str() {
            kind::READY if c.reason == reason::DEPLOYMENT_REFUSED => condition_is_news(old, c),
            AUTOSCALER | TEMPLATES => crate::routers::is_news(&old.conditions, c),
            _ => false,
        };
        if news {
            out.push(Notice {
                reason: c.reason.clone(),
                message: c.message.clone(),
                logged: c.reason == reason::DEPLOYMENT_REFUSED,
            });
        }
    }
    out
}

pub fn condition(
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

/// Sets `c`, keeping the transition time of a condition whose status did
/// not change.
pub fn set_condition(status: &mut BlueGreenStatus, mut c: Condition) {
    if let Some(old) = status.conditions.iter_mut().find(|o| o.type_ == c.type_) {
        if old.status == c.status {
            c.last_transition_time = old.last_transition_time.clone();
        }
        *old = c;
    } else {
        status.conditions.push(c);
    }
}

/// Whether `c` says something `old` did not (another status, reason or
/// message): worth an Event and a log line.
fn condition_is_news(old: &BlueGreenStatus, c: &Condition) -> bool {
    !old.conditions.iter().any(|o| {
        o.type_ == c.type_ && o.status == c.status && o.reason == c.reason && o.message == c.message
    })
}

pub fn analysis_status(a: &RunningAnalysis) -> AnalysisStatus {
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

/// Writes `new` over `old` as a merge patch of what changed; nothing when
/// nothing did. Returns the BlueGreen as written.
pub async fn write(
    api: &Api<BlueGreen>,
    name: &str,
    old: &BlueGreenStatus,
    new: BlueGreenStatus,
) -> Result<Option<BlueGreen>, Error> {
    if *old == new {
        return Ok(None);
    }
    let old = serde_json::to_value(old).map_err(Error::serialize("status"))?;
    let new = serde_json::to_value(&new).map_err(Error::serialize("status"))?;
    let patch = serde_json::json!({ "status": merge_diff(&old, new) });
    let written = api
        .patch_status(name, &super::patch_params(), &Patch::Merge(patch))
        .await?;
    Ok(Some(written))
}

/// A JSON merge patch from `old` to `new`: fields `new` no longer has are
/// set to null, so they are removed rather than kept from `old`.
pub(super) fn merge_diff(old: &serde_json::Value, new: serde_json::Value) -> serde_json::Value {
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

/// Index of a color in per-color arrays.
pub fn color_index(c: Color) -> usize {
    match c {
        Color::Blue => 0,
        Color::Green => 1,
    }
}
