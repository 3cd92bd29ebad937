//! The real node: a kubelet, kube-proxy, containerd (with runc and CNI) and CoreDNS running on
//! this machine, registered as node `teal-node` next to the kwok nodes
//! (`scripts/control-plane run --real-node`, `scripts/cp/node.sh`).
//!
//! Pods land on it only when they ask: it carries the label `teal.dev/node=real` and the taint
//! `teal.dev/node=real:NoSchedule` ([`placement`] gives both for a pod spec). Pods there get
//! addresses on the bridge `teal0` (10.85.0.0/24), kube-proxy (iptables mode) routes ClusterIPs
//! on the host, and CoreDNS answers for `cluster.local`. Only images loaded into its containerd
//! run: nothing is pulled from anywhere (an image that is not loaded fails with
//! `ErrImagePull`).
//!
//! It owns host networking state, so one exists per machine at a time: starting one waits for
//! the machine-wide lock (`/run/teal-node.lock`) while another test's node runs. When the
//! [`RealNode`] is dropped, or the test process exits however it exits (a panic included), its
//! supervisor stops everything and removes what the node put on the machine; a node whose
//! supervisor was killed is cleaned up by the next start. Needs root.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{Value, json};

use crate::{Error, TestEnv, supervisor};

/// The real node's name.
pub const NODE_NAME: &str = "teal-node";
/// Label key and value of the real node (and of nothing else).
pub const NODE_LABEL: (&str, &str) = ("teal.dev/node", "real");
/// The real node's address: its InternalIP, the bridge's address, the pods' gateway and
/// cluster DNS.
pub const NODE_IP: &str = "10.85.0.1";

/// Starting waits for another test's real node to go; this covers that and the start itself.
const START_TIMEOUT: Duration = Duration::from_secs(1200);

/// A control plane of the test's own with the real node. Dropping it stops both and waits
/// until the machine is clean.
pub struct RealNode {
    env: TestEnv,
}

impl RealNode {
    /// Starts a control plane with the real node and loads `images` (OCI archives, see
    /// [`teal_image`] and [`busybox_image`]) into the node's containerd. Blocks (also while
    /// another real node runs on the machine); returns once the node is Ready, kube-proxy and
    /// CoreDNS serve.
    pub fn start(images: &[&Path]) -> Result<RealNode, Error> {
        let mut options = vec!["--real-node".to_owned()];
        options.extend(images.iter().map(|i| format!("--image={}", i.display())));
        Ok(RealNode {
            env: TestEnv::start_within(&options, START_TIMEOUT)?,
        })
    }

    /// The control plane (its kubeconfig, client and kubectl).
    pub fn env(&self) -> &TestEnv {
        &self.env
    }

    /// Stops the control plane and the node and waits until the machine is clean.
    pub fn stop(self) {
        drop(self);
    }
}

/// `nodeSelector` and `tolerations` that put a pod on the real node; merge them into a pod spec.
pub fn placement() -> Value {
    json!({
        "nodeSelector": {NODE_LABEL.0: NODE_LABEL.1},
        "tolerations": [{
            "key": NODE_LABEL.0,
            "operator": "Equal",
            "value": NODE_LABEL.1,
            "effect": "NoSchedule",
        }],
    })
}

/// The host state a real node touches (`scripts/control-plane node-snapshot`): processes,
/// pod cgroups, mounts, network namespaces, links, routes, iptables chains and rules, kernel
/// settings, files. Equal before a node starts and after it stopped when nothing is left.
pub fn snapshot() -> Result<String, Error> {
    let script = supervisor::script()?;
    let out = Command::new(&script)
        .arg("node-snapshot")
        .output()
        .map_err(|e| Error::io(format!("running {} node-snapshot", script.display()), e))?;
    if !out.status.success() {
        return Err(Error::RealNode(format!(
            "node-snapshot failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn scripts_dir() -> Result<PathBuf, Error> {
    let script = supervisor::script()?;
    Ok(script
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_owned))
}

fn run_image_script(args: &[&str], what: &str) -> Result<String, Error> {
    let script = scripts_dir()?.join("image");
    let out = Command::new(&script)
        .args(args)
        .output()
        .map_err(|e| Error::io(format!("running {}", script.display()), e))?;
    if !out.status.success() {
        return Err(Error::RealNode(format!(
            "{what}: {} {} failed ({}):\n{}",
            script.display(),
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// teal's image as an OCI archive: `$TEAL_IMAGE_ARCHIVE` when set (scripts/test builds it
/// once), else built by `scripts/image build` (a release build of the static binary; slow)
/// once per test process.
pub fn teal_image() -> Result<PathBuf, Error> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    if let Some(path) = std::env::var_os("TEAL_IMAGE_ARCHIVE").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(Error::RealNode(format!(
                "TEAL_IMAGE_ARCHIVE={} does not exist",
                path.display()
            )))
        };
    }
    BUILT
        .get_or_init(|| {
            let dir = supervisor::state_dir("image").map_err(|e| e.to_string())?;
            let out = dir.join("teal-image.tar");
            let out_str = out.to_string_lossy().into_owned();
            run_image_script(&["build", &out_str], "building teal's image")
                .map(PathBuf::from)
                .map_err(|e| e.to_string())
        })
        .clone()
        .map_err(Error::RealNode)
}

/// The name teal's image is loaded as (`docker.io/library/teal:<version>`; `teal:<version>`
/// in a pod spec).
pub fn teal_image_name() -> Result<String, Error> {
    run_image_script(&["name"], "naming teal's image")
}

/// A test image with Debian's static busybox (`nslookup`, `wget`, `nc` inside pods), written
/// into `dir`. Returns the archive and the image name to use in a pod spec.
pub fn busybox_image(dir: &Path) -> Result<(PathBuf, String), Error> {
    let out = dir.join("busybox-image.tar");
    let out_str = out.to_string_lossy().into_owned();
    let name = run_image_script(&["busybox", &out_str], "writing the busybox image")?;
    Ok((out, name))
}
