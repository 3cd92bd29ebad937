//! Passive health: an endpoint whose connects fail is skipped for a while.
//!
//! Each failed connect to an endpoint (refused, unreachable, connect
//! timeout) lengthens its cooldown: the base cooldown, doubled for every
//! further consecutive failure, up to the maximum. While the cooldown runs
//! the endpoint gets no new requests, unless every endpoint of its color is
//! cooling down. An endpoint is never ejected when it is the last one of its
//! color not ejected, so a color is never emptied by ejection. A response
//! from the endpoint ends its failure streak.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use crate::proxy::Endpoint;

/// Failure streak and cooldown of one endpoint (kept across table swaps
/// with the endpoint).
#[derive(Default)]
pub(crate) struct Health {
    /// Consecutive failed connects.
    failures: AtomicU32,
    /// Router-clock milliseconds until which the endpoint is skipped; 0
    /// when it is not ejected.
    ejected_until_ms: AtomicU64,
}

impl Health {
    /// True while the endpoint's cooldown runs at `now_ms`. Costs one
    /// atomic load for a healthy endpoint.
    pub(crate) fn is_ejected(&self, now_ms: impl FnOnce() -> u64) -> bool {
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        until != 0 && until > now_ms()
    }

    /// The endpoint answered: its failure streak ends.
    pub(crate) fn succeeded(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
            self.ejected_until_ms.store(0, Ordering::Relaxed);
        }
    }

    #[cfg(test)]
    pub(crate) fn failures(&self) -> u32 {
        self.failures.load(Ordering::Relaxed)
    }
}

/// Retries and ejections of one color, for the metrics.
#[derive(Default)]
pub(crate) struct HealthCounters {
    pub(crate) retries: AtomicU64,
    pub(crate) ejections: AtomicU64,
}

/// Cooldown after `failures` consecutive failed connects.
pub(crate) fn cooldown(failures: u32, base: Duration, max: Duration) -> Duration {
    let shift = failures.saturating_sub(1).min(20);
    base.saturating_mul(1 << shift).min(max)
}

/// Records a failed connect to `failed`, one of `pool`. Ejects it for its
/// cooldown unless no other endpoint of `pool` would be left to serve;
/// returns whether it was ejected now. A failure while it is already
/// ejected (a request that chose it just before) changes nothing.
pub(crate) fn connect_failed(
    failed: &Endpoint,
    pool: &[Arc<Endpoint>],
    now_ms: u64,
    base: Duration,
    max: Duration,
    counters: &HealthCounters,
) -> bool {
    if failed.health.is_ejected(|| now_ms) {
        // A request that chose it before it was ejected: the same outage,
        // not a new failure.
        return false;
    }
    let failures = failed.health.failures.fetch_add(1, Ordering::Relaxed) + 1;
    let others_serving = pool
        .iter()
        .any(|e| e.addr != failed.addr && !e.health.is_ejected(|| now_ms));
    if !others_serving {
        tracing::warn!(endpoint = %failed.addr, failures, "connect failed; not ejected: no other endpoint of its color is serving");
        return false;
    }
    let cool = cooldown(failures, base, max);
    failed
        .health
        .ejected_until_ms
        .store(now_ms + cool.as_millis().max(1) as u64, Ordering::Relaxed);
    counters.ejections.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(endpoint = %failed.addr, failures, cooldown_ms = cool.as_millis() as u64, "connect failed; endpoint ejected");
    true
}

/// The endpoint to try next after the connects in `tried` failed: one not
/// tried yet and not ejected with the fewest outstanding requests, else one
/// not tried yet whose cooldown ends first; `None` when all were tried.
pub(crate) fn next_untried<'a>(
    pool: &'a [Arc<Endpoint>],
    tried: &[SocketAddr],
    now_ms: u64,
) -> Option<&'a Arc<Endpoint>> {
    let untried = || pool.iter().filter(|e| !tried.contains(&e.addr));
    untried()
        .filter(|e| !e.health.is_ejected(|| now_ms))
        .min_by_key(|e| e.outstanding.load(Ordering::Relaxed))
        .or_else(|| untried().min_by_key(|e| e.health.ejected_until_ms.load(Ordering::Relaxed)))
}

/// Among `pool`, an endpoint that is not ejected, for when the balancer's
/// choice was ejected; `None` when every one is.
pub(crate) fn any_serving(pool: &[Arc<Endpoint>], now_ms: u64) -> Option<&Arc<Endpoint>> {
    next_untried(pool, &[], now_ms).filter(|e| !e.health.is_ejected(|| now_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: u16) -> Vec<Arc<Endpoint>> {
        (1..=n)
            .map(|p| Arc::new(Endpoint::new(SocketAddr::from(([127, 0, 0, 1], p)))))
            .collect()
    }

    const BASE: Duration = Duration::from_secs(1);
    const MAX: Duration = Duration::from_secs(30);

    #[test]
    fn cooldown_doubles_up_to_the_maximum() {
        let secs: Vec<u64> = (1..=7).map(|f| cooldown(f, BASE, MAX).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(cooldown(u32::MAX, BASE, MAX), MAX);
    }

    #[test]
    fn the_last_serving_endpoint_is_never_ejected() {
        let p = pool(2);
        let c = HealthCounters::default();
        assert!(connect_failed(&p[0], &p, 1000, BASE, MAX, &c));
        assert!(p[0].health.is_ejected(|| 1999));
        // Failures of requests sent before the ejection do not lengthen it.
        assert!(!connect_failed(&p[0], &p, 1200, BASE, MAX, &c));
        assert_eq!(p[0].health.failures(), 1);
        assert!(!p[0].health.is_ejected(|| 2000), "cooldown is over");
        assert!(!connect_failed(&p[1], &p, 1500, BASE, MAX, &c));
        assert!(!p[1].health.is_ejected(|| 1500));
        assert_eq!(c.ejections.load(Ordering::Relaxed), 1);
        // Once the first is back, the second's next failure ejects it,
        // for two seconds now that it failed twice in a row.
        assert!(connect_failed(&p[1], &p, 3000, BASE, MAX, &c));
        assert!(p[1].health.is_ejected(|| 4999));
        assert!(!p[1].health.is_ejected(|| 5000));
        p[1].health.succeeded();
        assert_eq!(p[1].health.failures(), 0);
        assert!(!p[1].health.is_ejected(|| 3000));
    }

    #[test]
    fn retries_prefer_untried_serving_endpoints() {
        let p = pool(3);
        let c = HealthCounters::default();
        connect_failed(&p[1], &p, 0, BASE, MAX, &c);
        p[2].outstanding.store(4, Ordering::Relaxed);
        let next = next_untried(&p, &[p[0].addr], 10).unwrap();
        assert_eq!(next.addr, p[2].addr, "the ejected one comes last");
        let next = next_untried(&p, &[p[0].addr, p[2].addr], 10).unwrap();
        assert_eq!(next.addr, p[1].addr, "then the ejected one");
        assert!(next_untried(&p, &[p[0].addr, p[1].addr, p[2].addr], 10).is_none());
        assert_eq!(any_serving(&p, 10).unwrap().addr, p[0].addr);
    }
}
