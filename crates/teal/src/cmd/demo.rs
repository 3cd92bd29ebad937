//! `teal demo`: a blue/green release under live traffic, on this machine.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use teal_local::demo;

#[derive(clap::Args)]
pub struct Args {
    /// Also write the report as JSON to this file.
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
    /// Keep-alive connections of production traffic.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=1024))]
    connections: u16,
    /// Replicas per color.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=8))]
    replicas: u32,
    /// Print only the report.
    #[arg(long)]
    quiet: bool,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let exe =
        std::env::current_exe().context("cannot find the teal executable to run the sample app")?;
    let opts = demo::Options {
        exe,
        connections: usize::from(args.connections),
        preview_connections: 2,
        replicas: args.replicas,
        progress: !args.quiet,
    };
    let report = demo::run(opts).await?;
    print!("{}", demo::render(&report));
    if let Some(path) = &args.json {
        let json = serde_json::to_vec_pretty(&report)?;
        std::fs::write(path, json).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(if report.violations.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
