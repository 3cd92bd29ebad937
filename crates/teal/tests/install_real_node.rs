//! teal installed as users install it, running for real: `helm install` of deploy/helm/teal,
//! and then `kubectl apply` of deploy/*.yaml, put the controller into pods on the real node
//! (teal's image from scripts/image, loaded into the node's containerd). The pods run as
//! 65532 on a read-only root filesystem under their ServiceAccount, pass their probes, elect
//! one leader through the Lease (only it answers /readyz), serve /metrics through their
//! Service's ClusterIP, and the leader releases a workload with nothing but the RBAC the
//! install grants. The workload's own pods stay on the kwok nodes (simulated).

mod k8s_support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use k8s_support::{
    apply_deploy_files, deploy_path, kubectl, release_image, workload_and_bluegreen,
};
use serde_json::{Value, json};
use teal_testenv::TestEnv;
use teal_testenv::real_node::{self, NODE_NAME, RealNode};

fn helm(env: &TestEnv) -> Command {
    let bin = std::env::var_os("TEAL_HELM").expect(
        "TEAL_HELM is not set: run `scripts/control-plane build helm` and \
         `eval \"$(scripts/control-plane env)\"` first",
    );
    let mut cmd = Command::new(bin);
    cmd.env("KUBECONFIG", env.kubeconfig_path());
    cmd
}

/// GET `path` on `addr` from the host; the status code and body.
fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(3)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: teal\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .map_err(|e| e.to_string())?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no end of head in {response:?}"))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status in {head:?}"))?;
    Ok((code, body.to_owned()))
}

fn wait<T>(what: &str, secs: u64, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        match check() {
            Ok(v) => return v,
            Err(seen) if std::time::Instant::now() >= deadline => {
                panic!("timed out after {secs}s waiting for {what}; last seen: {seen}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

/// The process of container `container_id` (cgroupfs driver: its pids cgroup is named after it).
fn container_pid(container_id: &str) -> u32 {
    let out = Command::new("find")
        .args([
            "/sys/fs/cgroup/pids/kubepods",
            "-type",
            "d",
            "-name",
            container_id,
        ])
        .output()
        .expect("find");
    let dir = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or_else(|| panic!("no pids cgroup for container {container_id}"))
        .to_owned();
    let procs = std::fs::read_to_string(format!("{dir}/cgroup.procs")).unwrap();
    procs
        .lines()
        .next()
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("no process in {dir}"))
}

/// The controller of one install: Deployment `deployment` in `ns`, ServiceAccount `sa`,
/// metrics Service `service`. Checks its pods as described at the top of this file.
fn check_controller(env: &TestEnv, ns: &str, deployment: &str, sa: &str, service: &str) {
    kubectl(
        env,
        &[
            "-n",
            ns,
            "rollout",
            "status",
            &format!("deployment/{deployment}"),
            "--timeout=180s",
        ],
        None,
    );
    // Pods of an earlier template (before a patch) may still be going away.
    let pods = wait("two controller pods, both current", 120, || {
        let all: Value = serde_json::from_str(&kubectl(
            env,
            &[
                "-n",
                ns,
                "get",
                "pods",
                "-l",
                "app.kubernetes.io/name=teal",
                "-o",
                "json",
            ],
            None,
        ))
        .map_err(|e| e.to_string())?;
        let pods = all["items"].as_array().cloned().unwrap_or_default();
        if pods.len() == 2
            && pods
                .iter()
                .all(|p| p["metadata"]["deletionTimestamp"].is_null())
        {
            Ok(pods)
        } else {
            Err(format!("{} pods", pods.len()))
        }
    });
    let mut names = Vec::new();
    let mut ips = Vec::new();
    for pod in &pods {
        let name = pod["metadata"]["name"].as_str().unwrap().to_owned();
        assert_eq!(
            pod["spec"]["nodeName"], NODE_NAME,
            "{name} runs on the real node"
        );
        assert_eq!(pod["spec"]["serviceAccountName"], sa, "{name}");
        let status = &pod["status"]["containerStatuses"][0];
        assert_eq!(status["ready"], true, "{name}: {status}");
        assert_eq!(status["restartCount"], 0, "{name}: {status}");
        assert!(
            status["image"]
                .as_str()
                .unwrap()
                .ends_with(&format!("teal:{}", env!("CARGO_PKG_VERSION"))),
            "{status}"
        );
        // The process itself: uid and gid 65532, root filesystem read-only, no new privileges.
        let id = status["containerID"]
            .as_str()
            .unwrap()
            .trim_start_matches("containerd://");
        let pid = container_pid(id);
        let proc_status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let field = |key: &str| {
            proc_status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .unwrap_or_default()
                .split_whitespace()
                .collect::<Vec<_>>()
        };
        assert_eq!(field("Uid:"), ["65532"; 4], "{name}: {proc_status}");
        assert_eq!(field("Gid:"), ["65532"; 4], "{name}: {proc_status}");
        assert_eq!(field("NoNewPrivs:"), ["1"], "{name}");
        assert_eq!(
            field("CapEff:"),
            ["0000000000000000"],
            "{name}: capabilities dropped"
        );
        assert_eq!(
            field("Seccomp:"),
            ["2"],
            "{name}: RuntimeDefault seccomp filter"
        );
        let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap();
        assert!(
            cmdline.starts_with("/usr/local/bin/teal\0controller\0"),
            "{cmdline:?}"
        );
        let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
        let root = mountinfo
            .lines()
            .find(|l| l.split_whitespace().nth(4) == Some("/"))
            .unwrap_or_else(|| panic!("no root mount in {mountinfo}"));
        assert!(
            root.split_whitespace()
                .nth(5)
                .is_some_and(|o| o.split(',').any(|f| f == "ro")),
            "{name}: root filesystem is not read-only: {root}"
        );
        names.push(name);
        ips.push(pod["status"]["podIP"].as_str().unwrap().to_owned());
    }

    // Leader election: the Lease names one of them, and only that one is ready to act.
    let holder = wait("the leader Lease", 60, || {
        let out = env
            .kubectl()
            .args([
                "-n",
                ns,
                "get",
                "lease",
                "teal-controller",
                "-o",
                "jsonpath={.spec.holderIdentity}",
            ])
            .output()
            .map_err(|e| e.to_string())?;
        let holder = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if names.contains(&holder) {
            Ok(holder)
        } else {
            Err(format!("holder {holder:?}"))
        }
    });
    wait("/readyz on the leader only", 60, || {
        let mut answers = Vec::new();
        for (name, ip) in names.iter().zip(&ips) {
            let (code, _) = http_get(format!("{ip}:8080").parse().unwrap(), "/readyz")?;
            answers.push((name.clone(), code));
        }
        let ready: Vec<&String> = answers
            .iter()
            .filter(|(_, c)| *c == 200)
            .map(|(n, _)| n)
            .collect();
        if ready == [&holder] {
            Ok(())
        } else {
            Err(format!("{answers:?}, leader {holder}"))
        }
    });

    // /metrics through the Service's ClusterIP, routed by kube-proxy on this machine.
    let cluster_ip = kubectl(
        env,
        &[
            "-n",
            ns,
            "get",
            "service",
            service,
            "-o",
            "jsonpath={.spec.clusterIP}",
        ],
        None,
    );
    let (code, body) = wait("/metrics on the ClusterIP", 60, || {
        http_get(format!("{cluster_ip}:8080").parse().unwrap(), "/metrics")
    });
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("teal_"), "{body}");
}

/// A release of a workload (on the kwok nodes) by the controller in its pod.
async fn released_by_the_controller(env: &TestEnv, ns: &str) {
    kubectl(env, &["create", "namespace", ns], None);
    wait("the default service account", 60, || {
        let out = env
            .kubectl()
            .args(["-n", ns, "get", "serviceaccount", "default"])
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    });
    kubectl(
        env,
        &["apply", "-n", ns, "-f", "-"],
        Some(&workload_and_bluegreen("shop", "  scaleDownDelay: 1s\n")),
    );
    let st = release_image(&env.client(), ns, "shop", "shop:2").await;
    assert!(
        st.history.iter().any(|h| h.outcome == "promoted"),
        "{:?}",
        st.history
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn helm_and_the_manifests_run_the_controller_in_pods_on_the_real_node() {
    let image = tokio::task::spawn_blocking(real_node::teal_image)
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}"));
    let node = tokio::task::spawn_blocking(move || RealNode::start(&[&image]))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}"));
    let env = node.env();
    let placement = real_node::placement();

    // helm install, with the placement as values.
    let values = env.state_dir().join("real-node-values.json");
    std::fs::write(&values, serde_json::to_vec(&placement).unwrap()).unwrap();
    let out = helm(env)
        .args([
            "install",
            "teal",
            deploy_path("helm/teal").to_str().unwrap(),
        ])
        .args(["-n", "teal-system", "--create-namespace", "-f"])
        .arg(&values)
        .args(["--wait", "--timeout", "300s"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "helm install: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    check_controller(env, "teal-system", "teal", "teal", "teal-metrics");
    released_by_the_controller(env, "helm-apps").await;
    let out = helm(env)
        .args(["uninstall", "teal", "-n", "teal-system", "--wait"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "helm uninstall: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    kubectl(
        env,
        &[
            "delete",
            "namespace",
            "teal-system",
            "--wait=true",
            "--timeout=120s",
        ],
        None,
    );

    // kubectl apply of deploy/*.yaml, the placement patched in as an operator would.
    apply_deploy_files(env, &["crd.yaml", "rbac.yaml", "controller.yaml"]);
    kubectl(
        env,
        &[
            "-n",
            "teal-system",
            "patch",
            "deployment",
            "teal-controller",
            "--type=strategic",
            "-p",
            &json!({"spec": {"template": {"spec": placement}}}).to_string(),
        ],
        None,
    );
    check_controller(
        env,
        "teal-system",
        "teal-controller",
        "teal-controller",
        "teal-controller-metrics",
    );
    released_by_the_controller(env, "manifest-apps").await;
    drop(node);
}
