//! A model of the runtime for driving the release machine in tests: it
//! applies actions, tracks what runs in each color and where traffic goes.
#![allow(dead_code)]

use std::collections::BTreeMap;

use teal_core::Color;
use teal_core::release::*;

#[derive(Debug, Clone, Default)]
pub struct ColorWorld {
    pub revision: Option<String>,
    pub replicas: u32,
}

pub struct World {
    pub machine: Machine,
    pub now: Millis,
    pub colors: BTreeMap<Color, ColorWorld>,
    /// Where production traffic goes, as the router was last told.
    pub production: Option<Color>,
    pub preview: Option<Color>,
    pub analysis: Option<(Stage, String)>,
    pub log: Vec<Action>,
    /// (color, revision) of every switch of production traffic.
    pub switches: Vec<(Color, String)>,
    /// Webhook rounds asked for and not answered yet.
    pub hooks: Vec<(teal_core::hooks::HookKind, String)>,
}

impl World {
    pub fn new(policy: Policy, revision: &str) -> World {
        let (machine, actions) = Machine::new(policy, revision);
        let mut w = World {
            machine,
            now: 0,
            colors: BTreeMap::new(),
            production: None,
            preview: None,
            analysis: None,
            log: Vec::new(),
            switches: Vec::new(),
            hooks: Vec::new(),
        };
        w.apply(actions);
        w
    }

    pub fn apply(&mut self, actions: Vec<Action>) {
        for a in actions {
            match &a {
                Action::Deploy {
                    color,
                    revision,
                    replicas,
                } => {
                    let c = self.colors.entry(*color).or_default();
                    c.revision = Some(revision.clone());
                    c.replicas = *replicas;
                }
                Action::Scale { color, replicas } => {
                    self.colors.entry(*color).or_default().replicas = *replicas;
                }
                Action::Route(r) => {
                    if self.production != Some(r.active) {
                        let rev = self.colors[&r.active].revision.clone().unwrap_or_default();
                        self.switches.push((r.active, rev));
                    }
                    self.production = Some(r.active);
                    self.preview = r.preview;
                }
                Action::StartAnalysis {
                    stage, revision, ..
                } => self.analysis = Some((*stage, revision.clone())),
                Action::StopAnalysis => self.analysis = None,
                Action::Retire { color } => {
                    self.colors.insert(*color, ColorWorld::default());
                }
                Action::RunHooks { kind, revision, .. } => {
                    self.hooks.push((*kind, revision.clone()))
                }
                Action::Event(_) => {}
            }
            self.log.push(a);
        }
    }

    pub fn send(&mut self, input: Input) -> Result<(), Rejected> {
        let actions = self.machine.handle(self.now, input)?;
        self.apply(actions);
        Ok(())
    }

    /// Reports a color as running what it was asked, with `ready` replicas ready.
    pub fn report(&mut self, color: Color, ready: u32) {
        let c = self.colors.get(&color).cloned().unwrap_or_default();
        let status = ColorStatus {
            color,
            revision: c.revision.clone(),
            ready_replicas: ready.min(c.replicas),
            failure: None,
        };
        self.send(Input::Observed(status)).unwrap();
    }

    pub fn report_ready(&mut self, color: Color) {
        let replicas = self.colors.get(&color).map(|c| c.replicas).unwrap_or(0);
        self.report(color, replicas);
    }

    pub fn report_failure(&mut self, color: Color, why: &str) {
        let c = self.colors.get(&color).cloned().unwrap_or_default();
        let status = ColorStatus {
            color,
            revision: c.revision.clone(),
            ready_replicas: 0,
            failure: Some(why.to_string()),
        };
        self.send(Input::Observed(status)).unwrap();
    }

    pub fn confirm_route(&mut self) {
        if let Some(active) = self.production {
            self.send(Input::Routed { active }).unwrap();
        }
    }

    /// The running analysis ends with `verdict`.
    pub fn verdict(&mut self, verdict: Verdict) {
        if let Some((stage, revision)) = self.analysis.take() {
            self.send(Input::Analysis {
                stage,
                revision,
                verdict,
            })
            .unwrap();
        }
    }

    /// The live color's size changes (spec.replicas edited, or an
    /// autoscaler): a new policy, taken in with the next input.
    pub fn resize(&mut self, replicas: u32) {
        self.machine.policy.replicas = replicas;
        self.send(Input::Tick).unwrap();
    }

    pub fn advance(&mut self, ms: Millis) {
        self.now += ms;
        self.send(Input::Tick).unwrap();
    }

    pub fn phase(&self) -> Option<Phase> {
        self.machine.release.as_ref().map(|r| r.phase)
    }

    pub fn production_revision(&self) -> Option<String> {
        self.production
            .and_then(|c| self.colors.get(&c))
            .and_then(|c| c.revision.clone())
    }

    /// Lets everything the machine asked for become ready, confirms routes,
    /// answers analysis with `verdict` and lets time pass, until the machine
    /// is at rest.
    pub fn settle(&mut self, verdict: Verdict) {
        for _ in 0..500 {
            let colors: Vec<Color> = self.colors.keys().copied().collect();
            for c in colors {
                if self.colors[&c].replicas > 0 {
                    self.report_ready(c);
                }
            }
            self.confirm_route();
            self.verdict(verdict.clone());
            if matches!(self.phase(), Some(Phase::AwaitingPromotion)) {
                self.send(Input::Command(Command::Promote { full: true }))
                    .unwrap();
            }
            if self.machine.release.as_ref().is_some_and(|r| r.held) {
                let _ = self.send(Input::Command(Command::Promote { full: true }));
            }
            self.confirm_route();
            if !self.machine.in_progress() && self.machine.routing.is_some() {
                return;
            }
            self.advance(1_000);
        }
        panic!("machine did not come to rest: {:#?}", self.machine);
    }
}

pub fn policy() -> Policy {
    Policy {
        replicas: 3,
        preview_replicas: None,
        promotion: Promotion::Auto,
        pre_promotion_analysis: true,
        post_promotion_analysis: true,
        progress_deadline_ms: 60_000,
        scale_down_delay_ms: 30_000,
        hooks: HookPolicy::default(),
    }
}
