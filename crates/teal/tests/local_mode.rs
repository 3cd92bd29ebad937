//! Local mode end to end: a real `teal local serve` daemon running real
//! sample-app processes, driven through the `teal local` CLI, with real HTTP
//! through its router.

mod local_support;

use std::time::Duration;

use local_support::*;

#[test]
fn release_and_rollback_through_the_cli() {
    let Setup {
        daemon: d,
        config,
        port,
        dir: _dir,
    } = healthy_daemon("cli", "");
    assert_eq!(live_version(port).as_deref(), Some("v1"));

    let o = cli(&config, &["deploy", "--revision", "v2"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("v2: Promoted"),
        "{}",
        text(&o)
    );
    assert_eq!(live_version(port).as_deref(), Some("v2"));
    let s = d.status();
    assert_eq!(s["active"]["color"], "green");
    assert_eq!(s["history"][0]["outcome"], "promoted");

    // Deploying the live revision again is refused and changes nothing.
    let o = cli(&config, &["deploy", "--revision", "v2"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("already live"),
        "{}",
        text(&o)
    );

    // After the scale-down window: rollback redeploys v1 and switches to it.
    d.wait_phase("Healthy");
    let o = cli(&config, &["rollback"]);
    assert!(o.status.success(), "{}", text(&o));
    wait_until(Duration::from_secs(20), "v1 live again", || {
        (live_version(port).as_deref() == Some("v1")).then_some(())
    });
    let s = d.wait_phase("Healthy");
    assert_eq!(s["active"]["revision"], "v1");
    assert_eq!(s["active"]["color"], "blue");
    assert!(
        pids(&s, "green").is_empty(),
        "the retired color's processes are stopped: {s}"
    );
}

#[test]
fn failed_analysis_rolls_back_and_production_never_sees_it() {
    let dir = Scratch::new("analysis");
    let port = free_port();
    let analysis = "analysis:\n  prePromotion:\n    interval: 300ms\n    checks: 2\n    metrics:\n      - {name: success-rate, builtin: successRate, min: 99, minRequests: 5}\n";
    let config = write_config(&dir.0, port, analysis);
    let d = Daemon::start(&config);
    d.wait_phase("Healthy");

    // Preview traffic, as testers of the idle color would send it.
    let preview = PreviewTraffic::start(port);

    let o = cli(&config, &["deploy", "--revision", "v2"]);
    assert!(o.status.success(), "{}", text(&o));

    let argv = sample_app_argv(&["--error-rate", "0.5"]);
    let mut args = vec!["deploy", "--revision", "v3", "--env", "EXTRA=1", "--"];
    args.extend(argv.iter().map(String::as_str));
    let o = cli(&config, &args);
    drop(preview);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("v3: RolledBack"), "{}", text(&o));
    assert!(
        out.contains("success-rate ="),
        "the failing metric and value are named: {}",
        text(&o)
    );
    for _ in 0..20 {
        assert_eq!(live_version(port).as_deref(), Some("v2"));
    }
    let s = d.status();
    assert_eq!(s["phase"], "RolledBack");
    assert_eq!(s["analysis"]["run"]["failures"], 1);
}

#[test]
fn manual_promotion_with_preview_header() {
    let dir = Scratch::new("manual");
    let port = free_port();
    let config = write_config(
        &dir.0,
        port,
        "promotion: {mode: manual}\npreview:\n  header: {name: x-version, value: green}\n  replicas: 1\n",
    );
    let d = Daemon::start(&config);
    d.wait_phase("Healthy");

    let o = cli(&config, &["promote"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not waiting for promotion (phase: Healthy)"),
        "{}",
        text(&o)
    );

    let o = cli(&config, &["deploy", "--revision", "v2", "--no-wait"]);
    assert!(o.status.success(), "{}", text(&o));
    let s = d.wait_phase("AwaitingPromotion");
    assert_eq!(pids(&s, "green").len(), 1, "preview runs 1 replica: {s}");
    for _ in 0..10 {
        assert_eq!(live_version(port).as_deref(), Some("v1"));
        let r = get(port, &[("x-version", "green")]).unwrap();
        assert_eq!(r.version.as_deref(), Some("v2"));
        let r = get(port, &[("x-version", "blue")]).unwrap();
        assert_eq!(
            r.version.as_deref(),
            Some("v1"),
            "only the exact value previews"
        );
    }
    let o = cli(&config, &["promote"]);
    assert!(o.status.success(), "{}", text(&o));
    wait_until(Duration::from_secs(20), "v2 live", || {
        (live_version(port).as_deref() == Some("v2")).then_some(())
    });
    let s = d.status();
    assert_eq!(
        pids(&s, "green").len(),
        2,
        "scaled to full size before cutover: {s}"
    );

    let o = cli(&config, &["deploy", "--revision", "bad name!"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("revision \"bad name!\""),
        "{}",
        text(&o)
    );
}

#[test]
fn abort_during_preview_keeps_the_live_color() {
    let Setup {
        daemon: d,
        config,
        port,
        dir: _dir,
    } = healthy_daemon("abort", "promotion: {mode: manual}\n");
    let o = cli(&config, &["deploy", "--revision", "v2", "--no-wait"]);
    assert!(o.status.success(), "{}", text(&o));
    d.wait_phase("AwaitingPromotion");
    let o = cli(&config, &["abort"]);
    assert!(o.status.success(), "{}", text(&o));
    let s = d.wait_phase("Aborted");
    assert_eq!(s["active"]["revision"], "v1");
    assert_eq!(live_version(port).as_deref(), Some("v1"));
    let r = get(port, &[("x-teal-preview", "1")]).unwrap();
    assert_eq!(
        r.version.as_deref(),
        Some("v1"),
        "no preview route after abort"
    );
    wait_until(Duration::from_secs(10), "green stopped", || {
        pids(&d.status(), "green").is_empty().then_some(())
    });
    let o = cli(&config, &["retry"]);
    assert!(o.status.success(), "{}", text(&o));
    d.wait_phase("AwaitingPromotion");
}

#[test]
fn app_that_never_gets_healthy_fails_at_the_deadline() {
    let Setup {
        daemon: d,
        config,
        port,
        dir: _dir,
    } = healthy_daemon("deadline", "");
    let yaml = std::fs::read_to_string(&config)
        .unwrap()
        .replace("startupDeadline: 20s", "startupDeadline: 2s");
    std::fs::write(&config, yaml).unwrap();
    let argv = sample_app_argv(&["--ready-after", "1h"]);
    let mut args = vec!["deploy", "--revision", "v2", "--"];
    args.extend(argv.iter().map(String::as_str));
    let o = cli(&config, &args);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("progress deadline"),
        "{}",
        text(&o)
    );
    assert_eq!(live_version(port).as_deref(), Some("v1"));
    wait_until(Duration::from_secs(10), "v2 processes stopped", || {
        pids(&d.status(), "green").is_empty().then_some(())
    });
}

#[test]
fn crash_looping_app_fails_fast() {
    let Setup {
        daemon: d,
        config,
        port,
        dir: _dir,
    } = healthy_daemon("crash", "");
    let o = cli(
        &config,
        &[
            "deploy",
            "--revision",
            "v2",
            "--",
            "sh",
            "-c",
            "echo starting; exit 3",
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("v2: Failed"), "{}", text(&o));
    assert!(out.contains("times in a row"), "{}", text(&o));
    assert_eq!(live_version(port).as_deref(), Some("v1"));
    // Logs of the crashing process are kept.
    let logs: Vec<_> = std::fs::read_dir(d.state_dir.join("logs"))
        .unwrap()
        .flatten()
        .collect();
    assert!(
        logs.iter().any(|e| std::fs::read_to_string(e.path())
            .unwrap_or_default()
            .contains("starting")),
        "crash output is in the replica logs"
    );
}

#[test]
fn bad_configs_are_refused_naming_the_field() {
    let dir = Scratch::new("badcfg");
    let cases = [
        ("app:\n  replicas: 2\n", "command"),
        (
            "app:\n  command: []\n",
            "app.command: must name the program",
        ),
        ("app:\n  command: [x]\n  replica: 2\n", "replica"),
        (
            "app:\n  command: [x]\nscaleDownDelay: soon\n",
            "invalid duration \"soon\"",
        ),
        (
            "app:\n  command: [x]\ncontrol: 0.0.0.0:7000\n",
            "control: must be a loopback address",
        ),
    ];
    for (yaml, want) in cases {
        let path = dir.0.join("teal.yaml");
        std::fs::write(&path, yaml).unwrap();
        let o = cli(&path, &["serve"]);
        assert_eq!(o.status.code(), Some(2), "{yaml}: {}", text(&o));
        assert!(
            String::from_utf8_lossy(&o.stderr).contains(want),
            "{yaml}: want {want:?}: {}",
            text(&o)
        );
    }
}

#[test]
fn port_in_use_is_refused_before_any_process_starts() {
    let dir = Scratch::new("inuse");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let config = write_config(&dir.0, port, "");
    let o = cli(&config, &["serve"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains(&format!("listen: cannot listen on 127.0.0.1:{port}")),
        "{}",
        text(&o)
    );
    let logs = dir.0.join(".teal/logs");
    let started = std::fs::read_dir(&logs).map(|d| d.count()).unwrap_or(0);
    assert_eq!(started, 0, "no app process was started");
}

#[test]
fn a_live_replica_that_crashes_is_restarted_and_reported() {
    let Setup {
        daemon: d,
        config: _config,
        port,
        dir: _dir,
    } = healthy_daemon("livecrash", "");
    let s = d.status();
    let victim = pids(&s, "blue")[0];
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let s = wait_until(Duration::from_secs(20), "the crash reported", || {
        let s = d.status();
        let reported = s["events"].as_array().is_some_and(|e| {
            e.iter().any(|e| {
                e["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("of the live color blue (v1) exited"))
            })
        });
        reported.then_some(s)
    });
    assert_eq!(
        s["events"].as_array().unwrap().last().unwrap()["kind"],
        "Degraded"
    );
    wait_until(Duration::from_secs(20), "the replica restarted", || {
        let p = pids(&d.status(), "blue");
        (p.len() == 2 && !p.contains(&victim) && p.iter().all(|p| alive(*p))).then_some(())
    });
    for _ in 0..20 {
        assert_eq!(
            live_version(port).as_deref(),
            Some("v1"),
            "the other replica kept serving"
        );
    }
}

/// Lines of the daemon's log at WARN that say the route table was not
/// installed.
fn table_warnings(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("WARN") && l.contains("route table not installed"))
        .collect()
}

#[test]
fn start_up_logs_no_route_table_warning_but_a_live_color_without_replicas_does() {
    // `dir` is bound: dropping it would remove the directory the second
    // daemon starts in.
    let Setup {
        daemon: d,
        config,
        dir: _dir,
        ..
    } = healthy_daemon("startwarn", "");
    // Before the first replica is healthy there is no table to install:
    // that is how every start begins, not something to warn about; nor is
    // it on a start that brings the live color of an earlier run back.
    let log = d.log();
    assert!(table_warnings(&log).is_empty(), "{log}");
    assert!(d.terminate().success());
    let d = Daemon::start(&config);
    d.wait_phase("Healthy");
    let log = d.log();
    assert!(table_warnings(&log).is_empty(), "{log}");

    // The live color losing every replica is abnormal: that stays a warning.
    for pid in pids(&d.status(), "blue") {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    wait_until(
        Duration::from_secs(20),
        "a warning for the live color",
        || (!table_warnings(&d.log()).is_empty()).then_some(()),
    );
}

#[test]
fn deploy_says_the_old_color_drains_and_reports_when_it_has_drained() {
    let setup = healthy_daemon("drainreport", "");
    let (config, port) = (&setup.config, setup.port);
    // A request to blue that outlasts the switch and the scale-down delay
    // (1 s) but not the drain timeout (2 s after the scale-down).
    let slow = std::thread::spawn(move || {
        let r = status_code(
            &format!("127.0.0.1:{port}"),
            "GET /sleep?ms=2500 HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n",
            Duration::from_secs(30),
        );
        (r, std::time::Instant::now())
    });
    std::thread::sleep(Duration::from_millis(200));
    let o = cli(config, &["deploy", "--revision", "v2"]);
    let finished = std::time::Instant::now();
    assert!(o.status.success(), "{}", text(&o));
    let (status, answered) = slow.join().unwrap();
    assert_eq!(status, Some(200), "the in-flight request finished");
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let lines: Vec<&str> = out.lines().collect();
    let promoted = lines
        .iter()
        .position(|l| l.starts_with("v2: Promoted"))
        .unwrap_or_else(|| panic!("{}", text(&o)));
    // When the release is promoted, blue is still draining: the line says
    // so rather than that it has been scaled down.
    assert!(
        !lines[promoted].contains("scaled down") && lines[promoted].contains("blue"),
        "{}",
        text(&o)
    );
    // The end of the drain is reported after it, once blue's request ended.
    let drained = lines[promoted + 1..]
        .iter()
        .find(|l| l.contains("blue drained"))
        .unwrap_or_else(|| panic!("no drain reported: {}", text(&o)));
    assert!(drained.contains("nothing left in flight"), "{drained}");
    assert!(
        finished >= answered,
        "deploy returned before the drain ended"
    );
}
