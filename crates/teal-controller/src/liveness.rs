//! Whether the controller still makes progress, for `/healthz` (the
//! liveness probe of the manifests): a controller that has reconciles due
//! and finishes none of them for [`Liveness::stall_after`] is wedged, and
//! Kubernetes should restart it.
//!
//! "Due" is seen at two places: a reconcile that started (it waits for the
//! caches, for a turn, or runs), and a probe the controller sends itself
//! every [`PROBE_EVERY`] through its own queue (see [`probes`]): a
//! controller whose queue or runner stopped starts nothing, so only the
//! probe can tell it apart from an idle one. Any reconcile that finishes is
//! progress; under a long backlog reconciles keep finishing, so a slow
//! controller is not taken for a wedged one.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures_util::Stream;
use kube::runtime::reflector::{ObjectRef, Store};
use teal_api::BlueGreen;

/// How often the controller probes its own queue.
pub const PROBE_EVERY: Duration = Duration::from_secs(30);

/// The default of [`Liveness::stall_after`].
pub const DEFAULT_STALL_AFTER: Duration = Duration::from_secs(180);

/// Progress of the reconciles; shared by the controller and `/healthz`.
#[derive(Debug)]
pub struct Liveness {
    /// How long work may be due with no reconcile finishing.
    pub stall_after: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Reconciles started and not finished.
    running: usize,
    /// Since when something is due with no reconcile finished since; `None`:
    /// nothing is due.
    due_since: Option<Instant>,
}

impl Liveness {
    pub fn new(stall_after: Duration) -> Liveness {
        Liveness {
            stall_after,
            state: Mutex::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Something became due (a probe was sent) at `now`.
    pub fn due(&self, now: Instant) {
        self.state().due_since.get_or_insert(now);
    }

    /// A reconcile started; it counts as finished when the guard is dropped
    /// (a reconcile dropped unfinished included).
    pub fn start(&self) -> Running<'_> {
        self.start_at(Instant::now())
    }

    fn start_at(&self, now: Instant) -> Running<'_> {
        let mut s = self.state();
        s.running += 1;
        s.due_since.get_or_insert(now);
        Running(self)
    }

    fn finish(&self, now: Instant) {
        let mut s = self.state();
        s.running = s.running.saturating_sub(1);
        s.due_since = (s.running > 0).then_some(now);
    }

    /// `Err` with what is wrong when the controller is wedged at `now`.
    pub fn check(&self, now: Instant) -> Result<(), String> {
        let s = self.state();
        match s.due_since {
            Some(since) if now.saturating_duration_since(since) > self.stall_after => Err(format!(
                "wedged: {} reconciles due and none finished for {}s (limit {}s)",
                s.running.max(1),
                now.saturating_duration_since(since).as_secs(),
                self.stall_after.as_secs()
            )),
            _ => Ok(()),
        }
    }
}

/// A reconcile in progress (see [`Liveness::start`]).
pub struct Running<'a>(&'a Liveness);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.finish(Instant::now());
    }
}

/// Every [`PROBE_EVERY`], one BlueGreen of `store` (in turn) to reconcile,
/// marked due in `liveness`: the probe of the controller's own queue.
pub fn probes(
    store: Store<BlueGreen>,
    liveness: std::sync::Arc<Liveness>,
    every: Duration,
) -> impl Stream<Item = ObjectRef<BlueGreen>> + Send + 'static {
    futures_util::stream::unfold(0usize, move |n| {
        let (store, liveness) = (store.clone(), liveness.clone());
        async move {
            loop {
                tokio::time::sleep(every).await;
                let mut all = store.state();
                if all.is_empty() {
                    continue;
                }
                all.sort_by(|a, b| a.metadata.uid.cmp(&b.metadata.uid));
                let bg = &all[n % all.len()];
                liveness.due(Instant::now());
                return Some((ObjectRef::from_obj(&**bg), n.wrapping_add(1)));
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn idle_is_alive_and_due_work_that_never_finishes_is_wedged() {
        let l = Liveness::new(10 * S);
        let t0 = Instant::now();
        assert!(l.check(t0 + 3600 * S).is_ok(), "nothing due");
        let r = l.start_at(t0);
        assert!(l.check(t0 + 10 * S).is_ok());
        let e = l.check(t0 + 11 * S).unwrap_err();
        assert!(e.contains("1 reconciles due"), "{e}");
        drop(r);
        assert!(l.check(t0 + 3600 * S).is_ok(), "finished: nothing due");
    }

    #[test]
    fn a_probe_that_starts_nothing_is_a_wedge() {
        let l = Liveness::new(10 * S);
        let t0 = Instant::now();
        l.due(t0);
        l.due(t0 + 5 * S);
        assert!(l.check(t0 + 11 * S).is_err(), "the first probe counts");
        // Once a reconcile ran and finished, the probe is answered.
        drop(l.start_at(t0 + 12 * S));
        assert!(l.check(t0 + 3600 * S).is_ok());
    }

    #[test]
    fn a_backlog_that_keeps_finishing_is_alive() {
        let l = Liveness::new(10 * S);
        let t0 = Instant::now();
        let long: Vec<_> = (0..16).map(|_| l.start_at(t0)).collect();
        for i in 0..100u32 {
            let r = l.start_at(t0);
            l.finish(t0 + 5 * S * i);
            std::mem::forget(r);
            assert!(l.check(t0 + 5 * S * i + 9 * S).is_ok(), "at {i}");
        }
        drop(long);
    }
}
