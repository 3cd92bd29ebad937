//! Webhooks as the release engine sees them: kinds, results, and which
//! ones an event fires. Calling them is the runtime's business.
//!
//! - `pre-rollout`: once the new color is ready, before analysis; any
//!   failure ends the release before it takes production traffic.
//! - `rollout`: with every analysis check; a failure is a failed check
//!   ([`crate::analysis::Run::record_checks`]).
//! - `confirm-promotion`: a gate before cutover; the runtime polls it and
//!   the release waits in `AwaitingPromotion` until every gate answers 2xx.
//! - `rollback`: polled with every analysis check; a 2xx answer rolls back.
//! - `post-rollout` and `event`: fire and forget ([`fired_by`]).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::release::EventKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HookKind {
    PreRollout,
    Rollout,
    ConfirmPromotion,
    PostRollout,
    Rollback,
    Event,
}

impl fmt::Display for HookKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HookKind::PreRollout => "pre-rollout",
            HookKind::Rollout => "rollout",
            HookKind::ConfirmPromotion => "confirm-promotion",
            HookKind::PostRollout => "post-rollout",
            HookKind::Rollback => "rollback",
            HookKind::Event => "event",
        })
    }
}

/// The outcome of calling one webhook, retries included.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HookResult {
    pub name: String,
    pub kind: HookKind,
    /// HTTP status of the last answer; `None` if there was none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Why there was no answer (timeout, connection refused…).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl HookResult {
    /// 2xx is a pass; anything else, or no answer, is not.
    pub fn passed(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }

    /// `webhook "smoke" answered 500`, for messages and status.
    pub fn describe(&self) -> String {
        match (self.status, &self.error) {
            (Some(s), _) => format!("{} webhook {:?} answered {s}", self.kind, self.name),
            (None, Some(e)) => format!("{} webhook {:?} failed: {e}", self.kind, self.name),
            (None, None) => format!("{} webhook {:?} did not answer", self.kind, self.name),
        }
    }
}

/// The first result that did not pass, described.
pub fn first_failure(results: &[HookResult]) -> Option<String> {
    results
        .iter()
        .find(|r| !r.passed())
        .map(HookResult::describe)
}

/// Fire-and-forget hooks an engine event sets off: `event` hooks for
/// every event, `post-rollout` hooks when a release has ended.
pub fn fired_by(kind: EventKind) -> &'static [HookKind] {
    match kind {
        EventKind::Succeeded | EventKind::RolledBack | EventKind::Aborted | EventKind::Failed => {
            &[HookKind::PostRollout, HookKind::Event]
        }
        _ => &[HookKind::Event],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(status: Option<u16>, error: Option<&str>) -> HookResult {
        HookResult {
            name: "smoke".into(),
            kind: HookKind::PreRollout,
            status,
            error: error.map(Into::into),
        }
    }

    #[test]
    fn only_2xx_passes() {
        assert!(r(Some(200), None).passed());
        assert!(r(Some(204), None).passed());
        assert!(!r(Some(302), None).passed());
        assert!(!r(Some(500), None).passed());
        assert!(!r(None, Some("connection refused")).passed());
        assert_eq!(
            first_failure(&[r(Some(200), None), r(Some(503), None)]).unwrap(),
            "pre-rollout webhook \"smoke\" answered 503"
        );
        assert_eq!(
            r(None, Some("timed out")).describe(),
            "pre-rollout webhook \"smoke\" failed: timed out"
        );
    }

    #[test]
    fn post_rollout_fires_when_a_release_ends() {
        assert!(fired_by(EventKind::RolledBack).contains(&HookKind::PostRollout));
        assert!(fired_by(EventKind::Succeeded).contains(&HookKind::PostRollout));
        assert_eq!(fired_by(EventKind::PreviewReady), &[HookKind::Event]);
    }
}
