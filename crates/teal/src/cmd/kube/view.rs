//! How a BlueGreen is shown to people: a table row, and the detailed view
//! of `teal status` and `teal watch`.

use std::fmt::Write as _;

use k8s_openapi::api::events::v1::Event;
use kube::ResourceExt;
use teal_api::BlueGreen;

use super::{ago, event_time_ms};

pub const ROW_HEADER: [&str; 8] = [
    "NAME", "PHASE", "ACTIVE", "REVISION", "PREVIEW", "DESIRED", "AGE", "MESSAGE",
];

fn or_dash(s: Option<String>) -> String {
    s.filter(|s| !s.is_empty()).unwrap_or_else(|| "-".into())
}

/// One table row (see [`ROW_HEADER`]).
pub fn row(bg: &BlueGreen) -> Vec<String> {
    let st = bg.status.clone().unwrap_or_default();
    vec![
        bg.name_any(),
        or_dash(st.phase),
        or_dash(st.active_color.map(|c| c.to_string())),
        or_dash(st.active_revision),
        or_dash(
            st.preview_color
                .map(|c| format!("{c} {}", st.preview_revision.unwrap_or_default())),
        ),
        or_dash(st.desired_revision),
        bg.metadata
            .creation_timestamp
            .as_ref()
            .map(|t| ago(t.0.as_millisecond()))
            .unwrap_or_else(|| "-".into()),
        or_dash(st.message),
    ]
}

/// The detailed view: phase, colors, revisions, analysis, conditions,
/// `traffic` (lines, may be empty) and the last `events` (oldest first).
pub fn detail(
    ns: &str,
    bg: &BlueGreen,
    traffic: &str,
    events: &[Event],
    max_events: usize,
) -> String {
    let st = bg.status.clone().unwrap_or_default();
    let mut s = String::new();
    let _ = writeln!(
        s,
        "BlueGreen {ns}/{}   (Deployment {})",
        bg.name_any(),
        bg.spec.workload_ref.name
    );
    let _ = writeln!(s, "Phase:     {}", or_dash(st.phase.clone()));
    let _ = writeln!(s, "Message:   {}", or_dash(st.message.clone()));
    let _ = writeln!(
        s,
        "Active:    {}",
        match st.active_color {
            Some(c) => format!("{c}  revision {}", or_dash(st.active_revision.clone())),
            None => "-".into(),
        }
    );
    let _ = writeln!(
        s,
        "Preview:   {}",
        match st.preview_color {
            Some(c) => format!("{c}  revision {}", or_dash(st.preview_revision.clone())),
            None => "-".into(),
        }
    );
    let _ = writeln!(s, "Desired:   {}", or_dash(st.desired_revision.clone()));
    let _ = writeln!(
        s,
        "Promotion: {}",
        serde_json::to_value(bg.spec.promotion.mode)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_else(|| "-".into())
    );
    match &st.analysis {
        Some(a) => {
            let _ = writeln!(
                s,
                "Analysis:  {} of {}: {} checks, {} failed, {} inconclusive, {} provider errors{}",
                a.stage,
                a.revision,
                a.checks,
                a.failures,
                a.inconclusive,
                a.errors,
                a.verdict
                    .as_ref()
                    .map(|v| format!(" -> {v}"))
                    .unwrap_or_default()
            );
            for m in &a.metrics {
                let _ = writeln!(
                    s,
                    "  {:<20} {}{}{}",
                    m.name,
                    m.value
                        .map(|v| format!("{v:.3}"))
                        .unwrap_or_else(|| "no value".into()),
                    if m.dry_run { "  [dry run]" } else { "" },
                    m.note
                        .as_ref()
                        .map(|n| format!("  ({n})"))
                        .unwrap_or_default()
                );
            }
        }
        None => {
            let _ = writeln!(s, "Analysis:  -");
        }
    }
    for h in &st.hooks {
        let _ = writeln!(
            s,
            "Hook:      {} ({}) {}: {} [{} attempt(s), since {}]",
            h.name,
            h.kind.as_str(),
            if h.passed { "passed" } else { "not passed" },
            h.message,
            h.attempts,
            h.time
        );
    }
    if !st.conditions.is_empty() {
        let conds: Vec<String> = st
            .conditions
            .iter()
            .map(|c| format!("{}={} ({})", c.type_, c.status, c.reason))
            .collect();
        let _ = writeln!(s, "Conditions: {}", conds.join("  "));
    }
    // Metric templates: the query each metric resolves to, or what is missing.
    if let Some(c) = st
        .conditions
        .iter()
        .find(|c| c.type_ == teal_controller::templates::CONDITION)
    {
        for line in c.message.split("; ") {
            let _ = writeln!(s, "Template:  {line}");
        }
    }
    if let Some(c) = &st.last_command {
        let _ = writeln!(s, "Last command: {c}");
    }
    if let Some(r) = st.history.last() {
        let _ = writeln!(
            s,
            "Last release: {} on {}: {} ({}), {} ago",
            r.revision,
            r.color,
            r.outcome,
            r.reason,
            ago(r.ended_at)
        );
    }
    s.push_str(traffic);
    let _ = writeln!(s, "Events:");
    if events.is_empty() {
        let _ = writeln!(s, "  (none)");
    }
    let skip = events.len().saturating_sub(max_events);
    for e in &events[skip..] {
        let count = e.series.as_ref().map(|s| s.count).unwrap_or(1);
        let _ = writeln!(
            s,
            "  {:>4}  {:<7}  {:<18}  {}{}",
            ago(event_time_ms(e)),
            e.type_.as_deref().unwrap_or("-"),
            e.reason.as_deref().unwrap_or("-"),
            e.note.as_deref().unwrap_or(""),
            if count > 1 {
                format!(" (x{count})")
            } else {
                String::new()
            }
        );
    }
    s
}

#[cfg(test)]
mod hook_tests {
    use super::*;

    #[test]
    fn detail_shows_the_last_answer_of_every_hook() {
        let bg: BlueGreen = serde_json::from_value(serde_json::json!({
            "apiVersion": "teal.dev/v1alpha1",
            "kind": "BlueGreen",
            "metadata": {"name": "shop", "namespace": "prod"},
            "spec": {"workloadRef": {"kind": "Deployment", "name": "shop"}},
            "status": {"phase": "AwaitingPromotion", "hooks": [{
                "name": "approve", "type": "confirm-promotion", "revision": "abc",
                "passed": false, "code": 403,
                "message": "confirm-promotion webhook \"approve\" answered 403",
                "time": "2026-01-02T03:04:05Z", "attempts": 1
            }]}
        }))
        .unwrap();
        let out = detail("prod", &bg, "", &[], 0);
        assert!(
            out.contains("Hook:      approve (confirm-promotion) not passed: confirm-promotion webhook \"approve\" answered 403 [1 attempt(s), since 2026-01-02T03:04:05Z]"),
            "{out}"
        );
    }
}
