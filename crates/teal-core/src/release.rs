//! The release state machine.
//!
//! A [`Machine`] holds what is live, what is being released and what has been
//! asked of the runtime. [`Machine::handle`] takes one [`Input`] (an
//! observation, an operator command or the passing of time) at a given
//! instant and returns the [`Action`]s the runtime must carry out, in order.
//! The same machine drives local mode and the Kubernetes controller.
//!
//! Guarantees (checked by property tests in `tests/release_props.rs`):
//! - exactly one color is active at any time;
//! - production traffic is only ever switched to a color observed ready at
//!   the revision and replica count the machine asked for;
//! - abort and rollback end with the previous revision live;
//! - a release superseded before its cutover never goes live.
//!
//! The policy may be replaced between two inputs (the controller reads the
//! spec on every reconcile): the next input brings every color to the size
//! the new policy asks for (see [`Machine::handle`]), so a change of
//! `replicas` resizes the live color at once and a release cuts over at the
//! size asked for when it does.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::Color;
use crate::hooks::{HookKind, HookResult};

/// Milliseconds on a clock of the caller's choosing (monotonic or wall).
pub type Millis = u64;

/// How many finished releases the machine remembers.
pub const HISTORY_LIMIT: usize = 10;

/// A revision running in a color.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slot {
    pub color: Color,
    pub revision: String,
}

/// How a release moves on once pre-promotion checks pass.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "mode")]
pub enum Promotion {
    /// Cut over as soon as the checks pass.
    Auto,
    /// Wait for an operator's `promote`, or until `auto_promote_after_ms`.
    Manual {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        auto_promote_after_ms: Option<Millis>,
    },
}

/// The knobs of a release, taken from the user's spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Policy {
    /// Replicas of the live color.
    pub replicas: u32,
    /// Replicas of the idle color while it is previewed (scaled up to
    /// `replicas` before cutover); `None` means full size from the start.
    pub preview_replicas: Option<u32>,
    pub promotion: Promotion,
    pub pre_promotion_analysis: bool,
    pub post_promotion_analysis: bool,
    /// Time allowed to become ready (and for a cutover to be confirmed).
    pub progress_deadline_ms: Millis,
    /// How long the previous color stays up after cutover, for instant rollback.
    pub scale_down_delay_ms: Millis,
    /// Which webhooks hold the release.
    #[serde(default)]
    pub hooks: HookPolicy,
}

/// Webhooks the release waits for (the others never hold it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HookPolicy {
    /// `pre-rollout` hooks run before analysis; a failure ends the release.
    #[serde(default)]
    pub pre_rollout: bool,
    /// `confirm-promotion` hooks gate the cutover until they answer 2xx.
    #[serde(default)]
    pub confirm_promotion: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            replicas: 1,
            preview_replicas: None,
            promotion: Promotion::Auto,
            pre_promotion_analysis: false,
            post_promotion_analysis: false,
            progress_deadline_ms: 600_000,
            scale_down_delay_ms: 30_000,
            hooks: HookPolicy::default(),
        }
    }
}

impl Policy {
    fn preview_size(&self) -> u32 {
        self.preview_replicas
            .map(|p| p.min(self.replicas))
            .unwrap_or(self.replicas)
    }
}

/// Where a release stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub enum Phase {
    /// The idle color runs the new revision; waiting until it is ready.
    Deploying,
    /// The idle color is ready and reachable with the preview header;
    /// pre-promotion analysis runs.
    Previewing,
    /// Checks passed (or were inconclusive); waiting for `promote`.
    AwaitingPromotion,
    /// The idle color is scaled to full size before cutover.
    ScalingUp,
    /// Production traffic was switched; waiting for the router to confirm.
    CuttingOver,
    /// The new color is live; post-promotion analysis runs.
    PostPromotion,
    /// The previous color stays up for instant rollback.
    ScaleDownDelay,
    /// Reverting after cutover: waiting for the previous color to be ready
    /// so traffic can go back to it.
    Reverting,
    Succeeded,
    Aborted,
    RolledBack,
    Failed,
    Superseded,
}

impl Phase {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Phase::Succeeded
                | Phase::Aborted
                | Phase::RolledBack
                | Phase::Failed
                | Phase::Superseded
        )
    }

    /// Phases in which the release's color takes production traffic.
    pub fn is_live(self) -> bool {
        matches!(
            self,
            Phase::CuttingOver | Phase::PostPromotion | Phase::ScaleDownDelay
        )
    }

    fn before_cutover(self) -> bool {
        matches!(
            self,
            Phase::Deploying | Phase::Previewing | Phase::AwaitingPromotion | Phase::ScalingUp
        )
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// How a finished release ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Promoted,
    RolledBack,
    Aborted,
    Failed,
    Superseded,
}

impl Outcome {
    fn phase(self) -> Phase {
        match self {
            Outcome::Promoted => Phase::Succeeded,
            Outcome::RolledBack => Phase::RolledBack,
            Outcome::Aborted => Phase::Aborted,
            Outcome::Failed => Phase::Failed,
            Outcome::Superseded => Phase::Superseded,
        }
    }
}

/// One release, in progress or finished.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Release {
    pub revision: String,
    pub color: Color,
    /// What was live when the release started; where abort and rollback go.
    pub previous: Slot,
    pub phase: Phase,
    pub started_at: Millis,
    pub phase_since: Millis,
    pub message: String,
    /// A redeploy of an older revision: no analysis, no manual gate.
    #[serde(default)]
    pub rollback: bool,
    /// `promote` arrived while analysis was still running.
    #[serde(default)]
    pub promote_requested: bool,
    /// When production traffic was switched to this release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switched_at: Option<Millis>,
    /// When the router confirmed the switch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switch_confirmed_at: Option<Millis>,
    /// Analysis was inconclusive: only an operator moves the release on.
    #[serde(default)]
    pub held: bool,
    /// While reverting: how the release will be recorded once traffic is back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revert: Option<(Outcome, String)>,
    /// Webhooks the release waits for now (pre-rollout or confirm-promotion).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_on: Option<HookKind>,
    /// Every confirm-promotion webhook answered 2xx.
    #[serde(default)]
    pub gate_open: bool,
}

/// A finished release as kept in history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    pub revision: String,
    pub color: Color,
    pub outcome: Outcome,
    pub reason: String,
    pub started_at: Millis,
    pub ended_at: Millis,
    /// An operator rollback to an earlier revision after the release it
    /// undoes had finished: released like any other, but not what the
    /// workload asks for.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rollback: bool,
}

/// What the runtime observed of one color.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ColorStatus {
    pub color: Color,
    /// Revision the color's replicas run; `None` when nothing runs.
    pub revision: Option<String>,
    /// Replicas of that revision that pass their health checks.
    pub ready_replicas: u32,
    /// Set when the color cannot become ready (crash loop, image error…).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

/// Analysis stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Stage {
    PrePromotion,
    PostPromotion,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::PrePromotion => "pre-promotion",
            Stage::PostPromotion => "post-promotion",
        })
    }
}

/// The final word of an analysis stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "verdict", content = "reason")]
pub enum Verdict {
    Pass,
    Fail(String),
    Inconclusive(String),
}

/// Operator commands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Command {
    /// Move past the manual gate; `full` also skips analysis still running.
    Promote { full: bool },
    /// Stop the release and put the previous revision back.
    Abort,
    /// Go back to the previous revision, during or after a release.
    Rollback,
    /// Start again a release that was aborted, rolled back or failed.
    Retry,
}

/// Everything the machine reacts to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Input {
    /// The desired revision (the workload's template, or `deploy`).
    Revision(String),
    Observed(ColorStatus),
    /// The router serves production from `active` (acknowledges a switch).
    Routed {
        active: Color,
    },
    Analysis {
        stage: Stage,
        revision: String,
        verdict: Verdict,
    },
    Command(Command),
    /// Time passed; deadlines are checked.
    Tick,
    /// One round of the webhooks of `kind` asked for with
    /// [`Action::RunHooks`].
    Hooks {
        kind: HookKind,
        revision: String,
        results: Vec<HookResult>,
    },
}

/// Where production and preview traffic go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Routing {
    pub active: Color,
    pub preview: Option<Color>,
}

/// Something the runtime must do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Action {
    /// Run `revision` in `color` with `replicas` replicas.
    Deploy {
        color: Color,
        revision: String,
        replicas: u32,
    },
    /// Resize `color`, keeping its revision.
    Scale {
        color: Color,
        replicas: u32,
    },
    /// Install this routing atomically; a change of `active` is a cutover
    /// and must be acknowledged with [`Input::Routed`].
    Route(Routing),
    StartAnalysis {
        stage: Stage,
        color: Color,
        revision: String,
    },
    StopAnalysis,
    /// Call the webhooks of `kind` and answer with [`Input::Hooks`]:
    /// pre-rollout once; confirm-promotion again and again (every few
    /// seconds) for as long as the release waits on it.
    RunHooks {
        kind: HookKind,
        color: Color,
        revision: String,
    },
    /// Drain `color` and take it down (scale to zero / stop its processes).
    Retire {
        color: Color,
    },
    Event(Event),
}

/// Something worth telling people about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    pub kind: EventKind,
    pub revision: String,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub enum EventKind {
    ReleaseStarted,
    PreviewReady,
    AnalysisPassed,
    AnalysisFailed,
    AnalysisInconclusive,
    AwaitingPromotion,
    Promoting,
    Switched,
    Succeeded,
    Aborted,
    RolledBack,
    Failed,
    DeadlineExceeded,
    Superseded,
    Degraded,
    /// Webhooks the release waited for answered 2xx.
    HookPassed,
    /// A webhook failed or asked for a rollback.
    HookFailed,
}

impl EventKind {
    /// Whether this is a warning (Kubernetes Event type `Warning`).
    pub fn is_warning(self) -> bool {
        matches!(
            self,
            EventKind::AnalysisFailed
                | EventKind::AnalysisInconclusive
                | EventKind::Aborted
                | EventKind::RolledBack
                | EventKind::Failed
                | EventKind::DeadlineExceeded
                | EventKind::Degraded
                | EventKind::HookFailed
        )
    }
}

/// A command that does not apply in the current state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Rejected(pub String);

/// What the machine asked the runtime to run in a color.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Requested {
    pub revision: Option<String>,
    pub replicas: u32,
    /// The size asked for before a resize of this color that is not
    /// observed done yet: while it grows, it is short only of fewer
    /// replicas than it had.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resized_from: Option<u32>,
}

/// The release state of one application.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Machine {
    pub policy: Policy,
    /// The color taking production traffic (or about to, before the first
    /// routing is installed).
    pub active: Slot,
    /// The routing last asked of the runtime; `None` until the first color
    /// is ready.
    pub routing: Option<Routing>,
    /// The newest revision asked for.
    pub desired: String,
    pub release: Option<Release>,
    /// The revision that was live before `active`, for rollback after the
    /// scale-down window.
    pub previous_revision: Option<String>,
    pub requested: BTreeMap<Color, Requested>,
    pub observed: BTreeMap<Color, ColorStatus>,
    pub history: Vec<Record>,
    /// A revision that arrived while a cutover awaited confirmation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<String>,
}

impl Machine {
    /// Starts managing an application whose current revision is `revision`,
    /// run in the blue color. Traffic is routed once blue is ready.
    pub fn new(policy: Policy, revision: impl Into<String>) -> (Machine, Vec<Action>) {
        let revision = revision.into();
        let replicas = policy.replicas;
        let mut requested = BTreeMap::new();
        requested.insert(
            Color::Blue,
            Requested {
                revision: Some(revision.clone()),
                replicas,
                resized_from: None,
            },
        );
        let machine = Machine {
            policy,
            active: Slot {
                color: Color::Blue,
                revision: revision.clone(),
            },
            routing: None,
            desired: revision.clone(),
            release: None,
            previous_revision: None,
            requested,
            observed: BTreeMap::new(),
            history: Vec::new(),
            pending: None,
        };
        let actions = vec![Action::Deploy {
            color: Color::Blue,
            revision,
            replicas,
        }];
        (machine, actions)
    }

    /// A short name for the overall state, as `status` shows it.
    pub fn phase_name(&self) -> String {
        if self.routing.is_none() {
            return "Initializing".into();
        }
        match &self.release {
            Some(r) if !r.phase.is_terminal() => r.phase.to_string(),
            _ if self.live_short() => "Degraded".into(),
            Some(r) if r.phase != Phase::Succeeded && r.revision == self.desired => {
                r.phase.to_string()
            }
            _ => "Healthy".into(),
        }
    }

    /// The live color while it is being resized to a size it has not
    /// reached yet: (color, ready replicas, replicas asked for).
    pub fn resizing(&self) -> Option<(Color, u32, u32)> {
        let a = &self.active;
        let req = self.requested.get(&a.color)?;
        req.resized_from?;
        let ready = self.ready_replicas(a.color, &a.revision);
        (ready < req.replicas).then_some((a.color, ready, req.replicas))
    }

    /// The live color is not ready at its size, and not merely growing
    /// with every replica it had.
    fn live_short(&self) -> bool {
        let a = &self.active;
        if self.is_ready(a.color, &a.revision, self.policy.replicas) {
            return false;
        }
        let resizing = self.requested.get(&a.color).is_some_and(|r| {
            r.resized_from.is_some() && r.revision.as_deref() == Some(a.revision.as_str())
        });
        !resizing || self.ready_replicas(a.color, &a.revision) < self.holding(a.color).max(1)
    }

    /// Replicas `color` must keep ready: the size asked for, or while it
    /// is resized, the smaller of that and the size it had.
    fn holding(&self, color: Color) -> u32 {
        self.requested
            .get(&color)
            .map(|r| r.resized_from.map_or(r.replicas, |f| f.min(r.replicas)))
            .unwrap_or(self.policy.replicas)
    }

    /// The size `color` is to have now: the preview size for a release
    /// before its promotion, the policy's otherwise; `None` for a color
    /// that runs nothing.
    fn wanted_replicas(&self, color: Color) -> Option<u32> {
        self.requested.get(&color)?.revision.as_ref()?;
        let previewed = self.release.as_ref().is_some_and(|r| {
            r.color == color
                && !r.rollback
                && matches!(
                    r.phase,
                    Phase::Deploying | Phase::Previewing | Phase::AwaitingPromotion
                )
        });
        Some(if previewed {
            self.policy.preview_size()
        } else {
            self.policy.replicas
        })
    }

    /// Brings every running color to the size the policy asks for now.
    fn resize(&mut self, out: &mut Vec<Action>) {
        for color in Color::ALL {
            let Some(want) = self.wanted_replicas(color) else {
                continue;
            };
            let req = self.requested.get_mut(&color).expect("requested color");
            if req.replicas == want {
                continue;
            }
            req.resized_from = Some(req.resized_from.unwrap_or(req.replicas));
            req.replicas = want;
            out.push(Action::Scale {
                color,
                replicas: want,
            });
        }
    }

    /// Whether a release is under way.
    pub fn in_progress(&self) -> bool {
        self.release
            .as_ref()
            .is_some_and(|r| !r.phase.is_terminal())
    }

    /// The preview color, if one is reachable with the preview header.
    pub fn preview(&self) -> Option<Color> {
        self.routing.and_then(|r| r.preview)
    }

    /// The next instant at which a [`Input::Tick`] may change something.
    pub fn next_deadline(&self) -> Option<Millis> {
        let r = self.release.as_ref()?;
        let p = &self.policy;
        match r.phase {
            Phase::Deploying | Phase::ScalingUp | Phase::CuttingOver | Phase::Reverting => {
                Some(r.phase_since + p.progress_deadline_ms)
            }
            Phase::AwaitingPromotion => match p.promotion {
                Promotion::Manual {
                    auto_promote_after_ms: Some(after),
                } if !r.held && r.waiting_on.is_none() => Some(r.phase_since + after),
                _ => None,
            },
            Phase::ScaleDownDelay => Some(r.phase_since + p.scale_down_delay_ms),
            _ => None,
        }
    }

    /// Ready replicas of `color` at `revision`, as last observed.
    fn ready_replicas(&self, color: Color, revision: &str) -> u32 {
        self.observed
            .get(&color)
            .filter(|o| o.revision.as_deref() == Some(revision) && o.failure.is_none())
            .map(|o| o.ready_replicas)
            .unwrap_or(0)
    }

    /// Records what the runtime is asked to run in `color`. Observations
    /// made before a redeploy say nothing about the new one, so a change of
    /// revision forgets them.
    fn request(&mut self, color: Color, revision: Option<String>, replicas: u32) {
        let old = self.requested.insert(
            color,
            Requested {
                revision: revision.clone(),
                replicas,
                resized_from: None,
            },
        );
        if old.is_none_or(|o| o.revision != revision) || revision.is_none() {
            self.observed.remove(&color);
        }
    }

    fn is_ready(&self, color: Color, revision: &str, replicas: u32) -> bool {
        let Some(req) = self.requested.get(&color) else {
            return false;
        };
        if req.revision.as_deref() != Some(revision) || req.replicas < replicas {
            return false;
        }
        self.observed.get(&color).is_some_and(|o| {
            o.revision.as_deref() == Some(revision)
                && o.failure.is_none()
                && o.ready_replicas >= req.replicas
                && req.replicas > 0
        })
    }

    /// Feeds one input at instant `now`.
    pub fn handle(&mut self, now: Millis, input: Input) -> Result<Vec<Action>, Rejected> {
        let mut out = Vec::new();
        match input {
            Input::Revision(rev) => self.on_revision(now, rev, &mut out),
            Input::Observed(status) => {
                if let Some(req) = self.requested.get_mut(&status.color)
                    && status.revision == req.revision
                    && status.failure.is_none()
                    && status.ready_replicas >= req.replicas
                {
                    req.resized_from = None;
                }
                self.observed.insert(status.color, status);
                self.progress(now, &mut out);
            }
            Input::Routed { active } => {
                if let Some(r) = self.release.as_mut()
                    && r.phase == Phase::CuttingOver
                    && active == r.color
                    && self.routing.map(|x| x.active) == Some(active)
                {
                    r.switch_confirmed_at = Some(now);
                    if self.policy.post_promotion_analysis && !r.rollback {
                        let (color, revision) = (r.color, r.revision.clone());
                        set_phase(r, now, Phase::PostPromotion, "post-promotion analysis");
                        out.push(Action::StartAnalysis {
                            stage: Stage::PostPromotion,
                            color,
                            revision,
                        });
                    } else {
                        set_phase(
                            r,
                            now,
                            Phase::ScaleDownDelay,
                            "keeping the previous color for rollback",
                        );
                    }
                    if let Some(rev) = self.pending.take() {
                        self.replace_release(now, rev, &mut out);
                    }
                }
            }
            Input::Analysis {
                stage,
                revision,
                verdict,
            } => self.on_analysis(now, stage, revision, verdict, &mut out),
            Input::Command(cmd) => self.on_command(now, cmd, &mut out)?,
            Input::Tick => self.on_tick(now, &mut out),
            Input::Hooks {
                kind,
                revision,
                results,
            } => self.on_hooks(now, kind, revision, results, &mut out),
        }
        self.resize(&mut out);
        Ok(out)
    }

    /// A release starts when the desired revision *changes*. Hearing the
    /// same revision again (every reconcile does) changes nothing, also after
    /// that revision failed or was rolled back: `retry` runs it again.
    fn on_revision(&mut self, now: Millis, rev: String, out: &mut Vec<Action>) {
        if rev == self.desired {
            return;
        }
        self.replace_release(now, rev, out);
    }

    /// Starts a release of `rev`, ending or deferring the one under way.
    fn replace_release(&mut self, now: Millis, rev: String, out: &mut Vec<Action>) {
        let phase = self.release.as_ref().map(|r| r.phase);
        match phase {
            Some(Phase::CuttingOver) => {
                // Never redeploy the color that may still carry traffic.
                self.desired = rev.clone();
                self.pending = Some(rev);
                return;
            }
            Some(p) if p.before_cutover() => {
                self.finish_before_cutover(
                    now,
                    Outcome::Superseded,
                    format!("superseded by revision {rev}"),
                    out,
                );
            }
            Some(p) if p.is_live() => {
                // The release is live already; it ends here and the next one
                // starts on the color it replaced.
                out.push(Action::StopAnalysis);
                self.finish(
                    now,
                    Outcome::Promoted,
                    format!(
                        "promoted; superseded by revision {rev} before the scale-down delay ended"
                    ),
                    out,
                );
            }
            Some(Phase::Reverting) => {
                // Keep reverting; the new revision follows once the previous
                // color is live again.
                self.desired = rev.clone();
                self.pending = Some(rev);
                return;
            }
            _ => {}
        }
        self.desired = rev.clone();
        if rev == self.active.revision {
            return;
        }
        self.start_release(now, rev, false, out);
    }

    fn start_release(&mut self, now: Millis, rev: String, rollback: bool, out: &mut Vec<Action>) {
        let color = self.active.color.other();
        let replicas = if rollback {
            self.policy.replicas
        } else {
            self.policy.preview_size()
        };
        self.request(color, Some(rev.clone()), replicas);
        let message = format!("deploying revision {rev} to {color}");
        self.release = Some(Release {
            revision: rev.clone(),
            color,
            previous: self.active.clone(),
            phase: Phase::Deploying,
            started_at: now,
            phase_since: now,
            message: message.clone(),
            rollback,
            promote_requested: false,
            switched_at: None,
            switch_confirmed_at: None,
            held: false,
            revert: None,
            waiting_on: None,
            gate_open: false,
        });
        out.push(Action::Deploy {
            color,
            revision: rev.clone(),
            replicas,
        });
        out.push(event(EventKind::ReleaseStarted, &rev, message));
        self.progress(now, out);
    }

    /// Moves the release on as far as the observations allow.
    fn progress(&mut self, now: Millis, out: &mut Vec<Action>) {
        // First routing: once the initial color is ready.
        if self.routing.is_none() {
            if self.is_ready(
                self.active.color,
                &self.active.revision.clone(),
                self.policy.replicas,
            ) {
                let routing = Routing {
                    active: self.active.color,
                    preview: None,
                };
                self.routing = Some(routing);
                out.push(Action::Route(routing));
            }
            return;
        }
        let Some(r) = self.release.clone() else {
            self.check_active_health(out);
            return;
        };
        let failure = self.observed.get(&r.color).and_then(|o| {
            if o.revision.as_deref() == Some(r.revision.as_str()) {
                o.failure.clone()
            } else {
                None
            }
        });
        match r.phase {
            Phase::Deploying => {
                if let Some(f) = failure {
                    self.finish_before_cutover(
                        now,
                        Outcome::Failed,
                        format!("{} cannot become ready: {f}", r.color),
                        out,
                    );
                } else if self.is_ready(r.color, &r.revision, 1) {
                    self.enter_preview(now, out);
                }
            }
            Phase::Previewing | Phase::AwaitingPromotion => {
                if let Some(f) = failure {
                    out.push(Action::StopAnalysis);
                    self.finish_before_cutover(
                        now,
                        Outcome::Failed,
                        format!("{} failed during preview: {f}", r.color),
                        out,
                    );
                }
            }
            Phase::ScalingUp => {
                if let Some(f) = failure {
                    self.finish_before_cutover(
                        now,
                        Outcome::Failed,
                        format!("{} failed while scaling up: {f}", r.color),
                        out,
                    );
                } else if self.is_ready(r.color, &r.revision, self.policy.replicas) {
                    self.cut_over(now, out);
                }
            }
            Phase::CuttingOver | Phase::PostPromotion | Phase::ScaleDownDelay => {
                // Back to the previous color when the new one is failing or
                // has lost most of its replicas; losing one replica of many
                // is capacity to restore, not a reason to switch back.
                // While it grows, of the replicas it had.
                let ready = self.ready_replicas(r.color, &r.revision);
                let holding = self.holding(r.color);
                let live_ok = failure.is_none() && ready * 2 >= holding;
                if !live_ok {
                    let why =
                        failure.unwrap_or_else(|| format!("{ready} of {holding} replicas ready"));
                    out.push(Action::StopAnalysis);
                    self.revert(
                        now,
                        Outcome::RolledBack,
                        format!("{} became unready after cutover: {why}", r.color),
                        out,
                    );
                }
            }
            Phase::Reverting => {
                let prev = &r.previous;
                if self.is_ready(prev.color, &prev.revision, self.policy.replicas) {
                    self.switch_back(now, out);
                }
            }
            _ => self.check_active_health(out),
        }
    }

    fn check_active_health(&mut self, out: &mut Vec<Action>) {
        let a = self.active.clone();
        if let Some(o) = self.observed.get(&a.color)
            && let Some(f) = &o.failure
            && o.revision.as_deref() == Some(a.revision.as_str())
        {
            let msg = format!("live color {} is failing: {f}", a.color);
            let already = out
                .iter()
                .any(|x| matches!(x, Action::Event(e) if e.message == msg));
            if !already {
                out.push(event(EventKind::Degraded, &a.revision, msg));
            }
        }
    }

    fn enter_preview(&mut self, now: Millis, out: &mut Vec<Action>) {
        let routing = Routing {
            active: self.active.color,
            preview: Some(self.active.color.other()),
        };
        self.routing = Some(routing);
        out.push(Action::Route(routing));
        let analyse = self.policy.pre_promotion_analysis;
        let r = self.release.as_mut().expect("release in progress");
        let (color, revision) = (r.color, r.revision.clone());
        out.push(event(
            EventKind::PreviewReady,
            &revision,
            format!("{color} runs {revision} and is ready for preview"),
        ));
        if self.policy.hooks.pre_rollout && !r.rollback {
            set_phase(r, now, Phase::Previewing, "running pre-rollout webhooks");
            r.waiting_on = Some(HookKind::PreRollout);
            out.push(Action::RunHooks {
                kind: HookKind::PreRollout,
                color,
                revision,
            });
            return;
        }
        self.start_checks(now, analyse, out);
    }

    /// Pre-rollout hooks passed (or there are none): analysis, or the gate.
    fn start_checks(&mut self, now: Millis, analyse: bool, out: &mut Vec<Action>) {
        let r = self.release.as_mut().expect("release in progress");
        let (color, revision) = (r.color, r.revision.clone());
        if analyse && !r.rollback {
            set_phase(r, now, Phase::Previewing, "pre-promotion analysis");
            out.push(Action::StartAnalysis {
                stage: Stage::PrePromotion,
                color,
                revision,
            });
        } else {
            set_phase(r, now, Phase::Previewing, "");
            self.gate(now, None, out);
        }
    }

    /// Pre-promotion checks are done: promote or wait for the operator.
    fn gate(&mut self, now: Millis, inconclusive: Option<String>, out: &mut Vec<Action>) {
        let r = self.release.as_mut().expect("release in progress");
        let auto =
            matches!(self.policy.promotion, Promotion::Auto) || r.rollback || r.promote_requested;
        if let Some(why) = inconclusive {
            let msg = format!("analysis inconclusive ({why}): promote or abort");
            r.held = true;
            set_phase(r, now, Phase::AwaitingPromotion, &msg);
            let rev = r.revision.clone();
            out.push(event(EventKind::AwaitingPromotion, &rev, msg));
            return;
        }
        if self.policy.hooks.confirm_promotion && !r.rollback && !r.gate_open {
            let first = r.waiting_on != Some(HookKind::ConfirmPromotion);
            r.waiting_on = Some(HookKind::ConfirmPromotion);
            set_phase(
                r,
                now,
                Phase::AwaitingPromotion,
                "waiting for the confirm-promotion webhooks to answer 2xx",
            );
            if first {
                let (color, rev) = (r.color, r.revision.clone());
                out.push(event(
                    EventKind::AwaitingPromotion,
                    &rev,
                    format!("{rev} waits for the confirm-promotion webhooks"),
                ));
                out.push(Action::RunHooks {
                    kind: HookKind::ConfirmPromotion,
                    color,
                    revision: rev,
                });
            }
            return;
        }
        if auto {
            self.promote(now, out);
        } else {
            set_phase(r, now, Phase::AwaitingPromotion, "waiting for promotion");
            let msg = format!("{} is ready for promotion", r.revision);
            let rev = r.revision.clone();
            out.push(event(EventKind::AwaitingPromotion, &rev, msg));
        }
    }

    fn promote(&mut self, now: Millis, out: &mut Vec<Action>) {
        let full = self.policy.replicas;
        let r = self.release.as_mut().expect("release in progress");
        r.waiting_on = None;
        let (color, rev) = (r.color, r.revision.clone());
        out.push(event(
            EventKind::Promoting,
            &rev,
            format!("promoting {rev} ({color})"),
        ));
        let req = self.requested.get_mut(&color).expect("requested color");
        if req.replicas < full {
            req.replicas = full;
            set_phase(
                r,
                now,
                Phase::ScalingUp,
                &format!("scaling {color} to {full} replicas before cutover"),
            );
            out.push(Action::Scale {
                color,
                replicas: full,
            });
        } else {
            set_phase(
                r,
                now,
                Phase::ScalingUp,
                "checking readiness before cutover",
            );
        }
        self.progress(now, out);
    }

    fn cut_over(&mut self, now: Millis, out: &mut Vec<Action>) {
        let r = self.release.as_mut().expect("release in progress");
        let routing = Routing {
            active: r.color,
            preview: None,
        };
        r.switched_at = Some(now);
        set_phase(r, now, Phase::CuttingOver, "switching production traffic");
        let (color, rev) = (r.color, r.revision.clone());
        self.previous_revision = Some(self.active.revision.clone());
        self.active = Slot {
            color,
            revision: rev.clone(),
        };
        self.routing = Some(routing);
        out.push(Action::Route(routing));
        out.push(event(
            EventKind::Switched,
            &rev,
            format!("production traffic switched to {color} ({rev})"),
        ));
    }

    /// Ends a release that never took production traffic: the idle color
    /// goes down, the preview route is removed, the live color is untouched.
    fn finish_before_cutover(
        &mut self,
        now: Millis,
        outcome: Outcome,
        reason: String,
        out: &mut Vec<Action>,
    ) {
        let color = self.active.color.other();
        let routing = Routing {
            active: self.active.color,
            preview: None,
        };
        if self.routing != Some(routing) {
            self.routing = Some(routing);
            out.push(Action::Route(routing));
        }
        self.request(color, None, 0);
        out.push(Action::Retire { color });
        self.finish(now, outcome, reason, out);
    }

    /// Takes production traffic back to the previous color after cutover.
    fn revert(&mut self, now: Millis, outcome: Outcome, reason: String, out: &mut Vec<Action>) {
        let prev = self
            .release
            .as_ref()
            .expect("release in progress")
            .previous
            .clone();
        if self.is_ready(prev.color, &prev.revision, self.policy.replicas) {
            self.switch_back_with(now, outcome, reason, out);
            return;
        }
        // The previous color is down or short of replicas: bring it back
        // first; traffic stays where it is until then.
        let replicas = self.policy.replicas;
        let r = self.release.as_mut().expect("release in progress");
        set_phase(
            r,
            now,
            Phase::Reverting,
            &format!("{reason}; waiting for {} to be ready", prev.color),
        );
        r.revert = Some((outcome, reason));
        self.request(prev.color, Some(prev.revision.clone()), replicas);
        out.push(Action::Deploy {
            color: prev.color,
            revision: prev.revision,
            replicas,
        });
    }

    fn switch_back(&mut self, now: Millis, out: &mut Vec<Action>) {
        let r = self.release.as_mut().expect("release in progress");
        let (outcome, reason) = r
            .revert
            .take()
            .unwrap_or((Outcome::RolledBack, "reverted".into()));
        self.switch_back_with(now, outcome, reason, out);
    }

    fn switch_back_with(
        &mut self,
        now: Millis,
        outcome: Outcome,
        reason: String,
        out: &mut Vec<Action>,
    ) {
        let r = self.release.as_ref().expect("release in progress");
        let prev = r.previous.clone();
        let failed_color = r.color;
        let routing = Routing {
            active: prev.color,
            preview: None,
        };
        self.active = prev;
        self.previous_revision = None;
        self.routing = Some(routing);
        out.push(Action::Route(routing));
        self.request(failed_color, None, 0);
        out.push(Action::Retire {
            color: failed_color,
        });
        self.finish(now, outcome, reason, out);
        if let Some(rev) = self.pending.take() {
            self.replace_release(now, rev, out);
        }
    }

    fn finish(&mut self, now: Millis, outcome: Outcome, reason: String, out: &mut Vec<Action>) {
        let r = self.release.as_mut().expect("release in progress");
        set_phase(r, now, outcome.phase(), &reason);
        let kind = match outcome {
            Outcome::Promoted => EventKind::Succeeded,
            Outcome::RolledBack => EventKind::RolledBack,
            Outcome::Aborted => EventKind::Aborted,
            Outcome::Failed => EventKind::Failed,
            Outcome::Superseded => EventKind::Superseded,
        };
        out.push(event(kind, &r.revision, reason.clone()));
        self.history.push(Record {
            revision: r.revision.clone(),
            color: r.color,
            outcome,
            reason,
            started_at: r.started_at,
            ended_at: now,
            rollback: r.rollback,
        });
        if self.history.len() > HISTORY_LIMIT {
            let extra = self.history.len() - HISTORY_LIMIT;
            self.history.drain(..extra);
        }
    }

    fn on_analysis(
        &mut self,
        now: Millis,
        stage: Stage,
        revision: String,
        verdict: Verdict,
        out: &mut Vec<Action>,
    ) {
        let Some(r) = self.release.as_ref() else {
            return;
        };
        if r.revision != revision {
            return;
        }
        let expected = match stage {
            Stage::PrePromotion => r.phase == Phase::Previewing,
            Stage::PostPromotion => r.phase == Phase::PostPromotion,
        };
        if !expected {
            return;
        }
        let rev = r.revision.clone();
        match (stage, verdict) {
            (_, Verdict::Fail(why)) => {
                out.push(event(
                    EventKind::AnalysisFailed,
                    &rev,
                    format!("{stage} analysis failed: {why}"),
                ));
                let reason = format!("{stage} analysis failed: {why}");
                if stage == Stage::PrePromotion {
                    self.finish_before_cutover(now, Outcome::RolledBack, reason, out);
                } else {
                    self.revert(now, Outcome::RolledBack, reason, out);
                }
            }
            (Stage::PrePromotion, Verdict::Pass) => {
                out.push(event(
                    EventKind::AnalysisPassed,
                    &rev,
                    format!("{stage} analysis passed"),
                ));
                self.gate(now, None, out);
            }
            (Stage::PrePromotion, Verdict::Inconclusive(why)) => {
                out.push(event(
                    EventKind::AnalysisInconclusive,
                    &rev,
                    format!("{stage} analysis inconclusive: {why}"),
                ));
                self.gate(now, Some(why), out);
            }
            (Stage::PostPromotion, Verdict::Pass) => {
                out.push(event(
                    EventKind::AnalysisPassed,
                    &rev,
                    format!("{stage} analysis passed"),
                ));
                let r = self.release.as_mut().expect("release");
                set_phase(
                    r,
                    now,
                    Phase::ScaleDownDelay,
                    "keeping the previous color for rollback",
                );
            }
            (Stage::PostPromotion, Verdict::Inconclusive(why)) => {
                // Live already; an inconclusive check must not pass silently,
                // and must not strand users on a half-checked version either:
                // keep the previous color up until an operator decides.
                out.push(event(EventKind::AnalysisInconclusive, &rev, format!("{stage} analysis inconclusive: {why}; the previous color stays up until promote or rollback")));
                let r = self.release.as_mut().expect("release");
                r.message = format!(
                    "post-promotion analysis inconclusive ({why}): promote to finish or rollback"
                );
                r.held = true;
            }
        }
    }

    fn on_hooks(
        &mut self,
        now: Millis,
        kind: HookKind,
        revision: String,
        results: Vec<HookResult>,
        out: &mut Vec<Action>,
    ) {
        let Some(r) = self.release.as_mut() else {
            return;
        };
        if r.revision != revision || r.waiting_on != Some(kind) || r.phase.is_terminal() {
            return;
        }
        let rev = r.revision.clone();
        let failure = crate::hooks::first_failure(&results);
        match (kind, failure) {
            (HookKind::PreRollout, None) => {
                r.waiting_on = None;
                out.push(event(
                    EventKind::HookPassed,
                    &rev,
                    "pre-rollout webhooks passed".into(),
                ));
                let analyse = self.policy.pre_promotion_analysis;
                self.start_checks(now, analyse, out);
            }
            (HookKind::PreRollout, Some(why)) => {
                r.waiting_on = None;
                let reason = format!("{why}; the release stopped before taking traffic");
                out.push(event(EventKind::HookFailed, &rev, reason.clone()));
                self.finish_before_cutover(now, Outcome::Failed, reason, out);
            }
            (HookKind::ConfirmPromotion, None) => {
                r.waiting_on = None;
                r.gate_open = true;
                out.push(event(
                    EventKind::HookPassed,
                    &rev,
                    "confirm-promotion webhooks answered 2xx".into(),
                ));
                self.gate(now, None, out);
            }
            (HookKind::ConfirmPromotion, Some(why)) => {
                r.message = format!("waiting for promotion: {why}");
            }
            _ => {}
        }
    }

    fn on_command(
        &mut self,
        now: Millis,
        cmd: Command,
        out: &mut Vec<Action>,
    ) -> Result<(), Rejected> {
        let phase = self.release.as_ref().map(|r| r.phase);
        match cmd {
            Command::Promote { full } => match phase {
                Some(Phase::AwaitingPromotion) => {
                    self.promote(now, out);
                    Ok(())
                }
                Some(Phase::Previewing) => {
                    let r = self.release.as_mut().expect("release");
                    if full {
                        out.push(Action::StopAnalysis);
                        r.message = "promoted by operator, analysis skipped".into();
                        self.promote(now, out);
                    } else {
                        r.promote_requested = true;
                        r.message = "promotion requested; waiting for analysis".into();
                    }
                    Ok(())
                }
                Some(Phase::PostPromotion)
                    if full || self.release.as_ref().is_some_and(|r| r.held) =>
                {
                    out.push(Action::StopAnalysis);
                    let r = self.release.as_mut().expect("release");
                    r.held = false;
                    set_phase(
                        r,
                        now,
                        Phase::ScaleDownDelay,
                        "keeping the previous color for rollback",
                    );
                    Ok(())
                }
                _ => Err(Rejected(format!(
                    "not waiting for promotion (phase: {})",
                    self.phase_name()
                ))),
            },
            Command::Abort => match phase {
                Some(p) if p.before_cutover() => {
                    out.push(Action::StopAnalysis);
                    self.finish_before_cutover(
                        now,
                        Outcome::Aborted,
                        "aborted by operator".into(),
                        out,
                    );
                    Ok(())
                }
                Some(p) if p.is_live() => {
                    out.push(Action::StopAnalysis);
                    self.revert(now, Outcome::Aborted, "aborted by operator".into(), out);
                    Ok(())
                }
                _ => Err(Rejected(format!(
                    "no release to abort (phase: {})",
                    self.phase_name()
                ))),
            },
            Command::Rollback => match phase {
                Some(p) if p.before_cutover() => {
                    out.push(Action::StopAnalysis);
                    self.finish_before_cutover(
                        now,
                        Outcome::RolledBack,
                        "rolled back by operator before cutover".into(),
                        out,
                    );
                    Ok(())
                }
                Some(p) if p.is_live() => {
                    out.push(Action::StopAnalysis);
                    self.revert(
                        now,
                        Outcome::RolledBack,
                        "rolled back by operator".into(),
                        out,
                    );
                    Ok(())
                }
                Some(Phase::Reverting) => Err(Rejected(
                    "already reverting to the previous revision".into(),
                )),
                _ => {
                    let Some(prev) = self.previous_revision.clone() else {
                        return Err(Rejected("no previous revision to roll back to".into()));
                    };
                    // `desired` keeps naming what the workload asks for, so
                    // hearing it again does not undo the rollback.
                    self.start_release(now, prev, true, out);
                    Ok(())
                }
            },
            Command::Retry => {
                // Anything that left the desired revision not live: a failed,
                // aborted or rolled-back release, or an operator rollback.
                let retryable = phase.is_none_or(|p| p.is_terminal());
                if !retryable || self.desired == self.active.revision {
                    return Err(Rejected(format!(
                        "nothing to retry (phase: {})",
                        self.phase_name()
                    )));
                }
                let rev = self.desired.clone();
                self.start_release(now, rev, false, out);
                Ok(())
            }
        }
    }

    fn on_tick(&mut self, now: Millis, out: &mut Vec<Action>) {
        let Some(deadline) = self.next_deadline() else {
            return;
        };
        if now < deadline {
            return;
        }
        let r = self.release.as_ref().expect("deadline implies release");
        let rev = r.revision.clone();
        let secs = self.policy.progress_deadline_ms as f64 / 1000.0;
        match r.phase {
            Phase::Deploying | Phase::ScalingUp => {
                let msg = format!(
                    "{} ({rev}) not ready within the progress deadline of {secs}s",
                    r.color
                );
                out.push(event(EventKind::DeadlineExceeded, &rev, msg.clone()));
                self.finish_before_cutover(now, Outcome::Failed, msg, out);
            }
            Phase::CuttingOver => {
                let msg = format!(
                    "switch to {} not confirmed within the progress deadline of {secs}s",
                    r.color
                );
                out.push(event(EventKind::DeadlineExceeded, &rev, msg.clone()));
                self.revert(now, Outcome::Failed, msg, out);
            }
            Phase::Reverting => {
                // Keep trying; tell people it is taking long.
                let msg = format!(
                    "previous color {} still not ready while reverting",
                    r.previous.color
                );
                out.push(event(EventKind::Degraded, &rev, msg));
                let r = self.release.as_mut().expect("release");
                r.phase_since = now;
            }
            Phase::AwaitingPromotion => {
                let r = self.release.as_mut().expect("release");
                r.message = "auto-promoted after waiting".into();
                self.promote(now, out);
            }
            Phase::ScaleDownDelay => {
                let old = r.previous.color;
                let reason = if r.rollback {
                    format!("rolled back to revision {rev}; scale-down of {old} started")
                } else {
                    format!("promoted; scale-down of {old} started")
                };
                self.request(old, None, 0);
                out.push(Action::Retire { color: old });
                self.finish(now, Outcome::Promoted, reason, out);
            }
            _ => {}
        }
    }
}

fn set_phase(r: &mut Release, now: Millis, phase: Phase, message: &str) {
    if r.phase != phase {
        r.phase_since = now;
    }
    r.phase = phase;
    r.message = message.to_string();
}

fn event(kind: EventKind, revision: &str, message: String) -> Action {
    Action::Event(Event {
        kind,
        revision: revision.to_string(),
        message,
    })
}
