//! Analysis verdicts: turning repeated metric checks into one verdict.
//!
//! A check evaluates every metric once. A stage runs `checks` checks, one
//! every interval; the runtime measures, this module judges. Semantics follow
//! Argo Rollouts' analysis: the stage fails once more than `failure_limit`
//! checks failed, and is inconclusive once more than `inconclusive_limit`
//! checks had no usable data. No data never counts as a pass.
//!
//! A provider error (the query could not be made or answered) is neither a
//! failure nor "no data": such checks are counted apart, and the stage fails
//! once more than `consecutive_error_limit` checks in a row had one. A
//! dry-run metric is measured and reported with every check but never
//! decides anything.

use serde::{Deserialize, Serialize};

use crate::hooks::{HookKind, HookResult};
use crate::release::Verdict;

/// One metric's value in one check; `None` means no data.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    pub metric: String,
    pub value: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    /// Why there is no value (provider error, too few requests…).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// No value because the provider failed (`note` says how), not because
    /// there was no data.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub error: bool,
    /// Measured and reported, never decisive.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
}

/// The result of one metric in one check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "result", content = "reason")]
pub enum CheckResult {
    Pass,
    Fail(String),
    Inconclusive(String),
}

impl Measurement {
    /// A measurement of `metric` (judged against `min` and `max`) without a
    /// value yet.
    pub fn of(metric: impl Into<String>, min: Option<f64>, max: Option<f64>) -> Measurement {
        Measurement {
            metric: metric.into(),
            min,
            max,
            ..Measurement::default()
        }
    }

    /// This measurement with `value`.
    pub fn value(self, value: f64) -> Measurement {
        Measurement {
            value: Some(value),
            ..self
        }
    }

    /// This measurement without a value, for lack of data (`why`).
    pub fn no_data(self, why: impl Into<String>) -> Measurement {
        Measurement {
            value: None,
            note: Some(why.into()),
            ..self
        }
    }

    /// This measurement without a value because the provider failed (`why`).
    pub fn failed(self, why: impl Into<String>) -> Measurement {
        Measurement {
            error: true,
            ..self.no_data(why)
        }
    }

    pub fn judge(&self) -> CheckResult {
        let Some(v) = self.value else {
            let why = self.note.clone().unwrap_or_else(|| "no data".into());
            return CheckResult::Inconclusive(format!("{}: {why}", self.metric));
        };
        if v.is_nan() {
            return CheckResult::Inconclusive(format!("{}: value is NaN", self.metric));
        }
        if let Some(min) = self.min
            && v < min
        {
            return CheckResult::Fail(format!(
                "{} = {} is below the minimum {}",
                self.metric,
                fmt(v),
                fmt(min)
            ));
        }
        if let Some(max) = self.max
            && v > max
        {
            return CheckResult::Fail(format!(
                "{} = {} is above the maximum {}",
                self.metric,
                fmt(v),
                fmt(max)
            ));
        }
        CheckResult::Pass
    }
}

fn fmt(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// Limits of one analysis stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    /// Checks to run before the stage passes.
    pub checks: u32,
    /// Failed checks tolerated; one more fails the stage.
    pub failure_limit: u32,
    /// Checks without data tolerated; one more makes the stage inconclusive.
    pub inconclusive_limit: u32,
    /// Checks in a row with a provider error tolerated; one more fails the
    /// stage.
    #[serde(default = "default_consecutive_error_limit")]
    pub consecutive_error_limit: u32,
}

/// Checks in a row with a provider error tolerated by default (as Argo
/// Rollouts' `consecutiveErrorLimit`).
pub const DEFAULT_CONSECUTIVE_ERROR_LIMIT: u32 = 4;

fn default_consecutive_error_limit() -> u32 {
    DEFAULT_CONSECUTIVE_ERROR_LIMIT
}

/// Checks whose measurements a stage keeps ([`Run::history`]).
pub const HISTORY: usize = 10;

/// The measurements of one earlier check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckRecord {
    /// Which check of the stage (1 for the first).
    pub check: u32,
    pub measurements: Vec<Measurement>,
}

/// The progress of one analysis stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Run {
    pub limits: Limits,
    pub checks: u32,
    pub failures: u32,
    pub inconclusive: u32,
    /// Checks with a provider error (counted neither as failed nor as
    /// inconclusive).
    #[serde(default)]
    pub errors: u32,
    /// Checks in a row, up to the latest, with a provider error.
    #[serde(default)]
    pub consecutive_errors: u32,
    /// The latest measurement of every metric.
    pub last: Vec<Measurement>,
    /// The measurements of the checks before the latest, oldest first, at
    /// most [`HISTORY`].
    #[serde(default, skip_serializing_if = "std::collections::VecDeque::is_empty")]
    pub history: std::collections::VecDeque<CheckRecord>,
    /// The latest result of every rollout and rollback webhook.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hooks: Vec<HookResult>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
}

impl Run {
    pub fn new(limits: Limits) -> Run {
        Run {
            limits,
            checks: 0,
            failures: 0,
            inconclusive: 0,
            errors: 0,
            consecutive_errors: 0,
            last: Vec::new(),
            history: std::collections::VecDeque::new(),
            hooks: Vec::new(),
            verdict: None,
        }
    }

    /// Records one check; returns the stage's verdict once there is one.
    pub fn record(&mut self, measurements: Vec<Measurement>) -> Option<Verdict> {
        self.record_checks(measurements, Vec::new())
    }

    /// Records one check with the webhooks called with it: a failed
    /// `rollout` webhook fails the check like a metric out of range; a
    /// `rollback` webhook answering 2xx fails the stage at once, whatever
    /// the failure limit.
    pub fn record_checks(
        &mut self,
        measurements: Vec<Measurement>,
        hooks: Vec<HookResult>,
    ) -> Option<Verdict> {
        if self.verdict.is_some() {
            return self.verdict.clone();
        }
        self.checks += 1;
        if !self.last.is_empty() {
            if self.history.len() == HISTORY {
                self.history.pop_front();
            }
            self.history.push_back(CheckRecord {
                check: self.checks - 1,
                measurements: std::mem::take(&mut self.last),
            });
        }
        if let Some(h) = hooks
            .iter()
            .find(|h| h.kind == HookKind::Rollback && h.passed())
        {
            self.failures += 1;
            self.verdict = Some(Verdict::Fail(format!(
                "{}: rollback requested",
                h.describe()
            )));
            self.last = measurements;
            self.hooks = hooks;
            return self.verdict.clone();
        }
        let decisive = || measurements.iter().filter(|m| !m.dry_run);
        let errors: Vec<String> = decisive()
            .filter(|m| m.error)
            .map(|m| {
                let why = m.note.as_deref().unwrap_or("provider error");
                format!("{}: {why}", m.metric)
            })
            .collect();
        let mut results: Vec<CheckResult> = decisive()
            .filter(|m| !m.error)
            .map(Measurement::judge)
            .collect();
        results.extend(
            hooks
                .iter()
                .filter(|h| h.kind == HookKind::Rollout && !h.passed())
                .map(|h| CheckResult::Fail(h.describe())),
        );
        self.last = measurements;
        self.hooks = hooks;
        let failed: Vec<&str> = results
            .iter()
            .filter_map(|r| match r {
                CheckResult::Fail(s) => Some(s.as_str()),
                _ => None,
            })
            .collect();
        let unknown: Vec<&str> = results
            .iter()
            .filter_map(|r| match r {
                CheckResult::Inconclusive(s) => Some(s.as_str()),
                _ => None,
            })
            .collect();
        if errors.is_empty() {
            self.consecutive_errors = 0;
        }
        if !failed.is_empty() {
            self.failures += 1;
            if self.failures > self.limits.failure_limit {
                self.verdict = Some(Verdict::Fail(failed.join("; ")));
            }
        } else if !errors.is_empty() {
            self.errors += 1;
            self.consecutive_errors += 1;
            if self.consecutive_errors > self.limits.consecutive_error_limit {
                self.verdict = Some(Verdict::Fail(format!(
                    "{} checks in a row with a provider error: {}",
                    self.consecutive_errors,
                    errors.join("; ")
                )));
            }
        } else if !unknown.is_empty() || results.is_empty() {
            self.inconclusive += 1;
            if self.inconclusive > self.limits.inconclusive_limit {
                let why = if results.is_empty() {
                    "no metrics".to_string()
                } else {
                    unknown.join("; ")
                };
                self.verdict = Some(Verdict::Inconclusive(why));
            }
        }
        if self.verdict.is_none() && self.checks >= self.limits.checks.max(1) {
            let passed = self.checks - self.failures - self.inconclusive - self.errors;
            self.verdict = Some(if passed > 0 {
                Verdict::Pass
            } else {
                Verdict::Inconclusive("no check had usable data".into())
            });
        }
        self.verdict.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(kind: HookKind, status: u16) -> HookResult {
        HookResult {
            name: "h".into(),
            kind,
            status: Some(status),
            error: None,
        }
    }

    #[test]
    fn a_failing_rollout_hook_fails_the_check_naming_it() {
        let mut r = Run::new(limits(3, 0, 0));
        let v = r
            .record_checks(vec![m(Some(100.0))], vec![hook(HookKind::Rollout, 500)])
            .unwrap();
        assert_eq!(
            v,
            Verdict::Fail("rollout webhook \"h\" answered 500".into())
        );
        let mut r = Run::new(limits(2, 0, 0));
        r.record_checks(vec![m(Some(100.0))], vec![hook(HookKind::Rollout, 200)]);
        assert_eq!(
            r.record_checks(vec![m(Some(100.0))], vec![hook(HookKind::Rollback, 500)]),
            Some(Verdict::Pass),
            "a rollback hook that does not answer 2xx asks for nothing"
        );
    }

    #[test]
    fn a_rollback_hook_answering_2xx_fails_at_once() {
        let mut r = Run::new(limits(5, 3, 0));
        let v = r
            .record_checks(vec![m(Some(100.0))], vec![hook(HookKind::Rollback, 200)])
            .unwrap();
        assert_eq!(
            v,
            Verdict::Fail("rollback webhook \"h\" answered 200: rollback requested".into())
        );
    }

    fn m(v: Option<f64>) -> Measurement {
        Measurement {
            value: v,
            ..Measurement::of("success-rate", Some(99.0), None)
        }
    }

    fn limits(checks: u32, failure_limit: u32, inconclusive_limit: u32) -> Limits {
        Limits {
            checks,
            failure_limit,
            inconclusive_limit,
            consecutive_error_limit: 2,
        }
    }

    #[test]
    fn provider_errors_are_counted_apart_and_fail_past_the_limit_in_a_row() {
        let err = || Measurement::of("success-rate", Some(99.0), None).failed("HTTP 503");
        let mut r = Run::new(limits(10, 0, 0));
        assert_eq!(r.record(vec![err()]), None);
        assert_eq!(r.record(vec![err()]), None, "two in a row tolerated");
        assert_eq!(
            r.record(vec![m(Some(100.0))]),
            None,
            "a good check resets the count"
        );
        assert_eq!(
            (r.errors, r.consecutive_errors, r.failures, r.inconclusive),
            (2, 0, 0, 0)
        );
        r.record(vec![err()]);
        r.record(vec![err()]);
        let v = r.record(vec![err()]).unwrap();
        assert_eq!(
            v,
            Verdict::Fail("3 checks in a row with a provider error: success-rate: HTTP 503".into())
        );
        // Errors are no passes: all checks but one had errors.
        let mut r = Run::new(limits(2, 0, 0));
        r.record(vec![err()]);
        assert_eq!(
            r.record(vec![err()]),
            Some(Verdict::Inconclusive("no check had usable data".into()))
        );
    }

    #[test]
    fn a_dry_run_metric_is_kept_but_never_decides() {
        let dry = |v| Measurement {
            dry_run: true,
            ..Measurement::of("latency-p99", None, Some(500.0)).value(v)
        };
        let mut r = Run::new(limits(2, 0, 0));
        assert_eq!(r.record(vec![m(Some(100.0)), dry(900.0)]), None);
        assert_eq!(r.last[1], dry(900.0), "reported with the check");
        assert_eq!(
            r.record(vec![m(Some(100.0)), dry(900.0)]),
            Some(Verdict::Pass)
        );
        let mut r = Run::new(limits(1, 0, 0));
        assert!(
            matches!(r.record(vec![dry(100.0)]), Some(Verdict::Inconclusive(_))),
            "only dry-run metrics: nothing was checked"
        );
    }

    #[test]
    fn the_last_checks_are_kept_bounded() {
        let mut r = Run::new(limits(100, 0, 0));
        for i in 0..15 {
            r.record(vec![m(Some(100.0 + f64::from(i)))]);
        }
        assert_eq!(r.history.len(), HISTORY);
        assert_eq!(r.history.front().unwrap().check, 5);
        assert_eq!(r.history.back().unwrap().check, 14);
        assert_eq!(r.history.back().unwrap().measurements[0].value, Some(113.0));
        assert_eq!(r.last[0].value, Some(114.0));
    }

    #[test]
    fn passes_after_all_checks() {
        let mut r = Run::new(limits(3, 0, 0));
        assert_eq!(r.record(vec![m(Some(100.0))]), None);
        assert_eq!(r.record(vec![m(Some(99.5))]), None);
        assert_eq!(r.record(vec![m(Some(99.0))]), Some(Verdict::Pass));
    }

    #[test]
    fn fails_with_metric_and_value_once_over_the_limit() {
        let mut r = Run::new(limits(5, 1, 0));
        assert_eq!(r.record(vec![m(Some(70.0))]), None, "one failure tolerated");
        let v = r.record(vec![m(Some(69.53))]).unwrap();
        assert_eq!(
            v,
            Verdict::Fail("success-rate = 69.53 is below the minimum 99".into())
        );
        assert_eq!(r.failures, 2);
    }

    #[test]
    fn no_data_is_inconclusive_never_a_pass() {
        let mut r = Run::new(limits(2, 0, 5));
        r.record(vec![m(None)]);
        let v = r.record(vec![m(None)]).unwrap();
        assert!(matches!(v, Verdict::Inconclusive(_)), "{v:?}");
        let mut r = Run::new(limits(5, 0, 1));
        r.record(vec![m(None)]);
        assert!(matches!(
            r.record(vec![m(None)]),
            Some(Verdict::Inconclusive(_))
        ));
    }

    #[test]
    fn max_bound_and_nan() {
        let lat = Measurement::of("latency-p99", None, Some(500.0)).value(812.0);
        assert_eq!(
            lat.judge(),
            CheckResult::Fail("latency-p99 = 812 is above the maximum 500".into())
        );
        assert!(matches!(
            m(Some(f64::NAN)).judge(),
            CheckResult::Inconclusive(_)
        ));
    }
}
