//! Per-color statistics as plain atomic counters: recording a response takes
//! no lock; a reader takes a snapshot as a `teal_core::ColorStats`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use teal_core::{ColorStats, LATENCY_BUCKETS_SECONDS};

const BUCKETS: usize = LATENCY_BUCKETS_SECONDS.len() + 1;

pub(crate) struct Counters {
    by_class: [AtomicU64; 5],
    router_errors: AtomicU64,
    connect_errors: AtomicU64,
    latency: [AtomicU64; BUCKETS],
    latency_sum_us: AtomicU64,
}

impl Counters {
    pub(crate) fn new() -> Counters {
        Counters {
            by_class: std::array::from_fn(|_| AtomicU64::new(0)),
            router_errors: AtomicU64::new(0),
            connect_errors: AtomicU64::new(0),
            latency: std::array::from_fn(|_| AtomicU64::new(0)),
            latency_sum_us: AtomicU64::new(0),
        }
    }

    /// One response with `status`, `elapsed` after its request arrived;
    /// counted the way `ColorStats::record` counts.
    pub(crate) fn record(&self, status: u16, elapsed: Duration, router_error: bool) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        let seconds = elapsed.as_secs_f64();
        self.by_class[class].fetch_add(1, Ordering::Relaxed);
        self.latency[ColorStats::bucket_for(seconds)].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us
            .fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
        if router_error {
            self.router_errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn connect_error(&self) {
        self.connect_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters now. Each counter is read atomically; a response being
    /// recorded while the snapshot is taken may show in some counters and
    /// not yet in others.
    pub(crate) fn snapshot(&self) -> ColorStats {
        Counters::sum(&[self])
    }

    /// The counters of `parts` added up, as one snapshot.
    pub(crate) fn sum(parts: &[&Counters]) -> ColorStats {
        let total = |f: &dyn Fn(&Counters) -> &AtomicU64| -> u64 {
            parts.iter().map(|c| f(c).load(Ordering::Relaxed)).sum()
        };
        ColorStats {
            responses_by_class: std::array::from_fn(|i| total(&|c| &c.by_class[i])),
            router_errors: total(&|c| &c.router_errors),
            connect_errors: total(&|c| &c.connect_errors),
            latency_counts: (0..BUCKETS).map(|i| total(&|c| &c.latency[i])).collect(),
            latency_sum_us: total(&|c| &c.latency_sum_us),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_matches_color_stats_record() {
        let counters = Counters::new();
        let mut expected = ColorStats::empty();
        for (status, us) in [
            (200, 400),
            (204, 3_000),
            (302, 40_000),
            (404, 700_000),
            (502, 45_000_000),
            (101, 1_000),
        ] {
            let elapsed = Duration::from_micros(us);
            counters.record(status, elapsed, status == 502);
            expected.record(status, elapsed.as_secs_f64());
        }
        expected.router_errors = 1;
        counters.connect_error();
        expected.connect_errors = 1;
        assert_eq!(counters.snapshot(), expected);
    }
}
