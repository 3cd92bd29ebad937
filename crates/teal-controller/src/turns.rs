//! Reconciles take turns: at most N run at once, and the others start in
//! the order they became due.
//!
//! kube-runtime's own bound keeps the reconciles that are due while every
//! slot is taken in a hash set and starts them in its iteration order: under
//! a backlog that never empties (thousands of BlueGreens being adopted on a
//! busy apiserver) some wait until it does, however long ago they became due
//! (at 10,000 BlueGreens, hundreds were not reconciled once in 20 to 36
//! minutes while others ran again and again). Here the runner starts every
//! due reconcile and each waits for a turn in a fair (first come, first
//! served) semaphore before it sends any request.

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{Semaphore, SemaphorePermit};

/// The turns; one per controller.
pub struct Turns {
    slots: Semaphore,
    /// Reconciles waiting for a turn.
    waiting: Gauge,
}

impl Turns {
    /// `n` turns at once (at least one).
    pub fn new(n: usize, waiting: Gauge) -> Turns {
        Turns {
            slots: Semaphore::new(n.max(1)),
            waiting,
        }
    }

    /// Waits for a turn; it ends when the returned permit is dropped.
    pub async fn take(&self) -> SemaphorePermit<'_> {
        self.waiting.inc();
        let _waited = Waited(&self.waiting);
        self.slots
            .acquire()
            .await
            .expect("the semaphore is never closed")
    }
}

/// Counts a waiter out however its wait ends (a reconcile future dropped
/// while waiting included).
struct Waited<'a>(&'a Gauge);

impl Drop for Waited<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[tokio::test]
    async fn turns_are_taken_in_the_order_asked_and_never_more_than_n_at_once() {
        let waiting = Gauge::default();
        let turns = Arc::new(Turns::new(3, waiting.clone()));
        // Every turn taken, so the 200 below queue up in order.
        let held: Vec<_> = futures_util::future::join_all((0..3).map(|_| turns.slots.acquire()))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        let started = Arc::new(Mutex::new(Vec::new()));
        let running = Arc::new(Mutex::new((0usize, 0usize))); // now, most
        let mut tasks = Vec::new();
        for i in 0..200 {
            let (turns, started, running) = (turns.clone(), started.clone(), running.clone());
            tasks.push(tokio::spawn(async move {
                let _turn = turns.take().await;
                started.lock().unwrap().push(i);
                {
                    let mut r = running.lock().unwrap();
                    r.0 += 1;
                    r.1 = r.1.max(r.0);
                }
                tokio::task::yield_now().await;
                running.lock().unwrap().0 -= 1;
            }));
            // Let it ask before the next one does.
            while waiting.get() < i + 1 {
                tokio::task::yield_now().await;
            }
        }
        assert_eq!(waiting.get(), 200);
        drop(held);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*started.lock().unwrap(), (0..200).collect::<Vec<_>>());
        let most = running.lock().unwrap().1;
        assert!((1..=3).contains(&most), "{most} ran at once");
        assert_eq!(waiting.get(), 0);
    }
}
