//! The preview header's value from a Secret, and router errors in status,
//! against a real control plane. This binary installs only the Gateway API
//! CRDs, so that Istio's kinds are not served by its cluster.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::PostParams;
use serde_json::{Value, json};
use support::{Case, case};
use teal_testenv::wait_for;

fn install_gateway_api_crds() {
    support::install_upstream_crds(
        &["gateway-api.yaml"],
        &["crd/httproutes.gateway.networking.k8s.io"],
    );
}

fn spec(router: Value, preview: Value) -> Value {
    json!({
        "workloadRef": {"kind": "Deployment", "name": "shop"},
        "progressDeadline": "60s",
        "promotion": {"mode": "manual"},
        "preview": preview,
        "router": router,
    })
}

fn routed(
    s: &teal_api::BlueGreenStatus,
) -> Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    s.conditions.iter().find(|c| c.type_ == "Routed")
}

async fn event_notes(c: &Case, name: &str) -> Vec<String> {
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(c.client.clone(), &c.ns);
    let list = events.list(&Default::default()).await.unwrap().items;
    list.into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .map(|e| {
            format!(
                "{} {} {}",
                e.type_.unwrap_or_default(),
                e.reason.unwrap_or_default(),
                e.note.unwrap_or_default()
            )
        })
        .collect()
}

async fn wait_event(c: &Case, name: &str, want: &[&str]) -> Vec<String> {
    wait_for("warning event", Duration::from_secs(60), || async {
        let notes = event_notes(c, name).await;
        if notes.iter().any(|n| want.iter().all(|w| n.contains(w))) {
            Ok(notes)
        } else {
            Err(format!("events {notes:?}"))
        }
    })
    .await
}

#[tokio::test]
async fn istio_not_installed_is_a_condition_and_a_warning() {
    let mut c = case("noistio").await;
    c.create_workload("shop", "shop:1", 2, BTreeMap::new())
        .await;
    c.create_bluegreen(
        "shop",
        spec(
            json!({"type": "istio"}),
            json!({"header": {"name": "x-version", "value": "preview"}}),
        ),
    )
    .await
    .unwrap();
    c.start_controller();
    let want = "is not served by this cluster";
    let st = c
        .wait_status("Routed False", "shop", |s| {
            routed(s).is_some_and(|r| {
                r.status == "False" && r.reason == "RouteFailed" && r.message.contains(want)
            })
        })
        .await;
    let m = &routed(&st).unwrap().message;
    assert!(
        m.contains("VirtualService (networking.istio.io/v1)")
            || m.contains("DestinationRule (networking.istio.io/v1)"),
        "{m}"
    );
    assert!(
        m.contains("install Istio or choose another spec.router.type"),
        "{m}"
    );
    wait_event(&c, "shop", &["Warning", "RouteFailed", want]).await;
}

#[tokio::test]
async fn preview_header_value_from_a_secret() {
    let mut c = case("secret").await;
    tokio::task::spawn_blocking(install_gateway_api_crds)
        .await
        .unwrap();

    // Both a literal value and a Secret: refused by the apiserver.
    let both = json!({"header": {"name": "x-preview", "value": "1"},
                      "headerValueFrom": {"secretKeyRef": {"name": "preview-token", "key": "token"}}});
    let e = c
        .create_raw(
            "both",
            spec(
                json!({"type": "gatewayAPI", "gatewayAPI": {"parentRefs": [{"name": "public"}]}}),
                both,
            ),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("spec.preview.header.value") && e.contains("spec.preview.headerValueFrom"),
        "{e}"
    );

    c.create_workload("shop", "shop:1", 2, BTreeMap::new())
        .await;
    let preview = json!({"header": {"name": "x-preview"},
                         "headerValueFrom": {"secretKeyRef": {"name": "preview-token", "key": "token"}}});
    c.create_bluegreen(
        "shop",
        spec(
            json!({"type": "gatewayAPI", "gatewayAPI": {"parentRefs": [{"name": "public"}]}}),
            preview,
        ),
    )
    .await
    .unwrap();
    c.start_controller();
    let st = c
        .wait_status("missing Secret reported", "shop", |s| {
            routed(s)
                .is_some_and(|r| r.reason == "RouteFailed" && r.message.contains("preview-token"))
        })
        .await;
    let m = routed(&st).unwrap().message.clone();
    assert!(
        m.contains("spec.preview.headerValueFrom.secretKeyRef"),
        "{m}"
    );
    assert!(
        m.contains(&format!("Secret {}/preview-token does not exist", c.ns)),
        "{m}"
    );
    wait_event(&c, "shop", &["Warning", "RouteFailed", "preview-token"]).await;
    // Nothing was routed with a guessed or empty value.
    assert!(c.http_routes().get_opt("shop").await.unwrap().is_none());

    // The Secret without the key.
    let secrets: Api<Secret> = Api::namespaced(c.client.clone(), &c.ns);
    let secret = |data: Value| -> Secret {
        serde_json::from_value(json!({"metadata": {"name": "preview-token"}, "stringData": data}))
            .unwrap()
    };
    secrets
        .create(&PostParams::default(), &secret(json!({"other": "x"})))
        .await
        .unwrap();
    c.wait_status("missing key reported", "shop", |s| {
        routed(s).is_some_and(|r| r.message.contains("has no key \"token\""))
    })
    .await;

    // With the key: the rule matches the Secret's value.
    let token = "s3cr3t-preview-9f2c";
    secrets
        .delete("preview-token", &Default::default())
        .await
        .unwrap();
    secrets
        .create(&PostParams::default(), &secret(json!({"token": token})))
        .await
        .unwrap();
    let api = c.http_routes();
    wait_for(
        "HTTPRoute with the Secret's value",
        Duration::from_secs(60),
        || {
            let api = api.clone();
            async move {
                let o = api
                    .get_opt("shop")
                    .await
                    .map_err(|e| e.to_string())?
                    .ok_or("no HTTPRoute")?;
                let h = &o.data["spec"]["rules"][0]["matches"][0]["headers"][0];
                if h == &json!({"type": "Exact", "name": "x-preview", "value": token}) {
                    Ok(())
                } else {
                    Err(format!("rules {}", o.data["spec"]["rules"]))
                }
            }
        },
    )
    .await;
    let st = c
        .wait_status("Routed True", "shop", |s| {
            routed(s).is_some_and(|r| r.status == "True")
        })
        .await;
    // The value is in neither status nor Events.
    let bg = c.bluegreens().get("shop").await.unwrap();
    assert!(
        !serde_json::to_string(&bg.status).unwrap().contains(token),
        "{st:?}"
    );
    assert!(!serde_json::to_string(&bg.spec).unwrap().contains(token));
    let notes = event_notes(&c, "shop").await;
    assert!(notes.iter().all(|n| !n.contains(token)), "{notes:?}");
}
