//! `teal abort NAME`: stop the release under way; the previous color stays
//! (or goes back) live.

use std::process::ExitCode;

use super::command::{CommandArgs, phase, report, send};
use super::{EXIT_NOT_DONE, fail};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub cmd: CommandArgs,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let name = &args.cmd.name;
    let k = args.cmd.conn.connect().await?;
    let bg = k.bluegreen(name).await?;
    let p = phase(&bg);
    let abortable = matches!(
        p.as_str(),
        "Deploying"
            | "Previewing"
            | "AwaitingPromotion"
            | "ScalingUp"
            | "CuttingOver"
            | "PostPromotion"
            | "ScaleDownDelay"
    );
    if !abortable {
        let hint = match p.as_str() {
            "Reverting" => "it is already reverting to the previous color".to_string(),
            _ => format!("to go back to the previous revision use `teal rollback {name}`"),
        };
        return fail(
            EXIT_NOT_DONE,
            format!(
                "BlueGreen {} has no release to abort (phase: {p}): {hint}",
                k.id(name)
            ),
        );
    }
    match send(&k, name, "abort", args.cmd.command_timeout).await? {
        Ok(bg) => report(&k, &bg, "abort accepted"),
        Err(code) => return Ok(code),
    }
    Ok(ExitCode::SUCCESS)
}
