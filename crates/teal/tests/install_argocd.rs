//! deploy/argocd/health.lua, run by a real Lua interpreter (Debian's
//! `lua5.4`, as Argo CD runs it: the script's body with `obj` set) against
//! BlueGreen objects the real controller wrote in each phase, and against
//! the end states that are slow to reach; and the documented command that
//! installs it into argocd-cm, against the real apiserver.

mod k8s_support;

use std::process::Command;
use std::time::Duration;

use k8s_support::{apply_deploy_files, deploy_path, kubectl, wait_healthy, workload_and_bluegreen};
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};
use teal_api::BlueGreen;
use teal_testenv::{TestEnv, wait_for};

/// `v` as a Lua table constructor (JSON null becomes an absent key).
fn to_lua(v: &Value) -> String {
    match v {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("{s:?}"),
        Value::Array(a) => format!(
            "{{{}}}",
            a.iter().map(to_lua).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(o) => format!(
            "{{{}}}",
            o.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| format!("[{k:?}] = {}", to_lua(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Runs the health check on `obj`: (status, message).
fn health(obj: &Value) -> (String, String) {
    let script = std::fs::read_to_string(deploy_path("argocd/health.lua")).unwrap();
    let program = format!(
        "obj = {}\nlocal hs = (function()\n{script}\nend)()\nio.write(hs.status, \"\\n\", hs.message)\n",
        to_lua(obj)
    );
    let lua = std::env::var_os("TEAL_LUA").unwrap_or_else(|| "lua5.4".into());
    let out = Command::new(lua)
        .args(["-e", &program])
        .output()
        .expect("lua5.4 (scripts/setup-deps installs it)");
    assert!(
        out.status.success(),
        "lua: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let (status, message) = text.split_once('\n').unwrap();
    (status.to_string(), message.to_string())
}

async fn object_in_phase(bgs: &Api<BlueGreen>, name: &str, phases: &[&str]) -> Value {
    wait_for(
        &format!("BlueGreen {name} in {phases:?}"),
        Duration::from_secs(90),
        || async {
            let bg = bgs.get(name).await.map_err(|e| e.to_string())?;
            let phase = bg.status.as_ref().and_then(|s| s.phase.clone());
            match phase {
                Some(p) if phases.contains(&p.as_str()) => Ok(serde_json::to_value(&bg).unwrap()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await
}

#[tokio::test]
async fn the_health_check_maps_every_phase_the_controller_writes() {
    let env = TestEnv::shared();
    apply_deploy_files(env, &["crd.yaml"]);
    let ns = env.namespace("argocd-health").await;
    kubectl(
        env,
        &["apply", "-n", &ns, "-f", "-"],
        Some(&workload_and_bluegreen(
            "shop",
            "  scaleDownDelay: 1s\n  promotion: {mode: manual}\n",
        )),
    );
    let mut controller = Command::new(env!("CARGO_BIN_EXE_teal"))
        .args(["controller", "--no-leader-election", "--namespace", &ns])
        .args(["--metrics-addr", "127.0.0.1:0"])
        .env("KUBECONFIG", env.kubeconfig_path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let client = env.client();
    let bgs: Api<BlueGreen> = Api::namespaced(client.clone(), &ns);
    wait_healthy(&bgs, "shop", None).await;
    let obj = object_in_phase(&bgs, "shop", &["Healthy"]).await;
    let (status, message) = health(&obj);
    assert_eq!(status, "Healthy", "{message}");
    assert!(message.contains("is live on blue"), "{message}");

    // A new pod template whose pods become ready only after a while: the
    // release is Deploying, then waits at the manual gate.
    let deps: Api<k8s_openapi::api::apps::v1::Deployment> = Api::namespaced(client.clone(), &ns);
    let patch = json!({"spec": {"template": {
        "metadata": {"annotations": {teal_testenv::sim::READY_AFTER: "3s"}},
        "spec": {"containers": [{"name": "app", "image": "shop:2"}]}}}});
    deps.patch("shop", &PatchParams::default(), &Patch::Strategic(patch))
        .await
        .unwrap();
    let obj = object_in_phase(&bgs, "shop", &["Deploying", "Previewing"]).await;
    assert_eq!(health(&obj).0, "Progressing", "{obj}");
    let obj = object_in_phase(&bgs, "shop", &["AwaitingPromotion"]).await;
    let (status, message) = health(&obj);
    assert_eq!(status, "Suspended", "{message}");

    // Abort at the gate: the new revision did not go live.
    let cmd = json!({"metadata": {"annotations": {"teal.dev/command": "abort/1"}}});
    bgs.patch("shop", &PatchParams::default(), &Patch::Merge(cmd))
        .await
        .unwrap();
    let obj = object_in_phase(&bgs, "shop", &["Aborted"]).await;
    let (status, message) = health(&obj);
    assert_eq!(status, "Degraded", "{message}");
    assert!(message.contains("still live"), "{message}");

    // A spec change the controller has not seen yet is Progressing.
    let mut stale = obj.clone();
    stale["metadata"]["generation"] =
        json!(obj["status"]["observedGeneration"].as_i64().unwrap() + 1);
    assert_eq!(health(&stale).0, "Progressing");
    let _ = controller.kill();
    let _ = controller.wait();
}

#[test]
fn end_states_without_a_status_or_with_unknown_phases() {
    let bg = |status: Value| json!({"metadata": {"name": "x", "generation": 1}, "status": status});
    for (status, want) in [
        (Value::Null, "Progressing"),
        (
            json!({"phase": "Degraded", "observedGeneration": 1, "activeColor": "blue"}),
            "Degraded",
        ),
        (
            json!({"phase": "RolledBack", "observedGeneration": 1, "message": "analysis failed"}),
            "Degraded",
        ),
        (
            json!({"phase": "Failed", "observedGeneration": 1}),
            "Degraded",
        ),
        (
            json!({"phase": "ScaleDownDelay", "observedGeneration": 1, "activeColor": "green", "activeRevision": "abc"}),
            "Healthy",
        ),
        (
            json!({"phase": "PostPromotion", "observedGeneration": 1}),
            "Progressing",
        ),
        (
            json!({"phase": "Initializing", "observedGeneration": 1}),
            "Progressing",
        ),
        (
            json!({"phase": "Sideways", "observedGeneration": 1}),
            "Unknown",
        ),
    ] {
        let (got, message) = health(&bg(status.clone()));
        assert_eq!(got, want, "{status}: {message}");
        assert!(!message.is_empty());
    }
    let (_, message) = health(&bg(
        json!({"phase": "RolledBack", "observedGeneration": 1, "message": "analysis failed"}),
    ));
    assert_eq!(
        message,
        "RolledBack: analysis failed; revision ? is still live"
    );
}

#[tokio::test]
async fn the_documented_command_installs_the_check_next_to_existing_settings() {
    let env = TestEnv::shared();
    let ns = env.namespace("argocd").await;
    kubectl(
        env,
        &[
            "-n",
            &ns,
            "create",
            "configmap",
            "argocd-cm",
            "--from-literal=url=https://argocd.example",
        ],
        None,
    );
    // docs/install.md, "Argo CD": the same pipeline, with the test's namespace.
    let lua = deploy_path("argocd/health.lua");
    let rendered = kubectl(
        env,
        &[
            "-n",
            &ns,
            "create",
            "configmap",
            "argocd-cm",
            &format!(
                "--from-file=resource.customizations.health.teal.dev_BlueGreen={}",
                lua.display()
            ),
            "--dry-run=client",
            "-o",
            "yaml",
        ],
        None,
    );
    kubectl(
        env,
        &[
            "apply",
            "--server-side",
            "--field-manager=teal-health",
            "-f",
            "-",
        ],
        Some(&rendered),
    );
    let data: Value = serde_json::from_str(&kubectl(
        env,
        &[
            "-n",
            &ns,
            "get",
            "configmap",
            "argocd-cm",
            "-o",
            "jsonpath={.data}",
        ],
        None,
    ))
    .unwrap();
    assert_eq!(data["url"], "https://argocd.example");
    assert_eq!(
        data["resource.customizations.health.teal.dev_BlueGreen"],
        std::fs::read_to_string(&lua).unwrap().as_str()
    );
}
