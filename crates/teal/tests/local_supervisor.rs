//! The process supervisor against real processes: health thresholds,
//! restarts, SIGTERM and SIGKILL.

mod local_support;

use std::time::Duration;

use local_support::*;
use teal_core::Color;
use teal_local::config::{AppSpec, HealthSpec};
use teal_local::supervisor::{RevisionSpec, Supervisor};

fn app(command: Vec<String>, grace_ms: u64) -> AppSpec {
    AppSpec {
        command,
        env: Default::default(),
        workdir: None,
        replicas: 1,
        health: HealthSpec {
            path: "/healthz".into(),
            interval: teal_api::Duration::from_millis(100),
            timeout: teal_api::Duration::from_secs(1),
            healthy_threshold: 2,
            unhealthy_threshold: 2,
        },
        startup_deadline: teal_api::Duration::from_secs(10),
        stop_grace_period: teal_api::Duration::from_millis(grace_ms),
    }
}

fn rev(name: &str) -> RevisionSpec {
    RevisionSpec {
        name: name.into(),
        command: None,
        env: Default::default(),
    }
}

async fn wait_ready(sup: &Supervisor, color: Color, n: u32) {
    for _ in 0..200 {
        if sup.status(color).ready_replicas >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "{color} never had {n} ready replicas: {:?}",
        sup.status(color)
    );
}

#[tokio::test]
async fn health_gates_readiness_and_crashed_replicas_restart() {
    let scratch = Scratch::new("sup-health");
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let sup = Supervisor::new(
        app(sample_app_argv(&["--ready-after", "600ms"]), 2000),
        scratch.0.clone(),
        tx,
    );
    assert!(sup.deploy(Color::Blue, &rev("v1"), 2).is_none());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        sup.status(Color::Blue).ready_replicas,
        0,
        "not ready before /healthz answers 200"
    );
    assert!(
        sup.endpoints(Color::Blue).is_empty(),
        "unready replicas take no traffic"
    );
    wait_ready(&sup, Color::Blue, 2).await;
    assert_eq!(sup.endpoints(Color::Blue).len(), 2);

    // Kill one replica behind the supervisor's back: it is restarted.
    let victim = sup.replicas(Color::Blue)[0].pid;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    for _ in 0..100 {
        if sup.status(Color::Blue).ready_replicas < 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_ready(&sup, Color::Blue, 2).await;
    let views = sup.replicas(Color::Blue);
    assert_eq!(views[0].restarts, 1);
    assert_ne!(views[0].pid, victim);
    assert!(!alive(victim));

    // Retired replicas stop on SIGTERM (the sample app exits cleanly).
    let pids: Vec<u32> = sup.replicas(Color::Blue).iter().map(|r| r.pid).collect();
    sup.retire(Color::Blue).unwrap().stop().await;
    assert!(pids.iter().all(|p| !alive(*p)));
    assert_eq!(sup.status(Color::Blue).revision, None);
}

#[tokio::test]
async fn a_process_ignoring_sigterm_is_killed_after_the_grace_period() {
    let scratch = Scratch::new("sup-kill");
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let script = "trap '' TERM; echo up; while :; do sleep 0.05; done".to_string();
    let sup = Supervisor::new(
        app(vec!["sh".into(), "-c".into(), script], 1500),
        scratch.0.clone(),
        tx,
    );
    sup.deploy(Color::Green, &rev("stubborn"), 1);
    let pid = loop {
        let p = sup.replicas(Color::Green)[0].pid;
        if p != 0 {
            break p;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let group = sup.retire(Color::Green).unwrap();
    let stopping = tokio::spawn(group.stop());
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        alive(pid),
        "SIGTERM is ignored, so the process is still there inside the grace period"
    );
    stopping.await.unwrap();
    // The supervisor reaped it, so it is gone.
    assert!(!alive(pid), "SIGKILL after the grace period");
    let log = std::fs::read_to_string(scratch.0.join("green-stubborn-0.log")).unwrap();
    assert!(log.contains("up"));
}
