//! The operator CLI (`teal list|get|status|promote|...`, also as `kubectl
//! teal`) against the real control plane and the controller: what it
//! prints parses back, exit codes tell CI the outcome, commands wait for
//! the controller and report its rejections.

mod k8s_support;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_support::{apply_deploy_files, kubectl, wait_bluegreen, workload_and_bluegreen};
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use teal_api::{BlueGreen, BlueGreenStatus};
use teal_testenv::{TestEnv, wait_for};

/// What a run of the CLI gave.
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl std::fmt::Debug for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

async fn run(mut cmd: tokio::process::Command) -> Out {
    let out = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .await
        .unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `teal ARGS -n NS`.
async fn teal(env: &TestEnv, ns: &str, args: &[&str]) -> Out {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_teal"));
    cmd.args(args)
        .args(["-n", ns])
        .env("KUBECONFIG", env.kubeconfig_path());
    run(cmd).await
}

/// A namespace with the workload `shop` (image shop:1) and a BlueGreen
/// `shop` with `bg_extra` spec lines; the controller for it runs in this
/// process when `controller` is set.
async fn setup(env: &TestEnv, prefix: &str, bg_extra: &str, controller: bool) -> String {
    apply_deploy_files(env, &["crd.yaml"]);
    let ns = env.namespace(prefix).await;
    let manifest = workload_and_bluegreen("shop", &format!("{bg_extra}\n"));
    kubectl(env, &["apply", "-n", &ns, "-f", "-"], Some(&manifest));
    if controller {
        let opts = teal_controller::Options {
            metrics_addr: ([127, 0, 0, 1], 0).into(),
            namespace: Some(ns.clone()),
            lease: None,
            router_image: None,
            concurrency: teal_controller::DEFAULT_CONCURRENCY,
            stall_after: teal_controller::liveness::DEFAULT_STALL_AFTER,
            egress: Default::default(),
        };
        let client = env.client();
        tokio::spawn(async move {
            if let Err(e) = teal_controller::run(client, opts).await {
                panic!("controller stopped: {e}");
            }
        });
    }
    ns
}

async fn status(env: &TestEnv, ns: &str) -> BlueGreenStatus {
    let api: Api<BlueGreen> = Api::namespaced(env.client(), ns);
    api.get("shop").await.unwrap().status.unwrap_or_default()
}

async fn wait_phase(env: &TestEnv, ns: &str, phase: &str) -> BlueGreenStatus {
    let api: Api<BlueGreen> = Api::namespaced(env.client(), ns);
    wait_bluegreen(&api, "shop", phase, 120, |st| {
        st.phase.as_deref() == Some(phase)
    })
    .await
}

/// Changes the workload's pod template through the API (as a user's
/// `kubectl apply` would), with simulated-node annotations.
async fn patch_template(env: &TestEnv, ns: &str, image: &str, annotations: BTreeMap<&str, &str>) {
    let deps: Api<Deployment> = Api::namespaced(env.client(), ns);
    let patch = json!({"spec": {"template": {
        "metadata": {"annotations": annotations},
        "spec": {"containers": [{"name": "app", "image": image}]},
    }}});
    deps.patch("shop", &PatchParams::default(), &Patch::Strategic(patch))
        .await
        .unwrap();
}

#[tokio::test]
async fn list_get_set_image_status_history_and_rollback_to_a_revision() {
    let env = TestEnv::shared();
    let ns = setup(
        env,
        "cli-auto",
        "  scaleDownDelay: 1s\n  progressDeadline: 15s",
        true,
    )
    .await;

    let out = teal(env, &ns, &["status", "shop", "--wait", "--timeout", "120s"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let v1 = status(env, &ns).await.active_revision.unwrap();

    // list and get, as tables and as JSON/YAML that parse back.
    let out = teal(env, &ns, &["list"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let line = out.stdout.lines().nth(1).unwrap_or_default();
    assert!(
        line.starts_with("shop ") && line.contains("Healthy") && line.contains(&v1),
        "{out:?}"
    );
    let out = teal(env, &ns, &["list", "-o", "json"]).await;
    let list: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let items: Vec<BlueGreen> = serde_json::from_value(list["items"].clone()).unwrap();
    assert_eq!(items.len(), 1, "{out:?}");
    assert_eq!(items[0].metadata.name.as_deref(), Some("shop"));
    assert_eq!(
        items[0].status.as_ref().unwrap().active_revision.as_deref(),
        Some(v1.as_str())
    );
    let out = teal(env, &ns, &["get", "shop", "-o", "yaml"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let bg: BlueGreen = serde_saphyr::from_str(&out.stdout).unwrap();
    assert_eq!(bg.spec.workload_ref.name, "shop");
    assert_eq!(bg.status.unwrap().phase.as_deref(), Some("Healthy"));
    assert!(bg.metadata.managed_fields.is_none());
    // The service router does not count requests: teal says so, with no figures.
    let out = teal(env, &ns, &["get", "shop", "-o", "json"]).await;
    let value: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(
        value["traffic"],
        json!({"router": "service", "measured": false,
               "notes": ["not measured by the service router"]}),
        "{out:?}"
    );
    // `watch --count 1` prints one view and exits.
    for (args, want, views) in [
        (
            &["get", "shop"][..],
            "\nTraffic:   not measured by the service router\n",
            0,
        ),
        (
            &["watch", "shop", "--count", "1"][..],
            "\nPhase:     Healthy\nMessage:",
            1,
        ),
        (
            &["watch", "shop", "--count", "1"][..],
            "\nTraffic:   not measured by the service router\nEvents:\n",
            1,
        ),
    ] {
        let out = teal(env, &ns, args).await;
        assert_eq!(out.code, 0, "{out:?}");
        assert!(out.stdout.contains(want), "{out:?}");
        assert_eq!(out.stdout.matches("Phase:").count(), views, "{out:?}");
    }
    let out = teal(env, &ns, &["get", "nope"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr
            .contains(&format!("BlueGreen {ns}/nope not found")),
        "{out:?}"
    );

    // set image: a wrong container is named, a right one releases.
    let out = teal(env, &ns, &["set", "image", "shop", "web=shop:2"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr
            .contains("has no container \"web\" (containers: app)"),
        "{out:?}"
    );
    let out = teal(
        env,
        &ns,
        &[
            "set",
            "image",
            "shop",
            "app=shop:2",
            "--wait",
            "--timeout",
            "120s",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("app: shop:1 -> shop:2"), "{out:?}");
    let v2 = status(env, &ns).await.active_revision.unwrap();
    assert_ne!(v2, v1);
    // Live already; recorded once the previous color's scale-down is done.
    wait_for("v2 recorded", Duration::from_secs(60), || async {
        let st = status(env, &ns).await;
        match st
            .history
            .iter()
            .any(|r| r.revision == v2 && r.outcome == "promoted")
        {
            true => Ok(()),
            false => Err(format!("{:?}", st.history)),
        }
    })
    .await;

    // A release that cannot go live: status --wait times out while it
    // runs (4), then reports the failure (3).
    patch_template(
        env,
        &ns,
        "shop:3",
        BTreeMap::from([(teal_testenv::sim::NEVER_READY, "true")]),
    )
    .await;
    let out = teal(env, &ns, &["status", "shop", "--wait", "--timeout", "1s"]).await;
    assert_eq!(out.code, 4, "{out:?}");
    assert!(out.stderr.contains("did not finish within 1s"), "{out:?}");
    let out = teal(
        env,
        &ns,
        &[
            "status",
            "shop",
            "--wait",
            "--timeout",
            "120s",
            "-o",
            "json",
        ],
    )
    .await;
    assert_eq!(out.code, 3, "{out:?}");
    assert!(
        out.stderr.contains("ended Failed") && out.stderr.contains("progress deadline"),
        "{out:?}"
    );
    let st: BlueGreenStatus = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(st.active_revision.as_deref(), Some(v2.as_str()));

    // history: every release, as a table and as JSON.
    let out = teal(env, &ns, &["history", "shop"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains("promoted") && out.stdout.contains("failed"),
        "{out:?}"
    );
    let out = teal(env, &ns, &["history", "shop", "-o", "json"]).await;
    let records: Vec<teal_api::bluegreen::ReleaseRecord> =
        serde_json::from_str(&out.stdout).unwrap();
    let outcomes: Vec<&str> = records.iter().map(|r| r.outcome.as_str()).collect();
    assert_eq!(outcomes, ["promoted", "failed"], "{records:?}");

    // rollback --to-revision: v1 is no color's any more (blue ran the
    // failed release), only in the workload's ReplicaSet history.
    let out = teal(
        env,
        &ns,
        &["rollback", "shop", "--to-revision", "0000000000"],
    )
    .await;
    assert_eq!(out.code, 3, "{out:?}");
    assert!(
        out.stderr
            .contains("no pod template is recorded for revision 0000000000"),
        "{out:?}"
    );
    assert!(
        out.stderr.contains(&v1),
        "known revisions are listed: {out:?}"
    );
    let out = teal(
        env,
        &ns,
        &[
            "rollback",
            "shop",
            "--to-revision",
            &v1,
            "--wait",
            "--timeout",
            "120s",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("ReplicaSet"), "{out:?}");
    let st = status(env, &ns).await;
    assert_eq!(st.active_revision.as_deref(), Some(v1.as_str()));
    assert_eq!(st.desired_revision.as_deref(), Some(v1.as_str()));
}

#[tokio::test]
async fn promote_abort_rollback_retry_wait_for_the_controller_and_explain_refusals() {
    let env = TestEnv::shared();
    let extra = r#"  promotion: {mode: manual}
  scaleDownDelay: 10m
  analysis:
    postPromotion:
      interval: 1h
      checks: 3
      metrics: [{name: errors, prometheus: {address: "http://127.0.0.1:1", query: up}, max: 1}]"#;
    let ns = setup(env, "cli-manual", extra, true).await;
    let out = teal(env, &ns, &["status", "shop", "--wait", "--timeout", "120s"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let v1 = status(env, &ns).await.active_revision.unwrap();

    // Nothing to promote or abort: refused with the reason, exit 3.
    let out = teal(env, &ns, &["promote", "shop"]).await;
    assert_eq!(out.code, 3, "{out:?}");
    assert!(
        out.stderr.contains(&format!(
            "BlueGreen {ns}/shop is not waiting for promotion (phase: Healthy)"
        )),
        "{out:?}"
    );
    let out = teal(env, &ns, &["abort", "shop"]).await;
    assert_eq!(out.code, 3, "{out:?}");
    assert!(
        out.stderr
            .contains("has no release to abort (phase: Healthy)"),
        "{out:?}"
    );

    // A manual release: promote once it waits.
    let out = teal(env, &ns, &["set", "image", "shop", "app=shop:2"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    wait_phase(env, &ns, "AwaitingPromotion").await;
    let out = teal(env, &ns, &["promote", "shop"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("promote accepted"), "{out:?}");
    let st = wait_phase(env, &ns, "PostPromotion").await;
    let v2 = st.active_revision.clone().unwrap();
    assert_ne!(v2, v1);

    // Post-promotion analysis runs: a plain promote is the controller's to
    // refuse (it reports why); --full ends the analysis.
    let out = teal(env, &ns, &["promote", "shop"]).await;
    assert_eq!(out.code, 3, "{out:?}");
    assert!(
        out.stderr
            .contains("rejected promote: not waiting for promotion (phase: PostPromotion)"),
        "{out:?}"
    );
    let out = teal(env, &ns, &["promote", "shop", "--full"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("promote-full accepted"), "{out:?}");
    wait_phase(env, &ns, "ScaleDownDelay").await;
    let out = teal(env, &ns, &["status", "shop", "--wait", "--timeout", "60s"]).await;
    assert_eq!(out.code, 0, "live while the old color is kept: {out:?}");

    // rollback: instant, back to v1; the workload still asks for v2, so
    // status --wait says v2 is not live (3) and retry releases it again.
    let out = teal(env, &ns, &["rollback", "shop"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("rollback accepted"), "{out:?}");
    let out = teal(env, &ns, &["status", "shop", "--wait", "--timeout", "120s"]).await;
    assert_eq!(out.code, 3, "{out:?}");
    assert!(
        out.stderr.contains("RolledBack") || out.stderr.contains("rolled back"),
        "{out:?}"
    );
    assert_eq!(
        status(env, &ns).await.active_revision.as_deref(),
        Some(v1.as_str())
    );
    let out = teal(env, &ns, &["retry", "shop"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("retry accepted"), "{out:?}");
    wait_phase(env, &ns, "AwaitingPromotion").await;

    // abort: the release stops before cutover; v1 stays live.
    let out = teal(env, &ns, &["abort", "shop"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let st = wait_phase(env, &ns, "Aborted").await;
    assert_eq!(st.active_revision.as_deref(), Some(v1.as_str()));
    let out = teal(env, &ns, &["history", "shop"]).await;
    assert!(
        out.stdout.contains("rolled_back") && out.stdout.contains("aborted"),
        "{out:?}"
    );
}

#[tokio::test]
async fn kubectl_plugin_completions_and_a_controller_that_does_not_answer() {
    let env = TestEnv::shared();
    let ns = setup(env, "cli-plugin", "  promotion: {mode: manual}", false).await;

    // Shell completions.
    for (shell, marker) in [
        ("bash", "_teal()"),
        ("zsh", "#compdef teal"),
        ("fish", "complete -c teal"),
    ] {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_teal"));
        cmd.args(["completion", shell]);
        let out = run(cmd).await;
        assert_eq!(out.code, 0, "{out:?}");
        assert!(out.stdout.contains(marker), "{shell}: {out:?}");
        assert!(
            out.stdout.contains("promote") && out.stdout.contains("rollback"),
            "{shell}"
        );
    }

    // kubectl finds `kubectl-teal` on PATH and runs it as `kubectl teal`.
    let dir = std::env::temp_dir().join(format!("teal-plugin-{ns}"));
    std::fs::create_dir_all(&dir).unwrap();
    let link = dir.join("kubectl-teal");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_teal"), &link).unwrap();
    let path = format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let kubectl_teal = |args: &[&str]| {
        let mut cmd: tokio::process::Command = env.kubectl().into();
        cmd.arg("teal").args(args).env("PATH", &path);
        run(cmd)
    };
    let out = kubectl_teal(&["list", "-n", &ns, "-o", "json"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let list: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(list["items"][0]["metadata"]["name"], "shop", "{out:?}");
    let out = kubectl_teal(&["get", "nope", "-n", &ns]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr
            .contains(&format!("BlueGreen {ns}/nope not found")),
        "{out:?}"
    );
    let out = kubectl_teal(&["status", "--help"]).await;
    assert!(out.stdout.contains("Usage: kubectl teal status"), "{out:?}");

    // No controller acts on the command: the CLI says so (exit 4) instead
    // of hanging. The phase is what a controller would have reported.
    let api: Api<BlueGreen> = Api::namespaced(env.client(), &ns);
    let patch = json!({"status": {"phase": "AwaitingPromotion", "message": "waiting for promote"}});
    api.patch_status("shop", &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
    let out = kubectl_teal(&["promote", "shop", "-n", &ns, "--command-timeout", "2s"]).await;
    assert_eq!(out.code, 4, "{out:?}");
    assert!(
        out.stderr.contains(&format!(
            "the controller did not act on promote for BlueGreen {ns}/shop within 2s"
        )),
        "{out:?}"
    );
    let bg = api.get("shop").await.unwrap();
    assert!(
        bg.metadata.annotations.unwrap_or_default()["teal.dev/command"].starts_with("promote/"),
        "the command was set"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn watch_redraws_in_a_terminal_as_the_release_moves() {
    let env = TestEnv::shared();
    let ns = setup(env, "cli-watch", "  promotion: {mode: manual}", true).await;
    let out = teal(env, &ns, &["status", "shop", "--wait", "--timeout", "120s"]).await;
    assert_eq!(out.code, 0, "{out:?}");

    // A tmux server of this test's own, with one 200x50 terminal.
    let socket = format!("teal-{ns}");
    let _server = TmuxServer(socket.clone());
    let tmux = |args: &[&str]| {
        let mut cmd = tokio::process::Command::new("tmux");
        cmd.args(["-L", &socket])
            .args(args)
            .env("KUBECONFIG", env.kubeconfig_path());
        run(cmd)
    };
    let watch = format!("{} watch shop -n {ns}", env!("CARGO_BIN_EXE_teal"));
    let out = tmux(&[
        "new-session",
        "-d",
        "-x",
        "200",
        "-y",
        "50",
        "-s",
        "w",
        &watch,
    ])
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    let shows = |wanted: Vec<String>| {
        let tmux = &tmux;
        async move {
            wait_for("the watch screen", Duration::from_secs(120), || {
                let wanted = wanted.clone();
                async move {
                    let screen = tmux(&["capture-pane", "-p", "-t", "w"]).await.stdout;
                    match wanted.iter().all(|w| screen.contains(w.as_str())) {
                        true => Ok(screen),
                        false => Err(format!("want {wanted:?} on\n{screen}")),
                    }
                }
            })
            .await
        }
    };
    let v1 = status(env, &ns).await.active_revision.unwrap();
    shows(vec![
        format!("BlueGreen {ns}/shop"),
        "Phase:     Healthy".into(),
        format!("Active:    blue  revision {v1}"),
    ])
    .await;

    let out = teal(env, &ns, &["set", "image", "shop", "app=shop:2"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let screen = shows(vec![
        "Phase:     AwaitingPromotion".into(),
        "Preview:   green  revision".into(),
        "AwaitingPromotion ".into(),
    ])
    .await;
    assert!(screen.contains("ReleaseStarted"), "{screen}");
    assert_eq!(
        screen.matches("Phase:").count(),
        1,
        "redrawn in place, not appended: {screen}"
    );

    let out = teal(env, &ns, &["promote", "shop"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    shows(vec![
        "Active:    green".into(),
        "Last command: promote/".into(),
        "Switched".into(),
    ])
    .await;
}

/// Stops the test's tmux server, also when an assertion failed.
struct TmuxServer(String);

impl Drop for TmuxServer {
    fn drop(&mut self) {
        let _ = std::process::Command::new("tmux")
            .args(["-L", &self.0, "kill-server"])
            .status();
    }
}

/// The `yaml` block of docs/analysis.md that follows `after`.
fn docs_yaml_after(after: &str) -> String {
    let doc = include_str!("../../../docs/analysis.md");
    let rest = &doc[doc.find(after).expect("the text before the example")..];
    rest.split("```yaml\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a yaml block")
        .to_owned()
}

/// docs/analysis.md's metric template examples, applied as written: `teal
/// status` shows the query each metric resolves to, and names the field
/// of one whose template is missing.
#[tokio::test]
async fn status_shows_resolved_metric_templates() {
    let env = TestEnv::shared();
    let metrics = docs_yaml_after("A metric names it in `templateRef`");
    let indented: Vec<String> = metrics.lines().map(|l| format!("  {l}")).collect();
    let extra = format!(
        "  promotion: {{mode: manual}}\n  analysis:\n    prePromotion:\n{}",
        indented.join("\n")
    );
    let ns = setup(env, "cli-templates", &extra, true).await;
    let template = docs_yaml_after("## Metric templates");
    kubectl(env, &["apply", "-n", &ns, "-f", "-"], Some(&template));
    let out = wait_for(
        "the templates in teal status",
        Duration::from_secs(60),
        || async {
            let out = teal(env, &ns, &["status", "shop"]).await;
            if out.stdout.contains("Template:  prePromotion errors:") {
                Ok(out)
            } else {
                Err(format!("{out:?}"))
            }
        },
    )
    .await;
    assert!(
        out.stdout.contains(
            "spec.analysis.prePromotion.metrics[1].templateRef: ClusterMetricTemplate error-rate not found"
        ),
        "{out:?}"
    );
    assert!(
        out.stdout.contains(r#"app="shop""#) && out.stdout.contains("[1m]"),
        "{out:?}"
    );
}
