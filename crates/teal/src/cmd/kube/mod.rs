//! The operator commands for BlueGreens on Kubernetes (`teal list`, `teal
//! promote`, ...; also `kubectl teal ...`): one file per verb, this module
//! holds what they share: connecting, finding objects, output, exit codes.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::events::v1::Event;
use kube::api::ListParams;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config, ResourceExt};
use serde::Serialize;
use teal_api::BlueGreen;

pub mod abort;
pub mod command;
pub mod get;
pub mod history;
pub mod list;
pub mod promote;
pub mod retry;
pub mod rollback;
pub mod set;
pub mod status;
pub mod traffic;
pub mod view;
pub mod watch;

/// Exit code: the release (or command) did not do what was asked: it failed,
/// was rolled back or aborted, or the command was rejected.
pub const EXIT_NOT_DONE: u8 = 3;
/// Exit code: `--timeout` passed before the outcome was known.
pub const EXIT_TIMEOUT: u8 = 4;

/// The verbs, flattened into teal's top-level commands.
#[derive(clap::Subcommand)]
pub enum Verb {
    /// List BlueGreens with their phase, colors and revisions.
    List(list::Args),
    /// Show one BlueGreen (a table row, or the whole object with -o json|yaml).
    Get(get::Args),
    /// Show a BlueGreen's release status; --wait waits for the release to finish (for CI).
    Status(status::Args),
    /// Live view of a BlueGreen: phase, colors, revisions, analysis, events.
    Watch(watch::Args),
    /// Promote the previewed color (--full: skip the remaining analysis).
    Promote(promote::Args),
    /// Abort the release under way and keep (or put back) the previous color live.
    Abort(abort::Args),
    /// Release the desired revision again after a failure, abort or rollback.
    Retry(retry::Args),
    /// Roll back to the previous revision (--to-revision: release a recorded one).
    Rollback(rollback::Args),
    /// Change the released workload (set image NAME CONTAINER=IMAGE ...).
    Set(set::Args),
    /// Show the finished releases of a BlueGreen.
    History(history::Args),
}

pub async fn run(verb: Verb) -> anyhow::Result<ExitCode> {
    match verb {
        Verb::List(a) => list::run(a).await,
        Verb::Get(a) => get::run(a).await,
        Verb::Status(a) => status::run(a).await,
        Verb::Watch(a) => watch::run(a).await,
        Verb::Promote(a) => promote::run(a).await,
        Verb::Abort(a) => abort::run(a).await,
        Verb::Retry(a) => retry::run(a).await,
        Verb::Rollback(a) => rollback::run(a).await,
        Verb::Set(a) => set::run(a).await,
        Verb::History(a) => history::run(a).await,
    }
}

/// Where the BlueGreens are: kubeconfig, context, namespace.
#[derive(clap::Args, Clone, Debug)]
pub struct Conn {
    /// Namespace (default: the namespace of the kubeconfig context, else `default`).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// kubeconfig context (default: the current context).
    #[arg(long)]
    pub context: Option<String>,
    /// kubeconfig file (default: $KUBECONFIG, else ~/.kube/config, else in-cluster).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
}

/// How results are printed.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Output {
    /// For people.
    #[default]
    Table,
    Json,
    Yaml,
}

/// A connected client and the namespace commands act in.
pub struct Kube {
    pub client: Client,
    pub ns: String,
}

impl Conn {
    pub async fn connect(&self) -> anyhow::Result<Kube> {
        let opts = KubeConfigOptions {
            context: self.context.clone(),
            ..Default::default()
        };
        let config = match (&self.kubeconfig, &self.context) {
            (Some(path), _) => {
                let kc = Kubeconfig::read_from(path)
                    .with_context(|| format!("cannot read kubeconfig {}", path.display()))?;
                Config::from_custom_kubeconfig(kc, &opts)
                    .await
                    .with_context(|| format!("kubeconfig {}", path.display()))?
            }
            (None, Some(ctx)) => Config::from_kubeconfig(&opts)
                .await
                .with_context(|| format!("kubeconfig context {ctx:?}"))?,
            (None, None) => Config::infer().await.context(
                "no Kubernetes configuration: set KUBECONFIG, pass --kubeconfig, or run in a cluster",
            )?,
        };
        let ns = self
            .namespace
            .clone()
            .unwrap_or_else(|| config.default_namespace.clone());
        let client = Client::try_from(config).context("cannot build a Kubernetes client")?;
        Ok(Kube { client, ns })
    }
}

impl Kube {
    pub fn bluegreens(&self) -> Api<BlueGreen> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    pub fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// `ns/name`, as messages name objects.
    pub fn id(&self, name: &str) -> String {
        format!("{}/{name}", self.ns)
    }

    /// The BlueGreen `name`, or an error that says how to find the right one.
    pub async fn bluegreen(&self, name: &str) -> anyhow::Result<BlueGreen> {
        match self.bluegreens().get_opt(name).await {
            Ok(Some(bg)) => Ok(bg),
            Ok(None) => anyhow::bail!(
                "BlueGreen {} not found (list them with `teal list -n {}`, or pick another namespace with -n)",
                self.id(name),
                self.ns
            ),
            Err(kube::Error::Api(e)) if e.code == 404 => anyhow::bail!(
                "the BlueGreen resource type is not installed in this cluster: apply deploy/crd.yaml (`teal crd | kubectl apply --server-side -f -`)"
            ),
            Err(e) => Err(e).with_context(|| format!("cannot read BlueGreen {}", self.id(name))),
        }
    }

    /// The Deployment a BlueGreen releases.
    pub async fn workload(&self, bg: &BlueGreen) -> anyhow::Result<Deployment> {
        let name = &bg.spec.workload_ref.name;
        self.deployments()
            .get_opt(name)
            .await
            .with_context(|| format!("cannot read Deployment {}", self.id(name)))?
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "Deployment {} (spec.workloadRef of BlueGreen {}) does not exist",
                    self.id(name),
                    self.id(&bg.name_any())
                )
            })
    }

    /// Events about the BlueGreen `name`, oldest first.
    pub async fn events(&self, name: &str) -> anyhow::Result<Vec<Event>> {
        let api: Api<Event> = Api::namespaced(self.client.clone(), &self.ns);
        let list = api
            .list(&ListParams::default())
            .await
            .with_context(|| format!("cannot list events in namespace {}", self.ns))?;
        let mut evs: Vec<Event> = list
            .items
            .into_iter()
            .filter(|e| is_about(e, name))
            .collect();
        evs.sort_by_key(event_time_ms);
        Ok(evs)
    }
}

/// Whether `e` is about the BlueGreen `name`.
pub fn is_about(e: &Event, name: &str) -> bool {
    e.regarding
        .as_ref()
        .is_some_and(|r| r.kind.as_deref() == Some("BlueGreen") && r.name.as_deref() == Some(name))
}

/// When an event last happened (its series' last time, else its time), in
/// Unix milliseconds.
pub fn event_time_ms(e: &Event) -> i64 {
    e.series
        .as_ref()
        .map(|s| s.last_observed_time.0)
        .or(e.event_time.as_ref().map(|t| t.0))
        .or(e.deprecated_last_timestamp.as_ref().map(|t| t.0))
        .or(e.metadata.creation_timestamp.as_ref().map(|t| t.0))
        .map(|t| t.as_millisecond())
        .unwrap_or(0)
}

pub fn now_ms() -> i64 {
    k8s_openapi::jiff::Timestamp::now().as_millisecond()
}

/// Prints `value` as JSON or YAML.
pub fn print_structured<T: Serialize>(output: Output, value: &T) -> anyhow::Result<()> {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(value)?),
        Output::Yaml => print!("{}", serde_saphyr::to_string(value)?),
        Output::Table => anyhow::bail!("internal: no table for this value"),
    }
    Ok(())
}

/// A BlueGreen as printed: without server bookkeeping (managed fields).
pub fn printable(mut bg: BlueGreen) -> BlueGreen {
    bg.metadata.managed_fields = None;
    bg
}

/// Prints an error and returns `code` (for failures with their own exit code).
pub fn fail(code: u8, message: impl std::fmt::Display) -> anyhow::Result<ExitCode> {
    eprintln!("error: {message}");
    Ok(ExitCode::from(code))
}

/// Parses `--timeout` values: `90s`, `5m`, `1h30m`.
pub fn parse_timeout(s: &str) -> Result<Duration, String> {
    s.parse::<teal_api::Duration>()
        .map(|d| d.std())
        .map_err(|e| format!("{e} (examples: 90s, 5m, 1h30m)"))
}

/// `5s`, `3m`, `2h`, `4d`: how long ago `ms` was.
pub fn ago(ms: i64) -> String {
    let s = ((now_ms() - ms) / 1000).max(0);
    match s {
        0..120 => format!("{s}s"),
        120..7200 => format!("{}m", s / 60),
        7200..172_800 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// A table with left-aligned columns.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}   ", w = widths[i]));
            }
        }
        s.trim_end().to_string()
    };
    let mut out = line(header.to_vec());
    out.push('\n');
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    out
}
