//! Webhooks and notifications in local mode: resolving notifier secrets
//! (environment variables or files), running the hook rounds the release
//! engine asks for, and telling notifiers about events.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use teal_api::hooks::{NotificationEvent, NotifierSpec, SecretRef, WebhookSpec, WebhookType};
use teal_core::Color;
use teal_core::hooks::{HookKind, HookResult};
use teal_core::release::{Event, Input};
use teal_notify::webhook::{self, HookColors, HookEvent, HookPayload};
use teal_notify::{Backoff, Notification, Notifier, Secret, Target};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// How often a closed confirm-promotion gate is asked again.
pub const GATE_POLL: Duration = Duration::from_secs(2);

/// Reads a secret from an environment variable or a file (relative paths
/// from `base`). The error names the field, never the value.
pub fn resolve(s: &SecretRef, field: &str, base: &Path) -> Result<Secret, String> {
    if let Some(var) = &s.env {
        return match std::env::var(var) {
            Ok(v) if !v.trim().is_empty() => Ok(Secret::new(v)),
            _ => Err(format!(
                "{field}.env: environment variable {var} is not set or empty"
            )),
        };
    }
    if let Some(file) = &s.file {
        let path = base.join(file);
        return match std::fs::read_to_string(&path) {
            Ok(v) if !v.trim().is_empty() => Ok(Secret::new(v)),
            Ok(_) => Err(format!("{field}.file: {} is empty", path.display())),
            Err(e) => Err(format!("{field}.file: cannot read {}: {e}", path.display())),
        };
    }
    Err(format!(
        "{field}: set env or file (Kubernetes Secrets are not available in local mode)"
    ))
}

/// Resolves every notifier's URL and HMAC key.
pub fn targets(specs: &[NotifierSpec], base: &Path) -> Result<Vec<Target>, String> {
    let mut out = Vec::new();
    for (i, n) in specs.iter().enumerate() {
        let field = format!("notifications[{i}]");
        let url = match (&n.url, &n.secret_ref) {
            (Some(u), _) => Secret::new(u.clone()),
            (None, Some(s)) => resolve(s, &format!("{field}.secretRef"), base)?,
            (None, None) => return Err(format!("{field}: set url or secretRef")),
        };
        let u = url.expose();
        if !(u.starts_with("http://") || u.starts_with("https://")) {
            return Err(format!(
                "{field}.secretRef: the secret is not an http:// or https:// URL"
            ));
        }
        let hmac = n
            .hmac_secret_ref
            .as_ref()
            .map(|s| resolve(s, &format!("{field}.hmacSecretRef"), base))
            .transpose()?;
        out.push(Target {
            name: n.name.clone(),
            kind: n.kind,
            url,
            hmac,
            events: n.events.clone(),
        });
    }
    Ok(out)
}

/// Starts the notifiers of a config.
pub fn notifier(specs: &[NotifierSpec], base: &Path) -> Result<Notifier, String> {
    Ok(Notifier::start(targets(specs, base)?, Backoff::default()))
}

/// What webhooks are told about the application.
#[derive(Debug, Clone)]
pub struct HookContext {
    pub name: String,
    pub namespace: String,
    pub hooks: Vec<WebhookSpec>,
}

impl HookContext {
    pub fn payload(
        &self,
        phase: &str,
        revision: &str,
        active: Option<Color>,
        release: Color,
    ) -> HookPayload {
        HookPayload {
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            kind: String::new(),
            phase: phase.to_string(),
            revision: revision.to_string(),
            colors: HookColors { active, release },
            event: None,
            metadata: BTreeMap::new(),
        }
    }

    /// A round of `kind` hooks: pre-rollout once; confirm-promotion until
    /// every gate answers 2xx. Each round is sent as [`Input::Hooks`].
    pub fn run_round(
        &self,
        kind: HookKind,
        payload: HookPayload,
        out: mpsc::UnboundedSender<Input>,
    ) -> JoinHandle<()> {
        let hooks = self.hooks.clone();
        let wt = match kind {
            HookKind::PreRollout => WebhookType::PreRollout,
            _ => WebhookType::ConfirmPromotion,
        };
        tokio::spawn(async move {
            loop {
                let results = webhook::call_all(&hooks, wt, &payload).await;
                let passed = results.iter().all(HookResult::passed);
                let input = Input::Hooks {
                    kind,
                    revision: payload.revision.clone(),
                    results,
                };
                if out.send(input).is_err() || passed || kind != HookKind::ConfirmPromotion {
                    return;
                }
                tokio::time::sleep(GATE_POLL).await;
            }
        })
    }

    /// Fire-and-forget hooks for an event (`event`, and `post-rollout` once
    /// a release ended).
    pub fn fire(&self, e: &Event, mut payload: HookPayload) {
        payload.event = Some(HookEvent {
            kind: format!("{:?}", e.kind),
            message: e.message.clone(),
        });
        for kind in teal_core::hooks::fired_by(e.kind) {
            let wt = match kind {
                HookKind::PostRollout => WebhookType::PostRollout,
                _ => WebhookType::Event,
            };
            webhook::fire(&self.hooks, wt, payload.clone());
        }
    }
}

/// The notification an event makes, if any.
pub fn notification(
    e: &Event,
    name: &str,
    namespace: &str,
    phase: &str,
    at: u64,
) -> Option<Notification> {
    Some(Notification {
        event: NotificationEvent::of(e.kind)?,
        name: name.to_string(),
        namespace: namespace.to_string(),
        revision: e.revision.clone(),
        phase: phase.to_string(),
        message: e.message.clone(),
        at,
    })
}
