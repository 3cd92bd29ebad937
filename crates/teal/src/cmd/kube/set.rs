//! `teal set image NAME CONTAINER=IMAGE ...`: change the workload's
//! container images; the controller then releases the new revision.

use std::process::ExitCode;

use anyhow::Context as _;
use kube::ResourceExt;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use teal_controller::objects::revision_of;

use super::command::MANAGER;
use super::status::{WaitArgs, wait_release};
use super::{Conn, Output};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub what: What,
}

#[derive(clap::Subcommand)]
pub enum What {
    /// Set container images of the BlueGreen's workload.
    Image(ImageArgs),
}

#[derive(clap::Args)]
pub struct ImageArgs {
    /// The BlueGreen.
    pub name: String,
    /// CONTAINER=IMAGE, one or more.
    #[arg(required = true, value_parser = parse_pair)]
    pub images: Vec<(String, String)>,
    #[command(flatten)]
    pub conn: Conn,
    #[command(flatten)]
    pub wait: WaitArgs,
}

fn parse_pair(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((c, i)) if !c.is_empty() && !i.is_empty() => Ok((c.to_string(), i.to_string())),
        _ => Err(format!(
            "{s:?}: expected CONTAINER=IMAGE (e.g. app=registry.example/shop:1.2)"
        )),
    }
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let What::Image(args) = args.what;
    let k = args.conn.connect().await?;
    let bg = k.bluegreen(&args.name).await?;
    let workload = k.workload(&bg).await?;
    let wname = workload.name_any();
    let pod = workload.spec.template.spec.clone().unwrap_or_default();
    let mut containers = Vec::new();
    let mut init = Vec::new();
    let mut changes = Vec::new();
    for (c, image) in &args.images {
        let (list, current) = if let Some(x) = pod.containers.iter().find(|x| &x.name == c) {
            (&mut containers, x.image.clone())
        } else if let Some(x) = pod.init_containers.iter().flatten().find(|x| &x.name == c) {
            (&mut init, x.image.clone())
        } else {
            let names: Vec<&str> = pod
                .containers
                .iter()
                .chain(pod.init_containers.iter().flatten())
                .map(|x| x.name.as_str())
                .collect();
            anyhow::bail!(
                "Deployment {} has no container {c:?} (containers: {})",
                k.id(&wname),
                names.join(", ")
            );
        };
        if current.as_deref() != Some(image.as_str()) {
            changes.push(format!(
                "{c}: {} -> {image}",
                current.unwrap_or_else(|| "-".into())
            ));
        }
        list.push(json!({"name": c, "image": image}));
    }
    if changes.is_empty() {
        println!(
            "Deployment {}: the images are set already; nothing to release",
            k.id(&wname)
        );
    } else {
        let mut spec = json!({"containers": containers});
        if !init.is_empty() {
            spec["initContainers"] = json!(init);
        }
        let patch = json!({"spec": {"template": {"spec": spec}}});
        let updated = k
            .deployments()
            .patch(
                &wname,
                &PatchParams {
                    field_manager: Some(MANAGER.into()),
                    ..Default::default()
                },
                &Patch::Strategic(patch),
            )
            .await
            .with_context(|| format!("cannot patch Deployment {}", k.id(&wname)))?;
        println!(
            "Deployment {}: {}; BlueGreen {} releases revision {}",
            k.id(&wname),
            changes.join(", "),
            k.id(&args.name),
            revision_of(&updated.spec.template)
        );
    }
    if args.wait.wait {
        return wait_release(&k, &args.name, &args.wait, Output::Table).await;
    }
    Ok(ExitCode::SUCCESS)
}
