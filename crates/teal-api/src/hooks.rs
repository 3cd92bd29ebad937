//! Webhooks (test hooks and promotion gates) and notifications: the spec
//! fields shared by the `BlueGreen` resource and local mode's `teal.yaml`.
//!
//! ```yaml
//! webhooks:
//!   - {name: smoke, type: pre-rollout, url: http://tests/smoke, timeout: 30s}
//!   - {name: approve, type: confirm-promotion, url: http://gate/open}
//! notifications:
//!   - {name: team, type: slack, secretRef: {name: slack, key: url}, events: [promoted, rolledBack]}
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use teal_core::release::EventKind;

use crate::{Duration, FieldError};

/// An HTTP webhook teal calls during a release. teal POSTs a JSON body
/// (name, namespace, phase, revision, colors, metadata); any 2xx answer
/// is a pass.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebhookSpec {
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    #[serde(rename = "type")]
    pub kind: WebhookType,
    /// http:// or https:// URL.
    #[schemars(regex(pattern = r"^https?://[^\s]+$"))]
    pub url: String,
    /// Time allowed for one call. Default 10s.
    #[serde(default = "default_timeout")]
    pub timeout: Duration,
    /// Further attempts after a failed call (error or 5xx). Default 2.
    #[serde(default = "default_retries")]
    #[schemars(range(max = 10))]
    pub retries: u32,
    /// Sent as `metadata` in the body.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_retries() -> u32 {
    2
}

/// When a webhook is called, and what its answer means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum WebhookType {
    /// Once the new color is ready, before any analysis or promotion; a
    /// failure ends the release before it takes traffic.
    PreRollout,
    /// With every analysis check; a failure counts as a failed check.
    Rollout,
    /// Gate before cutover: polled until it answers 2xx.
    ConfirmPromotion,
    /// After the release ended (promoted or not); the answer is ignored.
    PostRollout,
    /// Polled with every analysis check; a 2xx answer rolls back.
    Rollback,
    /// With every release event; the answer is ignored.
    Event,
}

impl WebhookType {
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookType::PreRollout => "pre-rollout",
            WebhookType::Rollout => "rollout",
            WebhookType::ConfirmPromotion => "confirm-promotion",
            WebhookType::PostRollout => "post-rollout",
            WebhookType::Rollback => "rollback",
            WebhookType::Event => "event",
        }
    }

    /// The core's view of this type.
    pub fn to_core(self) -> teal_core::hooks::HookKind {
        use teal_core::hooks::HookKind as K;
        match self {
            WebhookType::PreRollout => K::PreRollout,
            WebhookType::Rollout => K::Rollout,
            WebhookType::ConfirmPromotion => K::ConfirmPromotion,
            WebhookType::PostRollout => K::PostRollout,
            WebhookType::Rollback => K::Rollback,
            WebhookType::Event => K::Event,
        }
    }
}

/// The last answer of one webhook, as shown in status. An entry changes
/// only when the answer does, so a gate polled every few seconds does not
/// rewrite status each time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HookStatus {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: WebhookType,
    /// The release (revision) the call was about.
    pub revision: String,
    /// Whether the answer was a 2xx.
    pub passed: bool,
    /// HTTP status of the last answer; absent when there was none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<u16>,
    /// What happened, e.g. `confirm-promotion webhook "approve" answered 403`.
    pub message: String,
    /// When the hook first gave this answer (RFC 3339).
    pub time: String,
    /// Calls made for the last answer (1 + retries used).
    pub attempts: u32,
}

/// Where people hear about releases.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(
    validation = Rule::new("has(self.url) != has(self.secretRef)").message("set exactly one of url and secretRef (a Secret holding the URL)").field_path(".url"),
    validation = Rule::new("!has(self.url) || self.url.startsWith('http://') || self.url.startsWith('https://')").message("url must be an http:// or https:// URL").field_path(".url"),
    validation = Rule::new("!has(self.hmacSecretRef) || self.type == 'webhook'").message("hmacSecretRef only applies to type webhook").field_path(".hmacSecretRef"),
    validation = Rule::new("!has(self.secretRef) || (has(self.secretRef.name) && has(self.secretRef.key))").message("secretRef needs name and key of a Secret in the BlueGreen's namespace").field_path(".secretRef"),
    validation = Rule::new("!has(self.hmacSecretRef) || (has(self.hmacSecretRef.name) && has(self.hmacSecretRef.key))").message("hmacSecretRef needs name and key of a Secret in the BlueGreen's namespace").field_path(".hmacSecretRef")
)]
pub struct NotifierSpec {
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    #[serde(rename = "type")]
    pub kind: NotifierType,
    /// The incoming-webhook URL. Prefer `secretRef`: these URLs are secrets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Where the URL is kept instead of `url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretRef>,
    /// Events to send; empty means all of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<NotificationEvent>,
    /// `webhook` only: the key of an HMAC-SHA256 signature of the body,
    /// sent as `X-Teal-Signature: sha256=<hex>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hmac_secret_ref: Option<SecretRef>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum NotifierType {
    /// Slack incoming webhook.
    Slack,
    /// Microsoft Teams incoming webhook (or workflow) receiving a MessageCard.
    Teams,
    /// Discord webhook.
    Discord,
    /// Google Chat space webhook.
    Googlechat,
    /// Any HTTP endpoint; JSON body, optionally HMAC-signed.
    Webhook,
}

impl NotifierType {
    pub fn as_str(self) -> &'static str {
        match self {
            NotifierType::Slack => "slack",
            NotifierType::Teams => "teams",
            NotifierType::Discord => "discord",
            NotifierType::Googlechat => "googlechat",
            NotifierType::Webhook => "webhook",
        }
    }
}

/// A secret value: a key of a Kubernetes Secret in the BlueGreen's
/// namespace (`name` and `key`), or in local mode an environment variable
/// (`env`) or a file (`file`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
}

/// Release events a notifier can be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum NotificationEvent {
    Started,
    AwaitingPromotion,
    Promoted,
    RolledBack,
    Failed,
    Aborted,
    DeadlineExceeded,
    AnalysisFailed,
}

impl NotificationEvent {
    /// The notification an engine event makes, if any.
    pub fn of(kind: EventKind) -> Option<NotificationEvent> {
        Some(match kind {
            EventKind::ReleaseStarted => NotificationEvent::Started,
            EventKind::AwaitingPromotion => NotificationEvent::AwaitingPromotion,
            EventKind::Succeeded => NotificationEvent::Promoted,
            EventKind::RolledBack => NotificationEvent::RolledBack,
            EventKind::Failed => NotificationEvent::Failed,
            EventKind::Aborted => NotificationEvent::Aborted,
            EventKind::DeadlineExceeded => NotificationEvent::DeadlineExceeded,
            EventKind::AnalysisFailed => NotificationEvent::AnalysisFailed,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            NotificationEvent::Started => "started",
            NotificationEvent::AwaitingPromotion => "awaitingPromotion",
            NotificationEvent::Promoted => "promoted",
            NotificationEvent::RolledBack => "rolledBack",
            NotificationEvent::Failed => "failed",
            NotificationEvent::Aborted => "aborted",
            NotificationEvent::DeadlineExceeded => "deadlineExceeded",
            NotificationEvent::AnalysisFailed => "analysisFailed",
        }
    }
}

/// Where secrets can come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretSource {
    /// Kubernetes: `name` and `key` of a Secret.
    Kubernetes,
    /// Local mode: `env` or `file`.
    Local,
}

impl SecretRef {
    pub fn validate(&self, path: &str, source: SecretSource, errors: &mut Vec<FieldError>) {
        let k8s = self.name.is_some() || self.key.is_some();
        let set = [k8s, self.env.is_some(), self.file.is_some()]
            .iter()
            .filter(|x| **x)
            .count();
        let allowed = match source {
            SecretSource::Kubernetes => "name and key of a Secret in the same namespace",
            SecretSource::Local => "env (an environment variable) or file",
        };
        if set != 1 {
            errors.push(FieldError::new(
                path,
                format!("set exactly one source: {allowed}"),
            ));
            return;
        }
        match source {
            SecretSource::Kubernetes if !k8s => errors.push(FieldError::new(
                path,
                format!("env and file are for local mode; use {allowed}"),
            )),
            SecretSource::Local if k8s => errors.push(FieldError::new(
                path,
                format!("Kubernetes Secrets are not available in local mode; use {allowed}"),
            )),
            _ => {}
        }
        if k8s
            && (self.name.as_deref().is_none_or(str::is_empty)
                || self.key.as_deref().is_none_or(str::is_empty))
        {
            errors.push(FieldError::new(path, "needs both name and key"));
        }
        if self.env.as_deref().is_some_and(str::is_empty) {
            errors.push(FieldError::new(format!("{path}.env"), "must not be empty"));
        }
    }
}

fn is_http_url(url: &str) -> bool {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    rest.is_some_and(|r| !r.is_empty() && !r.starts_with('/') && !r.contains(char::is_whitespace))
}

/// Which webhooks hold a release, for the engine's policy.
pub fn hook_policy(webhooks: &[WebhookSpec]) -> teal_core::release::HookPolicy {
    teal_core::release::HookPolicy {
        pre_rollout: webhooks.iter().any(|w| w.kind == WebhookType::PreRollout),
        confirm_promotion: webhooks
            .iter()
            .any(|w| w.kind == WebhookType::ConfirmPromotion),
    }
}

/// Checks webhooks and notifiers. `analysis` says whether any analysis
/// stage is set (rollout and rollback hooks run with its checks).
pub fn validate(
    webhooks: &[WebhookSpec],
    notifications: &[NotifierSpec],
    analysis: bool,
    source: SecretSource,
    errors: &mut Vec<FieldError>,
) {
    let mut names = std::collections::BTreeSet::new();
    for (i, w) in webhooks.iter().enumerate() {
        let p = format!("webhooks[{i}]");
        if w.name.is_empty() {
            errors.push(FieldError::new(format!("{p}.name"), "must not be empty"));
        } else if !names.insert(w.name.as_str()) {
            errors.push(FieldError::new(
                format!("{p}.name"),
                format!("{:?} is used twice", w.name),
            ));
        }
        if !is_http_url(&w.url) {
            errors.push(FieldError::new(
                format!("{p}.url"),
                format!("{:?} must be an http:// or https:// URL", w.url),
            ));
        }
        if w.timeout.as_millis() < 100 {
            errors.push(FieldError::new(
                format!("{p}.timeout"),
                "must be at least 100ms",
            ));
        }
        if w.retries > 10 {
            errors.push(FieldError::new(
                format!("{p}.retries"),
                format!("must be at most 10, got {}", w.retries),
            ));
        }
        if matches!(w.kind, WebhookType::Rollout | WebhookType::Rollback) && !analysis {
            errors.push(FieldError::new(
                format!("{p}.type"),
                format!(
                    "{} webhooks run with each analysis check: set analysis.prePromotion or analysis.postPromotion",
                    w.kind.as_str()
                ),
            ));
        }
    }
    let mut names = std::collections::BTreeSet::new();
    for (i, n) in notifications.iter().enumerate() {
        let p = format!("notifications[{i}]");
        if n.name.is_empty() {
            errors.push(FieldError::new(format!("{p}.name"), "must not be empty"));
        } else if !names.insert(n.name.as_str()) {
            errors.push(FieldError::new(
                format!("{p}.name"),
                format!("{:?} is used twice", n.name),
            ));
        }
        match (&n.url, &n.secret_ref) {
            (Some(_), Some(_)) | (None, None) => errors.push(FieldError::new(
                p.clone(),
                "set exactly one of url and secretRef",
            )),
            (Some(u), None) if !is_http_url(u) => errors.push(FieldError::new(
                format!("{p}.url"),
                "must be an http:// or https:// URL",
            )),
            (_, Some(s)) => s.validate(&format!("{p}.secretRef"), source, errors),
            _ => {}
        }
        if let Some(h) = &n.hmac_secret_ref {
            if n.kind != NotifierType::Webhook {
                errors.push(FieldError::new(
                    format!("{p}.hmacSecretRef"),
                    format!(
                        "only applies to type webhook ({} signs its own requests)",
                        n.kind.as_str()
                    ),
                ));
            }
            h.validate(&format!("{p}.hmacSecretRef"), source, errors);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Doc {
        #[serde(default)]
        webhooks: Vec<WebhookSpec>,
        #[serde(default)]
        notifications: Vec<NotifierSpec>,
    }

    fn errors(yaml: &str, analysis: bool, source: SecretSource) -> Vec<String> {
        let d: Doc = serde_saphyr::from_str(yaml).unwrap();
        let mut e = Vec::new();
        validate(&d.webhooks, &d.notifications, analysis, source, &mut e);
        e.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn defaults_and_a_valid_spec() {
        let d: Doc = serde_saphyr::from_str(
            "webhooks:\n  - {name: gate, type: confirm-promotion, url: 'http://127.0.0.1:1/gate'}\nnotifications:\n  - {name: s, type: slack, secretRef: {env: SLACK_URL}, events: [promoted, rolledBack]}\n",
        )
        .unwrap();
        assert_eq!(d.webhooks[0].kind, WebhookType::ConfirmPromotion);
        assert_eq!(d.webhooks[0].timeout.as_millis(), 10_000);
        assert_eq!(d.webhooks[0].retries, 2);
        let mut e = Vec::new();
        validate(
            &d.webhooks,
            &d.notifications,
            false,
            SecretSource::Local,
            &mut e,
        );
        assert!(e.is_empty(), "{e:?}");
    }

    #[test]
    fn unknown_types_are_refused_naming_the_value() {
        let e = serde_saphyr::from_str::<Doc>(
            "webhooks:\n  - {name: a, type: pre-promotion, url: 'http://x'}\n",
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("pre-promotion"), "{e}");
        let e = serde_saphyr::from_str::<Doc>(
            "notifications:\n  - {name: a, type: pagerduty, url: 'http://x'}\n",
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("pagerduty"), "{e}");
        let e = serde_saphyr::from_str::<Doc>(
            "webhooks:\n  - {name: a, type: event, url: 'http://x', timeout: soon}\n",
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("invalid duration"), "{e}");
    }

    #[test]
    fn errors_name_the_field() {
        let e = errors(
            "webhooks:\n  - {name: a, type: rollout, url: 'ftp://x'}\n  - {name: a, type: event, url: 'http://x', timeout: 1ms}\nnotifications:\n  - {name: n, type: slack}\n  - {name: m, type: slack, url: 'http://x', hmacSecretRef: {env: K}}\n  - {name: k, type: webhook, secretRef: {name: s, key: url}}\n",
            false,
            SecretSource::Local,
        );
        let want = [
            "webhooks[0].url: \"ftp://x\" must be an http:// or https:// URL",
            "webhooks[0].type: rollout webhooks run with each analysis check",
            "webhooks[1].name: \"a\" is used twice",
            "webhooks[1].timeout: must be at least 100ms",
            "notifications[0]: set exactly one of url and secretRef",
            "notifications[1].hmacSecretRef: only applies to type webhook",
            "notifications[2].secretRef: Kubernetes Secrets are not available in local mode",
        ];
        for w in want {
            assert!(
                e.iter().any(|x| x.starts_with(w)),
                "missing {w:?} in {e:#?}"
            );
        }
        assert_eq!(e.len(), want.len(), "{e:#?}");
        let e = errors(
            "notifications:\n  - {name: k, type: webhook, secretRef: {env: X}}\n",
            false,
            SecretSource::Kubernetes,
        );
        assert!(
            e[0].starts_with("notifications[0].secretRef: env and file are for local mode"),
            "{e:?}"
        );
    }

    #[test]
    fn notification_events_map_from_engine_events() {
        assert_eq!(
            NotificationEvent::of(EventKind::RolledBack),
            Some(NotificationEvent::RolledBack)
        );
        assert_eq!(NotificationEvent::of(EventKind::PreviewReady), None);
    }
}
