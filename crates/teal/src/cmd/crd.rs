//! `teal crd`: print teal's CustomResourceDefinitions (BlueGreen and the
//! metric templates), or their reference.

use std::io::Write;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// Print the field reference as Markdown (docs/crd-reference.md) instead.
    #[arg(long)]
    reference: bool,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let text = if args.reference {
        teal_api::crd_reference_markdown()
    } else {
        teal_api::crd_yaml()
    };
    // A reader that has seen enough (`teal crd | head`) closes the pipe:
    // that ends the output, it is no error.
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(ExitCode::SUCCESS),
    }
}
