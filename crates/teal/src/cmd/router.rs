//! `teal router`: run the L7 router on its own.

use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {}

pub async fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("teal router is not built yet")
}
