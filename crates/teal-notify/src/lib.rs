//! teal-notify: the I/O side of webhooks and notifications, shared by
//! local mode and the Kubernetes controller.
//!
//! - [`webhook`]: calls a test hook or gate (JSON body, timeout, retries)
//!   and reports a [`teal_core::hooks::HookResult`].
//! - [`message`]: each notification service's payload format and the
//!   HMAC-SHA256 signature of generic webhooks.
//! - [`Notifier`]: a delivery queue with retries and backoff. It never
//!   blocks the caller and never fails a release; secret URLs are never
//!   logged.

#![forbid(unsafe_code)]

pub mod client;
pub mod message;
pub mod queue;
pub mod webhook;

pub use message::Notification;
pub use queue::{Backoff, DeliveryStats, Notifier, Target};
pub use webhook::HookPayload;

/// A secret value (a notifier URL, an HMAC key). Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into().trim().to_string())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}
