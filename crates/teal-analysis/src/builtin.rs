//! Built-in metrics: success rate and latency percentiles of the traffic
//! the router counted for a color over one check's window.

use teal_api::{BuiltinMetric, MetricSpec};
use teal_core::ColorStats;
use teal_core::analysis::Measurement;

/// Default minimum of requests a built-in metric needs in one window.
pub const DEFAULT_MIN_REQUESTS: u64 = 10;

/// Measures one built-in metric over a window of counters.
pub fn measure_builtin(m: &MetricSpec, which: BuiltinMetric, window: &ColorStats) -> Measurement {
    let min_requests = m.min_requests.unwrap_or(DEFAULT_MIN_REQUESTS);
    let requests = window.requests();
    let none = Measurement::of(m.name.clone(), m.min, m.max);
    if requests < min_requests {
        return none.no_data(format!(
            "{requests} requests in the window, fewer than minRequests ({min_requests})"
        ));
    }
    let v = match which {
        BuiltinMetric::SuccessRate => window.success_rate_percent(),
        BuiltinMetric::LatencyP50 => window.latency_quantile_ms(0.5),
        BuiltinMetric::LatencyP90 => window.latency_quantile_ms(0.9),
        BuiltinMetric::LatencyP99 => window.latency_quantile_ms(0.99),
    };
    Measurement { value: v, ..none }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CheckContext, QueryVars};
    use teal_core::Color;

    fn metric(b: BuiltinMetric, min: Option<f64>, max: Option<f64>) -> MetricSpec {
        MetricSpec {
            name: "m".into(),
            builtin: Some(b),
            prometheus: None,
            web: None,
            job: None,
            template_ref: None,
            min,
            max,
            min_requests: Some(5),
            dry_run: false,
        }
    }

    #[test]
    fn too_few_requests_is_no_data() {
        let mut w = ColorStats::empty();
        w.record(200, 0.001);
        let m = measure_builtin(
            &metric(BuiltinMetric::SuccessRate, Some(99.0), None),
            BuiltinMetric::SuccessRate,
            &w,
        );
        assert_eq!(m.value, None);
        assert!(m.note.unwrap().contains("fewer than minRequests (5)"));
    }

    #[test]
    fn success_rate_over_the_window() {
        let mut w = ColorStats::empty();
        for i in 0..10 {
            w.record(if i < 3 { 500 } else { 200 }, 0.001);
        }
        let m = measure_builtin(
            &metric(BuiltinMetric::SuccessRate, Some(99.0), None),
            BuiltinMetric::SuccessRate,
            &w,
        );
        assert_eq!(m.value, Some(70.0));
    }

    struct NoSecrets;

    impl crate::Secrets for NoSecrets {
        fn get<'a>(
            &'a self,
            _: &'a teal_api::hooks::SecretRef,
            field: &'a str,
        ) -> crate::Reading<'a> {
            Box::pin(async move { Err(format!("{field}: no secrets here")) })
        }
    }

    fn vars() -> QueryVars {
        QueryVars {
            name: "shop".into(),
            namespace: "prod".into(),
            color: Color::Green,
            revision: "r2".into(),
            service: "shop".into(),
        }
    }

    #[tokio::test]
    async fn the_provider_measures_the_window_it_is_given() {
        let m = metric(BuiltinMetric::SuccessRate, Some(99.0), None);
        let mut w = ColorStats::empty();
        for _ in 0..10 {
            w.record(200, 0.001);
        }
        let vars = vars();
        let cx = CheckContext {
            vars: &vars,
            secrets: &NoSecrets,
            window: Ok(&w),
        };
        assert_eq!(crate::measure(&m, &cx).await.value, Some(100.0));
        let cx = CheckContext {
            vars: &vars,
            secrets: &NoSecrets,
            window: Err("no counters"),
        };
        let got = crate::measure(&m, &cx).await;
        assert_eq!(
            (got.value, got.note.as_deref()),
            (None, Some("no counters"))
        );
    }
}
