//! Release scenarios, step by step, against the runtime model.

mod common;

use common::{World, policy};
use teal_core::Color::{Blue, Green};
use teal_core::release::*;

fn started(p: Policy) -> World {
    let mut w = World::new(p, "v1");
    assert_eq!(w.machine.phase_name(), "Initializing");
    assert_eq!(
        w.production, None,
        "no traffic before the first color is ready"
    );
    w.report(Blue, 2);
    assert_eq!(w.production, None, "2 of 3 replicas is not ready");
    w.report_ready(Blue);
    assert_eq!(w.production, Some(Blue));
    assert_eq!(w.machine.phase_name(), "Healthy");
    w
}

#[test]
fn auto_promotion_runs_every_phase_in_order() {
    let mut w = started(policy());
    w.send(Input::Revision("v2".into())).unwrap();
    assert_eq!(w.phase(), Some(Phase::Deploying));
    assert_eq!(w.colors[&Green].revision.as_deref(), Some("v2"));
    assert_eq!(w.preview, None, "no preview before green is ready");

    w.report(Green, 1);
    assert_eq!(
        w.phase(),
        Some(Phase::Deploying),
        "preview waits for all replicas"
    );
    w.report_ready(Green);
    assert_eq!(w.phase(), Some(Phase::Previewing));
    assert_eq!(w.preview, Some(Green));
    assert_eq!(w.production, Some(Blue));
    assert_eq!(w.analysis, Some((Stage::PrePromotion, "v2".into())));

    w.verdict(Verdict::Pass);
    assert_eq!(w.phase(), Some(Phase::CuttingOver));
    assert_eq!(w.production, Some(Green));
    assert_eq!(w.preview, None);
    assert_eq!(w.machine.active.revision, "v2");

    w.confirm_route();
    assert_eq!(w.phase(), Some(Phase::PostPromotion));
    w.verdict(Verdict::Pass);
    assert_eq!(w.phase(), Some(Phase::ScaleDownDelay));
    assert_eq!(w.colors[&Blue].replicas, 3, "blue stays up for rollback");

    w.advance(29_999);
    assert_eq!(w.phase(), Some(Phase::ScaleDownDelay));
    w.advance(1);
    assert_eq!(w.phase(), Some(Phase::Succeeded));
    assert_eq!(w.colors[&Blue].replicas, 0);
    assert!(w.log.contains(&Action::Retire { color: Blue }));
    let last = w.machine.history.last().unwrap();
    assert_eq!(
        (last.revision.as_str(), last.outcome),
        ("v2", Outcome::Promoted)
    );
    assert_eq!(w.machine.phase_name(), "Healthy");
}

/// v2 in green, ready and passed, waiting for the operator.
fn awaiting_promotion() -> World {
    let mut p = policy();
    p.promotion = Promotion::Manual {
        auto_promote_after_ms: None,
    };
    let mut w = started(p);
    w.send(Input::Revision("v2".into())).unwrap();
    w.report_ready(Green);
    w.verdict(Verdict::Pass);
    assert_eq!(w.phase(), Some(Phase::AwaitingPromotion));
    w
}

#[test]
fn manual_promotion_waits_for_the_operator() {
    let mut w = awaiting_promotion();
    w.advance(3_600_000);
    assert_eq!(
        w.phase(),
        Some(Phase::AwaitingPromotion),
        "no deadline on a manual gate"
    );
    assert_eq!(w.production, Some(Blue));
    w.send(Input::Command(Command::Promote { full: false }))
        .unwrap();
    assert_eq!(w.production, Some(Green));
}

#[test]
fn a_promote_after_the_preview_lost_its_pods_waits_for_them() {
    let mut w = awaiting_promotion();
    // The preview's pods go away while it waits (a scale to zero the
    // Deployment controller acted on late); the runtime reports that
    // before it hands over the operator's promote.
    w.report(Green, 0);
    assert_eq!(w.phase(), Some(Phase::AwaitingPromotion));
    w.send(Input::Command(Command::Promote { full: false }))
        .unwrap();
    assert_eq!(w.phase(), Some(Phase::ScalingUp));
    assert_eq!(w.production, Some(Blue), "no cutover to 0 ready replicas");
    w.report(Green, 2);
    assert_eq!(w.production, Some(Blue));
    w.report_ready(Green);
    assert_eq!(w.production, Some(Green));
    assert!(
        w.machine
            .history
            .iter()
            .all(|h| h.outcome != Outcome::RolledBack)
    );
}

#[test]
fn promote_is_refused_with_the_phase_when_nothing_waits() {
    let mut w = started(policy());
    let err = w
        .send(Input::Command(Command::Promote { full: false }))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "not waiting for promotion (phase: Healthy)"
    );
    w.send(Input::Revision("v2".into())).unwrap();
    let err = w
        .send(Input::Command(Command::Promote { full: true }))
        .unwrap_err();
    assert!(err.to_string().contains("Deploying"), "{err}");
}

#[test]
fn auto_promote_after_elapses() {
    let mut p = policy();
    p.promotion = Promotion::Manual {
        auto_promote_after_ms: Some(10_000),
    };
    let mut w = started(p);
    w.send(Input::Revision("v2".into())).unwrap();
    w.report_ready(Green);
    w.verdict(Verdict::Pass);
    w.advance(9_999);
    assert_eq!(w.production, Some(Blue));
    w.advance(1);
    assert_eq!(w.production, Some(Green));
}

#[test]
fn smaller_preview_is_scaled_up_and_ready_before_cutover() {
    let mut p = policy();
    p.preview_replicas = Some(1);
    let mut w = started(p);
    w.send(Input::Revision("v2".into())).unwrap();
    assert_eq!(w.colors[&Green].replicas, 1);
    w.report_ready(Green);
    assert_eq!(w.phase(), Some(Phase::Previewing));
    w.verdict(Verdict::Pass);
    assert_eq!(w.phase(), Some(Phase::ScalingUp));
    assert_eq!(w.colors[&Green].replicas, 3);
    assert_eq!(w.production, Some(Blue));
    // The stale observation of 1 ready replica must not count as ready.
    w.report(Green, 1);
    assert_eq!(w.production, Some(Blue));
    w.report(Green, 3);
    assert_eq!(w.production, Some(Green));
}

#[test]
fn pre_promotion_failure_rolls_back_without_touching_production() {
    let mut w = started(policy());
    w.send(Input::Revision("v3".into())).unwrap();
    w.report_ready(Green);
    w.verdict(Verdict::Fail("success rate 70.1% < 99%".into()));
    assert_eq!(w.phase(), Some(Phase::RolledBack));
    assert_eq!(w.production, Some(Blue));
    assert_eq!(w.preview, None);
    assert_eq!(w.colors[&Green].replicas, 0);
    assert!(w.switches.iter().all(|(_, rev)| rev != "v3"));
    let rec = w.machine.history.last().unwrap();
    assert_eq!(rec.outcome, Outcome::RolledBack);
    assert!(rec.reason.contains("70.1%"), "{}", rec.reason);
    assert_eq!(w.machine.phase_name(), "RolledBack");
    // Retry runs it again; a new revision replaces it.
    w.send(Input::Command(Command::Retry)).unwrap();
    assert_eq!(w.phase(), Some(Phase::Deploying));
}

#[test]
fn progress_deadline_fails_and_keeps_the_live_color() {
    let mut w = started(policy());
    w.send(Input::Revision("v2".into())).unwrap();
    w.report(Green, 2);
    w.advance(59_999);
    assert_eq!(w.phase(), Some(Phase::Deploying));
    w.advance(1);
    assert_eq!(w.phase(), Some(Phase::Failed));
    assert_eq!(w.production, Some(Blue));
    assert_eq!(w.colors[&Green].replicas, 0);
    assert!(
        w.machine
            .history
            .last()
            .unwrap()
            .reason
            .contains("progress deadline")
    );
}

#[test]
fn crash_loop_fails_fast() {
    let mut w = started(policy());
    w.send(Input::Revision("v2".into())).unwrap();
    w.report_failure(Green, "process exited with status 1, 3 times");
    assert_eq!(w.phase(), Some(Phase::Failed));
    assert!(w.machine.history.last().unwrap().reason.contains("exited"));
}

#[test]
fn abort_after_cutover_switches_back_at_once() {
    let mut w = started(policy());
    w.send(Input::Revision("v2".into())).unwrap();
    w.report_ready(Green);
    w.verdict(Verdict::Pass);
    w.confirm_route();
    assert_eq!(w.phase(), Some(Phase::PostPromotion));
    w.send(Input::Command(Command::Abort)).unwrap();
    assert_eq!(w.production, Some(Blue));
    assert_eq!(w.phase(), Some(Phase::Aborted));
    assert_eq!(w.machine.active.revision, "v1");
    assert_eq!(w.colors[&Green].replicas, 0);
}

#[test]
fn rollback_inside_and_outside_the_scale_down_window() {
    let mut p = policy();
    p.post_promotion_analysis = false;
    let mut w = started(p);
    w.send(Input::Revision("v2".into())).unwrap();
    w.report_ready(Green);
    w.verdict(Verdict::Pass);
    w.confirm_route();
    assert_eq!(w.phase(), Some(Phase::ScaleDownDelay));
    w.send(Input::Command(Command::Rollback)).unwrap();
    assert_eq!(w.production, Some(Blue), "inside the window: instant");
    assert_eq!(w.phase(), Some(Phase::RolledBack));

    // Release v2 again, let it finish, then roll back after the window.
    w.send(Input::Command(Command::Retry)).unwrap();
    w.settle(Verdict::Pass);
    assert_eq!(w.production_revision().as_deref(), Some("v2"));
    assert_eq!(w.colors[&Blue].replicas, 0);
    w.send(Input::Command(Command::Rollback)).unwrap();
    assert_eq!(
        w.phase(),
        Some(Phase::Deploying),
        "outside the window: redeploy"
    );
    assert_eq!(w.colors[&Blue].revision.as_deref(), Some("v1"));
    assert_eq!(w.production_revision().as_deref(), Some("v2"));
    w.report_ready(Blue);
    assert_eq!(w.analysis, None, "a rollback skips analysis");
    assert_eq!(w.production, Some(Blue));
    assert_eq!(w.production_revision().as_deref(), Some("v1"));
    w.settle(Verdict::Pass);
    let last = w.machine.history.last().unwrap();
    assert_eq!(
        (last.revision.as_str(), last.outcome),
        ("v1", Outcome::Promoted)
    );
    assert!(last.rollback, "history tells the rollback from a release");
    assert!(
        last.reason.starts_with("rolled back to revision v1"),
        "{}",
        last.reason
    );
    assert!(!w.machine.history.iter().rev().nth(1).unwrap().rollback);
}

#[test]
fn supersede_before_cutover_never_ships_the_older_revision() {
    let mut w = started(policy());
    w.send(Input::Revision("v2".into())).unwrap();
    w.report_ready(Green);
    w.send(Input::Revision("v3".into())).unwrap();
    assert_eq!(
        w.machine.history.last().unwrap().outcome,
        Outcome::Superseded
    );
    assert_eq!(w.colors[&Green].revision.as_deref(), Some("v3"));
    assert_eq!(w.phase(), Some(Phase::Deploying));
    w.settle(Verdict::Pass);
    assert_eq!(w.production_revision().as_deref(), Some("v3"));
    assert!(w.switches.iter().all(|(_, r)| r != "v2"));
}

#[test]
fn new_revision_during_cutover_waits_for_confirmation() {
    let mut w = started(policy());
    w.send(Input::Revision("v2".into())).unwrap();
    w.report_ready(Green);
    w.verdict(Verdict::Pass);
    assert_eq!(w.phase(), Some(Phase::CuttingOver));
    w.send(Input::Revision("v3".into())).unwrap();
    assert_eq!(
        w.colors[&Blue].revision.as_deref(),
        Some("v1"),
        "blue untouched while unconfirmed"
    );
    w.confirm_route();
    assert_eq!(w.colors[&Blue].revision.as_deref(), Some("v3"));
    assert_eq!(w.machine.release.as_ref().unwrap().revision, "v3");
}

#[test]
fn unready_live_color_after_cutover_reverts_to_the_previous_one() {
    let mut w = started(policy());
    w.send(Input::Revision("v2".into())).unwrap();
    w.report_ready(Green);
    w.verdict(Verdict::Pass);
    w.confirm_route();
    w.report_failure(Green, "process exited");
    assert_eq!(w.production, Some(Blue));
    assert_eq!(w.phase(), Some(Phase::RolledBack));
}

#[test]
fn revert_waits_for_the_previous_color_to_be_ready() {
    let mut w = started(policy());
    w.send(Input::Revision("v2".into())).unwrap();
    w.report_ready(Green);
    w.verdict(Verdict::Pass);
    w.confirm_route();
    w.report(Blue, 1); // blue lost replicas meanwhile
    w.verdict(Verdict::Fail("p99 900ms > 500ms".into()));
    assert_eq!(w.phase(), Some(Phase::Reverting));
    assert_eq!(
        w.production,
        Some(Green),
        "never switch to an unready color"
    );
    w.report_ready(Blue);
    assert_eq!(w.production, Some(Blue));
    assert_eq!(w.phase(), Some(Phase::RolledBack));
    assert!(w.machine.history.last().unwrap().reason.contains("p99"));
}

#[test]
fn inconclusive_analysis_never_passes_silently() {
    let mut w = started(policy());
    w.send(Input::Revision("v2".into())).unwrap();
    w.report_ready(Green);
    w.verdict(Verdict::Inconclusive("no requests in 3 checks".into()));
    assert_eq!(w.phase(), Some(Phase::AwaitingPromotion));
    w.advance(3_600_000);
    assert_eq!(w.production, Some(Blue));
    w.send(Input::Command(Command::Promote { full: false }))
        .unwrap();
    assert_eq!(w.production, Some(Green));
}

#[test]
fn machine_state_round_trips_through_json() {
    let mut w = started(policy());
    w.send(Input::Revision("v2".into())).unwrap();
    w.report_ready(Green);
    let json = serde_json::to_string(&w.machine).unwrap();
    let back: Machine = serde_json::from_str(&json).unwrap();
    assert_eq!(back, w.machine);
}

#[test]
fn hearing_the_same_revision_again_changes_nothing() {
    let mut w = started(policy());
    w.send(Input::Revision("v2".into())).unwrap();
    w.report_failure(Green, "crashed");
    assert_eq!(w.phase(), Some(Phase::Failed));
    // A controller feeds the workload's revision on every reconcile.
    for _ in 0..3 {
        w.send(Input::Revision("v2".into())).unwrap();
        assert_eq!(
            w.phase(),
            Some(Phase::Failed),
            "a failed revision is not retried by itself"
        );
    }
    w.send(Input::Command(Command::Retry)).unwrap();
    assert_eq!(w.phase(), Some(Phase::Deploying));
    w.settle(Verdict::Pass);
    assert_eq!(w.production_revision().as_deref(), Some("v2"));

    // Rolled back after the window: the workload still names v2, and that
    // must not undo the rollback.
    w.send(Input::Command(Command::Rollback)).unwrap();
    w.settle(Verdict::Pass);
    assert_eq!(w.production_revision().as_deref(), Some("v1"));
    w.send(Input::Revision("v2".into())).unwrap();
    assert!(!w.machine.in_progress());
    assert_eq!(w.production_revision().as_deref(), Some("v1"));
    w.send(Input::Command(Command::Retry)).unwrap();
    w.settle(Verdict::Pass);
    assert_eq!(w.production_revision().as_deref(), Some("v2"));
}

#[test]
fn losing_one_replica_after_cutover_does_not_switch_back_losing_most_does() {
    let mut w = started(policy());
    w.send(Input::Revision("v2".into())).unwrap();
    w.report_ready(Green);
    w.verdict(Verdict::Pass);
    w.confirm_route();
    w.report(Green, 2);
    assert_eq!(
        w.production,
        Some(Green),
        "2 of 3 ready: keep serving, restore capacity"
    );
    w.report(Green, 1);
    assert_eq!(
        w.production,
        Some(Blue),
        "1 of 3 ready: back to the previous color"
    );
    assert!(
        w.machine
            .history
            .last()
            .unwrap()
            .reason
            .contains("1 of 3 replicas ready")
    );
}
