//! Traffic per color, as the replicas of a BlueGreen's `teal` router count
//! it. Each replica publishes its response totals since it started (by
//! color and status class) in the annotation [`TRAFFIC_ANNOTATION`] of its
//! Lease, at most every [`WRITE_INTERVAL`] and only when they changed. This
//! module turns those annotations into totals (the sum over the replicas)
//! and rates (between two reports of each replica); the functions here do
//! no I/O except [`fetch`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube::api::ListParams;
use serde::{Deserialize, Serialize};
use teal_api::BlueGreen;
use teal_api::bluegreen::RouterKind;
use teal_controller::routers::teal::{ROUTER_LABEL, TRAFFIC_ANNOTATION};
use teal_core::Color;

use super::Kube;

/// How often a router replica may rewrite its traffic annotation.
pub const WRITE_INTERVAL: Duration = Duration::from_secs(3);

/// A replica whose report has not changed for this long (on the viewer's
/// clock) has served nothing since (it writes whenever its counts change):
/// its rate is 0.
const IDLE_AFTER_MS: i64 = 3 * WRITE_INTERVAL.as_millis() as i64 + 1_000;

/// The status classes, in the order of [`Classes`].
pub const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Responses by status class (1xx to 5xx); in JSON a map of the classes
/// that are not zero, e.g. `{"2xx": 120, "5xx": 3}`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "BTreeMap<String, u64>", into = "BTreeMap<String, u64>")]
pub struct Classes(pub [u64; 5]);

impl Classes {
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    pub fn server_errors(&self) -> u64 {
        self.0[4]
    }

    fn add(&mut self, other: &Classes) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a += b;
        }
    }
}

impl TryFrom<BTreeMap<String, u64>> for Classes {
    type Error = String;

    fn try_from(map: BTreeMap<String, u64>) -> Result<Classes, String> {
        let mut c = Classes::default();
        for (k, v) in map {
            let i = CLASSES.iter().position(|x| *x == k).ok_or_else(|| {
                format!(
                    "unknown status class {k:?} (allowed: {})",
                    CLASSES.join(", ")
                )
            })?;
            c.0[i] = v;
        }
        Ok(c)
    }
}

impl From<Classes> for BTreeMap<String, u64> {
    fn from(c: Classes) -> BTreeMap<String, u64> {
        CLASSES
            .iter()
            .zip(c.0)
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| (k.to_string(), n))
            .collect()
    }
}

/// The value of [`TRAFFIC_ANNOTATION`]: one replica's totals.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    /// When the counts were taken (RFC 3339).
    pub at: String,
    /// Responses since the replica started, by color.
    pub colors: BTreeMap<Color, Classes>,
}

impl Report {
    /// A report of `colors` taken at `at_ms` (Unix milliseconds).
    pub fn new(at_ms: i64, colors: BTreeMap<Color, Classes>) -> Report {
        let at = k8s_openapi::jiff::Timestamp::from_millisecond(at_ms)
            .map(|t| t.to_string())
            .unwrap_or_default();
        Report { at, colors }
    }

    /// Parses an annotation value; the error names what is wrong.
    pub fn parse(value: &str) -> Result<(i64, Report), String> {
        let r: Report = serde_json::from_str(value).map_err(|e| e.to_string())?;
        let at =
            r.at.parse::<k8s_openapi::jiff::Timestamp>()
                .map_err(|e| format!("at: {:?} is not an RFC 3339 time: {e}", r.at))?
                .as_millisecond();
        Ok((at, r))
    }
}

/// One replica's parsed report.
#[derive(Clone, Debug, PartialEq)]
pub struct Reading {
    /// The Lease (named after the router pod).
    pub replica: String,
    pub at_ms: i64,
    pub colors: BTreeMap<Color, Classes>,
}

/// The traffic of one color.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ColorTraffic {
    /// Responses since the reporting replicas started.
    pub total: u64,
    /// The same, by status class.
    pub responses: Classes,
}

/// What `teal get` and `teal watch` show about traffic.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Traffic {
    /// The BlueGreen's router type.
    pub router: String,
    /// Whether teal measures the traffic of this router type.
    pub measured: bool,
    /// Router replicas whose Lease holds a readable report.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicas: Option<usize>,
    /// Totals by color (summed over the replicas).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub colors: BTreeMap<Color, ColorTraffic>,
    /// Why the figures are missing or incomplete.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

impl Traffic {
    /// The traffic of a router type teal does not measure.
    /// The teal router's traffic when its Leases cannot be read: not
    /// measured (no figures, not zeros), with the reason.
    pub fn unreadable(namespace: &str, why: &str) -> Traffic {
        Traffic {
            router: RouterKind::Teal.as_str().into(),
            measured: false,
            replicas: None,
            colors: BTreeMap::new(),
            notes: vec![format!(
                "cannot list the router Leases in namespace {namespace}: {why}"
            )],
        }
    }

    pub fn not_measured(router: RouterKind) -> Traffic {
        Traffic {
            router: router.as_str().into(),
            measured: false,
            replicas: None,
            colors: BTreeMap::new(),
            notes: vec![format!("not measured by the {} router", router.as_str())],
        }
    }

    /// Totals of the `teal` router from its replicas' Leases.
    pub fn from_leases(leases: &[Lease]) -> (Traffic, Vec<Reading>) {
        let mut notes = Vec::new();
        let mut readings = Vec::new();
        for (name, value) in teal_controller::routers::teal::annotated(leases, TRAFFIC_ANNOTATION) {
            match Report::parse(value) {
                Ok((at_ms, r)) => readings.push(Reading {
                    replica: name,
                    at_ms,
                    colors: r.colors,
                }),
                Err(e) => notes.push(format!(
                    "Lease {name}: annotation {TRAFFIC_ANNOTATION} is not readable: {e}"
                )),
            }
        }
        readings.sort_by(|a, b| a.replica.cmp(&b.replica));
        let mut colors: BTreeMap<Color, ColorTraffic> = Color::ALL
            .iter()
            .map(|c| (*c, ColorTraffic::default()))
            .collect();
        for r in &readings {
            for (c, n) in &r.colors {
                let t = colors.entry(*c).or_default();
                t.responses.add(n);
                t.total = t.responses.total();
            }
        }
        if readings.is_empty() {
            notes.push("no router replica has reported traffic yet".into());
        }
        let traffic = Traffic {
            router: RouterKind::Teal.as_str().into(),
            measured: true,
            replicas: Some(readings.len()),
            colors,
            notes,
        };
        (traffic, readings)
    }
}

/// Responses per second of one color.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    pub total: f64,
    pub server_errors: f64,
}

impl Rate {
    pub const ZERO: Rate = Rate::new(0.0, 0.0);

    pub const fn new(total: f64, server_errors: f64) -> Rate {
        Rate {
            total,
            server_errors,
        }
    }
}

#[derive(Clone, Debug)]
struct Seen {
    prev: Option<(i64, BTreeMap<Color, Classes>)>,
    last: (i64, BTreeMap<Color, Classes>),
    /// When (viewer's clock) `last` arrived.
    changed_ms: i64,
}

/// Rates from successive readings (what `teal watch` keeps between
/// refreshes). A replica's rate is the change between its last two reports
/// over the time between them (both taken on the replica's clock); 0 once
/// no new report came for a few write intervals (measured on the viewer's
/// clock, so clock skew between the viewer and the cluster does not
/// matter; a replica reports whenever its counts change); unknown until
/// then or until a second report arrives. A replica's count that went down
/// (it restarted under the same name) counts from zero.
#[derive(Debug, Default)]
pub struct Rates {
    seen: BTreeMap<String, Seen>,
}

impl Rates {
    /// Takes the readings at `now_ms`; the rate by color, or `None` while
    /// some replica's rate is not known yet.
    pub fn update(&mut self, now_ms: i64, readings: &[Reading]) -> Option<BTreeMap<Color, Rate>> {
        self.seen
            .retain(|name, _| readings.iter().any(|r| &r.replica == name));
        let mut sum: BTreeMap<Color, Rate> = Color::ALL.iter().map(|c| (*c, Rate::ZERO)).collect();
        let mut known = true;
        for r in readings {
            let s = self.seen.entry(r.replica.clone()).or_insert_with(|| Seen {
                prev: None,
                last: (r.at_ms, r.colors.clone()),
                changed_ms: now_ms,
            });
            if s.last.0 != r.at_ms {
                s.prev = Some(std::mem::replace(&mut s.last, (r.at_ms, r.colors.clone())));
                s.changed_ms = now_ms;
            }
            if now_ms - s.changed_ms > IDLE_AFTER_MS {
                continue;
            }
            let Some((prev_at, prev)) = &s.prev else {
                known = false;
                continue;
            };
            let secs = (s.last.0 - prev_at) as f64 / 1000.0;
            if secs <= 0.0 {
                known = false;
                continue;
            }
            for (c, now) in &s.last.1 {
                let before = prev.get(c).copied().unwrap_or_default();
                let delta = |now: u64, before: u64| {
                    if now >= before { now - before } else { now }
                };
                let e = sum.entry(*c).or_insert(Rate::ZERO);
                e.total += delta(now.total(), before.total()) as f64 / secs;
                e.server_errors += delta(now.server_errors(), before.server_errors()) as f64 / secs;
            }
        }
        known.then_some(sum)
    }
}

/// The traffic lines of the detailed views (`teal get`, `teal watch`);
/// `rates` only from `watch`, where `Some(None)` means not known yet.
pub fn lines(t: &Traffic, rates: Option<Option<&BTreeMap<Color, Rate>>>) -> String {
    let mut s = String::new();
    if !t.measured {
        let _ = writeln!(s, "Traffic:   {}", t.notes.join("; "));
        return s;
    }
    let _ = writeln!(
        s,
        "Traffic:   {} router replica(s) reporting; responses since each replica started",
        t.replicas.unwrap_or(0)
    );
    for (c, ct) in &t.colors {
        let classes: Vec<String> = CLASSES
            .iter()
            .zip(ct.responses.0)
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        let mut line = format!("  {:<6} {:>8} responses", c.as_str(), ct.total);
        if !classes.is_empty() {
            let _ = write!(line, " ({})", classes.join(", "));
        }
        match rates {
            Some(Some(r)) => {
                let r = r.get(c).copied().unwrap_or(Rate::ZERO);
                let _ = write!(line, "   {:.1}/s, 5xx {:.1}/s", r.total, r.server_errors);
            }
            Some(None) => line.push_str("   rate: waiting for a second report"),
            None => {}
        }
        let _ = writeln!(s, "{line}");
    }
    for n in &t.notes {
        let _ = writeln!(s, "  ({n})");
    }
    s
}

/// Reads the traffic of `bg` (for the `teal` router: its replicas' Leases).
/// A Lease that cannot be listed is a note, not an error: the rest of the
/// view is still worth showing.
pub async fn fetch(k: &Kube, bg: &BlueGreen) -> (Traffic, Vec<Reading>) {
    let kind = bg.spec.router.kind;
    if kind != RouterKind::Teal {
        return (Traffic::not_measured(kind), Vec::new());
    }
    let name = bg.metadata.name.clone().unwrap_or_default();
    let leases: Api<Lease> = Api::namespaced(k.client.clone(), &k.ns);
    match leases
        .list(&ListParams::default().labels(&format!("{ROUTER_LABEL}={name}")))
        .await
    {
        Ok(list) => Traffic::from_leases(&list.items),
        Err(e) => {
            let why = match &e {
                kube::Error::Api(ae) if ae.code == 403 => {
                    "forbidden: traffic needs `list` on leases.coordination.k8s.io (see the teal-viewer role)".to_string()
                }
                kube::Error::Api(ae) => ae.message.clone(),
                other => other.to_string(),
            };
            (Traffic::unreadable(&k.ns, &why), Vec::new())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn lease(name: &str, traffic: Option<&str>) -> Lease {
        let mut l = Lease::default();
        l.metadata.name = Some(name.into());
        if let Some(t) = traffic {
            l.metadata.annotations = Some(BTreeMap::from([(
                TRAFFIC_ANNOTATION.to_string(),
                t.to_string(),
            )]));
        }
        l
    }

    fn reading(replica: &str, at_ms: i64, blue: [u64; 5], green: [u64; 5]) -> Reading {
        Reading {
            replica: replica.into(),
            at_ms,
            colors: BTreeMap::from([(Color::Blue, Classes(blue)), (Color::Green, Classes(green))]),
        }
    }

    #[test]
    fn a_report_round_trips_through_its_annotation_text() {
        let r = Report::new(
            1_700_000_000_123,
            BTreeMap::from([(Color::Blue, Classes([0, 5, 0, 0, 1]))]),
        );
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(
            text,
            r#"{"at":"2023-11-14T22:13:20.123Z","colors":{"blue":{"2xx":5,"5xx":1}}}"#
        );
        assert_eq!(Report::parse(&text).unwrap(), (1_700_000_000_123, r));
    }

    #[test]
    fn bad_reports_name_what_is_wrong() {
        let e = Report::parse(r#"{"at":"2023-11-14T22:13:20Z","colors":{"blue":{"6xx":1}}}"#)
            .unwrap_err();
        assert!(
            e.contains("unknown status class \"6xx\" (allowed: 1xx, 2xx, 3xx, 4xx, 5xx)"),
            "{e}"
        );
        let e = Report::parse(r#"{"at":"yesterday","colors":{}}"#).unwrap_err();
        assert!(
            e.starts_with("at: \"yesterday\" is not an RFC 3339 time"),
            "{e}"
        );
        let e = Report::parse(r#"{"at":"2023-11-14T22:13:20Z","colors":{"red":{}}}"#).unwrap_err();
        assert!(e.contains("red"), "{e}");
    }

    #[test]
    fn totals_are_the_sum_over_replicas_and_bad_annotations_are_noted() {
        let (t, readings) = Traffic::from_leases(&[
            lease(
                "r-1",
                Some(r#"{"at":"2026-01-01T00:00:00Z","colors":{"blue":{"2xx":4,"5xx":1}}}"#),
            ),
            lease(
                "r-2",
                Some(
                    r#"{"at":"2026-01-01T00:00:01Z","colors":{"blue":{"2xx":2},"green":{"2xx":3,"4xx":1}}}"#,
                ),
            ),
            lease("r-3", Some("not json")),
            lease("r-4", None),
        ]);
        assert_eq!(readings.len(), 2);
        assert_eq!(t.replicas, Some(2));
        assert_eq!(t.colors[&Color::Blue].total, 7);
        assert_eq!(t.colors[&Color::Blue].responses, Classes([0, 6, 0, 0, 1]));
        assert_eq!(t.colors[&Color::Green].responses, Classes([0, 3, 0, 1, 0]));
        assert_eq!(t.notes.len(), 1);
        assert!(t.notes[0].starts_with("Lease r-3: annotation teal.dev/traffic is not readable"));
        assert_eq!(
            serde_json::to_value(&t).unwrap()["colors"],
            json!({"blue": {"total": 7, "responses": {"2xx": 6, "5xx": 1}},
                   "green": {"total": 4, "responses": {"2xx": 3, "4xx": 1}}})
        );
        let text = lines(&t, None);
        assert!(
            text.contains("  blue          7 responses (2xx 6, 5xx 1)\n"),
            "{text}"
        );
        assert!(
            text.contains("  green         4 responses (2xx 3, 4xx 1)\n"),
            "{text}"
        );
    }

    #[test]
    fn no_report_yet_shows_zeros_and_says_so() {
        let (t, _) = Traffic::from_leases(&[lease("r-1", None)]);
        assert_eq!(t.replicas, Some(0));
        assert_eq!(t.colors[&Color::Green].total, 0);
        assert!(lines(&t, None).contains("(no router replica has reported traffic yet)"));
    }

    #[test]
    fn unreadable_leases_are_not_measured_and_say_why() {
        let t = Traffic::unreadable("shop", "forbidden");
        assert_eq!(
            lines(&t, None),
            "Traffic:   cannot list the router Leases in namespace shop: forbidden\n"
        );
        assert_eq!(
            serde_json::to_value(&t).unwrap(),
            json!({"router": "teal", "measured": false, "notes": ["cannot list the router Leases in namespace shop: forbidden"]})
        );
    }

    #[test]
    fn other_routers_are_not_measured_and_show_no_figures() {
        let t = Traffic::not_measured(RouterKind::Istio);
        assert_eq!(
            lines(&t, None),
            "Traffic:   not measured by the istio router\n"
        );
        assert_eq!(
            serde_json::to_value(&t).unwrap(),
            json!({"router": "istio", "measured": false, "notes": ["not measured by the istio router"]})
        );
    }

    #[test]
    fn rates_come_from_the_change_between_two_reports_of_each_replica() {
        let mut rates = Rates::default();
        // The replicas' clock (report times) is far from the viewer's (now).
        let (t0, now0) = (1_000_000, 9_000_000);
        // First sight: not known yet.
        let first = [
            reading("a", t0, [0, 10, 0, 0, 0], [0; 5]),
            reading("b", t0, [0, 0, 0, 0, 0], [0, 4, 0, 0, 0]),
        ];
        assert_eq!(rates.update(now0, &first), None);
        // A refresh without new reports changes nothing.
        assert_eq!(rates.update(now0 + 1_000, &first), None);
        // a: +20 2xx and +4 5xx in 4 s; b: +8 green in 2 s.
        let second = [
            reading("a", t0 + 4_000, [0, 30, 0, 0, 4], [0; 5]),
            reading("b", t0 + 2_000, [0, 0, 0, 0, 0], [0, 12, 0, 0, 0]),
        ];
        let r = rates.update(now0 + 4_500, &second).unwrap();
        assert_eq!(r[&Color::Blue], Rate::new(6.0, 1.0));
        assert_eq!(r[&Color::Green], Rate::new(4.0, 0.0));
        // b reports nothing new for long: it is idle; a goes on, +20 in 4 s.
        let third = [
            reading("a", t0 + 8_000, [0, 50, 0, 0, 4], [0; 5]),
            reading("b", t0 + 2_000, [0, 0, 0, 0, 0], [0, 12, 0, 0, 0]),
        ];
        let r = rates
            .update(now0 + 4_500 + IDLE_AFTER_MS + 1, &third)
            .unwrap();
        assert_eq!(r[&Color::Green], Rate::ZERO);
        assert_eq!(r[&Color::Blue], Rate::new(5.0, 0.0));
        // a restarted under the same name: its new count is counted from 0;
        // b is gone.
        let fourth = [reading("a", t0 + 10_000, [0, 2, 0, 0, 0], [0; 5])];
        let r = rates.update(now0 + 30_000, &fourth).unwrap();
        assert_eq!(r[&Color::Blue], Rate::new(1.0, 0.0));
        assert_eq!(r[&Color::Green].total, 0.0);
        // A replica first seen that never reports again is idle in time.
        let fifth = [
            reading("a", t0 + 10_000, [0, 2, 0, 0, 0], [0; 5]),
            reading("c", t0, [0, 7, 0, 0, 0], [0; 5]),
        ];
        assert_eq!(rates.update(now0 + 31_000, &fifth), None);
        let idle = rates
            .update(now0 + 31_000 + IDLE_AFTER_MS + 1, &fifth)
            .unwrap();
        assert_eq!(idle[&Color::Blue], Rate::ZERO);
        let text = lines(&Traffic::from_leases(&[]).0, Some(Some(&r)));
        assert!(
            text.contains("  blue          0 responses   1.0/s, 5xx 0.0/s\n"),
            "{text}"
        );
        let text = lines(&Traffic::from_leases(&[]).0, Some(None));
        assert!(text.contains("rate: waiting for a second report"), "{text}");
    }
}
