//! `teal promote NAME [--full]`: send the previewed color live.

use std::process::ExitCode;

use super::command::{CommandArgs, phase, report, send};
use super::status::{WaitArgs, wait_release};
use super::{EXIT_NOT_DONE, Output, fail};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub cmd: CommandArgs,
    /// Promote now, skipping the analysis still running (pre- or post-promotion).
    #[arg(long)]
    pub full: bool,
    #[command(flatten)]
    pub wait: WaitArgs,
}

/// Why a BlueGreen in `phase` cannot be promoted, and what to do.
fn not_waiting_hint(name: &str, phase: &str) -> String {
    match phase {
        "Healthy" | "Degraded" => format!(
            "no release is under way; change the workload to start one (`teal set image {name} CONTAINER=IMAGE`)"
        ),
        "Deploying" | "ScalingUp" | "CuttingOver" | "Initializing" => {
            format!("the new color is not ready yet; follow it with `teal watch {name}`")
        }
        "ScaleDownDelay" => "it was promoted already".into(),
        "Reverting" => "it is reverting to the previous color".into(),
        _ => format!("the release ended; `teal retry {name}` releases it again"),
    }
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let name = &args.cmd.name;
    let k = args.cmd.conn.connect().await?;
    let bg = k.bluegreen(name).await?;
    let p = phase(&bg);
    if !matches!(
        p.as_str(),
        "AwaitingPromotion" | "Previewing" | "PostPromotion"
    ) {
        return fail(
            EXIT_NOT_DONE,
            format!(
                "BlueGreen {} is not waiting for promotion (phase: {p}): {}",
                k.id(name),
                not_waiting_hint(name, &p)
            ),
        );
    }
    let verb = if args.full { "promote-full" } else { "promote" };
    let bg = match send(&k, name, verb, args.cmd.command_timeout).await? {
        Ok(bg) => bg,
        Err(code) => return Ok(code),
    };
    report(&k, &bg, &format!("{verb} accepted"));
    if args.wait.wait {
        return wait_release(&k, name, &args.wait, Output::Table).await;
    }
    Ok(ExitCode::SUCCESS)
}
