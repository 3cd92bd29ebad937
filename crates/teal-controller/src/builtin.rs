//! Built-in metrics (`successRate`, `latencyP50/P90/P99`) on Kubernetes,
//! measured by the replicas of a BlueGreen's `teal` router.
//!
//! Each replica publishes its cumulative counters since it started in the
//! annotation [`STATS_ANNOTATION`] of its Lease: per color, per kind of
//! traffic (`preview`: what the preview route sent to a color that was not
//! live; `production`: the rest), responses by status class and a latency
//! histogram with the buckets of [`LATENCY_BUCKETS_SECONDS`] (mergeable:
//! replicas are added bucket by bucket). The controller reads the Leases
//! at every check and works on the difference to the previous reading, so
//! a check measures the interval since the previous one, not the time
//! since a replica started. A replica that restarted (another `started`)
//! or whose counters went down counts from zero; a replica first seen
//! counts all it reports.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube::api::ListParams;
use serde::{Deserialize, Serialize};
use teal_core::release::Stage;
use teal_core::{Color, ColorStats, LATENCY_BUCKETS_SECONDS};

use crate::routers::teal::ROUTER_LABEL;

/// Annotation on a router replica's Lease: its cumulative counters for
/// built-in metrics (JSON, see [`StatsReport`]).
pub const STATS_ANNOTATION: &str = "teal.dev/stats";

/// How long after a stage began its first reading is taken: longer than
/// the 3 s between two writes of a replica's Lease, so that what the
/// replicas counted before the stage is published by then and stays out
/// of its first window.
pub const SETTLE: Duration = Duration::from_secs(4);

/// Which traffic of a color a stage measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Traffic {
    /// Requests the preview route (header or cookie) sent to the color
    /// while it was not live: what pre-promotion analysis measures.
    Preview,
    /// Requests routed to the color as the live one: what post-promotion
    /// analysis measures.
    Production,
}

impl Traffic {
    pub fn of(stage: Stage) -> Traffic {
        match stage {
            Stage::PrePromotion => Traffic::Preview,
            Stage::PostPromotion => Traffic::Production,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Traffic::Preview => "preview",
            Traffic::Production => "production",
        }
    }
}

/// Counters of one kind of traffic of one color.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Responses by status class: 1xx, 2xx, 3xx, 4xx, 5xx.
    pub responses: [u64; 5],
    /// Responses per latency bucket (not cumulative), one per bound of
    /// [`LATENCY_BUCKETS_SECONDS`] and a last one for slower responses.
    pub latency: Vec<u64>,
}

impl From<&ColorStats> for Counts {
    fn from(s: &ColorStats) -> Counts {
        Counts {
            responses: s.responses_by_class,
            latency: s.latency_counts.clone(),
        }
    }
}

impl Counts {
    fn is_zero(&self) -> bool {
        self.responses.iter().chain(&self.latency).all(|n| *n == 0)
    }

    /// The counters since `earlier` of the same replica run; `None` when a
    /// counter went down (the replica counted from zero again).
    fn since(&self, earlier: &Counts) -> Option<Counts> {
        let sub = |a: &[u64], b: &[u64]| -> Option<Vec<u64>> {
            a.iter()
                .enumerate()
                .map(|(i, n)| n.checked_sub(b.get(i).copied().unwrap_or(0)))
                .collect()
        };
        if earlier.latency.len() > self.latency.len() {
            return None;
        }
        let responses = sub(&self.responses, &earlier.responses)?;
        Some(Counts {
            responses: responses.try_into().ok()?,
            latency: sub(&self.latency, &earlier.latency)?,
        })
    }

    fn add_to(&self, s: &mut ColorStats) {
        for (a, b) in s.responses_by_class.iter_mut().zip(self.responses) {
            *a += b;
        }
        for (a, b) in s.latency_counts.iter_mut().zip(&self.latency) {
            *a += b;
        }
    }
}

/// The counters of one color, by kind of traffic; a kind without any
/// response is left out.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColorCounts {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview: Option<Counts>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub production: Option<Counts>,
}

impl ColorCounts {
    pub fn new(preview: &ColorStats, production: &ColorStats) -> ColorCounts {
        let keep = |s: &ColorStats| Some(Counts::from(s)).filter(|c| !c.is_zero());
        ColorCounts {
            preview: keep(preview),
            production: keep(production),
        }
    }

    fn get(&self, t: Traffic) -> Option<&Counts> {
        match t {
            Traffic::Preview => self.preview.as_ref(),
            Traffic::Production => self.production.as_ref(),
        }
    }
}

/// The value of [`STATS_ANNOTATION`]: one replica's counters since it
/// started, e.g. `{"started":1767323045678,"colors":{"green":{"preview":
/// {"responses":[0,120,0,0,3],"latency":[0,4,80,39,0,0,0,0,0,0,0,0,0,0,0]}}}}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsReport {
    /// When the replica's process started (Unix milliseconds): another
    /// value means its counters started again from zero.
    pub started: i64,
    #[serde(default)]
    pub colors: BTreeMap<Color, ColorCounts>,
}

/// The reports of a BlueGreen's router replicas, by Lease name.
pub type Readings = BTreeMap<String, StatsReport>;

/// Parses the reports in `leases`; a Lease without one (a replica that has
/// not served anything yet) is left out, an unreadable one is named in the
/// notes.
pub fn readings(leases: &[Lease]) -> (Readings, Vec<String>) {
    let mut out = Readings::new();
    let mut notes = Vec::new();
    for (name, v) in crate::routers::teal::annotated(leases, STATS_ANNOTATION) {
        match serde_json::from_str::<StatsReport>(v) {
            Ok(r) => {
                out.insert(name, r);
            }
            Err(e) => notes.push(format!("Lease {name}: {STATS_ANNOTATION}: {e}")),
        }
    }
    (out, notes)
}

/// Reads the reports of BlueGreen `bluegreen`'s router replicas in `ns`.
pub async fn read(
    client: &kube::Client,
    ns: &str,
    bluegreen: &str,
) -> Result<(Readings, Vec<String>), kube::Error> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), ns);
    let list = leases
        .list(&ListParams::default().labels(&format!("{ROUTER_LABEL}={bluegreen}")))
        .await?;
    Ok(readings(&list.items))
}

/// `traffic` of `color` between `before` and `now`, summed over the
/// replicas. A replica that started again since `before` (or whose
/// counters went down) counts what it reports now; one missing from
/// `before` likewise.
pub fn window(before: &Readings, now: &Readings, color: Color, traffic: Traffic) -> ColorStats {
    let mut sum = ColorStats::empty();
    for (name, r) in now {
        let Some(c) = r.colors.get(&color).and_then(|c| c.get(traffic)) else {
            continue;
        };
        if c.latency.len() != LATENCY_BUCKETS_SECONDS.len() + 1 {
            tracing::warn!(
                lease = %name,
                "{STATS_ANNOTATION}: {} latency buckets of {} {}, expected {}",
                c.latency.len(),
                color,
                traffic.as_str(),
                LATENCY_BUCKETS_SECONDS.len() + 1
            );
            continue;
        }
        let earlier = before
            .get(name)
            .filter(|b| b.started == r.started)
            .and_then(|b| b.colors.get(&color))
            .and_then(|b| b.get(traffic));
        let delta = match earlier {
            Some(e) => c.since(e).unwrap_or_else(|| c.clone()),
            None => c.clone(),
        };
        delta.add_to(&mut sum);
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(started: i64, preview: &[(u16, f64, u32)]) -> StatsReport {
        let mut p = ColorStats::empty();
        for (status, seconds, n) in preview {
            for _ in 0..*n {
                p.record(*status, *seconds);
            }
        }
        StatsReport {
            started,
            colors: BTreeMap::from([(Color::Green, ColorCounts::new(&p, &ColorStats::empty()))]),
        }
    }

    fn readings(rs: &[(&str, StatsReport)]) -> Readings {
        rs.iter().map(|(n, r)| (n.to_string(), r.clone())).collect()
    }

    #[test]
    fn the_window_is_the_difference_summed_over_replicas() {
        let before = readings(&[
            ("r1", report(1, &[(200, 0.002, 10)])),
            ("r2", report(1, &[(200, 0.002, 5)])),
        ]);
        let now = readings(&[
            ("r1", report(1, &[(200, 0.002, 17), (500, 0.002, 3)])),
            ("r2", report(1, &[(200, 0.002, 15)])),
        ]);
        let w = window(&before, &now, Color::Green, Traffic::Preview);
        assert_eq!(w.requests(), 20);
        assert_eq!(w.server_errors(), 3);
        assert_eq!(w.success_rate_percent(), Some(85.0));
        assert_eq!(
            window(&before, &now, Color::Green, Traffic::Production).requests(),
            0
        );
        assert_eq!(
            window(&before, &now, Color::Blue, Traffic::Preview).requests(),
            0
        );
    }

    #[test]
    fn a_restarted_or_new_replica_counts_from_zero() {
        let before = readings(&[("r1", report(1, &[(200, 0.002, 100)]))]);
        let now = readings(&[
            // Restarted: fewer responses than before, another start.
            ("r1", report(2, &[(500, 0.002, 4)])),
            // New replica.
            ("r3", report(3, &[(200, 0.002, 6)])),
        ]);
        let w = window(&before, &now, Color::Green, Traffic::Preview);
        assert_eq!(w.requests(), 10);
        assert_eq!(w.server_errors(), 4);
        // Same start but counters went down: from zero as well.
        let now = readings(&[("r1", report(1, &[(500, 0.002, 4)]))]);
        let w = window(&before, &now, Color::Green, Traffic::Preview);
        assert_eq!(w.requests(), 4);
    }

    #[test]
    fn latency_buckets_merge_across_replicas() {
        let before = Readings::new();
        let now = readings(&[
            ("r1", report(1, &[(200, 0.003, 98)])),
            ("r2", report(1, &[(200, 2.0, 2)])),
        ]);
        let w = window(&before, &now, Color::Green, Traffic::Preview);
        assert!(w.latency_quantile_ms(0.5).unwrap() <= 5.0);
        assert!(w.latency_quantile_ms(0.99).unwrap() >= 1000.0);
    }

    #[test]
    fn the_annotation_format() {
        let r = report(1767323045678, &[(200, 0.002, 1), (503, 0.02, 1)]);
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(
            json,
            r#"{"started":1767323045678,"colors":{"green":{"preview":{"responses":[0,1,0,0,1],"latency":[0,1,0,0,1,0,0,0,0,0,0,0,0,0,0]}}}}"#
        );
        let lease = Lease {
            metadata: kube::api::ObjectMeta {
                name: Some("shop-router-1".into()),
                annotations: Some(BTreeMap::from([(STATS_ANNOTATION.to_string(), json)])),
                ..Default::default()
            },
            ..Default::default()
        };
        let bad = Lease {
            metadata: kube::api::ObjectMeta {
                name: Some("shop-router-2".into()),
                annotations: Some(BTreeMap::from([(
                    STATS_ANNOTATION.to_string(),
                    "{".to_string(),
                )])),
                ..Default::default()
            },
            ..Default::default()
        };
        let (rs, notes) = super::readings(&[lease, bad, Lease::default()]);
        assert_eq!(rs.get("shop-router-1"), Some(&r));
        assert_eq!(rs.len(), 1);
        assert!(notes[0].starts_with("Lease shop-router-2: teal.dev/stats:"));
    }
}
