//! Helpers for local-mode tests: config files, a daemon process, the CLI and
//! plain HTTP requests through the router. Everything on loopback.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

pub fn teal() -> &'static str {
    env!("CARGO_BIN_EXE_teal")
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A scratch folder removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "teal-test-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The sample app's command line, with extra arguments.
pub fn sample_app_argv(extra: &[&str]) -> Vec<String> {
    teal_local::demo::sample_app(Path::new(teal()), extra)
}

/// The sample app as a YAML (flow) command list.
pub fn sample_app_command(extra: &[&str]) -> String {
    let parts: Vec<String> = sample_app_argv(extra)
        .iter()
        .map(|s| format!("{s:?}"))
        .collect();
    format!("[{}]", parts.join(", "))
}

/// Writes a teal.yaml with the sample app; `extra` is appended verbatim.
pub fn write_config(dir: &Path, listen: u16, extra: &str) -> PathBuf {
    let yaml = format!(
        "app:\n  command: {}\n  replicas: 2\n  health: {{interval: 100ms, timeout: 1s}}\n  startupDeadline: 20s\n  stopGracePeriod: 3s\nlisten: 127.0.0.1:{listen}\nscaleDownDelay: 1s\ndrainTimeout: 2s\n{extra}",
        sample_app_command(&[])
    );
    let path = dir.join("teal.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

/// Runs `teal local <args> -c <config>` and waits for it.
pub fn cli(config: &Path, args: &[&str]) -> Output {
    let mut all = vec!["local", "-c", config.to_str().unwrap()];
    all.extend_from_slice(args);
    Command::new(teal()).args(&all).output().unwrap()
}

/// `teal local deploy --revision <revision> --timeout 60` with `config`,
/// off the async runtime. Bounded: a stage whose queries get no answer is
/// inconclusive and waits for an operator.
pub async fn deploy_within_a_minute(config: &Path, revision: &'static str) -> Output {
    let config = config.to_path_buf();
    tokio::task::spawn_blocking(move || {
        cli(
            &config,
            &["deploy", "--revision", revision, "--timeout", "60"],
        )
    })
    .await
    .unwrap()
}

/// Asserts that deploy `o` of `revision` rolled back before cutover, its
/// output naming each of `named` (`metric = value`) above the maximum, and
/// that the router on `port` still serves `live`.
pub fn assert_rolled_back(o: &Output, revision: &str, named: &[&str], port: u16, live: &str) {
    assert_eq!(o.status.code(), Some(1), "{}", text(o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains(&format!("{revision}: RolledBack")),
        "{}",
        text(o)
    );
    for n in named {
        assert!(out.contains(n), "{n} named: {}", text(o));
    }
    assert!(out.contains("above the maximum"), "{}", text(o));
    assert_eq!(live_version(port).as_deref(), Some(live));
}

pub fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A `teal local serve` process.
pub struct Daemon {
    pub child: Child,
    pub config: PathBuf,
    pub state_dir: PathBuf,
}

impl Daemon {
    pub fn start(config: &Path) -> Daemon {
        let state_dir = config.parent().unwrap().join(".teal");
        let _ = std::fs::remove_file(state_dir.join("control.addr"));
        let log = std::fs::File::create(config.parent().unwrap().join("daemon.log")).unwrap();
        let child = Command::new(teal())
            .args(["local", "serve", "-c", config.to_str().unwrap()])
            .env("TEAL_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let d = Daemon {
            child,
            config: config.to_path_buf(),
            state_dir,
        };
        wait_until(Duration::from_secs(20), "daemon control address", || {
            d.state_dir.join("control.addr").exists().then_some(())
        });
        d
    }

    pub fn status(&self) -> serde_json::Value {
        let o = cli(&self.config, &["status", "--json"]);
        assert!(o.status.success(), "{}", text(&o));
        serde_json::from_slice(&o.stdout).unwrap()
    }

    /// Waits until `teal local status` shows this phase.
    pub fn wait_phase(&self, phase: &str) -> serde_json::Value {
        let mut last = String::new();
        for _ in 0..400 {
            let s = self.status();
            if s["phase"] == phase {
                return s;
            }
            last = s["phase"].to_string();
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "phase {phase} not reached; last {last}; log:\n{}",
            self.log()
        );
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.config.parent().unwrap().join("daemon.log"))
            .unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM and wait (the daemon stops the app's processes).
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let status = self.child.wait().unwrap();
        std::mem::forget(self);
        status
    }

    /// SIGKILL: the daemon dies at once, its app processes live on.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::forget(self);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

pub fn wait_until<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A response as the tests need it.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub version: Option<String>,
    pub color: Option<String>,
}

/// One GET over a fresh connection; `None` when the connection fails.
pub fn get(port: u16, headers: &[(&str, &str)]) -> Option<Reply> {
    let mut s = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut req = "GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n".to_string();
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf);
    let status = text.get(9..12)?.parse().ok()?;
    let header = |name: &str| {
        text.lines().take_while(|l| !l.is_empty()).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    };
    Some(Reply {
        status,
        version: header("x-app-version"),
        color: header("x-app-color"),
    })
}

/// Sends `request` over a fresh connection to `addr` and reads the answer
/// to its end; its status code, `None` without one within `timeout`.
pub fn status_code(addr: &str, request: &str, timeout: Duration) -> Option<u16> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    s.write_all(request.as_bytes()).ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    String::from_utf8_lossy(&buf).get(9..12)?.parse().ok()
}

/// The version production traffic reaches now.
pub fn live_version(port: u16) -> Option<String> {
    get(port, &[]).and_then(|r| r.version)
}

pub fn alive(pid: u32) -> bool {
    kill(Pid::from_raw(pid as i32), None).is_ok()
}

/// Pids of a color's replicas from a status document.
pub fn pids(status: &serde_json::Value, color: &str) -> Vec<u32> {
    status["colors"][color]["replicas"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| r["pid"].as_u64())
                .map(|p| p as u32)
                .collect()
        })
        .unwrap_or_default()
}

/// A daemon with the sample app at v1, healthy, in a scratch folder.
pub struct Setup {
    pub daemon: Daemon,
    pub config: PathBuf,
    pub port: u16,
    pub dir: Scratch,
}

pub fn healthy_daemon(name: &str, extra: &str) -> Setup {
    let dir = Scratch::new(name);
    let port = free_port();
    let config = write_config(&dir.0, port, extra);
    let daemon = Daemon::start(&config);
    daemon.wait_phase("Healthy");
    Setup {
        daemon,
        config,
        port,
        dir,
    }
}

/// Requests with the preview header in a loop, as testers of the idle color
/// would send them, until dropped.
pub struct PreviewTraffic {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PreviewTraffic {
    pub fn start(port: u16) -> PreviewTraffic {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = std::thread::spawn({
            let stop = stop.clone();
            move || {
                while !stop.load(Ordering::Relaxed) {
                    let _ = get(port, &[("x-teal-preview", "1")]);
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        });
        PreviewTraffic {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for PreviewTraffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
