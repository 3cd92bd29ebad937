//! `scripts/dev-cluster up` prints a KUBECONFIG that kubectl can use, and `down` stops it.
//! Run as root it brings up the real node too: the commands of docs/dev-cluster.md ("The real
//! node") give a pod of teal's image that answers HTTP from the host on its ClusterIP, and
//! `down` leaves the machine as it was.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use teal_testenv::real_node;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/dev-cluster")
}

/// Runs `dev-cluster down` when dropped, so a failing test leaves nothing running.
struct Down(PathBuf);

impl Drop for Down {
    fn drop(&mut self) {
        let _ = Command::new(script())
            .arg("down")
            .env("TEAL_DEV_CLUSTER_DIR", &self.0)
            .status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn kubectl(kubeconfig: &str, args: &[&str]) -> String {
    let kubectl = std::env::var_os("TEAL_KUBECTL").unwrap_or_else(|| "kubectl".into());
    let out = Command::new(kubectl)
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .output()
        .expect("running kubectl");
    assert!(
        out.status.success(),
        "kubectl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn get_root(addr: SocketAddr) -> Result<String, String> {
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(3)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| e.to_string())?;
    Ok(response)
}

/// The real-node part of docs/dev-cluster.md, command for command.
fn kubectl_run_answers_on_its_cluster_ip(dir: &Path, kubeconfig: &str) {
    let nodes = kubectl(kubeconfig, &["get", "nodes", "-L", "teal.dev/node"]);
    let line = nodes
        .lines()
        .find(|l| l.starts_with(real_node::NODE_NAME))
        .unwrap_or_else(|| panic!("no real node in:\n{nodes}"));
    assert!(
        line.contains(" Ready ") && line.trim_end().ends_with("real"),
        "{line}"
    );

    // Builds the image (a no-op cargo build once scripts/test built it) and loads it.
    let load = Command::new(script())
        .arg("image")
        .env("TEAL_DEV_CLUSTER_DIR", dir)
        .output()
        .unwrap();
    assert!(
        load.status.success(),
        "scripts/dev-cluster image: {}",
        String::from_utf8_lossy(&load.stderr)
    );
    let image = format!("--image=teal:{}", env!("CARGO_PKG_VERSION"));
    kubectl(
        kubeconfig,
        &[
            "run",
            "web",
            &image,
            "--image-pull-policy=IfNotPresent",
            "--port=8080",
            r#"--overrides={"spec":{"nodeSelector":{"teal.dev/node":"real"},"tolerations":[{"key":"teal.dev/node","operator":"Equal","value":"real","effect":"NoSchedule"}]}}"#,
            "--",
            "sample-app",
            "--color",
            "blue",
            "--listen",
            "0.0.0.0",
            "--port",
            "8080",
        ],
    );
    kubectl(
        kubeconfig,
        &["expose", "pod", "web", "--port=80", "--target-port=8080"],
    );
    kubectl(
        kubeconfig,
        &["wait", "--for=condition=Ready", "pod/web", "--timeout=120s"],
    );
    let ip = kubectl(
        kubeconfig,
        &["get", "service", "web", "-o", "jsonpath={.spec.clusterIP}"],
    );
    let addr: SocketAddr = format!("{}:80", ip.trim()).parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let response = loop {
        match get_root(addr) {
            Ok(r) if r.starts_with("HTTP/1.1 200") => break r,
            other if Instant::now() >= deadline => panic!("GET http://{addr}/: {other:?}"),
            _ => std::thread::sleep(Duration::from_millis(500)),
        }
    };
    assert!(response.contains(r#""color":"blue""#), "{response}");
}

#[test]
fn dev_cluster_up_prints_a_kubeconfig_that_kubectl_uses() {
    let dir = std::env::temp_dir().join(format!("teal-dev-cluster-test-{}", std::process::id()));
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    let before = root.then(|| real_node::snapshot().expect("snapshot before up"));
    let down = Down(dir.clone());

    let up = Command::new(script())
        .arg("up")
        .env("TEAL_DEV_CLUSTER_DIR", &dir)
        .output()
        .expect("running scripts/dev-cluster up");
    let stdout = String::from_utf8_lossy(&up.stdout);
    assert!(
        up.status.success(),
        "dev-cluster up failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&up.stderr)
    );
    let kubeconfig = stdout
        .lines()
        .find_map(|l| l.strip_prefix("export KUBECONFIG="))
        .unwrap_or_else(|| panic!("no KUBECONFIG line in:\n{stdout}"));
    assert!(
        Path::new(kubeconfig).is_file(),
        "{kubeconfig} does not exist"
    );

    let kubectl = std::env::var_os("TEAL_KUBECTL").unwrap_or_else(|| "kubectl".into());
    let get = Command::new(kubectl)
        .args(["get", "nodes,pods", "-A"])
        .env("KUBECONFIG", kubeconfig)
        .output()
        .expect("running kubectl");
    let listed = String::from_utf8_lossy(&get.stdout);
    assert!(
        get.status.success(),
        "kubectl get nodes,pods -A failed: {}",
        String::from_utf8_lossy(&get.stderr)
    );
    assert!(listed.contains("node/kwok-node-0"), "{listed}");
    assert!(listed.contains("Ready"), "{listed}");
    if root {
        assert!(
            stdout.contains("export PATH=") && stdout.contains("Node teal-node is real"),
            "{stdout}"
        );
        kubectl_run_answers_on_its_cluster_ip(&dir, kubeconfig);
    }

    let status = Command::new(script())
        .arg("status")
        .env("TEAL_DEV_CLUSTER_DIR", &dir)
        .status()
        .unwrap();
    assert!(status.success(), "status says it is not running");

    drop(down);
    let status = Command::new(script())
        .arg("status")
        .env("TEAL_DEV_CLUSTER_DIR", &dir)
        .output()
        .unwrap();
    assert!(!status.status.success(), "still running after down");
    if let Some(before) = before {
        let after = real_node::snapshot().expect("snapshot after down");
        assert_eq!(
            before, after,
            "the machine differs after dev-cluster down (left: before up, right: after down)"
        );
    }
}
