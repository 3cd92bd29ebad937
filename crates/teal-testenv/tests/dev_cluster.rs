//! `scripts/dev-cluster up` prints a KUBECONFIG that kubectl can use, and `down` stops it.

use std::path::{Path, PathBuf};
use std::process::Command;

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

#[test]
fn dev_cluster_up_prints_a_kubeconfig_that_kubectl_uses() {
    let dir = std::env::temp_dir().join(format!("teal-dev-cluster-test-{}", std::process::id()));
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
}
