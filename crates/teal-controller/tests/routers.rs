//! The istio and gatewayAPI routers against a real control plane with the
//! real upstream CRDs (Istio's networking.istio.io from istio.io/api,
//! Gateway API's standard channel from sigs.k8s.io/gateway-api): the exact
//! routes teal writes at each phase, that the apiserver accepts them, that
//! a user's own routes survive, and that a change of router type and the
//! deletion of the BlueGreen leave nothing behind.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, DynamicObject};
use serde_json::{Value, json};
use support::{Case, case};
use teal_testenv::wait_for;

async fn routers_case(prefix: &str) -> Case {
    let c = case(prefix).await;
    tokio::task::spawn_blocking(support::install_router_crds)
        .await
        .unwrap();
    c
}

/// Waits until `spec` of object `name` is exactly `want`.
async fn wait_spec(what: &str, api: &Api<DynamicObject>, name: &str, want: Value) {
    wait_for(what, Duration::from_secs(60), || {
        let api = api.clone();
        let want = want.clone();
        async move {
            let o = api.get(name).await.map_err(|e| e.to_string())?;
            if o.data["spec"] == want {
                Ok(())
            } else {
                Err(format!("spec is {}\nwant    {}", o.data["spec"], want))
            }
        }
    })
    .await
}

async fn wait_gone(what: &str, api: &Api<DynamicObject>, name: &str) {
    wait_for(what, Duration::from_secs(60), || {
        let api = api.clone();
        async move {
            match api.get_opt(name).await.map_err(|e| e.to_string())? {
                None => Ok(()),
                Some(_) => Err(format!("{name} still exists")),
            }
        }
    })
    .await
}

fn spec(router: Value) -> Value {
    spec_with_delay(router, "2s")
}

fn spec_with_delay(router: Value, delay: &str) -> Value {
    json!({
        "workloadRef": {"kind": "Deployment", "name": "shop"},
        "scaleDownDelay": delay,
        "progressDeadline": "60s",
        "promotion": {"mode": "manual"},
        "preview": {"header": {"name": "X-Version", "value": "preview"}},
        "router": router,
    })
}

fn istio_routes(preview: &str, active: &str) -> Vec<Value> {
    let dest = |subset: &str| json!([{"destination": {"host": "shop", "subset": subset, "port": {"number": 8080}}}]);
    vec![
        json!({"name": "teal-preview", "match": [{"headers": {"x-version": {"exact": "preview"}}}], "route": dest(preview)}),
        json!({"name": "teal-active", "route": dest(active)}),
    ]
}

fn gateway_rules(preview: &str, active: &str) -> Vec<Value> {
    let idle = if active == "blue" { "green" } else { "blue" };
    let b = |color: &str| json!({"group": "", "kind": "Service", "name": format!("shop-{color}"), "port": 8080, "weight": 1});
    let weighted = |color: &str, w: i32| {
        let mut v = b(color);
        v["weight"] = w.into();
        v
    };
    vec![
        json!({"name": "teal-preview",
               "matches": [{"path": {"type": "PathPrefix", "value": "/"}, "headers": [{"type": "Exact", "name": "X-Version", "value": "preview"}]}],
               "backendRefs": [b(preview)]}),
        json!({"name": "teal-active",
               "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
               "backendRefs": [weighted(active, 100), weighted(idle, 0)]}),
    ]
}

/// Starts v2 and waits for its preview.
async fn release_v2(c: &Case) {
    c.set_image("shop", "shop:2", BTreeMap::new()).await;
    c.wait_status("v2 in preview", "shop", |s| {
        s.phase.as_deref() == Some("AwaitingPromotion")
    })
    .await;
}

async fn promoted(c: &Case) {
    c.command("shop", "promote").await;
    c.wait_status("v2 promoted", "shop", |s| {
        s.history.iter().any(|h| h.outcome == "promoted") && s.phase.as_deref() == Some("Healthy")
    })
    .await;
}

#[tokio::test]
async fn istio_owned_routes_through_a_release_then_switch_to_gateway_api_and_delete() {
    let mut c = routers_case("istio").await;
    c.create_workload("shop", "shop:1", 2, BTreeMap::new())
        .await;
    c.create_bluegreen(
        "shop",
        spec_with_delay(
            json!({"type": "istio", "istio": {"hosts": ["shop", "shop.example.com"], "gateways": ["mesh", "web/public"]}}),
            "10m",
        ),
    )
    .await
    .unwrap();
    c.start_controller();
    c.wait_status("adoption", "shop", |s| {
        s.phase.as_deref() == Some("Healthy")
    })
    .await;

    let head = |http: Vec<Value>| json!({"hosts": ["shop", "shop.example.com"], "gateways": ["mesh", "web/public"], "http": http});
    wait_spec(
        "VS live on blue",
        &c.virtual_services(),
        "shop",
        head(istio_routes("blue", "blue")),
    )
    .await;
    let subsets = json!({"host": "shop", "subsets": [
        {"name": "blue", "labels": {"teal.dev/bluegreen": "shop", "teal.dev/color": "blue"}},
        {"name": "green", "labels": {"teal.dev/bluegreen": "shop", "teal.dev/color": "green"}},
    ]});
    wait_spec(
        "DestinationRule",
        &c.destination_rules(),
        "shop",
        subsets.clone(),
    )
    .await;
    let live = c.services().get("shop").await.unwrap();
    assert_eq!(
        live.spec.unwrap().selector.unwrap(),
        BTreeMap::from([("teal.dev/bluegreen".to_string(), "shop".to_string())]),
        "with istio the live Service selects both colors; the mesh picks the subset"
    );

    release_v2(&c).await;
    wait_spec(
        "VS previews green",
        &c.virtual_services(),
        "shop",
        head(istio_routes("green", "blue")),
    )
    .await;
    c.command("shop", "promote").await;
    c.wait_status("switched, blue kept for rollback", "shop", |s| {
        s.phase.as_deref() == Some("ScaleDownDelay")
    })
    .await;
    wait_spec(
        "VS live on green",
        &c.virtual_services(),
        "shop",
        head(istio_routes("green", "green")),
    )
    .await;
    let st = c.bluegreens().get("shop").await.unwrap().status.unwrap();
    let r = st.router.expect("status.router");
    assert_eq!(r.active, Some(teal_core::Color::Green));
    assert!(r.switch_confirmed_at >= r.switch_requested_at);

    c.command("shop", "rollback").await;
    c.wait_status("rolled back", "shop", |s| {
        s.phase.as_deref() == Some("RolledBack") && s.active_color == Some(teal_core::Color::Blue)
    })
    .await;
    wait_spec(
        "VS back on blue",
        &c.virtual_services(),
        "shop",
        head(istio_routes("blue", "blue")),
    )
    .await;

    // Switch the router type on the live BlueGreen.
    let patch = json!({"spec": {"router": {"type": "gatewayAPI", "istio": null, "gatewayAPI": {"parentRefs": [{"name": "public", "namespace": "web"}], "hostnames": ["shop.example.com"]}}}});
    c.bluegreens()
        .patch("shop", &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
    wait_spec(
        "HTTPRoute written",
        &c.http_routes(),
        "shop",
        json!({
            "parentRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "public", "namespace": "web"}],
            "hostnames": ["shop.example.com"],
            "rules": gateway_rules("blue", "blue"),
        }),
    )
    .await;
    wait_gone(
        "istio VirtualService removed",
        &c.virtual_services(),
        "shop",
    )
    .await;
    wait_gone(
        "istio DestinationRule removed",
        &c.destination_rules(),
        "shop",
    )
    .await;
    assert_eq!(c.selector_color("shop").await.as_deref(), Some("blue"));
    for color in ["blue", "green"] {
        assert_eq!(
            c.selector_color(&format!("shop-{color}")).await.as_deref(),
            Some(color)
        );
    }

    // Deleting the BlueGreen: the owned route and per-color Services go,
    // the live Service is handed back to the workload.
    c.bluegreens()
        .delete("shop", &DeleteParams::default())
        .await
        .unwrap();
    let bgs = c.bluegreens();
    wait_for("BlueGreen deleted", Duration::from_secs(120), || {
        let bgs = bgs.clone();
        async move {
            match bgs.get_opt("shop").await.map_err(|e| e.to_string())? {
                None => Ok(()),
                Some(_) => Err("still there".to_string()),
            }
        }
    })
    .await;
    wait_gone("owned HTTPRoute collected", &c.http_routes(), "shop").await;
    let svcs = Api::<DynamicObject>::namespaced_with(
        c.client.clone(),
        &c.ns,
        &ApiResource::erase::<k8s_openapi::api::core::v1::Service>(&()),
    );
    for name in ["shop-blue", "shop-green", "shop-preview"] {
        wait_gone("per-color Service collected", &svcs, name).await;
    }
    let live = c.services().get("shop").await.unwrap();
    assert_eq!(
        live.spec
            .unwrap()
            .selector
            .unwrap()
            .get("app")
            .map(String::as_str),
        Some("shop"),
        "the live Service selects the workload again"
    );
    c.stop_controller();
}

#[tokio::test]
async fn istio_adopts_a_user_virtual_service_and_keeps_its_routes() {
    let mut c = routers_case("istio-adopt").await;
    let user_route = c
        .create_user_virtual_service(json!({"gateways": ["web/public"]}))
        .await;
    c.create_workload("shop", "shop:1", 2, BTreeMap::new())
        .await;
    c.create_bluegreen(
        "shop",
        spec(json!({"type": "istio", "istio": {"virtualService": "front"}})),
    )
    .await
    .unwrap();
    c.start_controller();
    let with = |http: Vec<Value>| json!({"hosts": ["shop.example.com"], "gateways": ["web/public"], "http": http});
    let teal = |p: &str, a: &str| {
        let r = istio_routes(p, a);
        vec![r[0].clone(), user_route.clone(), r[1].clone()]
    };
    wait_spec(
        "adopted on blue",
        &c.virtual_services(),
        "front",
        with(teal("blue", "blue")),
    )
    .await;
    release_v2(&c).await;
    wait_spec(
        "adopted previews green",
        &c.virtual_services(),
        "front",
        with(teal("green", "blue")),
    )
    .await;

    // The user adds a route while teal manages the VirtualService.
    let mut o = c.virtual_services().get("front").await.unwrap();
    let extra = json!({"name": "docs", "match": [{"uri": {"prefix": "/docs"}}], "route": [{"destination": {"host": "docs"}}]});
    o.data["spec"]["http"]
        .as_array_mut()
        .unwrap()
        .insert(1, extra.clone());
    c.virtual_services()
        .replace("front", &PostParams::default(), &o)
        .await
        .unwrap();

    promoted(&c).await;
    let r = istio_routes("green", "green");
    wait_spec(
        "adopted live on green, user routes kept",
        &c.virtual_services(),
        "front",
        with(vec![
            r[0].clone(),
            extra.clone(),
            user_route.clone(),
            r[1].clone(),
        ]),
    )
    .await;

    c.bluegreens()
        .delete("shop", &DeleteParams::default())
        .await
        .unwrap();
    wait_spec(
        "handed back: preview route gone, active route to the live Service",
        &c.virtual_services(),
        "front",
        with(vec![
            extra,
            user_route,
            json!({"name": "teal-active", "route": [{"destination": {"host": "shop", "port": {"number": 8080}}}]}),
        ]),
    )
    .await;
    wait_gone("DestinationRule collected", &c.destination_rules(), "shop").await;
    c.stop_controller();
}

#[tokio::test]
async fn gateway_api_patches_a_user_route_then_switches_to_service() {
    let mut c = routers_case("gw-adopt").await;
    let static_rule = c.create_user_http_route().await;
    c.create_workload("shop", "shop:1", 2, BTreeMap::new())
        .await;
    c.create_bluegreen(
        "shop",
        spec(json!({"type": "gatewayAPI", "gatewayAPI": {"httpRoute": "front"}})),
    )
    .await
    .unwrap();
    c.start_controller();
    let with = |p: &str, a: &str| {
        let r = gateway_rules(p, a);
        json!({"parentRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "public"}],
               "rules": [r[0].clone(), static_rule.clone(), r[1].clone()]})
    };
    wait_spec(
        "adopted on blue",
        &c.http_routes(),
        "front",
        with("blue", "blue"),
    )
    .await;
    release_v2(&c).await;
    wait_spec(
        "preview green",
        &c.http_routes(),
        "front",
        with("green", "blue"),
    )
    .await;
    promoted(&c).await;
    wait_spec(
        "weights swapped",
        &c.http_routes(),
        "front",
        with("green", "green"),
    )
    .await;

    // Switch to the Service router: teal's rules leave the user's route.
    let patch = json!({"spec": {"router": {"type": "service", "gatewayAPI": null}}});
    c.bluegreens()
        .patch("shop", &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
    wait_spec(
        "handed back",
        &c.http_routes(),
        "front",
        json!({"parentRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "public"}],
               "rules": [static_rule, {"name": "teal-active",
                   "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                   "backendRefs": [{"group": "", "kind": "Service", "name": "shop", "port": 8080, "weight": 1}]}]}),
    )
    .await;
    let svcs = Api::<DynamicObject>::namespaced_with(
        c.client.clone(),
        &c.ns,
        &ApiResource::erase::<k8s_openapi::api::core::v1::Service>(&()),
    );
    wait_gone("per-color Service removed", &svcs, "shop-blue").await;
    wait_gone("per-color Service removed", &svcs, "shop-green").await;
    assert_eq!(c.selector_color("shop").await.as_deref(), Some("green"));
    assert_eq!(
        c.selector_color("shop-preview").await.as_deref(),
        Some("green")
    );
    c.stop_controller();
}

#[tokio::test]
async fn gateway_api_needs_exactly_one_of_route_or_parents() {
    let c = routers_case("gw-invalid").await;
    for (router, why) in [
        (json!({"type": "gatewayAPI"}), "no settings"),
        (
            json!({"type": "gatewayAPI", "gatewayAPI": {"httpRoute": "a", "parentRefs": [{"name": "g"}]}}),
            "both",
        ),
        (
            json!({"type": "service", "istio": {"hosts": ["a"]}}),
            "istio settings on another type",
        ),
    ] {
        let err = c.create_raw("shop", spec(router)).await.expect_err(why);
        let msg = err.to_string();
        assert!(msg.contains("spec.router"), "{why}: {msg}");
    }
}

/// The ports of Service `name`, as `name/port->target`.
async fn service_ports(c: &Case, name: &str) -> Vec<String> {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let s = c.services().get(name).await.unwrap();
    s.spec
        .and_then(|s| s.ports)
        .unwrap_or_default()
        .into_iter()
        .map(|p| {
            let target = match p.target_port {
                Some(IntOrString::Int(n)) => n.to_string(),
                Some(IntOrString::String(s)) => s,
                None => String::new(),
            };
            format!("{}/{}->{target}", p.name.unwrap_or_default(), p.port)
        })
        .collect()
}

/// Waits until Service `name` has exactly `want` ports.
async fn wait_ports(c: &Case, what: &str, name: &str, want: &[&str]) {
    let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    wait_for(what, Duration::from_secs(60), || {
        let want = want.clone();
        async move {
            let got = service_ports(c, name).await;
            if got == want {
                Ok(())
            } else {
                Err(format!("{name} has ports {got:?}, want {want:?}"))
            }
        }
    })
    .await
}

/// v2 renames the container port and moves it to 9090.
async fn release_v2_on_another_port(c: &Case) {
    let patch = json!({"spec": {"template": {"spec": {"containers": [{
        "name": "app",
        "image": "shop:2",
        "ports": [{"name": "web", "containerPort": 9090}]
    }]}}}});
    c.deployments()
        .patch("shop", &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
    c.wait_status("v2 in preview", "shop", |s| {
        s.phase.as_deref() == Some("AwaitingPromotion")
    })
    .await;
}

const V1: &[&str] = &["http/8080->http"];
const V2: &[&str] = &["web/9090->web"];

#[tokio::test]
async fn istio_and_gateway_api_services_carry_the_ports_of_the_color_they_reach() {
    for (prefix, router) in [
        ("ports-istio", json!({"type": "istio"})),
        (
            "ports-gw",
            json!({"type": "gatewayAPI", "gatewayAPI": {"parentRefs": [{"name": "public"}]}}),
        ),
    ] {
        let istio = prefix == "ports-istio";
        let mut c = routers_case(prefix).await;
        c.create_workload("shop", "shop:1", 2, BTreeMap::new())
            .await;
        c.create_bluegreen("shop", spec_with_delay(router, "10m"))
            .await
            .unwrap();
        c.start_controller();
        c.wait_status("adoption", "shop", |s| {
            s.phase.as_deref() == Some("Healthy")
        })
        .await;
        wait_ports(&c, "v1 live", "shop", V1).await;

        // In preview: green runs v2 on its new port, blue (live) still v1.
        release_v2_on_another_port(&c).await;
        if istio {
            // One Service for both colors: it carries the live color's ports,
            // and the routes send to that port.
            wait_ports(&c, "live Service keeps v1's ports", "shop", V1).await;
            let vs = c.virtual_services().get("shop").await.unwrap();
            for r in vs.data["spec"]["http"].as_array().unwrap() {
                assert_eq!(r["route"][0]["destination"]["port"]["number"], 8080, "{r}");
            }
        } else {
            wait_ports(&c, "green's Service has v2's ports", "shop-green", V2).await;
            assert_eq!(service_ports(&c, "shop-blue").await, V1);
            assert_eq!(service_ports(&c, "shop").await, V1);
            let route = c.http_routes().get("shop").await.unwrap();
            let ports: Vec<(String, i64)> = route.data["spec"]["rules"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|r| r["backendRefs"].as_array().unwrap().clone())
                .map(|b| {
                    (
                        b["name"].as_str().unwrap().to_string(),
                        b["port"].as_i64().unwrap(),
                    )
                })
                .collect();
            for (name, port) in &ports {
                let want = if name == "shop-green" { 9090 } else { 8080 };
                assert_eq!(*port, want, "backend {name}: {ports:?}");
            }
        }

        // Live on green (v2), then rolled back to blue (v1).
        c.command("shop", "promote").await;
        c.wait_status("v2 live", "shop", |s| {
            s.phase.as_deref() == Some("ScaleDownDelay")
        })
        .await;
        wait_ports(&c, "v2 live", "shop", V2).await;
        c.command("shop", "rollback").await;
        c.wait_status("rolled back", "shop", |s| {
            s.phase.as_deref() == Some("RolledBack")
                && s.active_color == Some(teal_core::Color::Blue)
        })
        .await;
        wait_ports(&c, "live Service back on v1's ports", "shop", V1).await;
        if !istio {
            assert_eq!(service_ports(&c, "shop-blue").await, V1);
            assert_eq!(service_ports(&c, "shop-green").await, V2);
        }
        c.stop_controller();
    }
}
