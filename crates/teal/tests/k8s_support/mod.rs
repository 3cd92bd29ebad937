//! Helpers for tests that drive the real control plane with kubectl.

use std::process::Stdio;

use teal_testenv::TestEnv;

/// Runs kubectl (with `stdin` piped in, if given), asserts it succeeded and
/// returns its trimmed standard output.
pub fn kubectl(env: &TestEnv, args: &[&str], stdin: Option<&str>) -> String {
    let mut cmd = env.kubectl();
    cmd.args(args);
    run_ok(&mut cmd, stdin).trim().to_string()
}

/// Runs `cmd` (with `stdin` piped in, if given), asserts it succeeded and
/// returns its standard output.
pub fn run_ok(cmd: &mut std::process::Command, stdin: Option<&str>) -> String {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let out = if let Some(input) = stdin {
        let mut child = cmd.stdin(Stdio::piped()).spawn().unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    } else {
        cmd.stdin(Stdio::null()).output().unwrap()
    };
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[allow(dead_code)]
/// Applies files of `deploy/` (as users do, server-side) and waits until the
/// BlueGreen CRD is established.
pub fn apply_deploy_files(env: &TestEnv, files: &[&str]) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
    for file in files {
        let path = root.join(file);
        let path = path.to_str().unwrap();
        kubectl(
            env,
            &["apply", "--server-side", "--force-conflicts", "-f", path],
            None,
        );
    }
    kubectl(
        env,
        &[
            "wait",
            "--for=condition=Established",
            "crd/bluegreens.teal.dev",
            "--timeout=30s",
        ],
        None,
    );
}

/// Writes a kubeconfig into `dir` that authenticates with a real token of the
/// ServiceAccount `ns/name` (what a pod running as it gets) and returns its path.
#[allow(dead_code)]
pub fn service_account_kubeconfig(
    env: &TestEnv,
    ns: &str,
    name: &str,
    dir: &std::path::Path,
) -> std::path::PathBuf {
    let token = kubectl(
        env,
        &["create", "token", name, "-n", ns, "--duration", "1h"],
        None,
    );
    let field = |path: &str| {
        kubectl(
            env,
            &[
                "config",
                "view",
                "--raw",
                "--minify",
                "-o",
                &format!("jsonpath={{.clusters[0].cluster.{path}}}"),
            ],
            None,
        )
    };
    let (server, ca) = (field("server"), field("certificate-authority-data"));
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join(format!("kubeconfig-{ns}-{name}"));
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: \"{server}\", certificate-authority-data: \"{ca}\"}}\nusers:\n- name: u\n  user: {{token: \"{token}\"}}\ncontexts:\n- name: c\n  context: {{cluster: c, user: u}}\ncurrent-context: c\n"
        ),
    )
    .unwrap();
    path
}

/// The path of a file or directory under `deploy/`.
#[allow(dead_code)]
pub fn deploy_path(rel: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy")
        .join(rel)
}

/// Waits until BlueGreen `name` is Healthy (with `want` live, if given) and
/// returns its status.
#[allow(dead_code)]
pub async fn wait_healthy(
    bgs: &kube::Api<teal_api::BlueGreen>,
    name: &str,
    want: Option<&str>,
) -> teal_api::BlueGreenStatus {
    wait_bluegreen(
        bgs,
        name,
        &format!("BlueGreen {name} Healthy at {want:?}"),
        180,
        |st| {
            st.phase.as_deref() == Some("Healthy")
                && st.active_revision.is_some()
                && (want.is_none() || st.active_revision.as_deref() == want)
        },
    )
    .await
}

/// Waits until BlueGreen `name` in `ns` is Healthy, sets the image of the
/// workload's `app` container and waits until that revision is live and
/// Healthy; returns the final status.
#[allow(dead_code)]
pub async fn release_image(
    client: &kube::Client,
    ns: &str,
    name: &str,
    image: &str,
) -> teal_api::BlueGreenStatus {
    let bgs: kube::Api<teal_api::BlueGreen> = kube::Api::namespaced(client.clone(), ns);
    let deps: kube::Api<k8s_openapi::api::apps::v1::Deployment> =
        kube::Api::namespaced(client.clone(), ns);
    wait_healthy(&bgs, name, None).await;
    set_image(&deps, name, image).await;
    let want = teal_controller::objects::revision_of(&deps.get(name).await.unwrap().spec.template);
    wait_healthy(&bgs, name, Some(&want)).await
}

/// `kubectl auth can-i ARGS… --as=USER` answered yes.
#[allow(dead_code)]
pub fn can_i_as(env: &TestEnv, user: &str, args: &[&str]) -> bool {
    let out = env
        .kubectl()
        .args(["auth", "can-i"])
        .args(args)
        .arg(format!("--as={user}"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim() == "yes"
}

/// A two-replica Deployment `name` (container `app`, image `name:1`) and a
/// BlueGreen releasing it; `extra` is appended to the BlueGreen's spec.
#[allow(dead_code)]
pub fn workload_and_bluegreen(name: &str, extra: &str) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec: {{containers: [{{name: app, image: "{name}:1", ports: [{{name: http, containerPort: 8080}}]}}]}}
---
apiVersion: teal.dev/v1alpha1
kind: BlueGreen
metadata: {{name: {name}}}
spec:
  workloadRef: {{kind: Deployment, name: {name}}}
{extra}"#
    )
}

#[allow(dead_code)]
/// BlueGreen `name`'s status once `ok` holds for it, polling the apiserver
/// for up to `secs` seconds.
pub async fn wait_bluegreen(
    bgs: &kube::Api<teal_api::BlueGreen>,
    name: &str,
    what: &str,
    secs: u64,
    ok: impl Fn(&teal_api::BlueGreenStatus) -> bool,
) -> teal_api::BlueGreenStatus {
    teal_testenv::wait_for(what, std::time::Duration::from_secs(secs), || async {
        let st = bgs
            .get(name)
            .await
            .map_err(|e| e.to_string())?
            .status
            .unwrap_or_default();
        if ok(&st) {
            Ok(st)
        } else {
            Err(format!(
                "phase {:?}, active {:?} at {:?}: {:?}; engine {}",
                st.phase,
                st.active_color,
                st.active_revision,
                st.message,
                serde_json::to_string(&st.engine).unwrap_or_default()
            ))
        }
    })
    .await
}

#[allow(dead_code)]
/// The color the live Service `service` selects (None: no color label).
pub async fn live_color(client: &kube::Client, ns: &str, service: &str) -> Option<String> {
    let svc: kube::Api<k8s_openapi::api::core::v1::Service> =
        kube::Api::namespaced(client.clone(), ns);
    svc.get(service)
        .await
        .unwrap()
        .spec
        .and_then(|s| s.selector)
        .and_then(|s| s.get("teal.dev/color").cloned())
}

/// Sets the image of the `app` container of Deployment `name`: a new
/// revision for the BlueGreen releasing it. Returns that revision.
#[allow(dead_code)]
pub async fn set_image(
    deps: &kube::Api<k8s_openapi::api::apps::v1::Deployment>,
    name: &str,
    image: &str,
) -> String {
    use kube::api::{Patch, PatchParams};
    let patch = serde_json::json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": image}]}}}});
    let d = deps
        .patch(name, &PatchParams::default(), &Patch::Strategic(patch))
        .await
        .unwrap();
    teal_controller::objects::revision_of(&d.spec.template)
}

/// A `teal controller` process watching namespace `ns` (with `extra`
/// arguments), its log appended to `teal-controller-<ns>.log` in the
/// temporary directory. SIGKILLed when dropped: no chance to finish what it
/// was doing.
#[allow(dead_code)]
pub struct ControllerProcess(pub std::process::Child);

#[allow(dead_code)]
impl ControllerProcess {
    pub fn start(env: &TestEnv, ns: &str, extra: &[&str]) -> ControllerProcess {
        Self::start_logging(env, ns, extra, &[("TEAL_LOG", Some("info"))])
    }

    /// Like [`ControllerProcess::start`] with the log filter variables as
    /// given (`None`: unset), for tests of the log itself.
    pub fn start_logging(
        env: &TestEnv,
        ns: &str,
        extra: &[&str],
        vars: &[(&str, Option<&str>)],
    ) -> ControllerProcess {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(Self::log_path(ns))
            .unwrap();
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_teal"));
        cmd.arg("controller")
            .args(["--namespace", ns])
            .args(extra)
            .env("KUBECONFIG", env.kubeconfig_path())
            .env_remove("TEAL_LOG")
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in vars {
            if let Some(v) = v {
                cmd.env(k, v);
            }
        }
        ControllerProcess(cmd.spawn().unwrap())
    }

    /// Where the controllers of namespace `ns` log.
    pub fn log_path(ns: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("teal-controller-{ns}.log"))
    }

    /// SIGKILLs it now.
    pub fn kill(self) {
        drop(self);
    }

    /// How it ended, if it did.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.0.try_wait().unwrap()
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// xorshift: enough to spread fault points; the seed makes a run replayable.
#[allow(dead_code)]
pub struct Rng(pub u64);

#[allow(dead_code)]
impl Rng {
    /// The seed of `TEAL_FAULT_SEED`, else one from the clock; printed so
    /// that a failed run can be replayed.
    pub fn from_env() -> Rng {
        let seed = std::env::var("TEAL_FAULT_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        eprintln!("TEAL_FAULT_SEED={seed}");
        Rng(seed)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }

    /// One of `r`.
    pub fn pick(&mut self, r: std::ops::Range<usize>) -> usize {
        r.start + self.below((r.end - r.start) as u64) as usize
    }
}
