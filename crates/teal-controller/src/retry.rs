//! How the controller's watches retry after an error.
//!
//! kube-runtime's default backoff (client-go's reflector numbers: 0.8 s,
//! doubling up to 30 s, reset after an item or two quiet minutes) is, in a
//! `Controller`, one backoff shared by every trigger stream, and while it
//! waits none of them is polled. An apiserver restart makes every watch fail
//! at once (refused connections, then `410 Gone` for each watch's old
//! resourceVersion); each failure was one more doubling, so after a single
//! restart the controller saw nothing for over a minute: commands, pod
//! readiness and its own status writes all waited. A short cap keeps it blind
//! for seconds instead, which a handful of watches can afford.

use std::time::Duration;

use kube::runtime::utils::Backoff;

/// The first wait after an error.
const FIRST: Duration = Duration::from_millis(250);
/// The longest wait between two attempts.
const MAX: Duration = Duration::from_secs(5);

/// Doubling waits from [`FIRST`] up to [`MAX`], back to [`FIRST`] after an
/// item (kube-runtime resets the backoff of a stream on every `Ok`).
#[derive(Debug, Clone)]
pub struct WatchBackoff {
    next: Duration,
}

impl Default for WatchBackoff {
    fn default() -> Self {
        WatchBackoff { next: FIRST }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let wait = self.next;
        self.next = (self.next * 2).min(MAX);
        Some(wait)
    }
}

impl Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = FIRST;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_five_seconds_and_starts_over_on_reset() {
        let mut b = WatchBackoff::default();
        let waits: Vec<u128> = b.by_ref().take(7).map(|d| d.as_millis()).collect();
        assert_eq!(waits, [250, 500, 1000, 2000, 4000, 5000, 5000]);
        b.reset();
        assert_eq!(b.next(), Some(FIRST));
    }
}
