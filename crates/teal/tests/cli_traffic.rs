//! Traffic per color in `teal get` and `teal watch`, counted by real `teal
//! router --kubernetes-bluegreen` replicas against the real control plane.
//!
//! The router replicas and the upstreams run in a network namespace this
//! test creates, on the pod addresses kwok gave them (see
//! `netns_support`). The test sends a known set of requests into the
//! namespace and checks the CLI shows exactly those counts, by color and
//! status class.

mod k8s_support;
mod netns_support;
mod router_support;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use netns_support::{BG, Cluster};
use serde_json::json;
use teal_testenv::netns::NetNs;
use teal_testenv::{TestEnv, wait_for};

/// One HTTP/1.1 request from inside the namespace; the status code.
fn get(ns: &NetNs, addr: SocketAddr, path: &str, header: Option<(&str, &str)>) -> u16 {
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: shop\r\n{}Connection: close\r\n\r\n",
        header
            .map(|(k, v)| format!("{k}: {v}\r\n"))
            .unwrap_or_default()
    );
    let mut s = ns.connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {response:?}"))
}

fn teal_cli(env: &TestEnv, ns: &str, args: &[&str]) -> String {
    teal_as(env.kubeconfig_path(), ns, args)
}

/// `teal ARGS -n NS` with `kubeconfig`; its standard output (it must succeed).
fn teal_as(kubeconfig: &Path, ns: &str, args: &[&str]) -> String {
    k8s_support::run_ok(&mut teal_cmd(kubeconfig, ns, args), None)
}

fn teal_cmd(kubeconfig: &Path, ns: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_teal"));
    cmd.args(args)
        .args(["-n", ns])
        .env("KUBECONFIG", kubeconfig);
    cmd
}

/// A kubeconfig of a new ServiceAccount `name` in `ns` bound to the
/// ClusterRole `role` of deploy/user-roles.yaml in that namespace only.
fn cli_user(env: &TestEnv, ns: &str, name: &str, role: &str) -> PathBuf {
    k8s_support::kubectl(env, &["create", "serviceaccount", name, "-n", ns], None);
    k8s_support::kubectl(
        env,
        &[
            "create",
            "rolebinding",
            name,
            "-n",
            ns,
            &format!("--clusterrole={role}"),
            &format!("--serviceaccount={ns}:{name}"),
        ],
        None,
    );
    k8s_support::service_account_kubeconfig(env, ns, name, &router_support::temp_dir())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_and_watch_show_the_exact_responses_the_router_replicas_counted() {
    let mut c = Cluster::start(
        "clitraffic",
        "  preview: {header: {name: x-version, value: preview}}\n",
        "",
    )
    .await;
    let env = TestEnv::shared();
    let ns = c.namespace.clone();

    // Blue is live behind both replicas.
    let (r1, r2) = (c.router_addrs[0], c.router_addrs[1]);
    for _ in 0..3 {
        assert_eq!(get(&c.world.ns, r1, "/", None), 200);
    }
    assert_eq!(get(&c.world.ns, r1, "/no-such-page", None), 404);
    for _ in 0..2 {
        assert_eq!(get(&c.world.ns, r2, "/", None), 200);
    }

    // Green in preview: the preview header reaches it.
    c.preview_green().await;
    for _ in 0..2 {
        assert_eq!(
            get(&c.world.ns, r2, "/", Some(("x-version", "preview"))),
            200
        );
    }

    // The CLI sums what the replicas published.
    let want = json!({
        "blue": {"total": 6, "responses": {"2xx": 5, "4xx": 1}},
        "green": {"total": 2, "responses": {"2xx": 2}},
    });
    let traffic = wait_for(
        "teal get -o json shows the counts",
        Duration::from_secs(120),
        || async {
            let out = teal_cli(env, &ns, &["get", BG, "-o", "json"]);
            let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| e.to_string())?;
            if v["traffic"]["colors"] == want {
                Ok(v["traffic"].clone())
            } else {
                Err(format!("traffic {}", v["traffic"]))
            }
        },
    )
    .await;
    assert_eq!(traffic["router"], "teal");
    assert_eq!(traffic["measured"], true);
    assert_eq!(traffic["replicas"], 2);

    let table = teal_cli(env, &ns, &["get", BG]);
    for line in [
        "Traffic:   2 router replica(s) reporting; responses since each replica started\n",
        "  blue          6 responses (2xx 5, 4xx 1)\n",
        "  green         2 responses (2xx 2)\n",
    ] {
        assert!(table.contains(line), "{line:?} not in\n{table}");
    }
    let watch = teal_cli(env, &ns, &["watch", BG, "--count", "1"]);
    assert_eq!(watch.matches("Phase:").count(), 1, "{watch}");
    // The rate is not asserted: it depends on how long ago the replicas
    // last reported (the rate logic has its own unit tests).
    for line in [
        "  blue          6 responses (2xx 5, 4xx 1)   ",
        "  green         2 responses (2xx 2)   ",
    ] {
        assert!(watch.contains(line), "{line:?} not in\n{watch}");
    }

    // The CLI roles of deploy/user-roles.yaml are enough: a viewer sees the
    // same figures and may not promote; an operator promotes.
    k8s_support::apply_deploy_files(env, &["user-roles.yaml"]);
    let viewer = cli_user(env, &ns, "viewer", "teal-viewer");
    wait_for(
        "the viewer's teal get -o json shows the counts",
        Duration::from_secs(60),
        || async {
            let out = teal_cmd(&viewer, &ns, &["get", BG, "-o", "json"])
                .output()
                .map_err(|e| e.to_string())?;
            let v: serde_json::Value =
                serde_json::from_slice(&out.stdout).map_err(|e| format!("{e}: {out:?}"))?;
            if v["traffic"]["colors"] == want {
                Ok(())
            } else {
                Err(format!("{out:?}"))
            }
        },
    )
    .await;
    let watch = teal_as(&viewer, &ns, &["watch", BG, "--count", "1"]);
    assert!(watch.contains("  blue          6 responses"), "{watch}");
    teal_as(&viewer, &ns, &["history", BG]);
    teal_as(&viewer, &ns, &["list"]);
    let refused = teal_cmd(&viewer, &ns, &["promote", BG]).output().unwrap();
    assert!(!refused.status.success(), "a viewer promoted: {refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("forbidden"),
        "{refused:?}"
    );

    let operator = cli_user(env, &ns, "operator", "teal-operator");
    teal_as(&operator, &ns, &["promote", BG]);
    k8s_support::wait_bluegreen(
        &c.bgs,
        BG,
        "green live after the operator's promote",
        120,
        |st| st.active_color == Some(teal_core::Color::Green),
    )
    .await;
}
