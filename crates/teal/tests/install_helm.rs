//! The Helm chart in deploy/helm/teal: `helm lint` passes, `helm template`
//! renders what the values ask for, contradicting values fail with a message
//! naming the value, and the rendered output is accepted by the real
//! apiserver and comes up (nodes are simulated: the controller pods are
//! scheduled and reported Running, no container really runs).

mod k8s_support;

use std::process::Command;

use k8s_support::{apply_deploy_files, can_i_as, deploy_path, kubectl};
use teal_testenv::TestEnv;

/// helm, built from source by `scripts/control-plane build helm`.
fn helm() -> Command {
    let bin = std::env::var_os("TEAL_HELM").expect(
        "TEAL_HELM is not set: run `scripts/control-plane build helm` and \
         `eval \"$(scripts/control-plane env)\"` first",
    );
    Command::new(bin)
}

fn chart() -> String {
    deploy_path("helm/teal").to_str().unwrap().to_string()
}

/// `helm template RELEASE chart -n NS ARGS…`: the rendered manifests, or the error.
fn template(release: &str, ns: &str, args: &[&str]) -> Result<String, String> {
    let out = helm()
        .args(["template", release, &chart(), "-n", ns])
        .args(args)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).to_string())
    }
}

fn jsonpath(env: &TestEnv, ns: &str, what: &str, path: &str) -> String {
    kubectl(
        env,
        &["-n", ns, "get", what, "-o", &format!("jsonpath={path}")],
        None,
    )
}

#[test]
fn the_chart_lints_and_ships_the_generated_crd() {
    let out = helm()
        .args(["lint", "--strict", &chart()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "helm lint: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let shipped = std::fs::read_to_string(deploy_path("helm/teal/crds/crds.yaml")).unwrap();
    assert_eq!(
        shipped,
        teal_api::crd_yaml(),
        "deploy/helm/teal/crds/ is stale: cargo run -p teal-api --bin crdgen > deploy/helm/teal/crds/crds.yaml"
    );
}

#[test]
fn contradicting_values_fail_with_the_value_named() {
    for (args, want) in [
        (
            &[
                "--set",
                "replicas=3",
                "--set",
                "leaderElection.enabled=false",
            ][..],
            "replicas: 3 needs leaderElection.enabled: true",
        ),
        (
            &["--set", "scope=everywhere"][..],
            "scope: \"everywhere\" is not allowed; use cluster or namespace",
        ),
        (
            &["--set", "leaderElection.leaseDuration=1"][..],
            "leaderElection.leaseDuration: 1 is out of range; allowed: 3..300 seconds",
        ),
        (
            &["--set", "serviceAccount.create=false"][..],
            "serviceAccount.name is required when serviceAccount.create is false",
        ),
    ] {
        let err = template("teal", "teal-system", args).expect_err(&format!("{args:?} rendered"));
        assert!(err.contains(want), "{args:?}: {err}");
    }
    // One replica without leader election is allowed, and gets no disruption budget.
    let one = template(
        "teal",
        "teal-system",
        &[
            "--set",
            "replicas=1",
            "--set",
            "leaderElection.enabled=false",
        ],
    )
    .unwrap();
    assert!(one.contains("- --no-leader-election"));
    assert!(!one.contains("kind: PodDisruptionBudget"));
    assert!(
        !one.contains("name: teal-leader"),
        "no leader-election Role"
    );
}

#[tokio::test]
async fn the_rendered_cluster_install_is_accepted_and_matches_deploy_rbac() {
    let env = TestEnv::shared();
    apply_deploy_files(env, &["crd.yaml", "rbac.yaml"]);
    let ns = env.namespace("helm-cluster").await;
    let rendered = template(
        "teal",
        &ns,
        &[
            "--set",
            "image.repository=registry.example/teal",
            "--set",
            "image.tag=9.9.9",
            "--set",
            "replicas=3",
            "--set",
            "logLevel=debug",
            "--set",
            "leaderElection.leaseDuration=30",
            "--set",
            "egressAllow={hooks.example.com,*.corp.example}",
        ],
    )
    .unwrap();
    kubectl(
        env,
        &["apply", "--server-side", "-n", &ns, "-f", "-"],
        Some(&rendered),
    );
    kubectl(
        env,
        &[
            "-n",
            &ns,
            "rollout",
            "status",
            "deployment/teal",
            "--timeout=120s",
        ],
        None,
    );
    let c = "{.spec.template.spec.containers[0]}";
    assert_eq!(
        jsonpath(
            env,
            &ns,
            "deployment/teal",
            c.replace("}", ".image}").as_str()
        ),
        "registry.example/teal:9.9.9"
    );
    assert_eq!(
        jsonpath(
            env,
            &ns,
            "deployment/teal",
            c.replace("}", ".args}").as_str()
        ),
        r#"["controller","--metrics-addr=0.0.0.0:8080","--lease-name=teal-controller","--lease-seconds=30"]"#
    );
    assert_eq!(
        jsonpath(
            env,
            &ns,
            "deployment/teal",
            c.replace("}", ".env[?(@.name==\"TEAL_LOG\")].value}")
                .as_str()
        ),
        "debug"
    );
    assert_eq!(
        jsonpath(
            env,
            &ns,
            "deployment/teal",
            c.replace("}", ".env[?(@.name==\"TEAL_EGRESS_ALLOW\")].value}")
                .as_str()
        ),
        "hooks.example.com,*.corp.example"
    );
    assert_eq!(
        jsonpath(env, &ns, "deployment/teal", "{.status.readyReplicas}"),
        "3"
    );
    // The chart grants exactly what deploy/rbac.yaml grants.
    let rules = |name: &str| {
        kubectl(
            env,
            &["get", "clusterrole", name, "-o", "jsonpath={.rules}"],
            None,
        )
    };
    assert_eq!(rules("teal"), rules("teal-controller"));
    let sa = format!("system:serviceaccount:{ns}:teal");
    let yes = |args: &[&str]| can_i_as(env, &sa, args);
    assert!(yes(&["patch", "deployments", "-A"]));
    assert!(yes(&["update", "leases", "-n", &ns]));
    assert!(!yes(&["update", "leases", "-n", "default"]));
    assert!(!yes(&["update", "deployments", "-A"]));
    assert!(!yes(&["list", "secrets", "-A"]));
}

#[tokio::test]
async fn the_rendered_namespaced_install_grants_only_its_namespace() {
    let env = TestEnv::shared();
    apply_deploy_files(env, &["crd.yaml"]);
    let ns = env.namespace("helm-ns").await;
    let rendered = template("tenant", &ns, &["--set", "scope=namespace"]).unwrap();
    assert!(!rendered.contains("kind: ClusterRole"), "{rendered}");
    kubectl(
        env,
        &["apply", "--server-side", "-n", &ns, "-f", "-"],
        Some(&rendered),
    );
    kubectl(
        env,
        &[
            "-n",
            &ns,
            "rollout",
            "status",
            "deployment/tenant-teal",
            "--timeout=120s",
        ],
        None,
    );
    assert_eq!(
        jsonpath(
            env,
            &ns,
            "deployment/tenant-teal",
            "{.spec.template.spec.containers[0].env[?(@.name==\"TEAL_WATCH_NAMESPACE\")].valueFrom.fieldRef.fieldPath}"
        ),
        "metadata.namespace"
    );
    let sa = format!("system:serviceaccount:{ns}:tenant-teal");
    let yes = |args: &[&str]| can_i_as(env, &sa, args);
    assert!(yes(&["patch", "bluegreens.teal.dev/status", "-n", &ns]));
    assert!(!yes(&[
        "patch",
        "bluegreens.teal.dev/status",
        "-n",
        "default"
    ]));
    assert!(!yes(&["list", "bluegreens.teal.dev", "-A"]));
}
