//! What each notification service is sent.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use teal_api::hooks::{NotificationEvent, NotifierType};

/// A release event, as told to people.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    pub event: NotificationEvent,
    /// The BlueGreen (or `local`).
    pub name: String,
    pub namespace: String,
    pub revision: String,
    pub phase: String,
    /// What happened, e.g. the failing metric and its value.
    pub message: String,
    /// Unix milliseconds.
    pub at: u64,
}

impl Notification {
    fn app(&self) -> String {
        if self.namespace.is_empty() {
            self.name.clone()
        } else {
            format!("{}/{}", self.namespace, self.name)
        }
    }

    /// One line: `shop/api: v2 rolled back — success-rate = 70 is below …`.
    pub fn summary(&self) -> String {
        let what = match self.event {
            NotificationEvent::Started => "release started",
            NotificationEvent::AwaitingPromotion => "waiting for approval",
            NotificationEvent::Promoted => "promoted",
            NotificationEvent::RolledBack => "rolled back",
            NotificationEvent::Failed => "failed",
            NotificationEvent::Aborted => "aborted",
            NotificationEvent::DeadlineExceeded => "deadline exceeded",
            NotificationEvent::AnalysisFailed => "analysis failed",
        };
        format!("{}: {} {what}: {}", self.app(), self.revision, self.message)
    }

    fn good(&self) -> Option<bool> {
        match self.event {
            NotificationEvent::Promoted => Some(true),
            NotificationEvent::Started | NotificationEvent::AwaitingPromotion => None,
            _ => Some(false),
        }
    }

    /// The JSON body for a service.
    pub fn body(&self, kind: NotifierType) -> Value {
        let (hex, int) = match self.good() {
            Some(true) => ("2eb886", 0x2eb886),
            Some(false) => ("a30200", 0xa30200),
            None => ("439fe0", 0x439fe0),
        };
        let title = format!("{} {}", self.app(), self.revision);
        let fields = [
            ("Event", self.event.as_str().to_string()),
            ("Revision", self.revision.clone()),
            ("Phase", self.phase.clone()),
        ];
        match kind {
            NotifierType::Slack => json!({
                "text": self.summary(),
                "attachments": [{
                    "color": format!("#{hex}"),
                    "title": title,
                    "text": self.message,
                    "fields": fields.iter().map(|(k, v)| json!({"title": k, "value": v, "short": true})).collect::<Vec<_>>(),
                }],
            }),
            NotifierType::Teams => json!({
                "@type": "MessageCard",
                "@context": "https://schema.org/extensions",
                "summary": self.summary(),
                "themeColor": hex,
                "title": title,
                "text": self.message,
                "sections": [{
                    "facts": fields.iter().map(|(k, v)| json!({"name": k, "value": v})).collect::<Vec<_>>(),
                }],
            }),
            NotifierType::Discord => json!({
                "username": "teal",
                "content": self.summary(),
                "embeds": [{
                    "title": title,
                    "description": self.message,
                    "color": int,
                    "fields": fields.iter().map(|(k, v)| json!({"name": k, "value": v, "inline": true})).collect::<Vec<_>>(),
                }],
            }),
            NotifierType::Googlechat => json!({ "text": self.summary() }),
            NotifierType::Webhook => serde_json::to_value(self).expect("serializes"),
        }
    }
}

/// The `X-Teal-Signature` header value: `sha256=` and the hex HMAC-SHA256
/// of the body under `key`.
pub fn signature(key: &[u8], body: &[u8]) -> String {
    let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    let tag = ring::hmac::sign(&k, body);
    let mut hex = String::with_capacity(71);
    hex.push_str("sha256=");
    for b in tag.as_ref() {
        hex.push_str(&format!("{b:02x}"));
    }
    hex
}

/// The header carrying [`signature`].
pub const SIGNATURE_HEADER: &str = "x-teal-signature";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_the_rfc_4231_vector() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
