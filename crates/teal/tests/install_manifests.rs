//! What operators install: every manifest in deploy/ is accepted by the real
//! apiserver and its objects come up (the control plane's nodes are
//! simulated, so a controller pod is scheduled and reported Running, but no
//! container really runs); the namespaced install grants one namespace only,
//! and the real controller binary runs a whole release with nothing more.

mod k8s_support;

use std::process::{Command, Stdio};
use std::time::Duration;

use k8s_support::{
    apply_deploy_files, can_i_as, deploy_path, kubectl, release_image, service_account_kubeconfig,
    workload_and_bluegreen,
};
use kube::Api;
use teal_api::BlueGreen;
use teal_testenv::{TestEnv, wait_for};

/// Waits until `kubectl args` succeeds and prints `want`.
async fn wait_output(env: &TestEnv, args: &[&str], want: &str) {
    wait_for(
        &format!("kubectl {} to print {want:?}", args.join(" ")),
        Duration::from_secs(120),
        || async {
            let out = env
                .kubectl()
                .args(args)
                .output()
                .map_err(|e| e.to_string())?;
            let got = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if out.status.success() && got == want {
                Ok(())
            } else {
                Err(format!("{got:?} {}", String::from_utf8_lossy(&out.stderr)))
            }
        },
    )
    .await
}

fn can_i(env: &TestEnv, sa: &str, verb: &str, resource: &str, ns: &str) -> bool {
    can_i_as(env, sa, &[verb, resource, "-n", ns])
}

#[tokio::test]
async fn the_cluster_install_comes_up_with_a_working_disruption_budget() {
    let env = TestEnv::shared();
    apply_deploy_files(env, &["crd.yaml", "rbac.yaml", "controller.yaml"]);
    kubectl(
        env,
        &[
            "-n",
            "teal-system",
            "rollout",
            "status",
            "deployment/teal-controller",
            "--timeout=120s",
        ],
        None,
    );
    // The real disruption controller counts the two ready replicas: one may go.
    wait_output(
        env,
        &[
            "-n",
            "teal-system",
            "get",
            "pdb",
            "teal-controller",
            "-o",
            "jsonpath={.status.currentHealthy}/{.status.disruptionsAllowed}",
        ],
        "2/1",
    )
    .await;
    // The metrics Service selects both replicas.
    wait_output(
        env,
        &[
            "-n",
            "teal-system",
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=teal-controller-metrics",
            "-o",
            "jsonpath={range .items[*].endpoints[*]}{.conditions.ready} {end}",
        ],
        "true true",
    )
    .await;
    // The pods run as the ServiceAccount of rbac.yaml, with the Lease settings.
    let pod = kubectl(
        env,
        &[
            "-n",
            "teal-system",
            "get",
            "pods",
            "-l",
            "app.kubernetes.io/name=teal",
            "-o",
            "jsonpath={.items[0].spec.serviceAccountName} {.items[0].spec.containers[0].args}",
        ],
        None,
    );
    assert_eq!(
        pod,
        r#"teal-controller ["controller","--metrics-addr=0.0.0.0:8080"]"#
    );
}

#[tokio::test]
async fn the_namespaced_install_grants_one_namespace_and_runs_a_release() {
    let env = TestEnv::shared();
    apply_deploy_files(env, &["crd.yaml"]);
    let ns = env.namespace("teal-ns").await;
    let other = env.namespace("teal-other").await;
    // What users do: an overlay of deploy/namespaced that sets their namespace.
    let dir = std::env::temp_dir().join(format!("teal-install-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let base = deploy_path("namespaced").canonicalize().unwrap();
    let base = pathdiff(&base, &dir);
    std::fs::write(
        dir.join("kustomization.yaml"),
        format!("namespace: {ns}\nresources:\n  - {base}\n"),
    )
    .unwrap();
    kubectl(
        env,
        &["apply", "--server-side", "-k", dir.to_str().unwrap()],
        None,
    );
    kubectl(
        env,
        &[
            "-n",
            &ns,
            "rollout",
            "status",
            "deployment/teal-controller",
            "--timeout=120s",
        ],
        None,
    );
    let watch_ns = kubectl(
        env,
        &[
            "-n",
            &ns,
            "get",
            "deployment",
            "teal-controller",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].env[?(@.name==\"TEAL_WATCH_NAMESPACE\")].valueFrom.fieldRef.fieldPath}",
        ],
        None,
    );
    assert_eq!(watch_ns, "metadata.namespace");

    let sa = format!("system:serviceaccount:{ns}:teal-controller");
    for (verb, resource) in [
        ("patch", "deployments"),
        ("watch", "bluegreens.teal.dev"),
        ("patch", "bluegreens.teal.dev/status"),
        ("update", "leases.coordination.k8s.io"),
    ] {
        assert!(
            can_i(env, &sa, verb, resource, &ns),
            "{verb} {resource} in {ns}"
        );
        assert!(
            !can_i(env, &sa, verb, resource, &other),
            "the namespaced role allows {verb} {resource} in another namespace"
        );
    }
    assert!(!can_i_as(env, &sa, &["list", "bluegreens.teal.dev", "-A"]));
    assert!(!can_i(env, &sa, "update", "deployments", &ns));
    assert!(!can_i(env, &sa, "list", "secrets", &ns));

    // The controller binary as that ServiceAccount, watching only `ns`.
    let kubeconfig = service_account_kubeconfig(env, &ns, "teal-controller", &dir);
    let app = |name: &str| workload_and_bluegreen(name, "  scaleDownDelay: 1s\n");
    kubectl(env, &["apply", "-n", &ns, "-f", "-"], Some(&app("shop")));
    kubectl(
        env,
        &["apply", "-n", &other, "-f", "-"],
        Some(&app("elsewhere")),
    );
    let log_path = dir.join("controller.log");
    let mut controller = Command::new(env!("CARGO_BIN_EXE_teal"))
        .args(["controller", "--metrics-addr", "127.0.0.1:0"])
        .args(["--namespace", &ns, "--lease-namespace", &ns])
        .args(["--identity", "namespaced-test"])
        .env("KUBECONFIG", &kubeconfig)
        .env("TEAL_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();

    let client = env.client();
    let st = release_image(&client, &ns, "shop", "shop:2").await;
    assert!(st.history.iter().any(|h| h.outcome == "promoted"));
    // The BlueGreen in the other namespace was never touched.
    let elsewhere: Api<BlueGreen> = Api::namespaced(client.clone(), &other);
    assert_eq!(elsewhere.get("elsewhere").await.unwrap().status, None);

    let _ = controller.kill();
    let _ = controller.wait();
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(
        !log.contains("forbidden"),
        "the namespaced controller hit a permission it lacks:\n{log}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `target` relative to `from` (kustomize takes relative resource paths).
fn pathdiff(target: &std::path::Path, from: &std::path::Path) -> String {
    let from = from.canonicalize().unwrap();
    let depth = from.components().count() - 1;
    let mut rel = "../".repeat(depth);
    rel.push_str(target.strip_prefix("/").unwrap().to_str().unwrap());
    rel
}

/// The namespaced Role is the ClusterRole of deploy/rbac.yaml granted in one
/// namespace, plus `update` on Leases (leader election, which the cluster
/// install grants through its own Role). A rule added to one copy and not the
/// other fails here, before a user's controller hits a Forbidden.
#[test]
fn the_namespaced_role_grants_what_the_cluster_role_grants() {
    use std::collections::BTreeSet;
    type Rules = BTreeSet<(String, String, BTreeSet<String>)>;
    fn rules(file: &str, kind: &str) -> Rules {
        let text = std::fs::read_to_string(deploy_path(file)).unwrap();
        let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text).unwrap();
        let role = docs
            .iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == "teal-controller")
            .unwrap_or_else(|| panic!("no {kind} teal-controller in {file}"));
        let strs = |v: &serde_json::Value| -> Vec<String> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap().to_string())
                .collect()
        };
        let mut out = Rules::new();
        for rule in role["rules"].as_array().unwrap() {
            for group in strs(&rule["apiGroups"]) {
                for resource in strs(&rule["resources"]) {
                    out.insert((
                        group.clone(),
                        resource,
                        strs(&rule["verbs"]).into_iter().collect(),
                    ));
                }
            }
        }
        out
    }
    let mut cluster = rules("rbac.yaml", "ClusterRole");
    let leases = (
        "coordination.k8s.io".to_string(),
        "leases".to_string(),
        cluster
            .iter()
            .find(|(g, r, _)| g == "coordination.k8s.io" && r == "leases")
            .map(|(_, _, v)| v.clone())
            .expect("the ClusterRole grants Leases"),
    );
    cluster.remove(&leases);
    let mut with_update = leases.clone();
    with_update.2.insert("update".to_string());
    cluster.insert(with_update);
    // Cluster-wide metric templates cannot be granted in a namespace.
    cluster.retain(|(g, r, _)| !(g == "teal.dev" && r == "clustermetrictemplates"));
    let namespaced = rules("namespaced/rbac.yaml", "Role");
    assert_eq!(
        namespaced.difference(&cluster).collect::<Vec<_>>(),
        Vec::<&(String, String, BTreeSet<String>)>::new(),
        "granted only by deploy/namespaced/rbac.yaml"
    );
    assert_eq!(
        cluster.difference(&namespaced).collect::<Vec<_>>(),
        Vec::<&(String, String, BTreeSet<String>)>::new(),
        "granted by deploy/rbac.yaml but not by deploy/namespaced/rbac.yaml"
    );
}

/// `teal crd` prints deploy/crd.yaml (the three CRDs); a reader that stops
/// early (`teal crd | head`, `grep -q`) ends the output quietly: exit 0,
/// nothing on stderr.
#[test]
fn teal_crd_prints_the_crds_and_stops_quietly_when_the_reader_does() {
    use std::io::Read;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_teal"))
        .arg("crd")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let shipped = std::fs::read_to_string(deploy_path("crd.yaml")).unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), shipped);
    assert!(shipped.len() > 64 * 1024, "more than a pipe holds");

    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_teal"))
        .arg("crd")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 100];
    child.stdout.take().unwrap().read_exact(&mut first).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}
