#![forbid(unsafe_code)]

mod cli;
mod cmd;

fn main() -> std::process::ExitCode {
    cli::main()
}
