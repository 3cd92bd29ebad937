//! `teal get NAME`: one BlueGreen.

use std::process::ExitCode;

use super::{Conn, Output, print_structured, printable, table, view};

#[derive(clap::Args)]
pub struct Args {
    /// The BlueGreen.
    pub name: String,
    #[command(flatten)]
    pub conn: Conn,
    #[arg(short, long, value_enum, default_value_t)]
    pub output: Output,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let k = args.conn.connect().await?;
    let bg = printable(k.bluegreen(&args.name).await?);
    match args.output {
        Output::Table => print!("{}", table(&view::ROW_HEADER, &[view::row(&bg)])),
        o => print_structured(o, &bg)?,
    }
    Ok(ExitCode::SUCCESS)
}
