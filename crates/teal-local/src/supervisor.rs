//! Runs the app's replicas for each color: starts them on free loopback
//! ports, checks their health, restarts the ones that exit, and stops them
//! with SIGTERM, then SIGKILL after the grace period.
//!
//! Every process started gets two environment variables: [`OWNER_ENV`] (the
//! state directory of the daemon that started it) and [`REPLICA_ENV`] (an id
//! unique to that start). A restarted daemon finds every process it or an
//! earlier daemon started by them, whether or not the state file caught its
//! pid: it adopts the ones the state file names (after checking the id, so a
//! reused pid is never taken for a replica) and stops the others.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use teal_core::Color;
use teal_core::release::ColorStatus;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::config::AppSpec;

/// Consecutive exits without becoming healthy that mark a crash loop.
const CRASH_LOOP_EXITS: u32 = 3;

/// Environment variable naming the state directory of the daemon that
/// started a process.
pub const OWNER_ENV: &str = "TEAL_STATE_DIR";
/// Environment variable with an id unique to each process start.
pub const REPLICA_ENV: &str = "TEAL_REPLICA_ID";

/// What a revision runs: the app's command unless it overrides it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RevisionSpec {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
}

/// A running replica as recorded in the state file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaRecord {
    pub index: u32,
    pub pid: u32,
    pub port: u16,
    /// The process's [`REPLICA_ENV`]; empty in state files written before
    /// ids existed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
}

/// The replicas of one color as recorded in the state file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupRecord {
    pub color: Color,
    pub revision: RevisionSpec,
    pub replicas: Vec<ReplicaRecord>,
}

/// Live state of one replica, shared with its task.
#[derive(Default)]
struct ReplicaState {
    healthy: AtomicBool,
    pid: AtomicU32,
    port: AtomicU32,
    restarts: AtomicU32,
    failure: Mutex<Option<String>>,
    /// [`REPLICA_ENV`] of the current process.
    id: Mutex<String>,
    /// A process taken over from an earlier daemon, not yet probed: its
    /// readiness is not known yet (see [`Supervisor::settled`]).
    adopting: AtomicBool,
}

struct Replica {
    index: u32,
    state: Arc<ReplicaState>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// One color's replicas of one revision.
pub struct Group {
    pub color: Color,
    pub revision: RevisionSpec,
    replicas: Vec<Replica>,
}

impl Group {
    /// Stops every replica (SIGTERM, then SIGKILL after the grace period)
    /// and waits until they are gone.
    pub async fn stop(self) {
        for r in &self.replicas {
            let _ = r.stop.send(true);
        }
        for r in self.replicas {
            let _ = r.task.await;
        }
    }
}

/// Per-replica view for `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaView {
    pub index: u32,
    pub pid: u32,
    pub port: u16,
    pub healthy: bool,
    pub restarts: u32,
}

pub struct Supervisor {
    app: AppSpec,
    log_dir: PathBuf,
    groups: Mutex<BTreeMap<Color, Group>>,
    changed: mpsc::UnboundedSender<Color>,
    ids: Arc<Ids>,
}

/// Hands out replica ids: this supervisor's random prefix and a counter.
struct Ids {
    owner: String,
    prefix: String,
    next: AtomicU32,
}

impl Ids {
    fn next(&self) -> String {
        format!(
            "{}-{}",
            self.prefix,
            self.next.fetch_add(1, Ordering::SeqCst)
        )
    }

    fn ours(&self, id: &str) -> bool {
        id.strip_prefix(&self.prefix)
            .is_some_and(|rest| rest.starts_with('-'))
    }
}

/// A process found by [`Supervisor::strays`] or [`Supervisor::leftovers`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stray {
    pub pid: u32,
    pub id: String,
}

impl Supervisor {
    /// `changed` receives a color whenever one of its replicas changes
    /// health or process. The processes are marked as the log folder's
    /// (see [`Supervisor::owned_by`]).
    pub fn new(
        app: AppSpec,
        log_dir: PathBuf,
        changed: mpsc::UnboundedSender<Color>,
    ) -> Supervisor {
        let owner = std::fs::canonicalize(&log_dir).unwrap_or_else(|_| log_dir.clone());
        let prefix = crate::daemon::random_token()
            .map(|t| t[..16].to_string())
            .unwrap_or_else(|_| format!("{}", std::process::id()));
        Supervisor {
            app,
            log_dir,
            groups: Mutex::new(BTreeMap::new()),
            changed,
            ids: Arc::new(Ids {
                owner: owner.to_string_lossy().into_owned(),
                prefix,
                next: AtomicU32::new(0),
            }),
        }
    }

    /// Marks the processes as started for the daemon of `state_dir`.
    pub fn owned_by(mut self, state_dir: &Path) -> Supervisor {
        let owner = std::fs::canonicalize(state_dir).unwrap_or_else(|_| state_dir.to_path_buf());
        let ids = Arc::get_mut(&mut self.ids).expect("no replica started yet");
        ids.owner = owner.to_string_lossy().into_owned();
        self
    }

    /// Processes an earlier daemon started for this state directory whose
    /// replica id is not in `keep`: the ones nobody tracks. This
    /// supervisor's own processes are never strays.
    pub fn strays(&self, keep: &BTreeSet<String>) -> Vec<Stray> {
        marked_processes(&self.ids.owner)
            .into_iter()
            .filter(|s| !keep.contains(&s.id) && !self.ids.ours(&s.id))
            .collect()
    }

    /// Every process started for this state directory, this supervisor's
    /// own included: after [`Supervisor::shutdown`], what is left behind.
    pub fn leftovers(&self) -> Vec<Stray> {
        marked_processes(&self.ids.owner)
    }

    /// Stops `strays` (SIGTERM to their group, SIGKILL after the grace
    /// period); the future ends once they are gone.
    pub fn stop_strays(
        &self,
        strays: Vec<Stray>,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let grace = self.app.stop_grace_period.std();
        async move { stop_all(strays, grace).await }
    }
}

async fn stop_all(strays: Vec<Stray>, grace: Duration) {
    {
        let mut stops = tokio::task::JoinSet::new();
        for s in strays {
            tracing::warn!(
                pid = s.pid,
                id = %s.id,
                "stopping a process of this state directory that no replica owns"
            );
            stops.spawn(async move { terminate(&mut Proc::Adopted(s.pid), grace).await });
        }
        while stops.join_next().await.is_some() {}
    }
}

impl Supervisor {
    /// Runs `revision` in `color` with `replicas` replicas. Replicas of an
    /// earlier revision in that color are returned for the caller to stop.
    pub fn deploy(&self, color: Color, revision: &RevisionSpec, replicas: u32) -> Option<Group> {
        let mut group = Group {
            color,
            revision: revision.clone(),
            replicas: Vec::new(),
        };
        for index in 0..replicas {
            group
                .replicas
                .push(self.spawn_replica(color, revision, index, None));
        }
        let old = self.groups.lock().expect("groups").insert(color, group);
        let _ = self.changed.send(color);
        old
    }

    /// Takes over replicas that outlived an earlier daemon (named in the
    /// state file, still running, and started for this replica): they are
    /// health-checked and stopped like our own. Replicas `0..replicas` the
    /// record lacks, or whose process is gone, are started. Returns the ids
    /// of the processes taken over; records at or beyond `replicas` are not
    /// taken over.
    pub fn adopt(&self, record: &GroupRecord, replicas: u32) -> BTreeSet<String> {
        let mut group = Group {
            color: record.color,
            revision: record.revision.clone(),
            replicas: Vec::new(),
        };
        let mut kept = BTreeSet::new();
        for index in 0..replicas {
            let found = record
                .replicas
                .iter()
                .find(|r| r.index == index && owned(r.pid, &self.ids.owner, &r.id));
            let adopt = found.map(|r| {
                kept.insert(r.id.clone());
                Adopt {
                    pid: r.pid,
                    port: r.port,
                    id: r.id.clone(),
                }
            });
            group
                .replicas
                .push(self.spawn_replica(record.color, &record.revision, index, adopt));
        }
        kept.remove("");
        self.groups
            .lock()
            .expect("groups")
            .insert(record.color, group);
        let _ = self.changed.send(record.color);
        kept
    }

    /// Resizes `color`; removed replicas are returned for the caller to stop.
    pub fn scale(&self, color: Color, replicas: u32) -> Option<Group> {
        let mut groups = self.groups.lock().expect("groups");
        let group = groups.get_mut(&color)?;
        let current = group.replicas.len() as u32;
        let mut removed = None;
        if replicas > current {
            for index in current..replicas {
                let r = self.spawn_replica(color, &group.revision.clone(), index, None);
                group.replicas.push(r);
            }
        } else if replicas < current {
            let gone = group.replicas.split_off(replicas as usize);
            removed = Some(Group {
                color,
                revision: group.revision.clone(),
                replicas: gone,
            });
        }
        let _ = self.changed.send(color);
        removed
    }

    /// Removes `color`'s replicas from service; the caller stops them (after
    /// draining traffic).
    pub fn retire(&self, color: Color) -> Option<Group> {
        let g = self.groups.lock().expect("groups").remove(&color);
        let _ = self.changed.send(color);
        g
    }

    /// Readiness of `color` as the state machine wants it.
    pub fn status(&self, color: Color) -> ColorStatus {
        let groups = self.groups.lock().expect("groups");
        let Some(g) = groups.get(&color) else {
            return ColorStatus {
                color,
                revision: None,
                ready_replicas: 0,
                failure: None,
            };
        };
        let ready = g
            .replicas
            .iter()
            .filter(|r| r.state.healthy.load(Ordering::SeqCst))
            .count() as u32;
        let failure = g
            .replicas
            .iter()
            .find_map(|r| r.state.failure.lock().expect("failure").clone());
        ColorStatus {
            color,
            revision: Some(g.revision.name.clone()),
            ready_replicas: ready,
            failure,
        }
    }

    /// False while a process of `color` taken over from an earlier daemon
    /// has not been probed yet: until then its readiness says nothing (it
    /// reads 0 replicas ready, which after a cutover would look like a
    /// color that lost them all).
    pub fn settled(&self, color: Color) -> bool {
        let groups = self.groups.lock().expect("groups");
        groups.get(&color).is_none_or(|g| {
            g.replicas
                .iter()
                .all(|r| !r.state.adopting.load(Ordering::SeqCst))
        })
    }

    /// Addresses of `color`'s healthy replicas.
    pub fn endpoints(&self, color: Color) -> Vec<SocketAddr> {
        let groups = self.groups.lock().expect("groups");
        groups
            .get(&color)
            .map(|g| {
                g.replicas
                    .iter()
                    .filter(|r| r.state.healthy.load(Ordering::SeqCst))
                    .map(|r| {
                        SocketAddr::from((
                            [127, 0, 0, 1],
                            r.state.port.load(Ordering::SeqCst) as u16,
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn replicas(&self, color: Color) -> Vec<ReplicaView> {
        let groups = self.groups.lock().expect("groups");
        groups
            .get(&color)
            .map(|g| {
                g.replicas
                    .iter()
                    .map(|r| ReplicaView {
                        index: r.index,
                        pid: r.state.pid.load(Ordering::SeqCst),
                        port: r.state.port.load(Ordering::SeqCst) as u16,
                        healthy: r.state.healthy.load(Ordering::SeqCst),
                        restarts: r.state.restarts.load(Ordering::SeqCst),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// What runs now, for the state file.
    pub fn records(&self) -> Vec<GroupRecord> {
        let groups = self.groups.lock().expect("groups");
        groups
            .values()
            .map(|g| GroupRecord {
                color: g.color,
                revision: g.revision.clone(),
                replicas: g
                    .replicas
                    .iter()
                    .map(|r| ReplicaRecord {
                        index: r.index,
                        pid: r.state.pid.load(Ordering::SeqCst),
                        port: r.state.port.load(Ordering::SeqCst) as u16,
                        id: r.state.id.lock().expect("id").clone(),
                    })
                    .filter(|r| r.pid != 0)
                    .collect(),
            })
            .collect()
    }

    /// Stops everything.
    pub async fn shutdown(&self) {
        let groups: Vec<Group> = std::mem::take(&mut *self.groups.lock().expect("groups"))
            .into_values()
            .collect();
        for g in groups {
            g.stop().await;
        }
    }

    fn spawn_replica(
        &self,
        color: Color,
        rev: &RevisionSpec,
        index: u32,
        adopt: Option<Adopt>,
    ) -> Replica {
        let state = Arc::new(ReplicaState::default());
        if let Some(a) = &adopt {
            // Known at once, so that the state file never misses a
            // process taken over, however soon it is saved.
            state.pid.store(a.pid, Ordering::SeqCst);
            state.port.store(u32::from(a.port), Ordering::SeqCst);
            *state.id.lock().expect("id") = a.id.clone();
            state.adopting.store(true, Ordering::SeqCst);
        }
        let (stop, stop_rx) = watch::channel(false);
        let ctx = ReplicaCtx {
            app: self.app.clone(),
            rev: rev.clone(),
            color,
            index,
            log: self
                .log_dir
                .join(format!("{color}-{}-{index}.log", sanitize(&rev.name))),
            state: state.clone(),
            changed: self.changed.clone(),
            ids: self.ids.clone(),
        };
        let task = tokio::spawn(run_replica(ctx, stop_rx, adopt));
        Replica {
            index,
            state,
            stop,
            task,
        }
    }
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

struct ReplicaCtx {
    app: AppSpec,
    rev: RevisionSpec,
    color: Color,
    index: u32,
    log: PathBuf,
    state: Arc<ReplicaState>,
    changed: mpsc::UnboundedSender<Color>,
    ids: Arc<Ids>,
}

/// A process to take over instead of starting one.
struct Adopt {
    pid: u32,
    port: u16,
    id: String,
}

impl ReplicaCtx {
    fn set_healthy(&self, healthy: bool) {
        if self.state.healthy.swap(healthy, Ordering::SeqCst) != healthy {
            tracing::info!(color = %self.color, revision = %self.rev.name, replica = self.index, healthy, "replica health changed");
            let _ = self.changed.send(self.color);
        }
    }

    fn set_failure(&self, failure: Option<String>) {
        let mut f = self.state.failure.lock().expect("failure");
        if *f != failure {
            *f = failure;
            drop(f);
            let _ = self.changed.send(self.color);
        }
    }
}

enum Proc {
    Child(tokio::process::Child),
    Adopted(u32),
}

impl Proc {
    fn pid(&self) -> u32 {
        match self {
            Proc::Child(c) => c.id().unwrap_or(0),
            Proc::Adopted(p) => *p,
        }
    }
}

fn free_port() -> std::io::Result<u16> {
    let l = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    Ok(l.local_addr()?.port())
}

fn start(ctx: &ReplicaCtx, port: u16, id: &str) -> std::io::Result<tokio::process::Child> {
    let argv = ctx.rev.command.as_ref().unwrap_or(&ctx.app.command);
    let subst = |s: &String| {
        s.replace("{port}", &port.to_string())
            .replace("{color}", ctx.color.as_str())
            .replace("{revision}", &ctx.rev.name)
    };
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&ctx.log)?;
    let mut cmd = tokio::process::Command::new(subst(&argv[0]));
    cmd.args(argv[1..].iter().map(subst))
        .envs(&ctx.app.env)
        .envs(&ctx.rev.env)
        .env("PORT", port.to_string())
        .env("TEAL_COLOR", ctx.color.as_str())
        .env("TEAL_REVISION", &ctx.rev.name)
        .env(OWNER_ENV, &ctx.ids.owner)
        .env(REPLICA_ENV, id)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .kill_on_drop(false);
    if let Some(dir) = &ctx.app.workdir {
        cmd.current_dir(dir);
    }
    cmd.spawn()
}

/// Whether `pid` runs (a zombie, dead but not yet reaped by its parent,
/// does not).
fn alive(pid: u32) -> bool {
    if pid == 0 || kill(Pid::from_raw(pid as i32), None).is_err() {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses and
        // may itself hold any character.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X'),
        Err(_) => true,
    }
}

/// A process's environment as it was started.
fn environ(pid: u32) -> Option<BTreeMap<String, String>> {
    let bytes = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    Some(
        bytes
            .split(|b| *b == 0)
            .filter_map(|kv| {
                let kv = std::str::from_utf8(kv).ok()?;
                let (k, v) = kv.split_once('=')?;
                Some((k.to_string(), v.to_string()))
            })
            .collect(),
    )
}

/// Whether `pid` runs and is the process started as replica `id` for
/// `owner`. Without an id (an older state file) a running pid is taken at
/// its word.
fn owned(pid: u32, owner: &str, id: &str) -> bool {
    if !alive(pid) {
        return false;
    }
    if id.is_empty() {
        return true;
    }
    environ(pid).is_some_and(|env| {
        env.get(OWNER_ENV).map(String::as_str) == Some(owner)
            && env.get(REPLICA_ENV).map(String::as_str) == Some(id)
    })
}

/// Every running process started for `owner`, with its replica id.
fn marked_processes(owner: &str) -> Vec<Stray> {
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter_map(|pid| {
            let env = environ(pid)?;
            if env.get(OWNER_ENV).map(String::as_str) != Some(owner) || !alive(pid) {
                return None;
            }
            Some(Stray {
                pid,
                id: env.get(REPLICA_ENV).cloned().unwrap_or_default(),
            })
        })
        .collect()
}

/// Signals the replica's process group (it leads one), so helpers it
/// started (e.g. under `sh -c`) stop with it.
fn signal_group(pid: u32, sig: Signal) {
    if kill(Pid::from_raw(-(pid as i32)), sig).is_err() {
        let _ = kill(Pid::from_raw(pid as i32), sig);
    }
}

async fn terminate(proc: &mut Proc, grace: Duration) {
    let pid = proc.pid();
    if pid == 0 {
        return;
    }
    signal_group(pid, Signal::SIGTERM);
    match proc {
        Proc::Child(child) => {
            if tokio::time::timeout(grace, child.wait()).await.is_err() {
                tracing::warn!(
                    pid,
                    "replica ignored SIGTERM for {grace:?}; sending SIGKILL"
                );
                signal_group(pid, Signal::SIGKILL);
                let _ = child.kill().await;
            }
        }
        Proc::Adopted(pid) => {
            let deadline = tokio::time::Instant::now() + grace;
            while alive(*pid) && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if alive(*pid) {
                signal_group(*pid, Signal::SIGKILL);
            }
        }
    }
}

/// One HTTP health check: true for a 2xx answer within the timeout.
pub async fn probe(port: u16, path: &str, timeout: Duration) -> bool {
    let check = async {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: teal-health\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = [0u8; 16];
        let mut n = 0;
        while n < 12 {
            let m = s.read(&mut buf[n..]).await.ok()?;
            if m == 0 {
                break;
            }
            n += m;
        }
        let head = std::str::from_utf8(&buf[..n]).ok()?;
        Some(head.starts_with("HTTP/1.") && head.get(9..10) == Some("2"))
    };
    matches!(tokio::time::timeout(timeout, check).await, Ok(Some(true)))
}

async fn run_replica(ctx: ReplicaCtx, mut stop: watch::Receiver<bool>, adopt: Option<Adopt>) {
    let h = &ctx.app.health;
    let grace = ctx.app.stop_grace_period.std();
    let mut consecutive_crashes = 0u32;
    let mut adopt = adopt;
    loop {
        // Start (or take over) the process.
        let (mut proc, port, id) = match adopt.take() {
            Some(a) if alive(a.pid) => (Proc::Adopted(a.pid), a.port, a.id),
            _ => {
                if ctx.state.adopting.swap(false, Ordering::SeqCst) {
                    // The process to take over is gone: a new one is started.
                    ctx.state.pid.store(0, Ordering::SeqCst);
                    let _ = ctx.changed.send(ctx.color);
                }
                let id = ctx.ids.next();
                let started =
                    free_port().and_then(|port| start(&ctx, port, &id).map(|c| (c, port)));
                match started {
                    Ok((child, port)) => (Proc::Child(child), port, id),
                    Err(e) => {
                        let argv = ctx.rev.command.as_ref().unwrap_or(&ctx.app.command);
                        ctx.set_failure(Some(format!("cannot start {:?}: {e}", argv[0])));
                        if *stop.borrow() {
                            return;
                        }
                        tokio::select! {
                            _ = stop.changed() => return,
                            _ = tokio::time::sleep(Duration::from_secs(2)) => continue,
                        }
                    }
                }
            }
        };
        *ctx.state.id.lock().expect("id") = id;
        ctx.state.pid.store(proc.pid(), Ordering::SeqCst);
        ctx.state.port.store(u32::from(port), Ordering::SeqCst);
        // The engine saves the state file on every change: the new pid is
        // recorded at once.
        let _ = ctx.changed.send(ctx.color);
        let (mut passes, mut fails) = (0u32, 0u32);
        let mut ticker = tokio::time::interval(h.interval.std());
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let exit = loop {
            let waited = async {
                match &mut proc {
                    Proc::Child(c) => c
                        .wait()
                        .await
                        .map(|s| s.to_string())
                        .unwrap_or_else(|e| e.to_string()),
                    Proc::Adopted(_) => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = stop.changed() => {
                    ctx.set_healthy(false);
                    terminate(&mut proc, grace).await;
                    ctx.state.pid.store(0, Ordering::SeqCst);
                    return;
                }
                status = waited => break status,
                _ = ticker.tick() => {
                    if let Proc::Adopted(pid) = proc && !alive(pid) {
                        break "exited (adopted process)".to_string();
                    }
                    let passed = probe(port, &h.path, h.timeout.std()).await;
                    // A process taken over was serving under the earlier
                    // daemon: its first passing probe makes it ready again.
                    let adopted = ctx.state.adopting.swap(false, Ordering::SeqCst);
                    if passed {
                        passes += 1;
                        fails = 0;
                        if passes >= h.healthy_threshold || adopted {
                            consecutive_crashes = 0;
                            ctx.set_failure(None);
                            ctx.set_healthy(true);
                        }
                    } else {
                        fails += 1;
                        passes = 0;
                        if fails >= h.unhealthy_threshold {
                            ctx.set_healthy(false);
                        }
                    }
                    if adopted {
                        let _ = ctx.changed.send(ctx.color);
                    }
                }
            }
        };
        // The process exited on its own.
        ctx.set_healthy(false);
        ctx.state.pid.store(0, Ordering::SeqCst);
        let _ = ctx.changed.send(ctx.color);
        ctx.state.restarts.fetch_add(1, Ordering::SeqCst);
        consecutive_crashes += 1;
        tracing::warn!(color = %ctx.color, revision = %ctx.rev.name, replica = ctx.index, "replica {exit}; restarting");
        if consecutive_crashes >= CRASH_LOOP_EXITS {
            ctx.set_failure(Some(format!(
                "replica {} {exit} {consecutive_crashes} times in a row without becoming healthy (log: {})",
                ctx.index,
                ctx.log.display()
            )));
        }
        let backoff = Duration::from_millis(100 * 2u64.pow(consecutive_crashes.min(6)))
            .min(Duration::from_secs(5));
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
    }
}
