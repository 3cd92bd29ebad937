//! `teal local …`: local mode — a daemon that runs the app's processes and
//! the router, and the commands that drive it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Subcommand;
use teal_local::api::{DeployRequest, PromoteRequest};
use teal_local::client::{Client, ClientError};
use teal_local::{Config, Status};
use teal_router::RouterConfig;

#[derive(clap::Args)]
pub struct Args {
    /// The local-mode configuration file.
    #[arg(
        long,
        short = 'c',
        global = true,
        default_value = "teal.yaml",
        env = "TEAL_CONFIG"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Verb,
}

#[derive(Subcommand)]
enum Verb {
    /// Run the daemon: router, app processes and release engine.
    Serve {
        /// Take the router's listening socket from standard input (systemd:
        /// a socket unit and StandardInput=socket) instead of binding
        /// `listen`: connections arriving while the daemon restarts wait
        /// instead of being refused.
        #[arg(long)]
        listen_stdin: bool,
    },
    /// Release a new revision and wait until it is promoted or rolled back.
    Deploy(DeployArgs),
    /// Show phase, colors, analysis and recent events.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Promote the release waiting for promotion.
    Promote {
        /// Skip analysis still running.
        #[arg(long)]
        full: bool,
    },
    /// Stop the release and put the previous revision back.
    Abort,
    /// Go back to the previous revision.
    Rollback,
    /// Start again a release that was aborted, rolled back or failed.
    Retry,
}

#[derive(clap::Args)]
struct DeployArgs {
    /// Name of the new revision (letters, digits, '.', '-', '_').
    #[arg(long)]
    revision: String,
    /// Environment for the new revision's processes (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    env: Vec<(String, String)>,
    /// Return once the release has started instead of waiting for its end.
    #[arg(long)]
    no_wait: bool,
    /// Give up waiting after this many seconds (exit code 3).
    #[arg(long, default_value_t = 1800)]
    timeout: u64,
    /// Command of the new revision (default: the config's app.command).
    #[arg(last = true, value_name = "CMD")]
    command: Vec<String>,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

/// Exit code for configuration and usage errors.
const USAGE: u8 = 2;

fn state_dir(config: &Path) -> Result<PathBuf, ExitCode> {
    match Config::load(config) {
        Ok(c) => Ok(c.state_dir),
        Err(e) => {
            eprintln!("error: {e}");
            Err(ExitCode::from(USAGE))
        }
    }
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    if let Verb::Serve { listen_stdin } = args.command {
        return serve(&args.config, listen_stdin).await;
    }
    let dir = match state_dir(&args.config) {
        Ok(d) => d,
        Err(code) => return Ok(code),
    };
    let client = match Client::for_state_dir(&dir) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(USAGE));
        }
    };
    let result = match args.command {
        Verb::Serve { .. } => unreachable!("handled above"),
        Verb::Deploy(d) => return deploy(&client, d).await,
        Verb::Status { json } => {
            let s: Status = client.get("/v1/status").await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                print!("{}", render_status(&s));
            }
            Ok(())
        }
        Verb::Promote { full } => post(&client, "/v1/promote", &PromoteRequest { full }).await,
        Verb::Abort => post(&client, "/v1/abort", &()).await,
        Verb::Rollback => post(&client, "/v1/rollback", &()).await,
        Verb::Retry => post(&client, "/v1/retry", &()).await,
    };
    match result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(ClientError::Refused(_, msg)) => {
            eprintln!("error: {msg}");
            Ok(ExitCode::from(1))
        }
        Err(e) => Err(e.into()),
    }
}

async fn post<B: serde::Serialize>(
    client: &Client,
    path: &str,
    body: &B,
) -> Result<(), ClientError> {
    let v: serde_json::Value = client.post(path, body).await?;
    if let Some(ok) = v.get("ok").and_then(|o| o.as_str()) {
        println!("{ok}");
    }
    Ok(())
}

async fn serve(config: &Path, listen_stdin: bool) -> anyhow::Result<ExitCode> {
    let cfg = match Config::load(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(USAGE));
        }
    };
    let inherited = if listen_stdin {
        match teal_local::daemon::listener_from_stdin() {
            Ok(l) => Some(l),
            Err(e) => {
                eprintln!("error: --listen-stdin: {e}");
                return Ok(ExitCode::from(USAGE));
            }
        }
    } else {
        None
    };
    let mut router_config = RouterConfig::default();
    if let Some(h) = &cfg.color_header {
        router_config.color_header = Some(h.parse().context("colorHeader")?);
    }
    let (ready_tx, ready_rx) =
        tokio::sync::oneshot::channel::<(teal_local::daemon::Bound, teal_local::Engine)>();
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    let announce = tokio::spawn(async move {
        if let Ok((bound, _engine)) = ready_rx.await {
            eprintln!(
                "teal local: serving on http://{} (admin http://{}, control http://{})",
                bound.listen, bound.admin, bound.control
            );
        }
    });
    let r =
        teal_local::daemon::serve_on(cfg, router_config, inherited, shutdown, Some(ready_tx)).await;
    announce.abort();
    match r {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(
            e @ (teal_local::daemon::DaemonError::Bind { .. }
            | teal_local::daemon::DaemonError::AlreadyRunning { .. }
            | teal_local::daemon::DaemonError::Inherited(_)),
        ) => {
            eprintln!("error: {e}");
            Ok(ExitCode::from(USAGE))
        }
        Err(e) => Err(e.into()),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

async fn deploy(client: &Client, d: DeployArgs) -> anyhow::Result<ExitCode> {
    let since = now_ms();
    let req = DeployRequest {
        revision: d.revision.clone(),
        command: (!d.command.is_empty()).then_some(d.command),
        env: d.env.into_iter().collect::<BTreeMap<_, _>>(),
    };
    let started: Result<serde_json::Value, _> = client.post("/v1/deploy", &req).await;
    match started {
        Ok(_) => println!("release of {} started", d.revision),
        Err(ClientError::Refused(status, msg)) => {
            eprintln!("error: {msg}");
            return Ok(ExitCode::from(if status == 400 { USAGE } else { 1 }));
        }
        Err(e) => return Err(e.into()),
    }
    if d.no_wait {
        return Ok(ExitCode::SUCCESS);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(d.timeout);
    let mut last_line = String::new();
    loop {
        let s: Status = client.get("/v1/status").await?;
        if let Some(rec) = s
            .history
            .iter()
            .rev()
            .find(|r| r.revision == d.revision && r.ended_at >= since)
        {
            println!("{}: {:?} — {}", rec.revision, rec.outcome, rec.reason);
            return Ok(match rec.outcome {
                teal_core::release::Outcome::Promoted => {
                    report_drain(client, rec.color.other(), rec.ended_at, deadline).await?;
                    ExitCode::SUCCESS
                }
                _ => ExitCode::from(1),
            });
        }
        if let Some(r) = &s.release
            && r.revision == d.revision
        {
            let line = format!("{}: {} — {}", r.revision, r.phase, r.message);
            if line != last_line {
                println!("{line}");
                last_line = line;
            }
        }
        if tokio::time::Instant::now() >= deadline {
            eprintln!(
                "error: {} did not finish within {}s (phase: {})",
                d.revision, d.timeout, s.phase
            );
            return Ok(ExitCode::from(3));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits for the drain of the color retired at `since` to end (or the
/// deadline) and says how it ended.
async fn report_drain(
    client: &Client,
    color: teal_core::Color,
    since: u64,
    deadline: tokio::time::Instant,
) -> anyhow::Result<()> {
    loop {
        let s: Status = client.get("/v1/status").await?;
        let detail = s.colors.get(&color);
        if let Some(d) = detail.and_then(|d| d.last_drain.as_ref())
            && d.ended_at >= since
            && !detail.is_some_and(|d| d.draining)
        {
            let r = &d.report;
            let secs = r.waited.as_secs_f64();
            if r.completed {
                println!(
                    "{color} drained: nothing left in flight after {secs:.1}s; its processes stopped"
                );
            } else {
                let closed = match r.upgrades_closed {
                    0 => String::new(),
                    n => format!(", {n} upgraded connection(s) closed"),
                };
                println!(
                    "{color} drained: drain timeout reached after {secs:.1}s with {} request(s) or connection(s) still open{closed}; its processes stopped",
                    r.remaining
                );
            }
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            println!("{color} still draining; its processes stop when the drain ends");
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn render_status(s: &Status) -> String {
    let mut out = String::new();
    let view = |v: &Option<teal_local::engine::ColorView>| {
        v.as_ref()
            .map(|c| format!("{} ({})", c.color, c.revision))
            .unwrap_or_else(|| "-".into())
    };
    out.push_str(&format!("phase:    {}\n", s.phase));
    out.push_str(&format!("live:     {}\n", view(&s.active)));
    out.push_str(&format!("preview:  {}\n", view(&s.preview)));
    out.push_str(&format!(
        "router:   http://{} (route generation {})\n",
        s.listen, s.generation
    ));
    if let Some(r) = &s.release {
        out.push_str(&format!(
            "release:  {} to {}: {} — {}\n",
            r.revision, r.color, r.phase, r.message
        ));
    }
    for (color, d) in &s.colors {
        out.push_str(&format!(
            "{color:<6}    revision {:<10} ready {}/{}  requests {}  5xx {}  in flight {}{}\n",
            d.revision.as_deref().unwrap_or("-"),
            d.ready_replicas,
            d.replicas.len(),
            d.requests,
            d.server_errors,
            d.in_flight,
            d.failure
                .as_ref()
                .map(|f| format!("  FAILING: {f}"))
                .unwrap_or_default()
        ));
    }
    if let Some(a) = &s.analysis {
        out.push_str(&format!(
            "analysis: {} of {}: {} checks, {} failed, {} inconclusive, {} provider errors\n",
            a.stage, a.revision, a.run.checks, a.run.failures, a.run.inconclusive, a.run.errors
        ));
        for m in &a.run.last {
            out.push_str(&format!(
                "          {} = {}{}\n",
                m.metric,
                m.value
                    .map(|v| format!("{v:.2}"))
                    .unwrap_or_else(|| m.note.clone().unwrap_or("no data".into())),
                if m.dry_run { "  [dry run]" } else { "" },
            ));
        }
    }
    if !s.hooks.is_empty() {
        out.push_str("webhooks:\n");
        for (name, r) in &s.hooks {
            let how = match (r.status, &r.error) {
                (Some(st), _) => format!("answered {st}"),
                (None, Some(e)) => format!("failed: {e}"),
                (None, None) => "no answer".into(),
            };
            out.push_str(&format!("          {name} ({}): {how}\n", r.kind));
        }
    }
    if !s.notifications.is_empty() {
        out.push_str("notifications:\n");
        for (name, d) in &s.notifications {
            out.push_str(&format!(
                "          {name}: {} delivered, {} failed attempts, {} given up{}\n",
                d.delivered,
                d.failed_attempts,
                d.given_up,
                d.last_error
                    .as_ref()
                    .map(|e| format!(" (last: {e})"))
                    .unwrap_or_default()
            ));
        }
    }
    if !s.history.is_empty() {
        out.push_str("history:\n");
        for r in s.history.iter().rev().take(5) {
            out.push_str(&format!(
                "          {:<8} {:<11} {}\n",
                r.revision,
                format!("{:?}", r.outcome),
                r.reason
            ));
        }
    }
    out
}
