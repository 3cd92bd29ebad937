//! deploy/rbac.yaml is enough for the controller, and no more: the
//! controller runs as that ServiceAccount (a real token from the apiserver)
//! through a whole release, and verbs it never uses are denied.

mod k8s_support;

use std::process::{Command, Stdio};

use k8s_support::{
    apply_deploy_files, kubectl, release_image, service_account_kubeconfig, workload_and_bluegreen,
};

use teal_testenv::TestEnv;

fn can_i(env: &TestEnv, verb: &str, resource: &str) -> bool {
    let out = env
        .kubectl()
        .args(["auth", "can-i", verb])
        // `pods --subresource=log`: a resource and its flags.
        .args(resource.split(' '))
        .args([
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
        ("list", "secrets"),
        ("watch", "secrets"),
        ("update", "services"),
        ("delete", "pods"),
        ("update", "leases.coordination.k8s.io"),
        ("bind", "roles.rbac.authorization.k8s.io"),
        ("escalate", "roles.rbac.authorization.k8s.io"),
        ("create", "pods"),
        ("update", "deployments"),
        ("delete", "bluegreens.teal.dev"),
        ("list", "jobs.batch"),
        ("update", "jobs.batch"),
    ] {
        assert!(
            !can_i(env, verb, resource),
            "the controller's role allows {verb} {resource}"
        );
    }
    assert!(can_i(env, "patch", "deployments"));
    // Notifier URLs: one Secret read by name, never listed.
    assert!(can_i(env, "get", "secrets"));
    assert!(can_i(env, "delete", "services"));
    assert!(can_i(env, "patch", "bluegreens.teal.dev/status"));
    // Job metrics: each check's Job, and its failed pod's log.
    for verb in ["create", "get", "delete"] {
        assert!(can_i(env, verb, "jobs.batch"), "{verb} jobs");
    }
    assert!(can_i(env, "get", "pods --subresource=log"));

    // A kubeconfig holding a real ServiceAccount token.
    let dir = std::env::temp_dir().join(format!("teal-rbac-{}", std::process::id()));
    let kubeconfig = service_account_kubeconfig(env, "teal-system", "teal-controller", &dir);

    let ns = env.namespace("rbac").await;
    let manifest = workload_and_bluegreen("shop", "  scaleDownDelay: 1s\n");
    kubectl(env, &["apply", "-n", &ns, "-f", "-"], Some(&manifest));
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
    let st = release_image(&client, &ns, "shop", "shop:2").await;
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
