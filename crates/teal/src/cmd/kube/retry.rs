//! `teal retry NAME`: release the workload's revision again after it
//! failed, was aborted or rolled back.

use std::process::ExitCode;

use super::command::{CommandArgs, phase, report, send};
use super::status::{WaitArgs, wait_release};
use super::{EXIT_NOT_DONE, Output, fail};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub cmd: CommandArgs,
    #[command(flatten)]
    pub wait: WaitArgs,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let name = &args.cmd.name;
    let k = args.cmd.conn.connect().await?;
    let bg = k.bluegreen(name).await?;
    let p = phase(&bg);
    let st = bg.status.clone().unwrap_or_default();
    let retryable = match p.as_str() {
        "Failed" | "RolledBack" | "Aborted" => true,
        "Healthy" | "Degraded" => st.active_revision != st.desired_revision,
        _ => false,
    };
    if !retryable {
        let why = if matches!(p.as_str(), "Healthy" | "Degraded") {
            format!(
                "revision {} is live already",
                st.active_revision.unwrap_or_default()
            )
        } else {
            format!("a release is under way; follow it with `teal watch {name}`")
        };
        return fail(
            EXIT_NOT_DONE,
            format!(
                "BlueGreen {} has nothing to retry (phase: {p}): {why}",
                k.id(name)
            ),
        );
    }
    match send(&k, name, "retry", args.cmd.command_timeout).await? {
        Ok(bg) => report(&k, &bg, "retry accepted"),
        Err(code) => return Ok(code),
    }
    if args.wait.wait {
        return wait_release(&k, name, &args.wait, Output::Table).await;
    }
    Ok(ExitCode::SUCCESS)
}
