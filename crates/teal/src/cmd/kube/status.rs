//! `teal status NAME [--wait]`: where the release of a BlueGreen stands;
//! with `--wait`, waits until the release of the workload's current
//! revision finished and tells by the exit code whether it went live.

use std::process::ExitCode;
use std::time::Duration;

use kube::ResourceExt;
use teal_api::BlueGreen;
use teal_controller::objects::revision_of;

use super::{
    Conn, EXIT_NOT_DONE, EXIT_TIMEOUT, Kube, Output, fail, parse_timeout, print_structured, view,
};

#[derive(clap::Args)]
pub struct Args {
    /// The BlueGreen.
    pub name: String,
    #[command(flatten)]
    pub conn: Conn,
    #[command(flatten)]
    pub wait: WaitArgs,
    #[arg(short, long, value_enum, default_value_t)]
    pub output: Output,
}

/// `--wait` and `--timeout`, shared by the verbs that can wait for a release.
#[derive(clap::Args, Clone, Debug)]
pub struct WaitArgs {
    /// Wait until the release of the workload's current revision finished:
    /// exit 0 if it is live, 3 if it failed, was rolled back or aborted,
    /// 4 on timeout.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits (e.g. 90s, 10m).
    #[arg(long, value_parser = parse_timeout, default_value = "10m")]
    pub timeout: Duration,
}

/// Where the release of a revision stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Judgement {
    /// Live and healthy.
    Live(String),
    /// Finished without going live (failed, rolled back, aborted).
    NotLive(String),
    /// Still under way (or not seen by the controller yet).
    Pending(String),
}

/// Judges the release of `desired` (the workload's current revision) from
/// the BlueGreen's status.
pub fn judge(bg: &BlueGreen, desired: &str) -> Judgement {
    let st = bg.status.clone().unwrap_or_default();
    let phase = st.phase.clone().unwrap_or_default();
    let message = st.message.clone().unwrap_or_default();
    if st.desired_revision.as_deref() != Some(desired) {
        return Judgement::Pending(format!(
            "waiting for the controller to see revision {desired}"
        ));
    }
    let record = st.history.iter().rev().find(|r| r.revision == desired);
    let active = st.active_revision.as_deref();
    match phase.as_str() {
        "Healthy" if active == Some(desired) => Judgement::Live(format!(
            "revision {desired} is live on {}",
            st.active_color.map(|c| c.to_string()).unwrap_or_default()
        )),
        // Post-promotion checks passed; the previous color only waits for
        // its scale-down (an operator may still roll back to it).
        "ScaleDownDelay" if active == Some(desired) => Judgement::Live(format!(
            "revision {desired} is live on {} (the previous color is kept until its scale-down delay ends)",
            st.active_color.map(|c| c.to_string()).unwrap_or_default()
        )),
        "Failed" | "RolledBack" | "Aborted" => Judgement::NotLive(format!(
            "release of revision {desired} ended {phase}: {}",
            record.map(|r| r.reason.clone()).unwrap_or(message)
        )),
        // Healthy at another revision: the release of `desired` ended
        // without going live, or an operator rolled back after it.
        "Healthy" => Judgement::NotLive(match record {
            Some(r) if r.outcome != "promoted" => format!(
                "release of revision {desired} ended {}: {}; revision {} is live",
                r.outcome,
                r.reason,
                active.unwrap_or("-")
            ),
            _ => format!(
                "revision {desired} is not live: revision {} is (rolled back); `teal retry {}` releases {desired} again",
                active.unwrap_or("-"),
                bg.name_any()
            ),
        }),
        "" => Judgement::Pending("waiting for the controller".into()),
        _ => Judgement::Pending(format!("{phase}: {message}")),
    }
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let k = args.conn.connect().await?;
    if args.wait.wait {
        return wait_release(&k, &args.name, &args.wait, args.output).await;
    }
    let bg = k.bluegreen(&args.name).await?;
    match args.output {
        Output::Table => {
            let events = k.events(&args.name).await.unwrap_or_default();
            print!("{}", view::detail(&k.ns, &bg, "", &events, 5));
        }
        o => print_structured(o, &bg.status.unwrap_or_default())?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Waits until the release of the workload's current revision finished;
/// progress goes to stderr, the final status to stdout.
pub async fn wait_release(
    k: &Kube,
    name: &str,
    wait: &WaitArgs,
    output: Output,
) -> anyhow::Result<ExitCode> {
    let id = k.id(name);
    let deadline = tokio::time::Instant::now() + wait.timeout;
    let mut last = String::new();
    loop {
        let bg = k.bluegreen(name).await?;
        let workload = k.workload(&bg).await?;
        let desired = revision_of(&workload.spec.template);
        let j = judge(&bg, &desired);
        let line = match &j {
            Judgement::Live(m) | Judgement::NotLive(m) | Judgement::Pending(m) => m.clone(),
        };
        if line != last {
            eprintln!("BlueGreen {id}: {line}");
            last = line.clone();
        }
        let done = |code: ExitCode| -> anyhow::Result<ExitCode> {
            if output != Output::Table {
                print_structured(output, &bg.status.clone().unwrap_or_default())?;
            }
            Ok(code)
        };
        match j {
            Judgement::Live(_) => return done(ExitCode::SUCCESS),
            Judgement::NotLive(m) => {
                done(ExitCode::SUCCESS)?;
                return fail(EXIT_NOT_DONE, format!("BlueGreen {id}: {m}"));
            }
            Judgement::Pending(m) => {
                if tokio::time::Instant::now() >= deadline {
                    done(ExitCode::SUCCESS)?;
                    return fail(
                        EXIT_TIMEOUT,
                        format!(
                            "BlueGreen {id}: the release of revision {desired} did not finish within {}s (now: {m}); raise --timeout, or look with `teal watch {name} -n {}`",
                            wait.timeout.as_secs(),
                            k.ns
                        ),
                    );
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
