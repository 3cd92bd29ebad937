//! The local runtime: one task owns the release state machine, carries out
//! its actions with the supervisor and the router, and feeds back what it
//! observes. Everything else talks to it through an [`Engine`] handle.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use teal_core::Color;
use teal_core::analysis::Run;
use teal_core::hooks::{HookKind, HookResult};
use teal_core::release::{
    Action, Command, Event, Input, Machine, Millis, Phase, Record, Release, Routing, Stage,
};
use teal_router::{CookieMatch, HeaderMatch, PreviewRoute, RouteTable, Router, RouterConfig};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::analysis::{self, Report};
use crate::config::Config;
use crate::hooks::HookContext;
use crate::state::{self, SavedState};
use crate::supervisor::{GroupRecord, ReplicaView, RevisionSpec, Supervisor};
use teal_analysis::QueryVars;

/// How many recent events `status` shows.
const EVENT_LOG: usize = 50;

/// Something the engine tells its listeners as it happens.
#[derive(Debug, Clone)]
pub enum Notice {
    Event(Event),
    /// Production traffic moved to `to`: `swap` is how long installing the
    /// new route table took; `returned` is when it had returned.
    Switched {
        from: Color,
        to: Color,
        revision: String,
        generation: u64,
        swap: Duration,
        returned: Instant,
    },
}

/// An event with the time it happened (ms since the Unix epoch).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventRecord {
    pub at: Millis,
    #[serde(flatten)]
    pub event: Event,
}

/// What `teal local status` shows.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub phase: String,
    pub active: Option<ColorView>,
    pub preview: Option<ColorView>,
    pub desired: String,
    pub release: Option<Release>,
    pub history: Vec<Record>,
    pub generation: u64,
    pub colors: BTreeMap<Color, ColorDetail>,
    pub analysis: Option<AnalysisView>,
    pub events: Vec<EventRecord>,
    /// The latest answer of every webhook, by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub hooks: BTreeMap<String, HookResult>,
    /// Delivery figures per notifier (never its URL).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub notifications: BTreeMap<String, teal_notify::DeliveryStats>,
    pub listen: String,
    pub admin: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ColorView {
    pub color: Color,
    pub revision: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ColorDetail {
    pub revision: Option<String>,
    pub ready_replicas: u32,
    pub replicas: Vec<ReplicaView>,
    pub requests: u64,
    pub server_errors: u64,
    pub in_flight: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    /// Retired from traffic and draining: its processes stop once the
    /// drain ends.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub draining: bool,
    /// How the last drain of this color ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_drain: Option<DrainRecord>,
}

/// A drain of a retired color that has ended, and its processes stopped.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DrainRecord {
    /// When the drain ended and the processes had stopped.
    pub ended_at: Millis,
    #[serde(flatten)]
    pub report: teal_router::DrainReport,
}

/// Drains under way and ended, per color; shared with the drain tasks.
#[derive(Default)]
struct Drains {
    running: BTreeMap<Color, u32>,
    last: BTreeMap<Color, DrainRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisView {
    pub stage: Stage,
    pub revision: String,
    pub run: Run,
}

/// Errors the engine reports to callers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// The request does not apply now (e.g. nothing waits for promotion).
    #[error("{0}")]
    Conflict(String),
    /// The request itself is wrong.
    #[error("{0}")]
    Invalid(String),
    #[error("the engine has stopped")]
    Stopped,
}

enum Msg {
    Deploy(RevisionSpec, oneshot::Sender<Result<(), EngineError>>),
    Command(Command, oneshot::Sender<Result<(), EngineError>>),
    Shutdown(oneshot::Sender<()>),
}

/// A handle on a running engine. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    tx: mpsc::UnboundedSender<Msg>,
    /// Restored from a state file that routed production traffic.
    resumed_routing: bool,
    pub router: Router,
    status: watch::Receiver<Arc<Status>>,
    notices: broadcast::Sender<Notice>,
}

fn now_ms() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0)
}

/// Checks a revision name: what `deploy` accepts.
pub fn validate_revision_name(name: &str) -> Result<(), EngineError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(EngineError::Invalid(format!(
            "revision {name:?}: use 1 to 63 letters, digits, '.', '-' or '_'"
        )))
    }
}

impl Engine {
    /// Starts the engine. With a state file from an earlier run, it takes
    /// over where that run stopped: surviving replicas are adopted, the live
    /// color keeps serving, a release in progress continues.
    pub fn start(config: Config, router_config: RouterConfig) -> std::io::Result<Engine> {
        std::fs::create_dir_all(config.state_dir.join("logs"))?;
        let notifier = crate::hooks::notifier(&config.notifications, std::path::Path::new("."))
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let router = Router::unconfigured(router_config);
        let (changed_tx, changed_rx) = mpsc::unbounded_channel();
        let supervisor = Supervisor::new(
            config.app.clone(),
            config.state_dir.join("logs"),
            changed_tx.clone(),
        )
        .owned_by(&config.state_dir);
        let saved = state::load(&state::path(&config.state_dir))?;
        let mut queue = VecDeque::new();
        let mut revisions = BTreeMap::new();
        // Processes of an earlier daemon taken over as replicas.
        let mut kept = BTreeSet::new();
        let machine = match saved {
            Some(s) => {
                let SavedState {
                    mut machine,
                    revisions: revs,
                    groups,
                } = s;
                machine.policy = config.policy();
                revisions = revs;
                // What the machine wants running is what runs: a recorded
                // group of the wanted revision is taken over and completed
                // to the wanted size; a color without one is deployed.
                // Everything else an earlier daemon started is stopped
                // below.
                for (color, req) in machine.requested.clone() {
                    let Some(rev) = req.revision else { continue };
                    if req.replicas == 0 {
                        continue;
                    }
                    match groups
                        .iter()
                        .find(|g| g.color == color && g.revision.name == rev)
                    {
                        Some(g) => kept.extend(supervisor.adopt(g, req.replicas)),
                        None => queue.push_back(Action::Deploy {
                            color,
                            revision: rev,
                            replicas: req.replicas,
                        }),
                    }
                }
                resume_actions(&machine, &mut queue);
                tracing::info!(phase = %machine.phase_name(), "restored state");
                machine
            }
            None => {
                let (m, actions) = Machine::new(config.policy(), config.revision.clone());
                revisions.insert(
                    config.revision.clone(),
                    RevisionSpec {
                        name: config.revision.clone(),
                        command: None,
                        env: BTreeMap::new(),
                    },
                );
                queue.extend(actions);
                m
            }
        };
        // Processes started for this state directory that no replica took
        // over: started before their pid was saved, replaced or retired
        // while the earlier daemon died, or not wanted any more.
        let strays = supervisor.strays(&kept);
        let mut retiring = Vec::new();
        if !strays.is_empty() {
            tracing::warn!(
                count = strays.len(),
                "stopping processes an earlier daemon started and did not record"
            );
            retiring.push(tokio::spawn(supervisor.stop_strays(strays)));
        }
        let resumed_routing = machine.routing.is_some();
        let (status_tx, status_rx) = watch::channel(Arc::new(Status::default()));
        let (notices, _) = broadcast::channel(1024);
        let (tx, rx) = mpsc::unbounded_channel();
        let (reports_tx, reports_rx) = mpsc::unbounded_channel();
        let (hooks_tx, hooks_rx) = mpsc::unbounded_channel();
        let hook_context = HookContext {
            name: "local".into(),
            namespace: String::new(),
            hooks: config.webhooks.clone(),
        };
        let core = Core {
            notifier,
            hook_context,
            hook_round: None,
            hook_inputs: hooks_tx,
            hook_results: BTreeMap::new(),
            config,
            machine,
            revisions,
            supervisor,
            router: router.clone(),
            status: status_tx,
            notices: notices.clone(),
            events: VecDeque::new(),
            analysis: None,
            analysis_view: None,
            reports: reports_tx,
            table_generation: 0,
            retiring,
            drains: Arc::default(),
            nudge: changed_tx,
            restarts: BTreeMap::new(),
        };
        tokio::spawn(core.run(rx, changed_rx, reports_rx, hooks_rx, queue));
        Ok(Engine {
            tx,
            resumed_routing,
            router,
            status: status_rx,
            notices,
        })
    }

    /// Starts a release of `spec` (or returns why not).
    pub async fn deploy(&self, spec: RevisionSpec) -> Result<(), EngineError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Msg::Deploy(spec, tx))
            .map_err(|_| EngineError::Stopped)?;
        rx.await.map_err(|_| EngineError::Stopped)?
    }

    pub async fn command(&self, cmd: Command) -> Result<(), EngineError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Msg::Command(cmd, tx))
            .map_err(|_| EngineError::Stopped)?;
        rx.await.map_err(|_| EngineError::Stopped)?
    }

    pub fn status(&self) -> Arc<Status> {
        self.status.borrow().clone()
    }

    /// A receiver that changes whenever the status does.
    pub fn watch(&self) -> watch::Receiver<Arc<Status>> {
        self.status.clone()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Notice> {
        self.notices.subscribe()
    }

    /// Stops every replica and the engine. The state file stays, so the next
    /// start brings the live color back.
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Shutdown(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// Waits until the release of `revision` has ended and returns its
    /// record, or `None` if the engine stopped first.
    pub async fn wait_for_outcome(&self, revision: &str, since: Millis) -> Option<Record> {
        let mut w = self.watch();
        loop {
            {
                let s = w.borrow_and_update();
                if let Some(r) = s
                    .history
                    .iter()
                    .rev()
                    .find(|r| r.revision == revision && r.ended_at >= since)
                {
                    return Some(r.clone());
                }
            }
            if w.changed().await.is_err() {
                return None;
            }
        }
    }

    /// Whether the engine took over from an earlier run that routed
    /// production traffic (which it routes again once the live color's
    /// replicas are probed).
    pub fn resumed_routing(&self) -> bool {
        self.resumed_routing
    }

    /// Waits until production traffic is routed (the first color is ready).
    pub async fn wait_routed(&self) -> Option<()> {
        let mut w = self.watch();
        loop {
            if w.borrow_and_update().active.is_some() && w.borrow().generation > 0 {
                return Some(());
            }
            w.changed().await.ok()?;
        }
    }
}

/// Actions that re-establish a restored machine's side effects.
fn resume_actions(machine: &Machine, queue: &mut VecDeque<Action>) {
    if let Some(routing) = machine.routing {
        queue.push_back(Action::Route(routing));
    }
    let Some(r) = &machine.release else { return };
    if let Some(kind) = r.waiting_on
        && !r.phase.is_terminal()
    {
        queue.push_back(Action::RunHooks {
            kind,
            color: r.color,
            revision: r.revision.clone(),
        });
    }
    let stage = match r.phase {
        Phase::Previewing if machine.policy.pre_promotion_analysis && !r.rollback => {
            Some(Stage::PrePromotion)
        }
        Phase::PostPromotion if machine.policy.post_promotion_analysis && !r.held => {
            Some(Stage::PostPromotion)
        }
        _ => None,
    };
    if let Some(stage) = stage {
        queue.push_back(Action::StartAnalysis {
            stage,
            color: r.color,
            revision: r.revision.clone(),
        });
    }
}

struct Core {
    notifier: teal_notify::Notifier,
    hook_context: HookContext,
    /// The running pre-rollout or confirm-promotion round.
    hook_round: Option<(HookKind, JoinHandle<()>)>,
    hook_inputs: mpsc::UnboundedSender<Input>,
    hook_results: BTreeMap<String, HookResult>,
    config: Config,
    machine: Machine,
    revisions: BTreeMap<String, RevisionSpec>,
    supervisor: Supervisor,
    router: Router,
    status: watch::Sender<Arc<Status>>,
    notices: broadcast::Sender<Notice>,
    events: VecDeque<EventRecord>,
    analysis: Option<JoinHandle<()>>,
    analysis_view: Option<AnalysisView>,
    reports: mpsc::UnboundedSender<Report>,
    table_generation: u64,
    retiring: Vec<JoinHandle<()>>,
    drains: Arc<std::sync::Mutex<Drains>>,
    /// Wakes the loop (as a health change of a color does) so that a status
    /// change made outside it is published.
    nudge: mpsc::UnboundedSender<Color>,
    /// Restarts seen per color and replica, to report new exits once.
    restarts: BTreeMap<(Color, u32), u32>,
}

impl Core {
    async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<Msg>,
        mut changed: mpsc::UnboundedReceiver<Color>,
        mut reports: mpsc::UnboundedReceiver<Report>,
        mut hook_rx: mpsc::UnboundedReceiver<Input>,
        mut queue: VecDeque<Action>,
    ) {
        self.execute(&mut queue);
        self.publish();
        loop {
            let deadline = self.machine.next_deadline().map(|d| {
                let wait = d.saturating_sub(now_ms());
                tokio::time::Instant::now() + Duration::from_millis(wait)
            });
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            let mut answer = None;
            tokio::select! {
                msg = rx.recv() => match msg {
                    None => break,
                    Some(Msg::Shutdown(done)) => {
                        self.stop().await;
                        let _ = done.send(());
                        return;
                    }
                    Some(Msg::Deploy(spec, reply)) => {
                        let r = self.deploy(spec, &mut queue);
                        answer = Some((reply, r));
                    }
                    Some(Msg::Command(cmd, reply)) => {
                        // Judged on what the colors run now, not on a health
                        // change still waiting in its channel.
                        for c in Color::ALL {
                            if self.supervisor.settled(c) {
                                let status = self.supervisor.status(c);
                                let _ = self.feed(Input::Observed(status), &mut queue);
                            }
                        }
                        let r = self.feed(Input::Command(cmd), &mut queue)
                            .map_err(|e| EngineError::Conflict(e.to_string()));
                        answer = Some((reply, r));
                    }
                },
                Some(color) = changed.recv() => {
                    // Coalesce bursts of health changes.
                    let mut colors = vec![color];
                    while let Ok(c) = changed.try_recv() {
                        if !colors.contains(&c) { colors.push(c); }
                    }
                    self.sync_router(&mut queue);
                    for c in colors {
                        self.report_exits(c, &mut queue);
                        // Replicas taken over from an earlier daemon are
                        // observed once probed, not as 0 ready before.
                        if self.supervisor.settled(c) {
                            let status = self.supervisor.status(c);
                            let _ = self.feed(Input::Observed(status), &mut queue);
                        }
                    }
                }
                Some(input) = hook_rx.recv() => {
                    if let Input::Hooks { results, .. } = &input {
                        for r in results {
                            self.hook_results.insert(r.name.clone(), r.clone());
                        }
                    }
                    let _ = self.feed(input, &mut queue);
                }
                Some(report) = reports.recv() => {
                    for r in &report.run.hooks {
                        self.hook_results.insert(r.name.clone(), r.clone());
                    }
                    self.analysis_view = Some(AnalysisView {
                        stage: report.stage,
                        revision: report.revision.clone(),
                        run: report.run,
                    });
                    if let Some(verdict) = report.verdict {
                        self.analysis = None;
                        let _ = self.feed(Input::Analysis { stage: report.stage, revision: report.revision, verdict }, &mut queue);
                    }
                }
                _ = sleep => {
                    let _ = self.feed(Input::Tick, &mut queue);
                }
            }
            self.execute(&mut queue);
            self.stop_stale_hook_round();
            self.save();
            self.publish();
            // A release or command is acknowledged once it is in the state
            // file (and the status): a daemon dying right after still
            // carries it out.
            if let Some((reply, r)) = answer {
                let _ = reply.send(r);
            }
        }
    }

    /// Ends a hook round the release no longer waits on.
    fn stop_stale_hook_round(&mut self) {
        let waiting = self.machine.release.as_ref().and_then(|r| r.waiting_on);
        if let Some((kind, h)) = &self.hook_round
            && (waiting != Some(*kind) || h.is_finished())
        {
            h.abort();
            self.hook_round = None;
        }
    }

    fn hook_payload(&self, revision: &str, color: Color) -> teal_notify::HookPayload {
        self.hook_context.payload(
            &self.machine.phase_name(),
            revision,
            self.machine.routing.map(|r| r.active),
            color,
        )
    }

    /// An event for every replica that exited since last looked: a crash
    /// of the live color is reported, not only restarted.
    fn report_exits(&mut self, color: Color, queue: &mut VecDeque<Action>) {
        let live = self.machine.routing.map(|r| r.active) == Some(color);
        let revision = self.supervisor.status(color).revision.unwrap_or_default();
        for r in self.supervisor.replicas(color) {
            let seen = self
                .restarts
                .insert((color, r.index), r.restarts)
                .unwrap_or(0);
            if r.restarts > seen {
                let role = if live { "live" } else { "idle" };
                queue.push_back(Action::Event(Event {
                    kind: teal_core::release::EventKind::Degraded,
                    revision: revision.clone(),
                    message: format!(
                        "replica {} of the {role} color {color} ({revision}) exited and was restarted ({} restarts)",
                        r.index, r.restarts
                    ),
                }));
            }
        }
    }

    fn feed(
        &mut self,
        input: Input,
        queue: &mut VecDeque<Action>,
    ) -> Result<(), teal_core::release::Rejected> {
        let actions = self.machine.handle(now_ms(), input)?;
        queue.extend(actions);
        Ok(())
    }

    fn deploy(
        &mut self,
        spec: RevisionSpec,
        queue: &mut VecDeque<Action>,
    ) -> Result<(), EngineError> {
        validate_revision_name(&spec.name)?;
        if let Some(cmd) = &spec.command
            && cmd.first().is_none_or(|c| c.trim().is_empty())
        {
            return Err(EngineError::Invalid(
                "command: must name the program to run".into(),
            ));
        }
        if let Some(known) = self.revisions.get(&spec.name)
            && known != &spec
        {
            return Err(EngineError::Invalid(format!(
                "revision {} already exists with a different command or environment: give the new one another name",
                spec.name
            )));
        }
        if spec.name == self.machine.active.revision && !self.machine.in_progress() {
            return Err(EngineError::Conflict(format!(
                "revision {} is already live",
                spec.name
            )));
        }
        if spec.name == self.machine.desired {
            return Err(EngineError::Conflict(format!(
                "revision {} was released already (phase: {}): use `teal local retry` to release it again",
                spec.name,
                self.machine.phase_name()
            )));
        }
        self.revisions.insert(spec.name.clone(), spec.clone());
        self.feed(Input::Revision(spec.name), queue)
            .map_err(|e| EngineError::Conflict(e.to_string()))
    }

    /// Carries out queued actions; those that produce input (a confirmed
    /// switch) feed it back at once.
    fn execute(&mut self, queue: &mut VecDeque<Action>) {
        while let Some(action) = queue.pop_front() {
            tracing::debug!(?action, "executing");
            match action {
                Action::Deploy {
                    color,
                    revision,
                    replicas,
                } => {
                    let spec = self
                        .revisions
                        .get(&revision)
                        .cloned()
                        .unwrap_or(RevisionSpec {
                            name: revision.clone(),
                            command: None,
                            env: BTreeMap::new(),
                        });
                    if let Some(old) = self.supervisor.deploy(color, &spec, replicas) {
                        self.retiring.push(tokio::spawn(old.stop()));
                    }
                    self.sync_router(queue);
                }
                Action::Scale { color, replicas } => {
                    if let Some(removed) = self.supervisor.scale(color, replicas) {
                        self.retiring.push(tokio::spawn(removed.stop()));
                    }
                    self.sync_router(queue);
                }
                Action::Route(_) => self.sync_router(queue),
                Action::StartAnalysis {
                    stage,
                    color,
                    revision,
                } => self.start_analysis(stage, color, revision),
                Action::StopAnalysis => {
                    if let Some(h) = self.analysis.take() {
                        h.abort();
                    }
                }
                Action::Retire { color } => {
                    let group = self.supervisor.retire(color);
                    self.sync_router(queue);
                    let router = self.router.clone();
                    let timeout = self.config.drain_timeout.std();
                    let drains = self.drains.clone();
                    let nudge = self.nudge.clone();
                    *lock(&drains).running.entry(color).or_insert(0) += 1;
                    self.retiring.push(tokio::spawn(async move {
                        let report = router.drain(color, timeout).await;
                        tracing::info!(%color, ?report, "drained");
                        if let Some(g) = group {
                            g.stop().await;
                        }
                        let mut d = lock(&drains);
                        if let Some(n) = d.running.get_mut(&color) {
                            *n = n.saturating_sub(1);
                        }
                        d.last.insert(
                            color,
                            DrainRecord {
                                ended_at: now_ms(),
                                report,
                            },
                        );
                        drop(d);
                        let _ = nudge.send(color);
                    }));
                }
                Action::RunHooks {
                    kind,
                    color,
                    revision,
                } => {
                    if let Some((_, h)) = self.hook_round.take() {
                        h.abort();
                    }
                    let payload = self.hook_payload(&revision, color);
                    let h = self
                        .hook_context
                        .run_round(kind, payload, self.hook_inputs.clone());
                    self.hook_round = Some((kind, h));
                }
                Action::Event(e) => {
                    let color = self
                        .machine
                        .release
                        .as_ref()
                        .filter(|r| r.revision == e.revision)
                        .map(|r| r.color)
                        .unwrap_or(self.machine.active.color);
                    self.hook_context
                        .fire(&e, self.hook_payload(&e.revision, color));
                    let phase = self.machine.phase_name();
                    if let Some(n) = crate::hooks::notification(&e, "local", "", &phase, now_ms()) {
                        self.notifier.notify(&n);
                    }
                    if e.kind.is_warning() {
                        tracing::warn!(kind = ?e.kind, revision = %e.revision, "{}", e.message);
                    } else {
                        tracing::info!(kind = ?e.kind, revision = %e.revision, "{}", e.message);
                    }
                    self.events.push_back(EventRecord {
                        at: now_ms(),
                        event: e.clone(),
                    });
                    while self.events.len() > EVENT_LOG {
                        self.events.pop_front();
                    }
                    let _ = self.notices.send(Notice::Event(e));
                }
            }
        }
        self.retiring.retain(|h| !h.is_finished());
    }

    fn start_analysis(&mut self, stage: Stage, color: Color, revision: String) {
        if let Some(h) = self.analysis.take() {
            h.abort();
        }
        let spec = match stage {
            Stage::PrePromotion => self.config.analysis.pre_promotion.clone(),
            Stage::PostPromotion => self.config.analysis.post_promotion.clone(),
        };
        let Some(spec) = spec else { return };
        let vars = QueryVars {
            name: "local".into(),
            namespace: String::new(),
            color,
            revision,
            service: self.config.listen.to_string(),
        };
        self.analysis_view = None;
        let hooks = analysis::StageHooks {
            hooks: self.config.webhooks.clone(),
            payload: Some(self.hook_payload(&vars.revision, color)),
        };
        self.analysis = Some(tokio::spawn(analysis::run_stage(
            self.router.clone(),
            spec,
            stage,
            vars,
            hooks,
            self.reports.clone(),
        )));
    }

    /// Installs the route table the machine's routing and the healthy
    /// endpoints call for; confirms a switch of the live color.
    fn sync_router(&mut self, queue: &mut VecDeque<Action>) {
        let Some(routing) = self.machine.routing else {
            return;
        };
        let table = self.table(routing);
        let (_, current) = self.router.try_current();
        if current.as_ref() == Some(&table) {
            return;
        }
        let from = current.as_ref().map(|t| t.active);
        let started = Instant::now();
        match self.router.swap(table) {
            Ok(generation) => {
                let returned = Instant::now();
                self.table_generation = generation;
                if from != Some(routing.active) {
                    let revision = self.machine.active.revision.clone();
                    if let Some(from) = from {
                        let _ = self.notices.send(Notice::Switched {
                            from,
                            to: routing.active,
                            revision,
                            generation,
                            swap: returned - started,
                            returned,
                        });
                    }
                    // The router is in this process: the switch is
                    // complete when swap returns.
                    if let Ok(actions) = self.machine.handle(
                        now_ms(),
                        Input::Routed {
                            active: routing.active,
                        },
                    ) {
                        queue.extend(actions);
                    }
                }
            }
            Err(e) if current.is_none() => {
                // Start-up: no replica is healthy yet, so there is no table
                // to install. Expected on every start: not a warning.
                tracing::debug!("route table not installed yet: {e}");
            }
            Err(e) => {
                // Typically: the live color has no healthy replica right now.
                // Keep serving the previous table rather than none.
                tracing::warn!("route table not installed: {e}");
            }
        }
    }

    fn table(&self, routing: Routing) -> RouteTable {
        let mut endpoints = BTreeMap::new();
        for c in Color::ALL {
            let eps = self.supervisor.endpoints(c);
            if !eps.is_empty() {
                endpoints.insert(c, eps);
            }
        }
        let preview = routing.preview.and_then(|color| {
            endpoints.contains_key(&color).then(|| PreviewRoute {
                color,
                header: self.config.preview.header.as_ref().map(|h| HeaderMatch {
                    name: h.name.clone(),
                    value: h.value.clone(),
                }),
                cookie: self.config.preview.cookie.as_ref().map(|c| CookieMatch {
                    name: c.name.clone(),
                    value: c.value.clone(),
                }),
            })
        });
        RouteTable {
            active: routing.active,
            preview,
            endpoints,
        }
    }

    fn save(&self) {
        let s = SavedState {
            machine: self.machine.clone(),
            revisions: self.revisions.clone(),
            groups: self.supervisor.records(),
        };
        if let Err(e) = state::save(&state::path(&self.config.state_dir), &s) {
            tracing::error!("cannot save state: {e}");
        }
    }

    fn publish(&self) {
        let m = &self.machine;
        let mut colors = BTreeMap::new();
        let drains = lock(&self.drains);
        for c in Color::ALL {
            let st = self.supervisor.status(c);
            let stats = self.router.stats(c);
            colors.insert(
                c,
                ColorDetail {
                    revision: st.revision,
                    ready_replicas: st.ready_replicas,
                    replicas: self.supervisor.replicas(c),
                    requests: stats.requests(),
                    server_errors: stats.server_errors(),
                    in_flight: self.router.in_flight(c),
                    failure: st.failure,
                    draining: drains.running.get(&c).is_some_and(|n| *n > 0),
                    last_drain: drains.last.get(&c).cloned(),
                },
            );
        }
        drop(drains);
        let rev_of = |c: Color| {
            m.requested
                .get(&c)
                .and_then(|r| r.revision.clone())
                .unwrap_or_default()
        };
        let status = Status {
            phase: m.phase_name(),
            active: m.routing.map(|r| ColorView {
                color: r.active,
                revision: m.active.revision.clone(),
            }),
            preview: m.preview().map(|c| ColorView {
                color: c,
                revision: rev_of(c),
            }),
            desired: m.desired.clone(),
            release: m.release.clone(),
            history: m.history.clone(),
            generation: self.table_generation,
            colors,
            analysis: self.analysis_view.clone(),
            events: self.events.iter().cloned().collect(),
            hooks: self.hook_results.clone(),
            notifications: self.notifier.stats(),
            listen: self.config.listen.to_string(),
            admin: self.config.admin.to_string(),
        };
        self.status.send_replace(Arc::new(status));
    }

    async fn stop(&mut self) {
        if let Some(h) = self.analysis.take() {
            h.abort();
        }
        if let Some((_, h)) = self.hook_round.take() {
            h.abort();
        }
        self.save();
        self.supervisor.shutdown().await;
        for h in self.retiring.drain(..) {
            let _ = h.await;
        }
        // Nothing this daemon knows of runs now; anything still marked as
        // this state directory's would outlive it unknown.
        let left = self.supervisor.leftovers();
        if !left.is_empty() {
            tracing::warn!(count = left.len(), "stopping processes left behind");
            self.supervisor.stop_strays(left).await;
        }
        // Nothing runs any more: record that, keeping the machine, so the
        // next start brings the live color back instead of adopting pids.
        let s = SavedState {
            machine: self.machine.clone(),
            revisions: self.revisions.clone(),
            groups: Vec::<GroupRecord>::new(),
        };
        if let Err(e) = state::save(&state::path(&self.config.state_dir), &s) {
            tracing::error!("cannot save state: {e}");
        }
    }
}

fn lock(d: &std::sync::Mutex<Drains>) -> std::sync::MutexGuard<'_, Drains> {
    d.lock().unwrap_or_else(|e| e.into_inner())
}

/// Where the state file of a state directory is.
pub fn state_file(dir: &std::path::Path) -> PathBuf {
    state::path(dir)
}
