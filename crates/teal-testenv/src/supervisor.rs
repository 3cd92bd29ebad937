//! Starting `scripts/control-plane` verbs as supervised children.
//!
//! Each child gets a pipe as standard input and stops everything it started when that pipe
//! reaches end of file, which happens when the test process exits, however it exits. Its
//! first line on standard output is `ready <detail>`; `run` then reads fault commands from that
//! pipe and answers each with one line ([`Supervised::command`]).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::sync::{Mutex, Once};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::Error;

/// Directories whose logs are kept when a test panics.
static LIVE_DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
static PANIC_HOOK: Once = Once::new();
static LOG_TAILS: Once = Once::new();

/// The control-plane script: `$TEAL_CONTROL_PLANE`, else the one in this source tree.
pub(crate) fn script() -> Result<PathBuf, Error> {
    let path = match std::env::var_os("TEAL_CONTROL_PLANE") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/control-plane"),
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::ScriptMissing(path))
    }
}

/// A fresh directory for one supervised child, below the system temporary directory.
pub(crate) fn state_dir(kind: &str) -> Result<PathBuf, Error> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!(
        "teal-testenv-{}-{kind}-{nanos:09}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    Ok(dir)
}

fn keep_logs_on_panic(dir: &Path) {
    LIVE_DIRS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(dir.to_owned());
    PANIC_HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            // The panic's own message first: a CI excerpt that keeps only
            // the start of a failure must still show what failed.
            previous(info);
            let dirs = LIVE_DIRS.lock().unwrap_or_else(|e| e.into_inner()).clone();
            for dir in &dirs {
                if std::fs::write(dir.join("keep"), b"a test panicked\n").is_ok() {
                    eprintln!("teal-testenv: logs kept in {}", dir.display());
                }
            }
            // CI machines go away with their logs: show the ends of them once.
            if std::env::var_os("CI").is_some() {
                LOG_TAILS.call_once(|| dirs.iter().for_each(|d| print_log_tails(d)));
            }
        }));
    });
}

fn print_log_tails(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir.join("logs")) else {
        return;
    };
    let mut logs: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    logs.sort();
    for log in logs {
        eprintln!(
            "--- last lines of {} ---\n{}",
            log.display(),
            tail(&log, 15)
        );
    }
}

pub(crate) fn forget(dir: &Path) {
    LIVE_DIRS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|d| d != dir);
}

/// A running `scripts/control-plane` verb. Dropping it closes the pipe, which stops it.
pub(crate) struct Supervised {
    pub(crate) child: Child,
    pub(crate) stdin: Option<ChildStdin>,
    pub(crate) dir: PathBuf,
    /// What followed `ready ` on the first line.
    pub(crate) detail: String,
    /// The lines it printed after that one (answers to commands).
    lines: Receiver<std::io::Result<String>>,
}

/// Starts `scripts/control-plane <verb> [options] DIR [extra]` and waits up to `timeout` for
/// its `ready` line.
pub(crate) fn start(
    what: &'static str,
    verb: &str,
    options: &[String],
    dir: PathBuf,
    extra: &[&Path],
    timeout: Duration,
) -> Result<Supervised, Error> {
    let script = script()?;
    let log = dir.join("supervisor.log");
    let log_file = std::fs::File::create(&log)
        .map_err(|e| Error::io(format!("creating {}", log.display()), e))?;
    let mut cmd = Command::new(&script);
    cmd.arg(verb);
    if std::env::var_os("TEAL_TESTENV_KEEP").is_none_or(|v| v.is_empty() || v == "0") {
        cmd.arg("--remove-on-exit");
    }
    cmd.args(options)
        .arg(&dir)
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log_file));
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::io(format!("running {}", script.display()), e))?;
    keep_logs_on_panic(&dir);
    let stdin = child.stdin.take();
    let stdout = child.stdout.take().expect("stdout is piped");

    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Every line, also when nobody asks for them, so the child never blocks on a full pipe.
        for line in BufReader::new(stdout).lines() {
            let failed = line.is_err();
            let _ = tx.send(line);
            if failed {
                break;
            }
        }
    });
    let fail = |reason: String| Error::Start {
        what,
        reason,
        tail: tail(&log, 40),
        log: log.clone(),
    };
    let line = match rx.recv_timeout(timeout) {
        Ok(Ok(line)) => line,
        Ok(Err(e)) => return Err(fail(format!("reading its output: {e}"))),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => String::new(),
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(fail(format!("not ready within {timeout:?}")));
        }
    };
    match line.trim_end().strip_prefix("ready ") {
        Some(detail) => Ok(Supervised {
            child,
            stdin,
            dir,
            detail: detail.to_owned(),
            lines: rx,
        }),
        None => {
            let status = child.wait().ok();
            Err(fail(format!(
                "it exited ({}) before it was ready",
                status.map_or_else(|| "unknown status".to_owned(), |s| s.to_string())
            )))
        }
    }
}

impl Supervised {
    /// Sends one command line and returns the line that answers it, waiting up to `timeout`.
    pub(crate) fn command(&mut self, command: &str, timeout: Duration) -> Result<String, Error> {
        let log = self.dir.join("supervisor.log");
        let fail = |reason: String| Error::Command {
            command: command.to_owned(),
            reason,
            tail: tail(&log, 20),
        };
        // Answers to earlier commands that timed out are not this one's.
        while self.lines.try_recv().is_ok() {}
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| fail("the supervisor was stopped".to_owned()))?;
        stdin
            .write_all(format!("{command}\n").as_bytes())
            .and_then(|()| stdin.flush())
            .map_err(|e| fail(format!("writing to the supervisor: {e}")))?;
        match self.lines.recv_timeout(timeout) {
            Ok(Ok(line)) => Ok(line),
            Ok(Err(e)) => Err(fail(format!("reading the answer: {e}"))),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                Err(fail(format!("no answer within {timeout:?}")))
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                Err(fail("the supervisor exited".to_owned()))
            }
        }
    }

    /// Closes the pipe and waits for everything to stop.
    pub(crate) fn stop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
        forget(&self.dir);
    }
}

/// The last `lines` lines of a file, or why it could not be read.
pub(crate) fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("({}: {e})", path.display()),
    }
}
