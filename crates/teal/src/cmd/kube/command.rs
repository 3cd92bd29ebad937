//! Operator commands through the `teal.dev/command` annotation: set it,
//! wait until the controller acted on it (`status.lastCommand`), and report
//! the outcome, including the controller's reason for a rejection.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use kube::api::{Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde_json::json;
use teal_api::BlueGreen;
use teal_api::bluegreen::annotations;

use k8s_openapi::api::events::v1::Event;

use super::{Conn, EXIT_NOT_DONE, EXIT_TIMEOUT, Kube, fail, now_ms, parse_timeout};

/// Field manager of the CLI's writes.
pub const MANAGER: &str = "teal-cli";

/// What every command verb takes.
#[derive(clap::Args, Clone, Debug)]
pub struct CommandArgs {
    /// The BlueGreen.
    pub name: String,
    #[command(flatten)]
    pub conn: Conn,
    /// How long to wait for the controller to act on the command.
    #[arg(long = "command-timeout", value_parser = parse_timeout, default_value = "60s")]
    pub command_timeout: Duration,
}

/// The phase of a BlueGreen (`-` before the controller saw it).
pub fn phase(bg: &BlueGreen) -> String {
    bg.status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_else(|| "-".into())
}

/// Sets `teal.dev/command: <verb>/<id>` and waits until the controller has
/// handled it. Returns the BlueGreen as the controller left it, or the exit
/// code of a failure (already reported).
pub async fn send(
    k: &Kube,
    name: &str,
    verb: &str,
    timeout: Duration,
) -> anyhow::Result<Result<BlueGreen, ExitCode>> {
    let id = k.id(name);
    let value = format!("{verb}/{}-{}", now_ms(), std::process::id());
    // Rejections are published just before the status that records the
    // command. A rejection of this command is an event not seen before,
    // or one seen before whose series count grew (repeats are counted).
    let seen: Vec<(String, i32)> = rejections(&k.events(name).await?);
    let patch = json!({"metadata": {"annotations": {annotations::COMMAND: value}}});
    k.bluegreens()
        .patch(
            name,
            &PatchParams {
                field_manager: Some(MANAGER.into()),
                ..Default::default()
            },
            &Patch::Merge(patch),
        )
        .await
        .with_context(|| format!("cannot annotate BlueGreen {id} with {verb}"))?;
    let deadline = tokio::time::Instant::now() + timeout;
    let bg = loop {
        let bg = k.bluegreen(name).await?;
        let last = bg.status.as_ref().and_then(|s| s.last_command.clone());
        if last.as_deref() == Some(value.as_str()) {
            break bg;
        }
        if tokio::time::Instant::now() >= deadline {
            return fail(
                EXIT_TIMEOUT,
                format!(
                    "the controller did not act on {verb} for BlueGreen {id} within {}s: is `teal controller` running and watching namespace {}? (the command stays set: {}={value})",
                    timeout.as_secs(),
                    k.ns,
                    annotations::COMMAND
                ),
            )
            .map(Err);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let uid = bg.meta().uid.clone();
    let rejected = k.events(name).await?.into_iter().rfind(|e| {
        e.regarding.as_ref().and_then(|r| r.uid.clone()) == uid
            && rejections(std::slice::from_ref(e))
                .first()
                .is_some_and(|key| !seen.contains(key))
    });
    if let Some(e) = rejected {
        let note = e.note.unwrap_or_default();
        let reason = note
            .strip_prefix(&format!("BlueGreen {id}: "))
            .unwrap_or(&note);
        let phase_note = if reason.contains("(phase:") {
            String::new()
        } else {
            format!(" (phase: {})", phase(&bg))
        };
        return fail(
            EXIT_NOT_DONE,
            format!("BlueGreen {id} rejected {verb}: {reason}{phase_note}"),
        )
        .map(Err);
    }
    Ok(Ok(bg))
}

/// The rejection events among `events`, as (uid, times seen).
fn rejections(events: &[Event]) -> Vec<(String, i32)> {
    events
        .iter()
        .filter(|e| {
            matches!(
                e.reason.as_deref(),
                Some("CommandRejected" | "InvalidCommand")
            )
        })
        .map(|e| {
            (
                e.metadata.uid.clone().unwrap_or_default(),
                e.series.as_ref().map(|s| s.count).unwrap_or(1),
            )
        })
        .collect()
}

/// Reports a command the controller accepted.
pub fn report(k: &Kube, bg: &BlueGreen, what: &str) {
    let st = bg.status.clone().unwrap_or_default();
    println!(
        "BlueGreen {}: {what} (phase: {}; {})",
        k.id(&bg.name_any()),
        phase(bg),
        st.message.unwrap_or_default()
    );
}
