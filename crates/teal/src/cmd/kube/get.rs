//! `teal get NAME`: one BlueGreen, with the traffic per color its router
//! measured (see [`super::traffic`]).

use std::process::ExitCode;

use super::{Conn, Output, print_structured, printable, table, traffic, view};

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
    let (t, _) = traffic::fetch(&k, &bg).await;
    match args.output {
        Output::Table => print!(
            "{}{}",
            table(&view::ROW_HEADER, &[view::row(&bg)]),
            traffic::lines(&t, None)
        ),
        o => {
            // The object as the API has it, plus `traffic` (not an API field).
            let mut value = serde_json::to_value(&bg)?;
            value["traffic"] = serde_json::to_value(&t)?;
            print_structured(o, &value)?
        }
    }
    Ok(ExitCode::SUCCESS)
}
