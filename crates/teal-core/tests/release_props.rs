//! Property tests: random sequences of observations, commands and time
//! against the release machine, checking its guarantees after every step.

mod common;

use std::collections::BTreeSet;

use proptest::prelude::*;

use common::{World, policy};
use teal_core::Color;
use teal_core::release::*;

#[derive(Debug, Clone)]
enum Op {
    NewRevision,
    /// Report a color with this share of its replicas ready (0..=4 quarters).
    Report(Color, u32),
    Fail(Color),
    Confirm,
    Verdict(u8),
    Promote(bool),
    Abort,
    Rollback,
    Retry,
    Advance(u64),
    /// The live color's size changes (spec.replicas, an autoscaler).
    Resize(u32),
}

fn op() -> impl Strategy<Value = Op> {
    let color = prop_oneof![Just(Color::Blue), Just(Color::Green)];
    prop_oneof![
        2 => Just(Op::NewRevision),
        6 => (color.clone(), 0u32..=4).prop_map(|(c, q)| Op::Report(c, q)),
        1 => color.prop_map(Op::Fail),
        3 => Just(Op::Confirm),
        3 => (0u8..3).prop_map(Op::Verdict),
        1 => any::<bool>().prop_map(Op::Promote),
        1 => Just(Op::Abort),
        1 => Just(Op::Rollback),
        1 => Just(Op::Retry),
        2 => (0u64..70_000).prop_map(Op::Advance),
        1 => (1u32..7).prop_map(Op::Resize),
    ]
}

fn policies() -> impl Strategy<Value = Policy> {
    (
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        prop::option::of(1u32..3),
        prop::option::of(1_000u64..20_000),
    )
        .prop_map(|(manual, pre, post, preview, auto_after)| {
            let mut p = policy();
            p.pre_promotion_analysis = pre;
            p.post_promotion_analysis = post;
            p.preview_replicas = preview;
            if manual {
                p.promotion = Promotion::Manual {
                    auto_promote_after_ms: auto_after,
                };
            }
            p
        })
}

/// Last status the harness reported for each color.
#[derive(Default, Clone)]
struct Reported {
    revision: Option<String>,
    ready: u32,
    failed: bool,
}

struct Harness {
    w: World,
    reported: [Reported; 2],
    next_rev: u32,
    superseded: BTreeSet<String>,
}

fn idx(c: Color) -> usize {
    match c {
        Color::Blue => 0,
        Color::Green => 1,
    }
}

impl Harness {
    fn new(p: Policy) -> Harness {
        let mut h = Harness {
            w: World::new(p, "v1"),
            reported: Default::default(),
            next_rev: 2,
            superseded: BTreeSet::new(),
        };
        h.report(Color::Blue, 4);
        h
    }

    fn report(&mut self, c: Color, quarters: u32) {
        let cw = self.w.colors.get(&c).cloned().unwrap_or_default();
        let ready = cw.replicas * quarters / 4;
        self.reported[idx(c)] = Reported {
            revision: cw.revision.clone(),
            ready,
            failed: false,
        };
        self.step(Input::Observed(ColorStatus {
            color: c,
            revision: cw.revision,
            ready_replicas: ready,
            failure: None,
        }));
    }

    fn step(&mut self, input: Input) {
        let before_release = self.w.machine.release.clone();
        let log_start = self.w.log.len();
        let switches_start = self.w.switches.len();
        let is_command = matches!(input, Input::Command(_));
        // Check every switch against the world as it is when it happens.
        let actions = match self.w.machine.handle(self.w.now, input) {
            Ok(a) => a,
            Err(e) => {
                assert!(is_command, "only commands may be rejected: {e}");
                return;
            }
        };
        for a in actions {
            if let Action::Route(r) = &a
                && self.w.production != Some(r.active)
            {
                let to = r.active;
                let cw = self.w.colors.get(&to).cloned().unwrap_or_default();
                let rep = &self.reported[idx(to)];
                assert!(
                    cw.replicas > 0
                        && cw.revision.is_some()
                        && rep.revision == cw.revision
                        && rep.ready >= cw.replicas
                        && rep.ready >= self.w.machine.policy.replicas
                        && !rep.failed,
                    "switched production to {to} which is not ready: asked {cw:?}, last reported {:?}/{} failed={}",
                    rep.revision,
                    rep.ready,
                    rep.failed
                );
                let rev = cw.revision.clone().unwrap();
                assert!(
                    !self.superseded.contains(&rev),
                    "superseded revision {rev} went live"
                );
            }
            self.w.apply(vec![a]);
        }
        let _ = switches_start;

        // Exactly one active color, and the machine agrees with the router.
        if let Some(prod) = self.w.production {
            assert_eq!(self.w.machine.active.color, prod);
            assert_eq!(self.w.machine.routing.map(|r| r.active), Some(prod));
        }

        // Releases that end without promotion leave the previous revision live.
        for a in &self.w.log[log_start..] {
            let Action::Event(e) = a else { continue };
            let kind = e.kind;
            let revision = e.revision.clone();
            if kind == EventKind::Superseded {
                self.superseded.insert(revision.clone());
            }
            if matches!(
                kind,
                EventKind::Aborted
                    | EventKind::RolledBack
                    | EventKind::Failed
                    | EventKind::Superseded
            ) {
                let prev = before_release
                    .as_ref()
                    .filter(|r| r.revision == revision)
                    .map(|r| r.previous.revision.clone())
                    .expect("a release ended that was in progress");
                assert_eq!(
                    self.w.production_revision().as_deref(),
                    Some(prev.as_str()),
                    "{kind:?} of {revision} did not leave {prev} live"
                );
            }
        }
    }

    fn run(&mut self, op: Op) {
        match op {
            Op::NewRevision => {
                let rev = format!("v{}", self.next_rev);
                self.next_rev += 1;
                self.step(Input::Revision(rev));
            }
            Op::Report(c, q) => self.report(c, q),
            Op::Fail(c) => {
                let cw = self.w.colors.get(&c).cloned().unwrap_or_default();
                self.reported[idx(c)] = Reported {
                    revision: cw.revision.clone(),
                    ready: 0,
                    failed: true,
                };
                self.step(Input::Observed(ColorStatus {
                    color: c,
                    revision: cw.revision,
                    ready_replicas: 0,
                    failure: Some("crashed".into()),
                }));
            }
            Op::Confirm => {
                if let Some(active) = self.w.production {
                    self.step(Input::Routed { active });
                }
            }
            Op::Verdict(v) => {
                if let Some((stage, revision)) = self.w.analysis.take() {
                    let verdict = match v {
                        0 => Verdict::Pass,
                        1 => Verdict::Fail("bad".into()),
                        _ => Verdict::Inconclusive("no data".into()),
                    };
                    self.step(Input::Analysis {
                        stage,
                        revision,
                        verdict,
                    });
                }
            }
            Op::Promote(full) => self.step(Input::Command(Command::Promote { full })),
            Op::Abort => self.step(Input::Command(Command::Abort)),
            Op::Rollback => {
                self.step(Input::Command(Command::Rollback));
                // After a finished release, rollback releases the previous
                // revision again on purpose, even one that was once superseded.
                if let Some(r) = self.w.machine.release.as_ref().filter(|r| r.rollback) {
                    self.superseded.remove(&r.revision);
                }
            }
            Op::Retry => self.step(Input::Command(Command::Retry)),
            Op::Resize(n) => {
                self.w.machine.policy.replicas = n;
                self.step(Input::Tick);
            }
            Op::Advance(ms) => {
                self.w.now += ms;
                self.step(Input::Tick);
            }
        }
    }

    /// Reports everything ready, confirms, passes analysis and lets time
    /// pass until the machine rests; every step is still checked.
    fn settle(&mut self) {
        for _ in 0..500 {
            for c in Color::ALL {
                if self.w.colors.get(&c).is_some_and(|x| x.replicas > 0) {
                    self.report(c, 4);
                }
            }
            self.run(Op::Confirm);
            self.run(Op::Verdict(0));
            self.run(Op::Confirm);
            if self.w.machine.release.as_ref().is_some_and(|r| {
                r.phase == Phase::AwaitingPromotion || (r.phase == Phase::PostPromotion && r.held)
            }) {
                self.run(Op::Promote(true));
            }
            if !self.w.machine.in_progress() && self.w.machine.routing.is_some() {
                // At rest the live color runs at the size asked for last.
                let live = self.w.machine.active.color;
                assert_eq!(
                    self.w.colors.get(&live).map(|c| c.replicas),
                    Some(self.w.machine.policy.replicas),
                    "the live color is not at the size asked for"
                );
                return;
            }
            self.run(Op::Advance(1_000));
        }
        panic!("machine did not come to rest: {:#?}", self.w.machine);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Checked after every step: switches only to ready colors, one active
    /// color, failed/aborted releases leave the previous revision live,
    /// superseded releases never go live. At the end the machine comes to
    /// rest with the desired revision live.
    #[test]
    fn guarantees_hold_for_any_sequence(p in policies(), ops in prop::collection::vec(op(), 0..60)) {
        let mut h = Harness::new(p);
        for op in ops {
            h.run(op);
        }
        h.settle();
        let m = &h.w.machine;
        let last_failed = m.release.as_ref().is_some_and(|r| {
            matches!(r.phase, Phase::Aborted | Phase::RolledBack | Phase::Failed)
        });
        if !last_failed && m.previous_revision.is_some() && m.desired != m.active.revision {
            // Only an operator rollback leaves another revision live on purpose.
            let undone = m.history.iter().any(|r| {
                r.rollback || r.outcome == Outcome::RolledBack || r.outcome == Outcome::Aborted
            });
            prop_assert!(undone, "desired revision not live without a rollback or abort");
        }
        prop_assert_eq!(h.w.production_revision(), Some(m.active.revision.clone()));
    }

    /// Abort at any point of a release ends with the previous revision live.
    #[test]
    fn abort_always_restores_the_previous_revision(p in policies(), ops in prop::collection::vec(op(), 0..40)) {
        let mut h = Harness::new(p);
        for op in ops {
            h.run(op);
        }
        let Some(r) = h.w.machine.release.clone().filter(|r| !r.phase.is_terminal() && r.phase != Phase::Reverting) else {
            return Ok(());
        };
        if h.w.machine.pending.is_some() {
            return Ok(());
        }
        h.run(Op::Abort);
        h.settle();
        prop_assert_eq!(h.w.production_revision(), Some(r.previous.revision.clone()));
        prop_assert_eq!(h.w.machine.history.last().map(|x| x.outcome), Some(Outcome::Aborted));
    }

    /// Rollback during a release, or right after one, ends with the revision
    /// that was live before it.
    #[test]
    fn rollback_always_restores_the_previous_revision(p in policies(), ops in prop::collection::vec(op(), 0..40)) {
        let mut h = Harness::new(p);
        for op in ops {
            h.run(op);
        }
        h.settle();
        let Some(prev) = h.w.machine.previous_revision.clone() else { return Ok(()) };
        h.run(Op::Rollback);
        h.settle();
        prop_assert_eq!(h.w.production_revision(), Some(prev));
    }
}
