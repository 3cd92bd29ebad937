//! `teal rollback NAME [--to-revision REV]`.
//!
//! Without `--to-revision`: the controller's instant rollback to the
//! previous revision (its color is kept for that); the workload is not
//! changed, so `teal retry` releases its revision again later.
//!
//! With `--to-revision REV`: the recorded pod template of REV (kept by a
//! color's Deployment or in the workload Deployment's own ReplicaSet
//! history) is written back to the workload, and the controller releases it
//! like any change: preview, analysis, promotion. The workload then says
//! REV, as after `kubectl rollout undo --to-revision`.

use std::process::ExitCode;

use anyhow::Context as _;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use kube::api::{ListParams, PostParams};
use kube::{Api, ResourceExt};
use teal_api::BlueGreen;
use teal_controller::objects::{color_deployment_name, color_template, revision_of};
use teal_core::Color;

use super::command::{CommandArgs, MANAGER, phase, report, send};
use super::status::{WaitArgs, wait_release};
use super::{EXIT_NOT_DONE, Kube, Output, fail};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub cmd: CommandArgs,
    /// Release this recorded revision (see `teal history`) instead: its pod
    /// template is written back to the workload and released as usual.
    #[arg(long, value_name = "REV")]
    pub to_revision: Option<String>,
    /// With --to-revision: wait for that release (see `teal status --wait`).
    #[command(flatten)]
    pub wait: WaitArgs,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let name = &args.cmd.name;
    let k = args.cmd.conn.connect().await?;
    let bg = k.bluegreen(name).await?;
    if let Some(rev) = &args.to_revision {
        return to_revision(&k, &bg, rev, &args.wait).await;
    }
    let p = phase(&bg);
    let st = bg.status.clone().unwrap_or_default();
    let refuse = match p.as_str() {
        "Reverting" => Some("it is already reverting to the previous color".to_string()),
        "-" | "Initializing" => Some("nothing has been released yet".to_string()),
        "Healthy" | "Degraded" if !st.history.iter().any(|r| r.outcome == "promoted") => {
            Some("no release went live yet, so there is no previous revision".to_string())
        }
        _ => None,
    };
    if let Some(why) = refuse {
        return fail(
            EXIT_NOT_DONE,
            format!(
                "BlueGreen {} cannot roll back (phase: {p}): {why}",
                k.id(name)
            ),
        );
    }
    match send(&k, name, "rollback", args.cmd.command_timeout).await? {
        Ok(bg) => report(&k, &bg, "rollback accepted"),
        Err(code) => return Ok(code),
    }
    Ok(ExitCode::SUCCESS)
}

/// Pod templates teal can find for a BlueGreen, by revision, with where
/// each was found.
async fn recorded_templates(
    k: &Kube,
    bg: &BlueGreen,
) -> anyhow::Result<Vec<(String, String, PodTemplateSpec)>> {
    let name = bg.name_any();
    let mut found = Vec::new();
    for color in Color::ALL {
        let dep_name = color_deployment_name(&name, color);
        let Some(d) = k.deployments().get_opt(&dep_name).await? else {
            continue;
        };
        let (Some(rev), t) = color_template(d) else {
            continue;
        };
        found.push((rev, format!("Deployment {dep_name} ({color})"), t));
    }
    let workload = k.workload(bg).await?;
    let uid = workload.metadata.uid.clone();
    let rss: Api<ReplicaSet> = Api::namespaced(k.client.clone(), &k.ns);
    let list = rss
        .list(&ListParams::default())
        .await
        .with_context(|| format!("cannot list ReplicaSets in namespace {}", k.ns))?;
    for rs in list.items {
        let owned = rs
            .owner_references()
            .iter()
            .any(|o| Some(&o.uid) == uid.as_ref());
        let Some(mut t) = rs.spec.template else {
            continue;
        };
        if !owned {
            continue;
        }
        if let Some(m) = t.metadata.as_mut()
            && let Some(l) = m.labels.as_mut()
        {
            l.remove("pod-template-hash");
            if l.is_empty() {
                m.labels = None;
            }
        }
        let rev = revision_of(&t);
        if !found.iter().any(|(r, _, _)| *r == rev) {
            found.push((
                rev,
                format!(
                    "ReplicaSet {} (history of the workload)",
                    rs.metadata.name.unwrap_or_default()
                ),
                t,
            ));
        }
    }
    Ok(found)
}

async fn to_revision(
    k: &Kube,
    bg: &BlueGreen,
    rev: &str,
    wait: &WaitArgs,
) -> anyhow::Result<ExitCode> {
    let name = bg.name_any();
    let id = k.id(&name);
    let workload = k.workload(bg).await?;
    let current = revision_of(&workload.spec.template);
    if current == rev {
        return fail(
            EXIT_NOT_DONE,
            format!(
                "BlueGreen {id}: the workload is at revision {rev} already; `teal rollback {name}` (without --to-revision) goes back to the previous revision"
            ),
        );
    }
    let templates = recorded_templates(k, bg).await?;
    let Some((_, source, template)) = templates.iter().find(|(r, _, _)| r == rev) else {
        let known: Vec<String> = templates
            .iter()
            .map(|(r, s, _)| format!("{r} ({s})"))
            .collect();
        return fail(
            EXIT_NOT_DONE,
            format!(
                "BlueGreen {id}: no pod template is recorded for revision {rev}; teal keeps the templates of both colors and the workload's ReplicaSet history (revisionHistoryLimit). Known revisions: {}",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ),
        );
    };
    // A replace with the resourceVersion just read: a concurrent change of
    // the workload makes this fail instead of being overwritten.
    let wname = &bg.spec.workload_ref.name;
    let mut changed = workload.clone();
    changed.spec.template = template.clone();
    changed.metadata.managed_fields = None;
    let updated = k
        .deployments()
        .replace(
            wname,
            &PostParams {
                field_manager: Some(MANAGER.into()),
                ..Default::default()
            },
            &changed,
        )
        .await
        .with_context(|| {
            format!(
                "cannot write the pod template of Deployment {}",
                k.id(wname)
            )
        })?;
    let now = revision_of(&updated.spec.template);
    println!(
        "Deployment {}: pod template of revision {rev} restored from {source}; BlueGreen {id} releases it now",
        k.id(wname)
    );
    if now != rev {
        eprintln!(
            "warning: the API server changed the restored template: the workload's revision is {now}, not {rev}"
        );
    }
    if wait.wait {
        return wait_release(k, &name, wait, Output::Table).await;
    }
    Ok(ExitCode::SUCCESS)
}
