//! Calling test hooks and gates.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use teal_api::hooks::WebhookSpec;
use teal_core::Color;
use teal_core::hooks::HookResult;

use crate::client::{self, CallError};

/// The JSON body every webhook receives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HookPayload {
    /// The BlueGreen (or `local` in local mode).
    pub name: String,
    pub namespace: String,
    /// `pre-rollout`, `rollout`, `confirm-promotion`…
    #[serde(rename = "type")]
    pub kind: String,
    /// The release phase, e.g. `Previewing`.
    pub phase: String,
    /// The revision being released.
    pub revision: String,
    pub colors: HookColors,
    /// The event that fired an `event` or `post-rollout` hook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<HookEvent>,
    /// The webhook's `metadata`.
    pub metadata: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HookColors {
    /// The color taking production traffic.
    pub active: Option<Color>,
    /// The color running `revision`.
    pub release: Color,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HookEvent {
    pub kind: String,
    pub message: String,
}

/// Pause between attempts of one call: 250ms, 500ms, 1s, … at most 5s.
fn retry_pause(attempt: u32) -> Duration {
    Duration::from_millis((250u64 << attempt.min(5)).min(5_000))
}

/// Calls one webhook: POSTs the payload (with the hook's metadata and
/// type), retrying after an error or a 5xx answer up to `retries` times.
pub async fn call(spec: &WebhookSpec, payload: &HookPayload) -> HookResult {
    call_counted(spec, payload).await.0
}

/// [`call`], also returning how many attempts were made.
pub async fn call_counted(spec: &WebhookSpec, payload: &HookPayload) -> (HookResult, u32) {
    let mut payload = payload.clone();
    payload.kind = spec.kind.as_str().to_string();
    payload.metadata = spec.metadata.clone();
    let body = Bytes::from(serde_json::to_vec(&payload).expect("payload serializes"));
    let mut attempt = 0;
    loop {
        let r = client::post_json(&spec.url, body.clone(), &[], spec.timeout.std()).await;
        let retry = match &r {
            Ok(s) => *s >= 500,
            Err(CallError::BadUrl | CallError::Denied(_)) => false,
            Err(_) => true,
        };
        if !retry || attempt >= spec.retries {
            let (status, error) = match r {
                Ok(s) => (Some(s), None),
                Err(e) => (None, Some(e.to_string())),
            };
            let result = HookResult {
                name: spec.name.clone(),
                kind: spec.kind.to_core(),
                status,
                error,
            };
            tracing::debug!(hook = %spec.name, kind = %result.kind, passed = result.passed(), attempts = attempt + 1, "webhook called");
            return (result, attempt + 1);
        }
        attempt += 1;
        tokio::time::sleep(retry_pause(attempt)).await;
    }
}

/// Calls every webhook in `specs` of `kind`, one after the other.
pub async fn call_all(
    specs: &[WebhookSpec],
    kind: teal_api::hooks::WebhookType,
    payload: &HookPayload,
) -> Vec<HookResult> {
    let mut out = Vec::new();
    for s in specs.iter().filter(|s| s.kind == kind) {
        out.push(call(s, payload).await);
    }
    out
}

/// Fires every webhook of `kind` in the background; answers are logged
/// and otherwise ignored.
pub fn fire(specs: &[WebhookSpec], kind: teal_api::hooks::WebhookType, payload: HookPayload) {
    let specs: Vec<WebhookSpec> = specs.iter().filter(|s| s.kind == kind).cloned().collect();
    if specs.is_empty() {
        return;
    }
    tokio::spawn(async move {
        for s in &specs {
            let r = call(s, &payload).await;
            if !r.passed() {
                tracing::warn!("{}", r.describe());
            }
        }
    });
}
