//! Webhooks that hold a release: pre-rollout checks and the
//! confirm-promotion gate, step by step against the runtime model.

mod common;

use common::{World, policy};
use teal_core::Color::{Blue, Green};
use teal_core::hooks::{HookKind, HookResult};
use teal_core::release::*;

fn result(kind: HookKind, name: &str, status: u16) -> HookResult {
    HookResult {
        name: name.into(),
        kind,
        status: Some(status),
        error: None,
    }
}

fn answer(w: &mut World, kind: HookKind, results: Vec<HookResult>) {
    let (k, revision) = w
        .hooks
        .iter()
        .rev()
        .find(|(k, _)| *k == kind)
        .cloned()
        .unwrap_or_else(|| panic!("no {kind} round was asked for: {:?}", w.hooks));
    w.send(Input::Hooks {
        kind: k,
        revision,
        results,
    })
    .unwrap();
}

fn with_hooks(pre_rollout: bool, confirm_promotion: bool) -> World {
    let mut p = policy();
    p.hooks = HookPolicy {
        pre_rollout,
        confirm_promotion,
    };
    let mut w = World::new(p, "v1");
    w.report_ready(Blue);
    w.send(Input::Revision("v2".into())).unwrap();
    w.report_ready(Green);
    w
}

fn events(w: &World) -> Vec<(EventKind, String)> {
    w.log
        .iter()
        .filter_map(|a| match a {
            Action::Event(e) => Some((e.kind, e.message.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn pre_rollout_hooks_run_before_analysis() {
    let mut w = with_hooks(true, false);
    assert_eq!(w.phase(), Some(Phase::Previewing));
    assert_eq!(w.hooks, vec![(HookKind::PreRollout, "v2".into())]);
    assert_eq!(w.analysis, None, "analysis waits for the pre-rollout hooks");
    let r = w.machine.release.as_ref().unwrap();
    assert_eq!(r.waiting_on, Some(HookKind::PreRollout));
    assert_eq!(r.message, "running pre-rollout webhooks");

    answer(
        &mut w,
        HookKind::PreRollout,
        vec![result(HookKind::PreRollout, "smoke", 200)],
    );
    assert_eq!(w.analysis, Some((Stage::PrePromotion, "v2".into())));
    assert_eq!(w.machine.release.as_ref().unwrap().waiting_on, None);
    w.verdict(Verdict::Pass);
    assert_eq!(w.production, Some(Green));
}

#[test]
fn a_failing_pre_rollout_hook_ends_the_release_before_traffic() {
    let mut w = with_hooks(true, false);
    answer(
        &mut w,
        HookKind::PreRollout,
        vec![
            result(HookKind::PreRollout, "db-migrate", 200),
            result(HookKind::PreRollout, "smoke", 500),
        ],
    );
    assert_eq!(w.phase(), Some(Phase::Failed));
    assert_eq!(w.production, Some(Blue));
    assert_eq!(w.preview, None);
    assert!(
        w.switches.iter().all(|(c, _)| *c == Blue),
        "{:?}",
        w.switches
    );
    assert_eq!(w.colors[&Green].replicas, 0);
    let reason = &w.machine.history.last().unwrap().reason;
    assert!(
        reason.contains("pre-rollout webhook \"smoke\" answered 500"),
        "{reason}"
    );
    assert!(events(&w).iter().any(|(k, _)| *k == EventKind::HookFailed));
}

#[test]
fn the_confirm_promotion_gate_holds_until_every_hook_answers_2xx() {
    let mut w = with_hooks(false, true);
    w.verdict(Verdict::Pass);
    assert_eq!(w.phase(), Some(Phase::AwaitingPromotion));
    assert_eq!(w.hooks, vec![(HookKind::ConfirmPromotion, "v2".into())]);
    assert_eq!(w.production, Some(Blue));
    assert_eq!(
        w.machine.release.as_ref().unwrap().waiting_on,
        Some(HookKind::ConfirmPromotion)
    );

    // Closed: the status names the hook and its answer; time does not open it.
    answer(
        &mut w,
        HookKind::ConfirmPromotion,
        vec![result(HookKind::ConfirmPromotion, "approve", 403)],
    );
    w.advance(3_600_000);
    assert_eq!(w.phase(), Some(Phase::AwaitingPromotion));
    assert_eq!(
        w.machine.release.as_ref().unwrap().message,
        "waiting for promotion: confirm-promotion webhook \"approve\" answered 403"
    );
    assert_eq!(w.production, Some(Blue));

    answer(
        &mut w,
        HookKind::ConfirmPromotion,
        vec![result(HookKind::ConfirmPromotion, "approve", 200)],
    );
    assert_eq!(w.phase(), Some(Phase::CuttingOver));
    assert_eq!(w.production, Some(Green));
    assert!(w.machine.release.as_ref().unwrap().gate_open);
}

#[test]
fn with_manual_promotion_the_gate_comes_first_then_the_operator() {
    let mut p = policy();
    p.promotion = Promotion::Manual {
        auto_promote_after_ms: Some(60_000),
    };
    p.hooks.confirm_promotion = true;
    let mut w = World::new(p, "v1");
    w.report_ready(Blue);
    w.send(Input::Revision("v2".into())).unwrap();
    w.report_ready(Green);
    w.verdict(Verdict::Pass);
    assert_eq!(
        w.machine.next_deadline(),
        None,
        "no auto-promotion while the gate is closed"
    );
    answer(
        &mut w,
        HookKind::ConfirmPromotion,
        vec![result(HookKind::ConfirmPromotion, "approve", 200)],
    );
    assert_eq!(w.phase(), Some(Phase::AwaitingPromotion));
    assert_eq!(
        w.machine.release.as_ref().unwrap().message,
        "waiting for promotion"
    );
    w.send(Input::Command(Command::Promote { full: false }))
        .unwrap();
    assert_eq!(w.phase(), Some(Phase::CuttingOver));
}

#[test]
fn answers_for_another_revision_or_a_finished_wait_change_nothing() {
    let mut w = with_hooks(false, true);
    w.verdict(Verdict::Pass);
    w.send(Input::Hooks {
        kind: HookKind::ConfirmPromotion,
        revision: "v1".into(),
        results: vec![result(HookKind::ConfirmPromotion, "approve", 200)],
    })
    .unwrap();
    assert_eq!(w.phase(), Some(Phase::AwaitingPromotion));
    // An operator may open the gate; a late answer then does nothing.
    w.send(Input::Command(Command::Promote { full: false }))
        .unwrap();
    assert_eq!(w.phase(), Some(Phase::CuttingOver));
    let before = w.log.len();
    answer(
        &mut w,
        HookKind::ConfirmPromotion,
        vec![result(HookKind::ConfirmPromotion, "approve", 200)],
    );
    assert_eq!(w.log.len(), before);
    // Abort while the gate is closed puts v1 back.
    let mut w = with_hooks(false, true);
    w.verdict(Verdict::Pass);
    w.send(Input::Command(Command::Abort)).unwrap();
    assert_eq!(w.phase(), Some(Phase::Aborted));
    assert_eq!(w.production, Some(Blue));
}

#[test]
fn rollbacks_skip_the_hooks() {
    let mut w = with_hooks(true, true);
    answer(&mut w, HookKind::PreRollout, vec![]);
    w.verdict(Verdict::Pass);
    answer(&mut w, HookKind::ConfirmPromotion, vec![]);
    w.confirm_route();
    w.verdict(Verdict::Pass);
    w.advance(30_000);
    assert_eq!(w.phase(), Some(Phase::Succeeded));
    w.hooks.clear();
    w.send(Input::Command(Command::Rollback)).unwrap();
    w.report_ready(Blue);
    assert!(w.hooks.is_empty(), "{:?}", w.hooks);
    assert_eq!(w.production, Some(Blue));
}
