//! `teal crd`: print the BlueGreen CustomResourceDefinition.

use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {}

pub async fn run(_args: Args) -> anyhow::Result<ExitCode> {
    print!("{}", teal_api::crd_yaml());
    Ok(ExitCode::SUCCESS)
}
