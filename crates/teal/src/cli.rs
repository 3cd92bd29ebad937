//! Command-line surface: one subcommand per module under `cmd/`.

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::cmd;

#[derive(Parser)]
#[command(
    name = "teal",
    version,
    about = "Blue/green releases with an exact, instant switch"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    #[command(flatten)]
    Kube(cmd::kube::Verb),
    /// Run a blue/green release under live traffic on this machine.
    Demo(cmd::demo::Args),
    /// Local mode: run and release an app on this machine.
    Local(cmd::local::Args),
    /// Run the Kubernetes controller for BlueGreen resources.
    Controller(cmd::controller::Args),
    /// Print the BlueGreen CustomResourceDefinition (YAML).
    Crd(cmd::crd::Args),
    /// Run teal's L7 router (data plane) with an admin API.
    Router(Box<cmd::router::Args>),
    /// Print a shell completion script (bash, zsh, fish).
    Completion(cmd::completion::Args),
    /// Sample upstream app reporting its color (tests and `teal demo`).
    #[command(hide = true)]
    SampleApp(cmd::sample_app::Args),
}

/// The command-line definition (for completion scripts).
pub fn command() -> clap::Command {
    Cli::command()
}

/// Parses the arguments; invoked as `kubectl-teal` (a kubectl plugin),
/// help and errors say `kubectl teal`.
fn parse() -> Cli {
    let argv0 = std::env::args_os().next().unwrap_or_default();
    let file = std::path::Path::new(&argv0)
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    if !file.starts_with("kubectl-teal") {
        return Cli::parse();
    }
    let matches = Cli::command().bin_name("kubectl teal").get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

/// Set (to anything) in the environment, teal parses its arguments and
/// exits 0 without doing anything (exit 2 with clap's message when they do
/// not parse): the docs test checks every `teal` command in the docs so.
const PARSE_ONLY_ENV: &str = "TEAL_PARSE_ONLY";

pub fn main() -> ExitCode {
    let cli = parse();
    if std::env::var_os(PARSE_ONLY_ENV).is_some() {
        return ExitCode::SUCCESS;
    }
    // The demo prints its own progress; only errors go to the log there.
    // The controller says what it does with each release at info.
    init_tracing(match cli.command {
        Command::Demo(_) => "error",
        Command::Controller(_) => "info",
        _ => "warn",
    });
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Kube(verb) => cmd::kube::run(verb).await,
            Command::Demo(args) => cmd::demo::run(args).await,
            Command::Local(args) => cmd::local::run(args).await,
            Command::Controller(args) => cmd::controller::run(args).await,
            Command::Crd(args) => cmd::crd::run(args).await,
            Command::Router(args) => cmd::router::run(*args).await,
            Command::Completion(args) => cmd::completion::run(args).await,
            Command::SampleApp(args) => cmd::sample_app::run(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// The log filter: `TEAL_LOG`, else `RUST_LOG`, else `default` (same syntax:
/// a level such as `debug`, or `teal_controller=debug,kube=info`).
fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TEAL_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_env("RUST_LOG"))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
