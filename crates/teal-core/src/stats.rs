//! Per-color request statistics as the router counts them, and the figures
//! analysis derives from them (success rate, latency percentiles).
//!
//! Counters are cumulative. Analysis takes two snapshots and works on their
//! difference, so the figures describe exactly the window between them.

use serde::{Deserialize, Serialize};

/// Upper bounds (seconds) of the latency histogram buckets. The last,
/// implicit bucket is +Inf.
pub const LATENCY_BUCKETS_SECONDS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Cumulative request counters for one color.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColorStats {
    /// Responses sent, by status class: index 0 = 1xx … index 4 = 5xx.
    pub responses_by_class: [u64; 5],
    /// Requests the router failed itself (502/503/504); also counted in 5xx.
    pub router_errors: u64,
    /// Failed attempts to connect to an upstream endpoint of this color.
    pub connect_errors: u64,
    /// Non-cumulative counts per latency bucket; one more than
    /// [`LATENCY_BUCKETS_SECONDS`] (the last is +Inf).
    pub latency_counts: Vec<u64>,
    /// Sum of all observed latencies, in microseconds.
    pub latency_sum_us: u64,
}

impl ColorStats {
    pub fn empty() -> Self {
        ColorStats {
            latency_counts: vec![0; LATENCY_BUCKETS_SECONDS.len() + 1],
            ..Default::default()
        }
    }

    /// Index of the bucket a latency falls into.
    pub fn bucket_for(seconds: f64) -> usize {
        LATENCY_BUCKETS_SECONDS
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(LATENCY_BUCKETS_SECONDS.len())
    }

    pub fn requests(&self) -> u64 {
        self.responses_by_class.iter().sum()
    }

    pub fn server_errors(&self) -> u64 {
        self.responses_by_class[4]
    }

    /// Counters accumulated since `earlier` (saturating, so a reset upstream
    /// never produces a negative window).
    pub fn since(&self, earlier: &ColorStats) -> ColorStats {
        let mut by_class = [0; 5];
        for (i, slot) in by_class.iter_mut().enumerate() {
            *slot = self.responses_by_class[i].saturating_sub(earlier.responses_by_class[i]);
        }
        let latency_counts = self
            .latency_counts
            .iter()
            .enumerate()
            .map(|(i, c)| c.saturating_sub(earlier.latency_counts.get(i).copied().unwrap_or(0)))
            .collect();
        ColorStats {
            responses_by_class: by_class,
            router_errors: self.router_errors.saturating_sub(earlier.router_errors),
            connect_errors: self.connect_errors.saturating_sub(earlier.connect_errors),
            latency_counts,
            latency_sum_us: self.latency_sum_us.saturating_sub(earlier.latency_sum_us),
        }
    }

    /// Share of requests that did not end in a 5xx, in percent; `None` when
    /// there were no requests (no data is not a pass).
    pub fn success_rate_percent(&self) -> Option<f64> {
        let total = self.requests();
        if total == 0 {
            return None;
        }
        Some(100.0 * (total - self.server_errors()) as f64 / total as f64)
    }

    /// Latency quantile (0..=1) in milliseconds, interpolated linearly inside
    /// the bucket as Prometheus' `histogram_quantile` does; `None` without data.
    pub fn latency_quantile_ms(&self, q: f64) -> Option<f64> {
        let total: u64 = self.latency_counts.iter().sum();
        if total == 0 || !(0.0..=1.0).contains(&q) {
            return None;
        }
        let rank = q * total as f64;
        let mut seen = 0u64;
        for (i, count) in self.latency_counts.iter().enumerate() {
            if *count == 0 {
                continue;
            }
            if (seen + count) as f64 >= rank {
                let lower = if i == 0 {
                    0.0
                } else {
                    LATENCY_BUCKETS_SECONDS[i - 1]
                };
                let Some(upper) = LATENCY_BUCKETS_SECONDS.get(i).copied() else {
                    // +Inf bucket: the best statement is its lower bound.
                    return Some(lower * 1000.0);
                };
                let within = (rank - seen as f64) / *count as f64;
                return Some((lower + (upper - lower) * within) * 1000.0);
            }
            seen += count;
        }
        None
    }

    /// Records one response (used by the router and by tests).
    pub fn record(&mut self, status: u16, seconds: f64) {
        if self.latency_counts.len() != LATENCY_BUCKETS_SECONDS.len() + 1 {
            self.latency_counts = vec![0; LATENCY_BUCKETS_SECONDS.len() + 1];
        }
        let class = (status / 100).clamp(1, 5) as usize - 1;
        self.responses_by_class[class] += 1;
        self.latency_counts[Self::bucket_for(seconds)] += 1;
        self.latency_sum_us += (seconds * 1e6) as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_rate_counts_only_5xx_as_failure() {
        let mut s = ColorStats::empty();
        assert_eq!(s.success_rate_percent(), None);
        for _ in 0..7 {
            s.record(200, 0.002);
        }
        s.record(404, 0.002);
        s.record(503, 0.002);
        s.record(500, 0.002);
        assert_eq!(s.requests(), 10);
        assert!((s.success_rate_percent().unwrap() - 80.0).abs() < 1e-9);
    }

    #[test]
    fn window_is_the_difference() {
        let mut a = ColorStats::empty();
        a.record(500, 0.1);
        let mut b = a.clone();
        b.record(200, 0.1);
        b.record(200, 0.1);
        let w = b.since(&a);
        assert_eq!(w.requests(), 2);
        assert_eq!(w.success_rate_percent(), Some(100.0));
    }

    #[test]
    fn quantile_interpolates_within_bucket() {
        let mut s = ColorStats::empty();
        // 100 requests all in the (0.01, 0.025] bucket.
        for _ in 0..100 {
            s.record(200, 0.02);
        }
        let p50 = s.latency_quantile_ms(0.5).unwrap();
        assert!(p50 > 10.0 && p50 <= 25.0, "{p50}");
        let p99 = s.latency_quantile_ms(0.99).unwrap();
        assert!(p99 > p50 && p99 <= 25.0, "{p99}");
        assert_eq!(ColorStats::empty().latency_quantile_ms(0.5), None);
    }

    #[test]
    fn slow_outlier_moves_p99_not_p50() {
        let mut s = ColorStats::empty();
        for _ in 0..98 {
            s.record(200, 0.003);
        }
        s.record(200, 2.0);
        s.record(200, 2.0);
        assert!(s.latency_quantile_ms(0.5).unwrap() <= 5.0);
        assert!(s.latency_quantile_ms(0.99).unwrap() >= 1000.0);
    }
}
