use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use crate::Error;

/// How long to pause between two checks.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Calls `check` until it returns `Ok`, and returns that value. An `Err` means "not yet": its
/// text is remembered and shown if `timeout` runs out, so write it as what was seen
/// (`"2 of 3 replicas ready"`). Panics on timeout, naming `what` and the last thing seen.
pub async fn wait_for<T, E, F, Fut>(what: &str, timeout: Duration, check: F) -> T
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    match try_wait_for(what, timeout, check).await {
        Ok(value) => value,
        Err(err) => panic!("{err}"),
    }
}

/// Like [`wait_for`], but returns [`Error::Timeout`] instead of panicking.
pub async fn try_wait_for<T, E, F, Fut>(
    what: &str,
    timeout: Duration,
    mut check: F,
) -> Result<T, Error>
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = String::from("nothing yet (the check never completed)");
    loop {
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(remaining, check()).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(seen)) => last = seen.to_string(),
            Err(_) => {}
        }
        if tokio::time::Instant::now() + POLL_INTERVAL >= deadline {
            return Err(Error::Timeout {
                what: what.to_owned(),
                after: timeout,
                last,
            });
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn returns_the_value_once_the_check_passes() {
        let calls = AtomicU32::new(0);
        let got = wait_for("three calls", Duration::from_secs(5), || async {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            if n >= 3 {
                Ok(n)
            } else {
                Err(format!("call {n}"))
            }
        })
        .await;
        assert_eq!(got, 3);
    }

    #[tokio::test]
    async fn timeout_reports_what_and_the_last_thing_seen() {
        let calls = AtomicU32::new(0);
        let err = try_wait_for("never", Duration::from_millis(500), || async {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            Err::<(), _>(format!("attempt {n}"))
        })
        .await
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("waiting for never"), "{text}");
        let n = calls.load(Ordering::SeqCst);
        assert!(text.ends_with(&format!("last seen: attempt {n}")), "{text}");
    }
}
