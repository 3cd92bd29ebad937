//! deploy/rbac.yaml is enough for the controller, and no more: the
//! controller runs as that ServiceAccount (a real token from the apiserver)
//! through a whole release, and verbs it never uses are denied.

mod k8s_support;

use std::process::{Command, Stdio};

use k8s_support::{apply_deploy_files, kubectl};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use teal_api::BlueGreen;
use teal_testenv::{TestEnv, wait_for};

fn can_i(env: &TestEnv, verb: &str, resource: &str) -> bool {
    let out = env
        .kubectl()
        .args([
            "auth",
            "can-i",
            verb,
            resource,
            "-A",
            "--as=system:serviceaccount:teal-system:teal-controller",
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim() == "yes"
}

#[tokio::test]
async fn the_controller_runs_a_release_with_only_its_role() {
    let env = TestEnv::shared();
    apply_deploy_files(env, &["crd.yaml", "rbac.yaml"]);
    // Least privilege: what teal never does is denied.
    for (verb, resource) in [
        ("get", "secrets"),
        ("update", "services"),
        ("delete", "pods"),
        ("update", "leases.coordination.k8s.io"),
        ("bind", "roles.rbac.authorization.k8s.io"),
        ("escalate", "roles.rbac.authorization.k8s.io"),
        ("create", "pods"),
        ("update", "deployments"),
        ("delete", "bluegreens.teal.dev"),
    ] {
        assert!(
            !can_i(env, verb, resource),
            "the controller's role allows {verb} {resource}"
        );
    }
    assert!(can_i(env, "patch", "deployments"));
    assert!(can_i(env, "delete", "services"));
    assert!(can_i(env, "patch", "bluegreens.teal.dev/status"));

    // A kubeconfig holding a real ServiceAccount token.
    let token = kubectl(
        env,
        &[
            "create",
            "token",
            "teal-controller",
            "-n",
            "teal-system",
            "--duration",
            "1h",
        ],
        None,
    );
    let server = kubectl(
        env,
        &[
            "config",
            "view",
            "--raw",
            "--minify",
            "-o",
            "jsonpath={.clusters[0].cluster.server}",
        ],
        None,
    );
    let ca = kubectl(
        env,
        &[
            "config",
            "view",
            "--raw",
            "--minify",
            "-o",
            "jsonpath={.clusters[0].cluster.certificate-authority-data}",
        ],
        None,
    );
    let dir = std::env::temp_dir().join(format!("teal-rbac-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: \"{server}\", certificate-authority-data: \"{ca}\"}}\nusers:\n- name: teal\n  user: {{token: \"{token}\"}}\ncontexts:\n- name: c\n  context: {{cluster: c, user: teal}}\ncurrent-context: c\n"
        ),
    )
    .unwrap();

    let ns = env.namespace("rbac").await;
    let manifest = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: shop}
spec:
  replicas: 2
  selector: {matchLabels: {app: shop}}
  template:
    metadata: {labels: {app: shop}}
    spec: {containers: [{name: app, image: "shop:1", ports: [{name: http, containerPort: 8080}]}]}
---
apiVersion: teal.dev/v1alpha1
kind: BlueGreen
metadata: {name: shop}
spec:
  workloadRef: {kind: Deployment, name: shop}
  scaleDownDelay: 1s
"#;
    kubectl(env, &["apply", "-n", &ns, "-f", "-"], Some(manifest));
    let log = std::fs::File::create(dir.join("controller.log")).unwrap();
    let mut controller = Command::new(env!("CARGO_BIN_EXE_teal"))
        .args([
            "controller",
            "--lease-namespace",
            "teal-system",
            "--lease-name",
            &format!("teal-{ns}"),
        ])
        .args(["--metrics-addr", "127.0.0.1:0", "--identity", "rbac-test"])
        .env("KUBECONFIG", &kubeconfig)
        .env("TEAL_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();

    let client = env.client();
    let bgs: Api<BlueGreen> = Api::namespaced(client.clone(), &ns);
    let deps: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let healthy = |want: Option<String>| {
        let bgs = bgs.clone();
        async move {
            wait_for("Healthy", Duration::from_secs(60), || {
                let bgs = bgs.clone();
                let want = want.clone();
                async move {
                    let st = bgs
                        .get("shop")
                        .await
                        .map_err(|e| e.to_string())?
                        .status
                        .unwrap_or_default();
                    let at = want.is_none() || st.active_revision == want;
                    if st.phase.as_deref() == Some("Healthy") && at {
                        Ok(st)
                    } else {
                        Err(format!("{:?} {:?}", st.phase, st.message))
                    }
                }
            })
            .await
        }
    };
    healthy(None).await;
    let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "shop:2"}]}}}});
    deps.patch("shop", &PatchParams::default(), &Patch::Strategic(patch))
        .await
        .unwrap();
    let want =
        teal_controller::objects::revision_of(&deps.get("shop").await.unwrap().spec.template);
    let st = healthy(Some(want)).await;
    assert!(st.history.iter().any(|h| h.outcome == "promoted"));
    let _ = controller.kill();
    let _ = controller.wait();
    let log = std::fs::read_to_string(dir.join("controller.log")).unwrap_or_default();
    assert!(
        !log.contains("forbidden"),
        "the controller hit a permission it lacks:\n{log}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
