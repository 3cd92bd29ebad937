//! Runs the app's replicas for each color: starts them on free loopback
//! ports, checks their health, restarts the ones that exit, and stops them
//! with SIGTERM, then SIGKILL after the grace period.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
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
}

impl Supervisor {
    /// `changed` receives a color whenever one of its replicas changes health.
    pub fn new(
        app: AppSpec,
        log_dir: PathBuf,
        changed: mpsc::UnboundedSender<Color>,
    ) -> Supervisor {
        Supervisor {
            app,
            log_dir,
            groups: Mutex::new(BTreeMap::new()),
            changed,
        }
    }

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

    /// Takes over replicas that outlived an earlier daemon (found alive in
    /// the state file); they are health-checked and stopped like our own.
    pub fn adopt(&self, record: &GroupRecord) {
        let mut group = Group {
            color: record.color,
            revision: record.revision.clone(),
            replicas: Vec::new(),
        };
        for r in &record.replicas {
            group.replicas.push(self.spawn_replica(
                record.color,
                &record.revision,
                r.index,
                Some((r.pid, r.port)),
            ));
        }
        self.groups
            .lock()
            .expect("groups")
            .insert(record.color, group);
        let _ = self.changed.send(record.color);
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
        adopt: Option<(u32, u16)>,
    ) -> Replica {
        let state = Arc::new(ReplicaState::default());
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

fn start(ctx: &ReplicaCtx, port: u16) -> std::io::Result<tokio::process::Child> {
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

fn alive(pid: u32) -> bool {
    pid != 0 && kill(Pid::from_raw(pid as i32), None).is_ok()
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

async fn run_replica(ctx: ReplicaCtx, mut stop: watch::Receiver<bool>, adopt: Option<(u32, u16)>) {
    let h = &ctx.app.health;
    let grace = ctx.app.stop_grace_period.std();
    let mut consecutive_crashes = 0u32;
    let mut adopt = adopt;
    loop {
        // Start (or take over) the process.
        let (mut proc, port) = match adopt.take() {
            Some((pid, port)) if alive(pid) => (Proc::Adopted(pid), port),
            _ => {
                let started = free_port().and_then(|port| start(&ctx, port).map(|c| (c, port)));
                match started {
                    Ok((child, port)) => (Proc::Child(child), port),
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
        ctx.state.pid.store(proc.pid(), Ordering::SeqCst);
        ctx.state.port.store(u32::from(port), Ordering::SeqCst);
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
                    if probe(port, &h.path, h.timeout.std()).await {
                        passes += 1;
                        fails = 0;
                        if passes >= h.healthy_threshold {
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
                }
            }
        };
        // The process exited on its own.
        ctx.set_healthy(false);
        ctx.state.pid.store(0, Ordering::SeqCst);
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
