//! The daemon's own robustness, against real processes:
//!
//! - killed (SIGKILL) in the middle of releases, the restarted daemon
//!   carries each release on to its end, exactly once, and the app processes
//!   running are exactly the ones the daemon reports, none lost and none left
//!   behind. Processes are found independently of the daemon: every replica
//!   gets a variable of the test's own in its environment (`app.env`), and
//!   the test reads the environment of every process in /proc;
//! - with the router's socket handed over on standard input (as systemd
//!   does), no connection is refused while the daemon restarts;
//! - the control API survives a failed accept() and cuts off a client that
//!   sends its headers slowly.

mod local_support;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use local_support::*;

const MARK: &str = "TEAL_TEST_MARK";

/// Writes a teal.yaml whose replicas carry `MARK=<dir>`.
fn marked_config(dir: &Path, listen: u16, app_extra: &[&str], extra: &str) -> std::path::PathBuf {
    let yaml = format!(
        "app:\n  command: {}\n  env: {{{MARK}: {:?}}}\n  replicas: 2\n  health: {{interval: 100ms, timeout: 1s}}\n  startupDeadline: 30s\n  stopGracePeriod: 3s\nlisten: 127.0.0.1:{listen}\nscaleDownDelay: 1s\ndrainTimeout: 1s\n{extra}",
        sample_app_command(app_extra),
        dir.display().to_string(),
    );
    let path = dir.join("teal.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

/// Pids of the running (not zombie) processes whose environment holds
/// `MARK=mark`.
fn marked_processes(mark: &str) -> BTreeSet<u32> {
    let want = format!("{MARK}={mark}");
    let mut found = BTreeSet::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        if !env.split(|b| *b == 0).any(|kv| kv == want.as_bytes()) {
            continue;
        }
        let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .and_then(|(_, r)| r.trim_start().chars().next())
            })
            .is_some_and(|state| state == 'Z' || state == 'X');
        if !zombie {
            found.insert(pid);
        }
    }
    found
}

/// Every replica pid a status document names.
fn reported(status: &serde_json::Value) -> BTreeSet<u32> {
    ["blue", "green"]
        .iter()
        .flat_map(|c| pids(status, c))
        .filter(|p| *p != 0)
        .collect()
}

/// Waits until the processes running are exactly those the daemon reports
/// (a retired color takes a drain and a stop to go), and returns them.
fn processes_match(d: &Daemon, mark: &str, what: &str) -> BTreeSet<u32> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let s = d.status();
        let want = reported(&s);
        let running = marked_processes(mark);
        if want == running {
            return running;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the daemon reports {want:?}, running are {running:?}\nstatus: {s:#}\nlog:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A small deterministic generator (splitmix64): the seed repeats a run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The scenario reported by users: a release of two replicas that take 3 s
/// to get ready, manual promotion, the daemon killed 1.5 s into the release
/// and started again 2 s later. The release goes on to wait for promotion
/// with both replicas ready, and no process is left over.
#[test]
fn daemon_killed_while_deploying_resumes_the_release() {
    let dir = Scratch::new("crash-deploying");
    let mark = dir.0.display().to_string();
    let port = free_port();
    let config = marked_config(
        &dir.0,
        port,
        &["--ready-after", "3s"],
        "promotion: {mode: manual}\n",
    );
    // The health interval of the reported scenario.
    let yaml = std::fs::read_to_string(&config)
        .unwrap()
        .replace("interval: 100ms", "interval: 500ms");
    std::fs::write(&config, yaml).unwrap();

    let d = Daemon::start(&config);
    d.wait_phase("Healthy");
    let mut v2 = vec!["deploy", "--no-wait", "--revision", "v2", "--"];
    let argv = sample_app_argv(&["--ready-after", "3s"]);
    let argv: Vec<String> = argv
        .into_iter()
        .map(|a| a.replace("{revision}", "v2"))
        .collect();
    v2.extend(argv.iter().map(String::as_str));
    let o = cli(&config, &v2);
    assert!(o.status.success(), "{}", text(&o));
    std::thread::sleep(Duration::from_millis(1500));
    d.kill();
    std::thread::sleep(Duration::from_secs(2));

    let d = Daemon::start(&config);
    let s = d.wait_phase("AwaitingPromotion");
    assert_eq!(s["colors"]["green"]["revision"], "v2");
    assert_eq!(
        s["colors"]["green"]["readyReplicas"], 2,
        "both replicas of v2 ready: {s:#}"
    );
    assert_eq!(pids(&s, "green").len(), 2);
    processes_match(&d, &mark, "waiting for promotion");

    let o = cli(&config, &["promote"]);
    assert!(o.status.success(), "{}", text(&o));
    let s = d.wait_phase("Healthy");
    assert_eq!(s["active"]["revision"], "v2");
    let v2_ends: Vec<_> = s["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["revision"] == "v2")
        .collect();
    assert_eq!(v2_ends.len(), 1, "{s:#}");
    processes_match(&d, &mark, "after promotion");

    assert!(d.terminate().success());
    let left = marked_processes(&mark);
    assert!(left.is_empty(), "processes outlive the daemon: {left:?}");
}

/// Releases under a daemon killed at random points (the seed is printed;
/// `TEAL_CRASH_SEED` repeats a run, `TEAL_CRASH_KILLS` sets how many kills).
/// After each kill and restart: every release ends exactly once, promoted,
/// and the processes running are exactly the ones the daemon reports. The
/// surviving replicas are adopted, not restarted, when nothing happened to
/// them; a clean stop leaves nothing running.
#[test]
fn daemon_killed_at_random_points_of_releases() {
    let seed = std::env::var("TEAL_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    let kills: u32 = std::env::var("TEAL_CRASH_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    eprintln!("crash test seed {seed} (TEAL_CRASH_SEED={seed} repeats this run), {kills} kills");
    let mut rng = Rng(seed);

    let dir = Scratch::new("crash-random");
    let mark = dir.0.display().to_string();
    let port = free_port();
    let config = marked_config(&dir.0, port, &["--ready-after", "300ms"], "");
    let mut d = Daemon::start(&config);
    d.wait_phase("Healthy");

    let mut killed = 0;
    let mut release = 1;
    while killed < kills {
        release += 1;
        let rev = format!("v{release}");
        let o = cli(&config, &["deploy", "--no-wait", "--revision", &rev]);
        assert!(o.status.success(), "seed {seed}: {}", text(&o));
        // A release takes about 2.5 s (ready, cutover, scale-down delay,
        // drain); one to three kills at random points of it, the daemon
        // down for a random while each time.
        let kills_now = 1 + rng.below(3);
        for _ in 0..kills_now {
            let at = rng.below(2800);
            let down = rng.below(400);
            eprintln!("{rev}: kill {} after {at} ms, down {down} ms", killed + 1);
            std::thread::sleep(Duration::from_millis(at));
            d.kill();
            killed += 1;
            std::thread::sleep(Duration::from_millis(down));
            d = Daemon::start(&config);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        let s = loop {
            let s = d.status();
            let ended = s["history"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["revision"] == rev.as_str());
            if ended && s["phase"] == "Healthy" {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "seed {seed}: {rev} did not end within 30 s: {s:#}\nlog:\n{}",
                d.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let ends: Vec<_> = s["history"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["revision"] == rev.as_str())
            .collect();
        assert_eq!(
            ends.len(),
            1,
            "seed {seed}: {rev} ended {} times: {s:#}",
            ends.len()
        );
        assert_eq!(ends[0]["outcome"], "promoted", "seed {seed}: {s:#}");
        assert_eq!(s["active"]["revision"], rev.as_str(), "seed {seed}");
        let running = processes_match(&d, &mark, &format!("seed {seed}, after {rev}"));
        assert_eq!(running.len(), 2, "seed {seed}: one color of 2 replicas");
        wait_until(
            Duration::from_secs(10),
            "the router serving the new revision",
            || (live_version(port).as_deref() == Some(rev.as_str())).then_some(()),
        );
    }

    // Killed with nothing going on: the replicas are adopted as they are.
    let before = marked_processes(&mark);
    d.kill();
    let d = Daemon::start(&config);
    d.wait_phase("Healthy");
    let after = processes_match(&d, &mark, &format!("seed {seed}, idle restart"));
    assert_eq!(
        after, before,
        "seed {seed}: surviving replicas are adopted, not restarted"
    );

    // A clean stop stops every process; the next start brings the live
    // revision back.
    assert!(d.terminate().success());
    let left = marked_processes(&mark);
    assert!(
        left.is_empty(),
        "seed {seed}: processes outlive the daemon: {left:?}"
    );
    let d = Daemon::start(&config);
    let s = d.wait_phase("Healthy");
    assert_eq!(s["active"]["revision"], format!("v{release}").as_str());
    processes_match(&d, &mark, "started again");
}

/// Connections tried every 10 ms to `port` until `stop`: (refused, served,
/// answered other than 200). A request cut by the daemon's death (reset, no
/// answer) is none of them.
fn probe_connections(
    port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<(u32, u32, u32)> {
    std::thread::spawn(move || {
        let (mut refused, mut served, mut failed) = (0, 0, 0);
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            match TcpStream::connect(("127.0.0.1", port)) {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => refused += 1,
                Err(_) => {}
                Ok(mut s) => {
                    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                    let mut answer = Vec::new();
                    let sent = s
                        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                        .is_ok();
                    if sent && s.read_to_end(&mut answer).is_ok() && !answer.is_empty() {
                        if answer.starts_with(b"HTTP/1.1 200") {
                            served += 1;
                        } else {
                            failed += 1;
                        }
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        (refused, served, failed)
    })
}

/// Starts `teal local serve --listen-stdin` with `listener` on its standard
/// input, as systemd's `StandardInput=socket` does.
fn start_on_socket(config: &Path, listener: &std::net::TcpListener) -> Daemon {
    let state_dir = config.parent().unwrap().join(".teal");
    let _ = std::fs::remove_file(state_dir.join("control.addr"));
    let log = std::fs::File::create(config.parent().unwrap().join("daemon.log")).unwrap();
    let fd = std::os::fd::OwnedFd::from(listener.try_clone().unwrap());
    let child = Command::new(teal())
        .args([
            "local",
            "serve",
            "--listen-stdin",
            "-c",
            config.to_str().unwrap(),
        ])
        .env("TEAL_LOG", "info")
        .stdin(Stdio::from(fd))
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

/// Kills the daemon under steady requests and starts it again 2 s later:
/// with a socket of its own, every connection in between is refused; with
/// the socket handed over (kept by the supervisor), none is, they wait in
/// the backlog and are served once the daemon is back. The live replicas die
/// too while the daemon is down, so the restarted daemon needs new ones
/// (ready after 500 ms): a connection it accepts meanwhile waits for them
/// instead of being answered 503.
#[test]
fn a_socket_handed_over_on_stdin_refuses_nothing_across_a_restart() {
    let mut refused_by_mode = Vec::new();
    for handed_over in [false, true] {
        let dir = Scratch::new("handover");
        let port = free_port();
        let config = marked_config(&dir.0, port, &["--ready-after", "500ms"], "");
        let listener =
            handed_over.then(|| std::net::TcpListener::bind(("127.0.0.1", port)).unwrap());
        let start = |config: &Path| match &listener {
            Some(l) => start_on_socket(config, l),
            None => Daemon::start(config),
        };
        let d = start(&config);
        d.wait_phase("Healthy");
        wait_until(Duration::from_secs(10), "v1 served", || {
            live_version(port).map(|_| ())
        });

        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let probe = probe_connections(port, stop.clone());
        std::thread::sleep(Duration::from_millis(300));
        let live = pids(&d.status(), "blue");
        d.kill();
        for p in live {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        std::thread::sleep(Duration::from_secs(2));
        let d = start(&config);
        d.wait_phase("Healthy");
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (refused, served, failed) = probe.join().unwrap();
        eprintln!(
            "socket handed over: {handed_over}: {refused} connections refused, {served} served, {failed} answered an error"
        );
        assert!(served > 0);
        assert_eq!(
            failed, 0,
            "a connection accepted after the restart waits for the live color to be routed"
        );
        refused_by_mode.push(refused);
        assert!(d.terminate().success());
    }
    assert!(
        refused_by_mode[0] > 0,
        "a daemon with its own socket: nothing listens while it is down"
    );
    assert_eq!(
        refused_by_mode[1], 0,
        "with the socket handed over, no connection is refused"
    );
}

#[test]
fn listen_stdin_refuses_what_is_not_a_listening_socket() {
    let dir = Scratch::new("handover-bad");
    let port = free_port();
    let config = marked_config(&dir.0, port, &[], "");
    let o = Command::new(teal())
        .args([
            "local",
            "serve",
            "--listen-stdin",
            "-c",
            config.to_str().unwrap(),
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not a listening TCP socket"),
        "{}",
        text(&o)
    );
    // A socket bound elsewhere than `listen` says.
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let o = Command::new(teal())
        .args([
            "local",
            "serve",
            "--listen-stdin",
            "-c",
            config.to_str().unwrap(),
        ])
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(other)))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains(&format!("listen: the config says 127.0.0.1:{port}")),
        "{}",
        text(&o)
    );
}

fn control_addr(d: &Daemon) -> String {
    std::fs::read_to_string(d.state_dir.join("control.addr"))
        .unwrap()
        .trim()
        .to_string()
}

/// `GET /v1/status` with the token; `None` without an answer in 5 s.
fn control_status(d: &Daemon) -> Option<u16> {
    let token = std::fs::read_to_string(d.state_dir.join("control.token")).unwrap();
    let request = format!(
        "GET /v1/status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        token.trim()
    );
    status_code(&control_addr(d), &request, Duration::from_secs(5))
}

#[test]
fn the_control_api_cuts_off_a_client_sending_headers_slowly() {
    let dir = Scratch::new("slow-headers");
    let config = marked_config(&dir.0, free_port(), &[], "");
    let d = Daemon::start(&config);
    let mut s = TcpStream::connect(control_addr(&d)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let started = Instant::now();
    s.write_all(b"GET /v1/status HTTP/1.1\r\n").unwrap();
    // One header line every 300 ms, never the blank line that ends them.
    let cut = loop {
        if started.elapsed() > Duration::from_secs(15) {
            break None;
        }
        let mut b = [0u8; 64];
        match s.read(&mut b) {
            Ok(0) => break Some(started.elapsed()),
            Ok(_) => break Some(started.elapsed()),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                break Some(started.elapsed());
            }
            Err(_) => {}
        }
        if s.write_all(b"x-slow: 1\r\n").is_err() {
            break Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let cut = cut.expect("a client trickling headers is never cut off");
    assert!(
        cut >= Duration::from_secs(4) && cut < Duration::from_secs(8),
        "cut off after {cut:?}, the header timeout is 5 s"
    );
    // Others are served meanwhile and after.
    assert_eq!(control_status(&d), Some(200));
}

#[test]
fn the_control_api_outlives_a_failed_accept() {
    let dir = Scratch::new("accept-fail");
    let config = marked_config(&dir.0, free_port(), &[], "");
    let d = Daemon::start(&config);
    d.wait_phase("Healthy");
    assert_eq!(control_status(&d), Some(200));
    let pid = d.pid().to_string();
    let open_fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    // Leave the daemon two descriptors: the third connection's accept()
    // fails with EMFILE.
    let limit = |soft: String| {
        let o = Command::new("prlimit")
            .args(["--pid", &pid, &format!("--nofile={soft}:")])
            .output()
            .unwrap();
        assert!(o.status.success(), "prlimit: {}", text(&o));
    };
    let before = String::from_utf8(
        Command::new("prlimit")
            .args(["--pid", &pid, "--nofile", "--noheadings", "--output=SOFT"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .to_string();
    limit((open_fds + 2).to_string());
    let held: Vec<TcpStream> = (0..8)
        .filter_map(|_| TcpStream::connect(control_addr(&d)).ok())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    drop(held);
    limit(before);
    assert!(
        d.log().contains("accept failed"),
        "the daemon ran out of descriptors: {}",
        d.log()
    );
    assert_eq!(
        control_status(&d),
        Some(200),
        "the control API answers again: {}",
        d.log()
    );
}

/// A replica whose pid never reached the state file (the daemon died right
/// after starting it) is found by its environment, stopped, and replaced:
/// the color runs its full size again and nothing runs unknown.
#[test]
fn a_replica_missing_from_the_state_file_is_stopped_and_replaced() {
    let dir = Scratch::new("crash-unrecorded");
    let mark = dir.0.display().to_string();
    let config = marked_config(&dir.0, free_port(), &[], "");
    let d = Daemon::start(&config);
    d.wait_phase("Healthy");
    let live = processes_match(&d, &mark, "first start");
    assert_eq!(live.len(), 2);
    d.kill();

    // Forget replica 1, as if the daemon had died before saving its pid.
    let path = d_state(&config);
    let mut state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let replicas = state["groups"][0]["replicas"].as_array_mut().unwrap();
    let forgotten = replicas.iter().position(|r| r["index"] == 1).unwrap();
    let forgotten = replicas.remove(forgotten)["pid"].as_u64().unwrap() as u32;
    std::fs::write(&path, serde_json::to_vec(&state).unwrap()).unwrap();
    assert!(alive(forgotten));

    let d = Daemon::start(&config);
    let s = d.wait_phase("Healthy");
    let now = processes_match(&d, &mark, "after the restart");
    assert_eq!(now.len(), 2, "the color runs its two replicas: {s:#}");
    assert!(
        !now.contains(&forgotten),
        "the unrecorded process is stopped, not kept unknown"
    );
    assert!(
        now.iter().any(|p| live.contains(p)),
        "the recorded replica is adopted"
    );
    assert!(d.terminate().success());
    assert!(marked_processes(&mark).is_empty());
}

fn d_state(config: &Path) -> std::path::PathBuf {
    config.parent().unwrap().join(".teal").join("state.json")
}
