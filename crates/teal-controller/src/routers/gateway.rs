//! `type: gatewayAPI`: one Service per color (`<service>-blue`,
//! `<service>-green`) and an HTTPRoute with two rules: `teal-preview` (the
//! preview header to the preview color's Service) and `teal-active`
//! (backendRefs active: 100, idle: 0). Cutover swaps the weights. The live
//! Service selects the active color, as with `type: service`.
//!
//! Confirmed once the apiserver accepted the HTTPRoute: Gateway API has no
//! acknowledgement of a route's programming per data-plane replica, which
//! is why the previous color stays up for `scaleDownDelay`.

use serde_json::{Value, json};
use teal_api::BlueGreen;
use teal_core::Color;
use teal_core::release::Routing;

use super::preview::Header;
use super::{ACTIVE_ROUTE, Ack, Kind, PREVIEW_ROUTE, Target, merge_routes};
use crate::objects;
use crate::reconcile::Error;

/// A backendRef to a Service, written out with the defaults the apiserver
/// would add (group, kind, weight 1) so that what teal writes is what it
/// reads back, and an adopted route is not rewritten on every reconcile.
fn backend(name: &str, port: i32, weight: i32) -> Value {
    json!({"group": "", "kind": "Service", "name": name, "port": port, "weight": weight})
}

fn all_paths() -> Value {
    json!([{"path": {"type": "PathPrefix", "value": "/"}}])
}

/// teal's two rules: preview (only with a preview header) and active.
/// `port` gives the port of each color's Service.
pub fn rules(
    bg: &BlueGreen,
    routing: Routing,
    port: &dyn Fn(Color) -> i32,
    header: Option<&Header>,
) -> (Option<Value>, Value) {
    let preview = header.map(|h| {
        let color = routing.preview.unwrap_or(routing.active);
        json!({
            "name": PREVIEW_ROUTE,
            "matches": [{
                "path": {"type": "PathPrefix", "value": "/"},
                "headers": [{"type": "Exact", "name": h.name, "value": h.value}],
            }],
            "backendRefs": [backend(&objects::color_service_name(bg, color), port(color), 1)],
        })
    });
    let idle = routing.active.other();
    let active = json!({
        "name": ACTIVE_ROUTE,
        "matches": all_paths(),
        "backendRefs": [
            backend(
                &objects::color_service_name(bg, routing.active),
                port(routing.active),
                100,
            ),
            backend(&objects::color_service_name(bg, idle), port(idle), 0),
        ],
    });
    (preview, active)
}

/// The HTTPRoute teal owns.
pub fn http_route(
    bg: &BlueGreen,
    routing: Routing,
    port: &dyn Fn(Color) -> i32,
    header: Option<&Header>,
) -> Value {
    let cfg = bg.spec.router.gateway_api.clone().unwrap_or_default();
    let parents: Vec<Value> = cfg
        .parent_refs
        .iter()
        .map(|p| {
            let mut v =
                json!({"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": p.name});
            if let Some(ns) = &p.namespace {
                v["namespace"] = ns.clone().into();
            }
            if let Some(s) = &p.section_name {
                v["sectionName"] = s.clone().into();
            }
            v
        })
        .collect();
    let (preview, active) = rules(bg, routing, port, header);
    let mut spec = json!({
        "parentRefs": parents,
        "rules": preview.into_iter().chain([active]).collect::<Vec<_>>(),
    });
    if !cfg.hostnames.is_empty() {
        spec["hostnames"] = json!(cfg.hostnames);
    }
    json!({"metadata": objects::owned_meta(bg, objects::service_name(bg)), "spec": spec})
}

pub async fn route(
    t: &Target<'_>,
    routing: Routing,
    adopted: Option<&str>,
    header: Option<&Header>,
) -> Result<Ack, Error> {
    for c in Color::ALL {
        let svc = objects::service(
            t.bg,
            objects::color_service_name(t.bg, c),
            c,
            t.ports.of(c).to_vec(),
        );
        t.apply_service(&svc).await?;
    }
    match adopted {
        None => {
            t.apply(
                Kind::HttpRoute,
                http_route(t.bg, routing, &|c| t.port(c), header),
            )
            .await?
        }
        Some(name) => {
            let (preview, active) = rules(t.bg, routing, &|c| t.port(c), header);
            t.edit_adopted(Kind::HttpRoute, name, "rules", |list| {
                merge_routes(list, preview.clone(), active.clone())
            })
            .await?
        }
    }
    let live = objects::service(
        t.bg,
        t.service(),
        routing.active,
        t.ports.of(routing.active).to_vec(),
    );
    t.apply_service(&live).await?;
    Ok(Ack::Confirmed)
}

/// teal's active rule now sends everything to the live Service; the
/// preview rule goes.
pub async fn hand_back(t: &Target<'_>, name: &str, live: Color) -> Result<(), Error> {
    let active = json!({
        "name": ACTIVE_ROUTE,
        "matches": all_paths(),
        "backendRefs": [backend(&t.service(), t.port(live), 1)],
    });
    t.edit_adopted(Kind::HttpRoute, name, "rules", |list| {
        merge_routes(list, None, active.clone())
    })
    .await
}
