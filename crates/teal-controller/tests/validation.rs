//! Invalid BlueGreens are refused by the real apiserver (schema and CEL
//! rules from the generated CRD), with messages naming the field.

mod support;

use serde_json::json;
use support::case;

fn base() -> serde_json::Value {
    json!({"workloadRef": {"kind": "Deployment", "name": "shop"}, "replicas": 3})
}

fn with(path: &[&str], value: serde_json::Value) -> serde_json::Value {
    let mut s = base();
    let mut cur = &mut s;
    for (i, key) in path.iter().enumerate() {
        if i == path.len() - 1 {
            cur[*key] = value.clone();
        } else {
            if cur.get(*key).is_none() {
                cur[*key] = json!({});
            }
            cur = &mut cur[*key];
        }
    }
    s
}

#[tokio::test]
async fn invalid_specs_are_rejected_naming_the_field() {
    let c = case("invalid").await;
    let metric_without_query = json!({"prePromotion": {"metrics": [{"name": "m", "prometheus": {"address": "http://p:9090"}, "min": 1}]}});
    let cases: Vec<(&str, serde_json::Value, &str)> = vec![
        ("no workloadRef", json!({"replicas": 3}), "spec.workloadRef"),
        (
            "workload kind",
            with(&["workloadRef", "kind"], json!("StatefulSet")),
            "spec.workloadRef.kind",
        ),
        (
            "empty workload name",
            with(&["workloadRef", "name"], json!("")),
            "spec.workloadRef.name",
        ),
        (
            "zero replicas",
            with(&["replicas"], json!(0)),
            "spec.replicas",
        ),
        (
            "too many replicas",
            with(&["replicas"], json!(100000)),
            "spec.replicas",
        ),
        (
            "bad scaleDownDelay",
            with(&["scaleDownDelay"], json!("5x")),
            "spec.scaleDownDelay",
        ),
        (
            "bad progressDeadline",
            with(&["progressDeadline"], json!("ten minutes")),
            "spec.progressDeadline",
        ),
        (
            "preview bigger than replicas",
            with(&["preview", "replicas"], json!(5)),
            "spec.preview.replicas must not exceed spec.replicas",
        ),
        (
            "promotion mode",
            with(&["promotion", "mode"], json!("sometimes")),
            "spec.promotion.mode",
        ),
        (
            "autoPromoteAfter with auto",
            with(&["promotion", "autoPromoteAfter"], json!("5m")),
            "autoPromoteAfter only applies with mode: manual",
        ),
        (
            "router type",
            with(&["router", "type"], json!("nginx")),
            "spec.router.type",
        ),
        (
            "analysis interval",
            with(
                &["analysis", "prePromotion"],
                json!({"interval": "soon", "metrics": []}),
            ),
            "spec.analysis.prePromotion.interval",
        ),
        (
            "prometheus query missing",
            with(&["analysis"], metric_without_query),
            "query",
        ),
        (
            "service name too long",
            with(&["service", "name"], json!("x".repeat(60))),
            "spec.service.name",
        ),
    ];
    assert!(cases.len() >= 10);
    for (i, (what, spec, want)) in cases.into_iter().enumerate() {
        let err = c
            .create_raw(&format!("bad-{i}"), spec)
            .await
            .expect_err(&format!("{what}: the apiserver accepted it"));
        let text = err.to_string();
        assert!(text.contains(want), "{what}: expected {want:?} in {text}");
    }
    // The valid base is accepted (so the cases above fail for their reason).
    c.create_raw("good", base())
        .await
        .expect("the valid spec is accepted");
}

#[tokio::test]
async fn workload_ref_is_immutable() {
    let c = case("immutable").await;
    c.create_bluegreen("shop", base()).await.unwrap();
    let patch = json!({"spec": {"workloadRef": {"kind": "Deployment", "name": "other"}}});
    let err = c
        .bluegreens()
        .patch("shop", &Default::default(), &kube::api::Patch::Merge(patch))
        .await
        .expect_err("changing workloadRef must be refused");
    assert!(
        err.to_string().contains("spec.workloadRef is immutable"),
        "{err}"
    );
}

#[tokio::test]
async fn kubectl_refuses_unknown_fields() {
    let c = case("strict").await;
    let env = teal_testenv::TestEnv::shared();
    let dir = std::env::temp_dir().join(format!("teal-strict-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bg.yaml");
    std::fs::write(
        &file,
        "apiVersion: teal.dev/v1alpha1\nkind: BlueGreen\nmetadata: {name: shop}\nspec:\n  workloadRef: {kind: Deployment, name: shop}\n  scaleDownDelai: 30s\n",
    )
    .unwrap();
    let out = env
        .kubectl()
        .args(["apply", "-n", &c.ns, "-f"])
        .arg(&file)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("scaleDownDelai"), "{stderr}");
}
