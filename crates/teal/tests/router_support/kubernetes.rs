//! Router type `teal` against the test control plane: the `teal controller`
//! process, the router pods kwok runs, and real `teal router
//! --kubernetes-bluegreen` processes playing them.

use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::ListParams;
use teal_testenv::{TestEnv, wait_for};

use super::{Proc, spawn_command};

/// A child process killed (and reaped) when dropped.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The `teal controller` binary watching `ns`, with a router image set.
pub fn controller(env: &TestEnv, ns: &str) -> Killed {
    Killed(
        Command::new(env!("CARGO_BIN_EXE_teal"))
            .args([
                "controller",
                "--namespace",
                ns,
                "--no-leader-election",
                "--metrics-addr",
                "127.0.0.1:0",
            ])
            .env("KUBECONFIG", env.kubeconfig_path())
            .env("TEAL_ROUTER_IMAGE", "teal:test")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    )
}

fn pod_ready(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Waits until BlueGreen `bluegreen` has `n` ready router pods and returns them.
pub async fn ready_router_pods(pods: &Api<Pod>, bluegreen: &str, n: usize) -> Vec<Pod> {
    let sel = format!("teal.dev/router={bluegreen}");
    wait_for(
        &format!("{n} ready router pods"),
        Duration::from_secs(90),
        || {
            let (pods, sel) = (pods.clone(), sel.clone());
            async move {
                let l = pods
                    .list(&ListParams::default().labels(&sel))
                    .await
                    .map_err(|e| e.to_string())?;
                let ready: Vec<Pod> = l.items.into_iter().filter(pod_ready).collect();
                if ready.len() == n {
                    Ok(ready)
                } else {
                    Err(format!("{} ready", ready.len()))
                }
            }
        },
    )
    .await
}

/// A router replica following BlueGreen `bluegreen` as pod `pod`, listening
/// on `listen`, started by `cmd` (the teal binary, maybe wrapped) with
/// `kubeconfig`; returns the process and its admin address (on loopback,
/// with [`super::TOKEN`]).
pub fn follow(
    cmd: Command,
    kubeconfig: &std::path::Path,
    ns: &str,
    bluegreen: &str,
    pod: &Pod,
    listen: &str,
) -> (Proc, SocketAddr) {
    let dir = super::temp_dir();
    let token = dir.join("token");
    std::fs::write(&token, format!("{}\n", super::TOKEN)).unwrap();
    let name = pod.metadata.name.clone().unwrap();
    let uid = pod.metadata.uid.clone().unwrap();
    let kubeconfig = kubeconfig.display().to_string();
    let token = token.display().to_string();
    let p = spawn_command(
        cmd,
        &[
            "router",
            "--listen",
            listen,
            "--admin",
            "127.0.0.1:0",
            "--admin-token-file",
            &token,
            "--kubernetes-bluegreen",
            bluegreen,
            "--kubernetes-namespace",
            ns,
            "--pod-name",
            &name,
            "--pod-uid",
            &uid,
        ],
        &[("KUBECONFIG", kubeconfig.as_str())],
    );
    let admin = super::field(&p.line, "admin=").parse().unwrap();
    (p, admin)
}

/// Address and revision (label `teal.dev/revision`) of each pod of `color`
/// of BlueGreen `bluegreen` that has an address and is not being deleted,
/// sorted.
pub async fn color_pods(pods: &Api<Pod>, bluegreen: &str, color: &str) -> Vec<(IpAddr, String)> {
    let list = pods
        .list(&ListParams::default().labels(&format!(
            "teal.dev/bluegreen={bluegreen},teal.dev/color={color}"
        )))
        .await
        .unwrap();
    let mut v: Vec<(IpAddr, String)> = list
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| {
            let ip = p.status.as_ref()?.pod_ip.as_ref()?.parse().ok()?;
            let rev = p
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(teal_api::bluegreen::labels::REVISION))
                .cloned()
                .unwrap_or_default();
            Some((ip, rev))
        })
        .collect();
    v.sort();
    v
}

/// The route generation router pod `pod` reports in its Lease.
pub async fn lease_generation(leases: &Api<Lease>, pod: &str) -> Option<i64> {
    leases
        .get_opt(pod)
        .await
        .ok()??
        .metadata
        .annotations?
        .get("teal.dev/route-generation")?
        .parse()
        .ok()
}

/// Waits until BlueGreen `bluegreen` has switched to green (route generation
/// above `before`) and router pod `pod` reports that generation; returns it.
pub async fn wait_switch_reported(
    bgs: &Api<teal_api::BlueGreen>,
    leases: &Api<Lease>,
    bluegreen: &str,
    pod: &str,
    before: i64,
) -> i64 {
    wait_for(
        &format!("router {pod} serves the switch"),
        Duration::from_secs(60),
        || async move {
            let st = bgs
                .get(bluegreen)
                .await
                .map_err(|e| e.to_string())?
                .status
                .unwrap_or_default();
            let r = st.router.clone().ok_or("no status.router")?;
            let g = lease_generation(leases, pod).await;
            if r.active == Some(teal_core::Color::Green)
                && r.generation > before
                && g == Some(r.generation)
            {
                Ok(r.generation)
            } else {
                Err(format!("status.router {r:?}, lease of {pod}: {g:?}"))
            }
        },
    )
    .await
}
