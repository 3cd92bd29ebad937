//! `teal crd`: print the BlueGreen CustomResourceDefinition, or its reference.

use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// Print the field reference as Markdown (docs/crd-reference.md) instead.
    #[arg(long)]
    reference: bool,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.reference {
        print!("{}", teal_api::crd_reference_markdown());
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", teal_api::crd_yaml());
    Ok(ExitCode::SUCCESS)
}
