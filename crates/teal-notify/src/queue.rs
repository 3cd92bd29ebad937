//! Delivering notifications: one worker per notifier, each with its own
//! bounded queue, retries with exponential backoff. Sending never waits
//! and a failing notifier only ever affects itself.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use teal_api::hooks::{NotificationEvent, NotifierType};
use tokio::sync::mpsc;

use crate::Secret;
use crate::client::{self, CallError};
use crate::message::{Notification, SIGNATURE_HEADER, signature};

/// Notifications waiting per notifier; more are dropped (and counted).
pub const QUEUE_LIMIT: usize = 256;

/// A notifier with its secrets resolved.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub kind: NotifierType,
    pub url: Secret,
    pub hmac: Option<Secret>,
    /// Empty: every event.
    pub events: Vec<NotificationEvent>,
}

impl Target {
    pub fn wants(&self, e: NotificationEvent) -> bool {
        self.events.is_empty() || self.events.contains(&e)
    }
}

/// How often and how patiently a delivery is retried.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// Pause after the first failed attempt; doubles each time.
    pub first: Duration,
    pub max: Duration,
    /// Attempts in all before the notification is given up.
    pub attempts: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            first: Duration::from_secs(1),
            max: Duration::from_secs(60),
            attempts: 6,
        }
    }
}

/// What happened to one notifier's deliveries.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryStats {
    pub delivered: u64,
    /// Attempts that failed (each retry counts).
    pub failed_attempts: u64,
    /// Notifications given up after every attempt failed.
    pub given_up: u64,
    /// Notifications dropped because the queue was full.
    pub dropped: u64,
    /// The last failure (status or cause; never the URL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

type Stats = Arc<Mutex<BTreeMap<String, DeliveryStats>>>;

/// Sends notifications to every notifier that wants them.
#[derive(Clone)]
pub struct Notifier {
    workers: Vec<(Target, mpsc::Sender<Notification>)>,
    stats: Stats,
}

impl Notifier {
    /// Starts one worker per target. Must be called within a Tokio runtime.
    pub fn start(targets: Vec<Target>, backoff: Backoff) -> Notifier {
        let stats: Stats = Arc::default();
        let mut workers = Vec::new();
        for t in targets {
            stats
                .lock()
                .expect("stats")
                .insert(t.name.clone(), DeliveryStats::default());
            let (tx, rx) = mpsc::channel(QUEUE_LIMIT);
            tokio::spawn(worker(t.clone(), rx, backoff, stats.clone()));
            workers.push((t, tx));
        }
        Notifier { workers, stats }
    }

    /// Queues `n` for every notifier whose events filter takes it. Never waits.
    pub fn notify(&self, n: &Notification) {
        for (t, tx) in &self.workers {
            if !t.wants(n.event) {
                continue;
            }
            if tx.try_send(n.clone()).is_err() {
                tracing::warn!(notifier = %t.name, "notification queue full; dropping");
                self.update(&t.name, |s| s.dropped += 1);
            }
        }
    }

    /// Delivery figures per notifier name.
    pub fn stats(&self) -> BTreeMap<String, DeliveryStats> {
        self.stats.lock().expect("stats").clone()
    }

    fn update(&self, name: &str, f: impl FnOnce(&mut DeliveryStats)) {
        if let Some(s) = self.stats.lock().expect("stats").get_mut(name) {
            f(s);
        }
    }
}

async fn worker(t: Target, mut rx: mpsc::Receiver<Notification>, b: Backoff, stats: Stats) {
    let update = |f: &dyn Fn(&mut DeliveryStats)| {
        if let Some(s) = stats.lock().expect("stats").get_mut(&t.name) {
            f(s);
        }
    };
    while let Some(n) = rx.recv().await {
        let body = Bytes::from(serde_json::to_vec(&n.body(t.kind)).expect("serializes"));
        let mut headers = Vec::new();
        if let Some(key) = &t.hmac {
            headers.push((SIGNATURE_HEADER, signature(key.expose().as_bytes(), &body)));
        }
        let mut pause = b.first;
        for attempt in 1..=b.attempts.max(1) {
            let r = client::post_json(
                t.url.expose(),
                body.clone(),
                &headers,
                Duration::from_secs(10),
            )
            .await;
            let (done, retry, why) = match r {
                Ok(s) if (200..300).contains(&s) => (true, false, String::new()),
                // 429 and 5xx may pass later; other answers will not.
                Ok(s) => (false, s == 429 || s >= 500, format!("answered {s}")),
                Err(e @ (CallError::BadUrl | CallError::Denied(_))) => {
                    (false, false, e.to_string())
                }
                Err(e) => (false, true, e.to_string()),
            };
            if done {
                update(&|s| s.delivered += 1);
                tracing::debug!(notifier = %t.name, event = n.event.as_str(), "notification delivered");
                break;
            }
            update(&|s| {
                s.failed_attempts += 1;
                s.last_error = Some(why.clone());
            });
            if !retry || attempt == b.attempts.max(1) {
                tracing::warn!(notifier = %t.name, event = n.event.as_str(), attempts = attempt, "notification not delivered: {why}");
                update(&|s| s.given_up += 1);
                break;
            }
            tracing::debug!(notifier = %t.name, attempt, "notification failed ({why}); retrying in {pause:?}");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(b.max);
        }
    }
}
