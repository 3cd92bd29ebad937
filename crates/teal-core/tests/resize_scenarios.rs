//! The live color's size changes (`spec.replicas` edited, `kubectl scale`,
//! an autoscaler) while nothing is released and at every step of a release.

mod common;

use common::{World, policy};
use teal_core::Color::{Blue, Green};
use teal_core::release::*;

fn healthy(p: Policy) -> World {
    let mut w = World::new(p, "v1");
    w.report_ready(Blue);
    assert_eq!(w.machine.phase_name(), "Healthy");
    w
}

fn scales(w: &World) -> Vec<(teal_core::Color, u32)> {
    w.log
        .iter()
        .filter_map(|a| match a {
            Action::Scale { color, replicas } => Some((*color, *replicas)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_new_size_while_healthy_resizes_the_live_color() {
    let mut w = healthy(policy());
    w.resize(5);
    assert_eq!(w.colors[&Blue].replicas, 5, "blue is asked for 5 replicas");
    assert_eq!(scales(&w), vec![(Blue, 5)]);
    // Growing with every replica it had: not degraded.
    w.report(Blue, 3);
    assert_eq!(w.machine.phase_name(), "Healthy");
    assert_eq!(w.machine.resizing(), Some((Blue, 3, 5)));
    w.report_ready(Blue);
    assert_eq!(w.machine.resizing(), None);
    assert_eq!(w.machine.phase_name(), "Healthy");

    w.resize(2);
    assert_eq!(w.colors[&Blue].replicas, 2);
    w.report_ready(Blue);
    assert_eq!(w.machine.phase_name(), "Healthy");
    assert_eq!(scales(&w), vec![(Blue, 5), (Blue, 2)]);
    // The same size again asks for nothing.
    w.resize(2);
    assert_eq!(scales(&w).len(), 2);
}

#[test]
fn a_live_color_that_loses_replicas_while_it_grows_is_degraded() {
    let mut w = healthy(policy());
    w.resize(5);
    w.report(Blue, 2);
    assert_eq!(w.machine.phase_name(), "Degraded");
    w.report(Blue, 4);
    assert_eq!(w.machine.phase_name(), "Healthy", "growing, 4 of 5");
}

#[test]
fn a_release_cuts_over_at_the_size_asked_for_at_promotion_and_previews_as_configured() {
    let mut p = policy();
    p.preview_replicas = Some(1);
    p.promotion = Promotion::Manual {
        auto_promote_after_ms: None,
    };
    let mut w = healthy(p);
    w.send(Input::Revision("v2".into())).unwrap();
    w.report_ready(Green);
    w.verdict(Verdict::Pass);
    assert_eq!(w.phase(), Some(Phase::AwaitingPromotion));

    // An autoscaler grows the live color during the preview.
    w.resize(5);
    assert_eq!(w.colors[&Blue].replicas, 5, "the live color follows");
    assert_eq!(w.colors[&Green].replicas, 1, "the preview keeps its size");
    w.report_ready(Blue);

    w.send(Input::Command(Command::Promote { full: false }))
        .unwrap();
    assert_eq!(w.phase(), Some(Phase::ScalingUp));
    assert_eq!(w.colors[&Green].replicas, 5, "scaled to the current size");
    w.report(Green, 3);
    assert_eq!(w.phase(), Some(Phase::ScalingUp), "3 of 5 is not ready");
    w.report_ready(Green);
    assert_eq!(w.phase(), Some(Phase::CuttingOver));
    assert_eq!(w.production, Some(Green));
}

#[test]
fn a_new_size_while_scaling_up_is_waited_for_before_cutover() {
    let mut w = healthy(policy());
    let mut p = w.machine.policy.clone();
    p.preview_replicas = Some(1);
    p.pre_promotion_analysis = false;
    p.promotion = Promotion::Manual {
        auto_promote_after_ms: None,
    };
    w.machine.policy = p;
    w.send(Input::Revision("v2".into())).unwrap();
    w.report_ready(Green);
    w.send(Input::Command(Command::Promote { full: false }))
        .unwrap();
    assert_eq!(w.phase(), Some(Phase::ScalingUp));
    assert_eq!(w.colors[&Green].replicas, 3);

    w.resize(5);
    assert_eq!(w.colors[&Green].replicas, 5, "the new color grows too");
    assert_eq!(w.colors[&Blue].replicas, 5);
    w.report(Green, 3);
    assert_eq!(w.phase(), Some(Phase::ScalingUp), "3 of 5 is not ready");
    w.report(Green, 5);
    assert_eq!(w.phase(), Some(Phase::CuttingOver));

    // Shrinking while scaling up does not wait for more than asked.
    let mut w = healthy(w.machine.policy.clone());
    w.machine.policy.replicas = 5;
    w.send(Input::Tick).unwrap();
    w.report_ready(Blue);
    w.send(Input::Revision("v2".into())).unwrap();
    w.report_ready(Green);
    w.send(Input::Command(Command::Promote { full: false }))
        .unwrap();
    assert_eq!(w.colors[&Green].replicas, 5);
    w.report(Green, 3);
    w.resize(3);
    assert_eq!(w.colors[&Green].replicas, 3);
    w.report(Green, 3);
    assert_eq!(w.phase(), Some(Phase::CuttingOver));
}

#[test]
fn growing_after_cutover_neither_rolls_back_nor_leaves_the_previous_color_short() {
    let mut p = policy();
    p.post_promotion_analysis = false;
    let mut w = healthy(p);
    w.send(Input::Revision("v2".into())).unwrap();
    w.report_ready(Green);
    w.verdict(Verdict::Pass);
    w.confirm_route();
    assert_eq!(w.phase(), Some(Phase::ScaleDownDelay));

    w.resize(7);
    assert_eq!(w.colors[&Green].replicas, 7);
    assert_eq!(
        w.colors[&Blue].replicas, 7,
        "the previous color stays ready for an instant rollback at the new size"
    );
    w.report(Green, 3);
    assert_eq!(
        w.phase(),
        Some(Phase::ScaleDownDelay),
        "3 ready of 7 asked is growth, not a failure"
    );
    w.report(Green, 1);
    assert_eq!(
        w.phase(),
        Some(Phase::Reverting),
        "1 of the 3 it held is a failure: back to blue once it is ready at 7"
    );
    assert_eq!(w.production, Some(Green));
    w.report_ready(Blue);
    assert_eq!(w.phase(), Some(Phase::RolledBack));
    assert_eq!(w.production, Some(Blue));
}

#[test]
fn an_operator_rollback_after_a_resize_redeploys_at_the_current_size() {
    let mut w = healthy(policy());
    w.send(Input::Revision("v2".into())).unwrap();
    w.settle(Verdict::Pass);
    assert_eq!(w.machine.active.revision, "v2");
    w.resize(6);
    w.report_ready(Green);
    w.send(Input::Command(Command::Rollback)).unwrap();
    assert_eq!(w.colors[&Blue].replicas, 6);
    assert_eq!(w.colors[&Blue].revision.as_deref(), Some("v1"));
    w.settle(Verdict::Pass);
    assert_eq!(w.production_revision().as_deref(), Some("v1"));
    assert_eq!(w.colors[&Blue].replicas, 6);
}
