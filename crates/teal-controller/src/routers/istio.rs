//! `type: istio`: a DestinationRule with one subset per color and a
//! VirtualService with two routes: `teal-preview` (the preview header or
//! cookie to the preview subset) and `teal-active` (everything else to the
//! active subset). Cutover rewrites `teal-active`. The live Service selects
//! both colors: the mesh picks the subset.
//!
//! Confirmed once the apiserver accepted the VirtualService: istiod pushes
//! it to the proxies asynchronously and reports no per-proxy
//! acknowledgement through the API, which is why the previous color stays
//! up for `scaleDownDelay`.

use serde_json::{Value, json};
use teal_api::BlueGreen;
use teal_core::Color;
use teal_core::release::Routing;

use super::preview::Header;
use super::{ACTIVE_ROUTE, Ack, Kind, PREVIEW_ROUTE, Target, merge_routes};
use crate::objects;
use crate::reconcile::Error;

/// The DestinationRule: host = the live Service, subsets `blue` and `green`.
pub fn destination_rule(bg: &BlueGreen) -> Value {
    let name = bg.metadata.name.clone().unwrap_or_default();
    let svc = objects::service_name(bg);
    let subsets: Vec<Value> = Color::ALL
        .iter()
        .map(|c| json!({"name": c.to_string(), "labels": objects::color_labels(&name, *c)}))
        .collect();
    json!({
        "metadata": objects::owned_meta(bg, svc.clone()),
        "spec": {"host": svc, "subsets": subsets},
    })
}

fn destination(host: &str, subset: Option<Color>, port: i32) -> Value {
    let mut d = json!({"host": host, "port": {"number": port}});
    if let Some(c) = subset {
        d["subset"] = c.to_string().into();
    }
    json!([{"destination": d}])
}

/// teal's two routes: preview (only with a preview header or cookie) and active.
pub fn routes(
    bg: &BlueGreen,
    routing: Routing,
    port: i32,
    header: Option<&Header>,
) -> (Option<Value>, Value) {
    let svc = objects::service_name(bg);
    let mut matches = Vec::new();
    if let Some(h) = header {
        matches.push(json!({"headers": {h.name.to_ascii_lowercase(): {"exact": h.value}}}));
    }
    if let Some(c) = &bg.spec.preview.cookie {
        let re = format!(
            "^(.*?;\\s*)?{}={}(;.*)?$",
            regex_escape(&c.name),
            regex_escape(&c.value)
        );
        matches.push(json!({"headers": {"cookie": {"regex": re}}}));
    }
    let preview = (!matches.is_empty()).then(|| {
        json!({
            "name": PREVIEW_ROUTE,
            "match": matches,
            "route": destination(&svc, Some(routing.preview.unwrap_or(routing.active)), port),
        })
    });
    let active = json!({
        "name": ACTIVE_ROUTE,
        "route": destination(&svc, Some(routing.active), port),
    });
    (preview, active)
}

/// Escapes RE2 metacharacters so a cookie name or value matches literally.
fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        if "\\.+*?()|[]{}^$".contains(ch) {
            out.push('\\');
        }
        out.push(ch);
    }
    out
}

/// The VirtualService teal owns.
pub fn virtual_service(
    bg: &BlueGreen,
    routing: Routing,
    port: i32,
    header: Option<&Header>,
) -> Value {
    let svc = objects::service_name(bg);
    let cfg = bg.spec.router.istio.clone().unwrap_or_default();
    let hosts = if cfg.hosts.is_empty() {
        vec![svc.clone()]
    } else {
        cfg.hosts
    };
    let (preview, active) = routes(bg, routing, port, header);
    let mut spec = json!({
        "hosts": hosts,
        "http": preview.into_iter().chain([active]).collect::<Vec<_>>(),
    });
    if !cfg.gateways.is_empty() {
        spec["gateways"] = json!(cfg.gateways);
    }
    json!({"metadata": objects::owned_meta(bg, svc), "spec": spec})
}

pub async fn route(
    t: &Target<'_>,
    routing: Routing,
    adopted: Option<&str>,
    header: Option<&Header>,
) -> Result<Ack, Error> {
    // One Service selects both colors (subsets pick the color): it carries
    // the live color's ports.
    let live = objects::both_colors_service(t.bg, t.service(), t.ports.of(routing.active).to_vec());
    t.apply_service(&live).await?;
    t.apply(Kind::DestinationRule, destination_rule(t.bg))
        .await?;
    match adopted {
        None => {
            t.apply(
                Kind::VirtualService,
                virtual_service(t.bg, routing, t.port(routing.active), header),
            )
            .await?
        }
        Some(name) => {
            let (preview, active) = routes(t.bg, routing, t.port(routing.active), header);
            t.edit_adopted(Kind::VirtualService, name, "http", |list| {
                merge_routes(list, preview.clone(), active.clone())
            })
            .await?
        }
    }
    Ok(Ack::Confirmed)
}

/// teal's active route now sends to the live Service without a subset; the
/// preview route goes.
pub async fn hand_back(t: &Target<'_>, name: &str, live: Color) -> Result<(), Error> {
    let active = json!({
        "name": ACTIVE_ROUTE,
        "route": destination(&t.service(), None, t.port(live)),
    });
    t.edit_adopted(Kind::VirtualService, name, "http", |list| {
        merge_routes(list, None, active.clone())
    })
    .await
}
