//! A control plane of a test's own, whose components the test kills, starts again and pauses.
//!
//! [`TestEnv::shared`] is one control plane for a whole test binary; breaking it would break
//! every other test in that binary. A fault test calls [`ControlPlane::start`] instead and gets
//! a private one, stopped when the value is dropped.
//!
//! # Design
//!
//! The components are started by the same `scripts/control-plane run` as the shared control
//! plane, so their flags, ports and certificates are defined in one place. The script keeps
//! each component's command line in a function (`start_component`) and, while it runs in the
//! foreground, reads lines `VERB COMPONENT` on the standard input this crate already holds
//! open to stop it at exit:
//!
//! - `kill` sends SIGKILL and leaves the component down;
//! - `start` runs it again with the same command line: kube-apiserver comes back on the same
//!   port with the same serving certificate and client CA, so clients (the controller, kubectl,
//!   the test's own `kube::Client`) reconnect with the kubeconfig they already have; etcd
//!   keeps its data directory. The answer comes once the component serves again (`/readyz`
//!   for the apiserver, `/health` for etcd);
//! - `restart` is `kill` then `start`;
//! - `pause` and `resume` send SIGSTOP and SIGCONT: a paused etcd accepts connections but
//!   answers nothing, which is what a stalled or partitioned etcd looks like to the apiserver.
//!
//! Each line is answered with one line (`ok VERB COMPONENT PID` or `error ...: REASON`).
//! Because the supervisor itself starts every process, it still stops all of them when the
//! test ends, however it ends (paused ones are resumed first so they see the signal).
//!
//! Two apiserver flags make etcd a witness the test can read after the fact:
//! `--storage-media-type=application/json` stores objects as JSON instead of protobuf, and
//! `--etcd-compaction-interval=0` turns off compaction, so every version of every object since
//! the start stays in etcd. [`ControlPlane::etcd_versions`] reads them through etcd's JSON
//! gateway: a complete history of one object that does not depend on the apiserver, its
//! watch cache or the watches its restarts drop.
//!
//! ```no_run
//! # async fn example() {
//! use teal_testenv::faults::{Component, ControlPlane};
//!
//! let cp = ControlPlane::start().await.unwrap();
//! let client = cp.env().client();
//! cp.restart(Component::KubeApiserver).await.unwrap();
//! cp.pause(Component::Etcd).await.unwrap();
//! cp.resume(Component::Etcd).await.unwrap();
//! # let _ = client;
//! # }
//! ```

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Deserialize;

use crate::{Error, TestEnv};

/// How long a component may take to serve again after `start` (a loaded two-core machine
/// needs up to a minute for the apiserver).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(180);

/// Apiserver flags of a private control plane (see the module documentation).
const APISERVER_FLAGS: [&str; 2] = [
    "--storage-media-type=application/json",
    "--etcd-compaction-interval=0",
];

/// One process of the control plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    Etcd,
    KubeApiserver,
    KubeControllerManager,
    KubeScheduler,
    Kwok,
}

impl Component {
    /// Its name in `scripts/control-plane` (and of its log, `logs/<name>.log`).
    pub fn name(self) -> &'static str {
        match self {
            Component::Etcd => "etcd",
            Component::KubeApiserver => "kube-apiserver",
            Component::KubeControllerManager => "kube-controller-manager",
            Component::KubeScheduler => "kube-scheduler",
            Component::Kwok => "kwok",
        }
    }
}

/// A private control plane; stopped (every component) when dropped.
pub struct ControlPlane {
    env: Arc<TestEnv>,
    etcd: String,
}

/// One stored version of an etcd key.
#[derive(Debug, Clone)]
pub struct Version {
    /// The etcd revision that wrote it.
    pub mod_revision: u64,
    /// The object as the apiserver stored it.
    pub value: serde_json::Value,
}

impl ControlPlane {
    /// Starts a private control plane and returns once it is ready.
    pub async fn start() -> Result<ControlPlane, Error> {
        let options: Vec<String> = APISERVER_FLAGS
            .iter()
            .map(|f| format!("--apiserver-arg={f}"))
            .collect();
        let env = tokio::task::spawn_blocking(move || TestEnv::start(&options))
            .await
            .map_err(|e| Error::io("starting the control plane", std::io::Error::other(e)))??;
        let ports_file = env.state_dir().join("ports");
        let ports = std::fs::read_to_string(&ports_file)
            .map_err(|e| Error::io(format!("reading {}", ports_file.display()), e))?;
        let port = ports
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix("etcd="))
            .ok_or_else(|| Error::Etcd(format!("no etcd port in {}", ports_file.display())))?;
        Ok(ControlPlane {
            etcd: format!("http://127.0.0.1:{port}"),
            env: Arc::new(env),
        })
    }

    /// The control plane as a [`TestEnv`]: clients, kubeconfig, kubectl, namespaces.
    pub fn env(&self) -> &TestEnv {
        &self.env
    }

    /// SIGKILLs `component`; it stays down until [`ControlPlane::start_again`]. Returns the
    /// pid it had.
    pub async fn kill(&self, component: Component) -> Result<u32, Error> {
        self.command("kill", component).await
    }

    /// Starts a killed `component` again with the same flags, ports and certificates, and
    /// returns its new pid once it serves.
    pub async fn start_again(&self, component: Component) -> Result<u32, Error> {
        self.command("start", component).await
    }

    /// [`ControlPlane::kill`], then [`ControlPlane::start_again`].
    pub async fn restart(&self, component: Component) -> Result<u32, Error> {
        self.command("restart", component).await
    }

    /// SIGSTOPs `component`: it keeps its connections and answers nothing.
    pub async fn pause(&self, component: Component) -> Result<u32, Error> {
        self.command("pause", component).await
    }

    /// SIGCONTs a paused `component`.
    pub async fn resume(&self, component: Component) -> Result<u32, Error> {
        self.command("resume", component).await
    }

    async fn command(&self, verb: &'static str, component: Component) -> Result<u32, Error> {
        let env = self.env.clone();
        let line = format!("{verb} {}", component.name());
        let sent = line.clone();
        let answer = tokio::task::spawn_blocking(move || {
            env.supervisor
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .command(&sent, COMMAND_TIMEOUT)
        })
        .await
        .map_err(|e| Error::io(format!("sending `{line}`"), std::io::Error::other(e)))??;
        parse_answer(&line, &answer).map_err(|reason| Error::Command {
            command: line.clone(),
            reason,
            tail: crate::supervisor::tail(&self.env.state_dir().join("supervisor.log"), 20),
        })
    }

    /// The current etcd revision.
    pub async fn etcd_revision(&self) -> Result<u64, Error> {
        Ok(self.etcd_range(b"\0", None, None).await?.0)
    }

    /// Every version of `key` (e.g. `/registry/services/specs/NS/NAME`) written after
    /// `after_revision`, oldest first. Complete: each version is found as the latest one at
    /// the revision before its successor was written, back to `after_revision` or to the
    /// key's creation.
    pub async fn etcd_versions(
        &self,
        key: &str,
        after_revision: u64,
    ) -> Result<Vec<Version>, Error> {
        let mut versions = Vec::new();
        let mut at = None;
        loop {
            let (_, mut found) = self.etcd_range(key.as_bytes(), None, at).await?;
            let Some(version) = found.pop() else { break };
            if version.mod_revision <= after_revision {
                break;
            }
            at = Some(version.mod_revision - 1);
            versions.push(version);
        }
        versions.reverse();
        Ok(versions)
    }

    /// Every object whose key starts with `prefix`, as of `revision`.
    pub async fn etcd_prefix_at(&self, prefix: &str, revision: u64) -> Result<Vec<Version>, Error> {
        let end = prefix_end(prefix.as_bytes());
        Ok(self
            .etcd_range(prefix.as_bytes(), Some(&end), Some(revision))
            .await?
            .1)
    }

    /// `/v3/kv/range` of etcd's JSON gateway: the header revision and the key-values found.
    async fn etcd_range(
        &self,
        key: &[u8],
        range_end: Option<&[u8]>,
        revision: Option<u64>,
    ) -> Result<(u64, Vec<Version>), Error> {
        let mut request = serde_json::json!({ "key": BASE64.encode(key) });
        if let Some(end) = range_end {
            request["range_end"] = BASE64.encode(end).into();
        }
        if let Some(rev) = revision {
            request["revision"] = rev.to_string().into();
        }
        let uri = format!("{}/v3/kv/range", self.etcd);
        let body = crate::http::send("POST", &uri, Some(request.to_string()))
            .await
            .map_err(|e| Error::Etcd(format!("{e} (request {request})")))?;
        parse_range(&body)
    }
}

/// The pid in an `ok VERB COMPONENT PID` answer, or the reason of an `error` one.
fn parse_answer(command: &str, answer: &str) -> Result<u32, String> {
    let ok = answer
        .strip_prefix("ok ")
        .and_then(|rest| rest.strip_prefix(command))
        .and_then(|pid| pid.trim().parse().ok());
    ok.ok_or_else(|| answer.to_owned())
}

/// The smallest key greater than every key starting with `prefix` (etcd's `range_end`).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[derive(Deserialize)]
struct RangeResponse {
    header: Header,
    #[serde(default)]
    kvs: Vec<KeyValue>,
}

#[derive(Deserialize)]
struct Header {
    revision: String,
}

#[derive(Deserialize)]
struct KeyValue {
    mod_revision: String,
    #[serde(default)]
    value: String,
}

fn parse_range(body: &[u8]) -> Result<(u64, Vec<Version>), Error> {
    let bad = |what: String| Error::Etcd(format!("{what} in {}", String::from_utf8_lossy(body)));
    let r: RangeResponse =
        serde_json::from_slice(body).map_err(|e| bad(format!("unexpected answer ({e})")))?;
    let number = |s: &str| {
        s.parse::<u64>()
            .map_err(|e| bad(format!("revision {s:?}: {e}")))
    };
    let revision = number(&r.header.revision)?;
    let versions = r
        .kvs
        .iter()
        .map(|kv| {
            let raw = BASE64
                .decode(&kv.value)
                .map_err(|e| bad(format!("value not base64 ({e})")))?;
            let value = serde_json::from_slice(&raw).map_err(|e| {
                bad(format!(
                    "value not JSON ({e}; is the apiserver storing protobuf?)"
                ))
            })?;
            Ok(Version {
                mod_revision: number(&kv.mod_revision)?,
                value,
            })
        })
        .collect::<Result<_, Error>>()?;
    Ok((revision, versions))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_give_the_pid_or_the_reason() {
        assert_eq!(parse_answer("kill etcd", "ok kill etcd 4242"), Ok(4242));
        assert_eq!(
            parse_answer(
                "start kube-apiserver",
                "error start kube-apiserver: not ready"
            ),
            Err("error start kube-apiserver: not ready".to_owned())
        );
        // An answer to another command is not this one's.
        assert!(parse_answer("kill etcd", "ok kill kwok 1").is_err());
    }

    #[test]
    fn prefix_end_is_the_next_key() {
        assert_eq!(prefix_end(b"/registry/pods/ns/"), b"/registry/pods/ns0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }

    #[test]
    fn parses_a_range_answer() {
        let value = BASE64.encode(br#"{"kind":"Service","spec":{"selector":{"a":"b"}}}"#);
        let body = format!(
            r#"{{"header":{{"revision":"42"}},"kvs":[{{"key":"eA==","mod_revision":"40","value":"{value}"}}],"count":"1"}}"#
        );
        let (rev, kvs) = parse_range(body.as_bytes()).unwrap();
        assert_eq!(rev, 42);
        assert_eq!(kvs[0].mod_revision, 40);
        assert_eq!(kvs[0].value["spec"]["selector"]["a"], "b");
        let (_, none) = parse_range(br#"{"header":{"revision":"7"}}"#).unwrap();
        assert!(none.is_empty());
        let err = parse_range(
            br#"{"header":{"revision":"7"},"kvs":[{"mod_revision":"1","value":"azhzAA=="}]}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("protobuf"), "{err}");
    }
}
