//! `teal history NAME`: the finished releases of a BlueGreen, oldest first.

use std::process::ExitCode;

use super::{Conn, Output, print_structured, table};

#[derive(clap::Args)]
pub struct Args {
    /// The BlueGreen.
    pub name: String,
    #[command(flatten)]
    pub conn: Conn,
    #[arg(short, long, value_enum, default_value_t)]
    pub output: Output,
}

/// Unix milliseconds as UTC time.
fn when(ms: i64) -> String {
    k8s_openapi::jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.strftime("%Y-%m-%d %H:%M:%SZ").to_string())
        .unwrap_or_else(|_| "-".into())
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let k = args.conn.connect().await?;
    let bg = k.bluegreen(&args.name).await?;
    let st = bg.status.unwrap_or_default();
    if args.output != Output::Table {
        print_structured(args.output, &st.history)?;
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = st
        .history
        .iter()
        .map(|r| {
            vec![
                r.revision.clone(),
                r.color.to_string(),
                r.outcome.clone(),
                when(r.started_at),
                format!("{}s", (r.ended_at - r.started_at).max(0) / 1000),
                r.reason.clone(),
            ]
        })
        .collect();
    if rows.is_empty() {
        println!("BlueGreen {}: no finished releases yet", k.id(&args.name));
    } else {
        print!(
            "{}",
            table(
                &["REVISION", "COLOR", "OUTCOME", "STARTED", "TOOK", "REASON"],
                &rows
            )
        );
    }
    let in_progress = !matches!(
        st.phase.as_deref(),
        None | Some("Healthy" | "Degraded" | "Initializing" | "Failed" | "RolledBack" | "Aborted")
    );
    if in_progress {
        println!(
            "in progress: {}: {}",
            st.phase.unwrap_or_default(),
            st.message.unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}
