//! Traffic routers: how a BlueGreen's [`Routing`] (active color, preview
//! color) becomes objects in the cluster, one module per `spec.router.type`.
//!
//! Every router writes the live Service (`<service>`) so that in-cluster
//! clients and the deletion hand-back always have it; what else it writes
//! is listed by [`owned`]. [`route`] writes the current type's objects,
//! then removes what a previous type (or a previously adopted object)
//! left, and reports whether the switch is confirmed. [`release`] hands an
//! adopted object back when the BlueGreen is deleted (owned objects go with
//! it through their owner reference).

pub mod gateway;
pub mod istio;
pub mod preview;
pub mod service;
pub mod teal;

use k8s_openapi::api::core::v1::{Service, ServicePort};
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::core::{ApiResource, DynamicObject};
use kube::{Api, Client};
use serde_json::Value;
use teal_api::BlueGreen;
use teal_api::bluegreen::{RouterKind, RouterStatus};
use teal_core::Color;
use teal_core::release::Routing;

use crate::objects;
use crate::reconcile::{Error, MANAGER, Misconfigured};

/// The name of teal's preview route (Istio) or rule (Gateway API).
pub const PREVIEW_ROUTE: &str = "teal-preview";
/// The name of teal's production route (Istio) or rule (Gateway API).
pub const ACTIVE_ROUTE: &str = "teal-active";

/// Whether the data plane serves the requested routing yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ack {
    /// The switch is in effect: the release may go on.
    Confirmed,
    /// Written, not yet acknowledged; the text says what is awaited.
    Pending(String),
}

/// The kinds of object routers write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Service,
    DestinationRule,
    VirtualService,
    HttpRoute,
    Deployment,
    ServiceAccount,
    Role,
    RoleBinding,
}

impl Kind {
    pub fn resource(self) -> ApiResource {
        let (group, version, kind, plural) = match self {
            Kind::Service => ("", "v1", "Service", "services"),
            Kind::DestinationRule => (
                "networking.istio.io",
                "v1",
                "DestinationRule",
                "destinationrules",
            ),
            Kind::VirtualService => (
                "networking.istio.io",
                "v1",
                "VirtualService",
                "virtualservices",
            ),
            Kind::HttpRoute => ("gateway.networking.k8s.io", "v1", "HTTPRoute", "httproutes"),
            Kind::Deployment => ("apps", "v1", "Deployment", "deployments"),
            Kind::ServiceAccount => ("", "v1", "ServiceAccount", "serviceaccounts"),
            Kind::Role => ("rbac.authorization.k8s.io", "v1", "Role", "roles"),
            Kind::RoleBinding => (
                "rbac.authorization.k8s.io",
                "v1",
                "RoleBinding",
                "rolebindings",
            ),
        };
        ApiResource {
            group: group.into(),
            version: version.into(),
            api_version: if group.is_empty() {
                version.into()
            } else {
                format!("{group}/{version}")
            },
            kind: kind.into(),
            plural: plural.into(),
        }
    }
}

/// One object a router owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owned {
    pub kind: Kind,
    pub name: String,
}

/// The ports of each color's Services: those of the pod template the
/// color's Deployment runs (see `objects::service_ports`). After a rollback
/// the live color runs an older revision than the workload's template, and
/// its Services must expose that revision's ports.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ColorPorts {
    pub blue: Vec<ServicePort>,
    pub green: Vec<ServicePort>,
}

impl ColorPorts {
    /// The same ports for both colors.
    pub fn same(ports: Vec<ServicePort>) -> Self {
        ColorPorts {
            blue: ports.clone(),
            green: ports,
        }
    }

    /// The ports of `color`'s Services.
    pub fn of(&self, color: Color) -> &[ServicePort] {
        match color {
            Color::Blue => &self.blue,
            Color::Green => &self.green,
        }
    }
}

/// What routers need to know.
#[derive(Clone, Copy)]
pub struct Target<'a> {
    pub client: &'a Client,
    pub bg: &'a BlueGreen,
    pub ns: &'a str,
    /// Ports of the Services teal writes, by the color they send to.
    pub ports: &'a ColorPorts,
    /// The watch caches. While the routing is settled (see [`route`]), an
    /// object a cache already holds as wanted is not written again, and
    /// teal's router acknowledgements are read from them; a switch is
    /// always written and confirmed from the apiserver, since a cache may
    /// lag behind it.
    pub cache: Option<&'a crate::cache::Cache>,
    /// The routing is the one already confirmed (see [`route`]).
    pub settled: bool,
    /// The image of router type `teal`'s router pods.
    pub router_image: Option<&'a str>,
}

impl Target<'_> {
    pub fn api(&self, kind: Kind) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), self.ns, &kind.resource())
    }

    /// The live Service's name.
    pub fn service(&self) -> String {
        objects::service_name(self.bg)
    }

    /// The port number routes to `color` send to: its first Service port.
    pub fn port(&self, color: Color) -> i32 {
        self.ports.of(color).first().map(|p| p.port).unwrap_or(80)
    }

    /// The caches, while the routing is settled.
    pub fn settled_cache(&self) -> Option<&crate::cache::Cache> {
        self.cache.filter(|_| self.settled)
    }

    /// What the caches hold of `kind` `name`: `None` when they do not cache
    /// that kind (yet) or the routing is not settled; `Some(Value::Null)`
    /// when they hold no such object.
    fn cached(&self, kind: Kind, name: &str) -> Option<Value> {
        let cache = self.settled_cache()?;
        let obj = match kind {
            // Compared by `objects::service_as_wanted` (see `apply_service`).
            Kind::Service => return None,
            Kind::Deployment => cache.deployment(self.ns, name).map(serde_json::to_value),
            _ => cache
                .extra(crate::cache::Extra::of(kind)?, self.ns, name)?
                .map(serde_json::to_value),
        };
        match obj {
            None => Some(Value::Null),
            Some(v) => v.ok(),
        }
    }

    /// Starts caching `kind` (see [`crate::cache::Cache::watch`]).
    fn watch(&self, kind: Kind) {
        if let (Some(c), Some(e)) = (self.cache, crate::cache::Extra::of(kind)) {
            c.watch(e);
        }
    }

    /// Server-side applies a whole object with teal's field manager, unless
    /// the routing is settled and the cache already holds it as wanted
    /// (see [`objects::holds`]: routes are compared exactly).
    pub async fn apply(&self, kind: Kind, body: Value) -> Result<(), Error> {
        let name = body["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let exact = matches!(
            kind,
            Kind::VirtualService | Kind::DestinationRule | Kind::HttpRoute
        );
        if let Some(current) = self.cached(kind, &name)
            && objects::holds(&current, &body, exact)
        {
            return Ok(());
        }
        let mut body = body;
        let ar = kind.resource();
        body["apiVersion"] = ar.api_version.into();
        body["kind"] = ar.kind.into();
        self.api(kind)
            .patch(
                &name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(body),
            )
            .await
            .map_err(|e| not_installed(kind, e))?;
        self.watch(kind);
        Ok(())
    }

    pub async fn apply_service(&self, svc: &Service) -> Result<(), Error> {
        let name = svc.metadata.name.as_deref().unwrap_or_default();
        if let Some(current) = self.settled_cache().and_then(|c| c.service(self.ns, name))
            && objects::service_as_wanted(&current, svc)
        {
            return Ok(());
        }
        let body = serde_json::to_value(svc).map_err(Error::serialize("a Service"))?;
        self.apply(Kind::Service, body).await
    }

    /// Deletes an object if this BlueGreen owns it; objects of others and
    /// kinds the cluster does not know are left alone.
    pub async fn delete_owned(&self, o: &Owned) -> Result<(), Error> {
        let api = self.api(o.kind);
        let obj = match api.get_opt(&o.name).await {
            Ok(Some(obj)) => obj,
            Ok(None) => return Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        if !objects::owned_by(&obj.metadata, self.bg) {
            return Ok(());
        }
        match api.delete(&o.name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Rewrites the route list at `field` of the user's object `name` with
    /// `edit`, guarded by the resourceVersion read (a concurrent change by
    /// someone else fails the write, and the next reconcile starts over).
    /// While the routing is settled, nothing is read or written if the
    /// cached object's list is already as `edit` leaves it; a change is
    /// always made on a fresh read.
    pub async fn edit_adopted(
        &self,
        kind: Kind,
        name: &str,
        field: &str,
        edit: impl Fn(&mut Vec<Value>),
    ) -> Result<(), Error> {
        if let Some(cache) = self.settled_cache()
            && let Some(Some(obj)) =
                crate::cache::Extra::of(kind).and_then(|e| cache.extra(e, self.ns, name))
            && edited(&obj.data, field, &edit).is_none()
        {
            return Ok(());
        }
        let api = self.api(kind);
        let obj = match api.get_opt(name).await {
            Ok(Some(o)) => o,
            Ok(None) => {
                return Err(Misconfigured::RouterObjectMissing {
                    kind: kind.resource().kind,
                    namespace: self.ns.to_string(),
                    name: name.to_string(),
                }
                .into());
            }
            Err(e) => return Err(not_installed(kind, e)),
        };
        self.watch(kind);
        let Some(list) = edited(&obj.data, field, &edit) else {
            return Ok(());
        };
        let patch = serde_json::json!({
            "metadata": {"resourceVersion": obj.metadata.resource_version},
            "spec": {field: list},
        });
        api.patch(
            name,
            &crate::reconcile::patch_params(),
            &Patch::Merge(patch),
        )
        .await?;
        Ok(())
    }
}

/// The route list at `spec.<field>` of `data` after `edit`, or `None` when
/// `edit` leaves it as it was.
fn edited(data: &Value, field: &str, edit: impl Fn(&mut Vec<Value>)) -> Option<Vec<Value>> {
    let before = data["spec"][field].as_array().cloned().unwrap_or_default();
    let mut list = before.clone();
    edit(&mut list);
    (list != before).then_some(list)
}

/// A 404 on a kind teal writes means its CRD is not installed: say so.
fn not_installed(kind: Kind, e: kube::Error) -> Error {
    match e {
        kube::Error::Api(ae)
            if ae.code == 404
                && matches!(
                    kind,
                    Kind::DestinationRule | Kind::VirtualService | Kind::HttpRoute
                ) =>
        {
            let ar = kind.resource();
            let fix = match kind {
                Kind::HttpRoute => "install the Gateway API CRDs",
                _ => "install Istio",
            };
            Misconfigured::RouterApiMissing {
                kind: ar.kind,
                api_version: ar.api_version,
                plural: ar.plural,
                group: ar.group,
                fix,
            }
            .into()
        }
        e => e.into(),
    }
}

/// Replaces the routes named [`PREVIEW_ROUTE`] and [`ACTIVE_ROUTE`] in a
/// user's list, in place; a missing preview route goes first, a missing
/// active route last. `preview: None` removes teal's preview route. Every
/// other entry stays as it is, in its place.
pub fn merge_routes(list: &mut Vec<Value>, preview: Option<Value>, active: Value) {
    let pos = |list: &Vec<Value>, name: &str| list.iter().position(|r| r["name"] == name);
    match (pos(list, PREVIEW_ROUTE), preview) {
        (Some(i), Some(p)) => list[i] = p,
        (Some(i), None) => {
            list.remove(i);
        }
        (None, Some(p)) => list.insert(0, p),
        (None, None) => {}
    }
    match pos(list, ACTIVE_ROUTE) {
        Some(i) => list[i] = active,
        None => list.push(active),
    }
}

/// The adopted object of the current spec, if any.
pub fn adopted(bg: &BlueGreen) -> Option<String> {
    let r = &bg.spec.router;
    match r.kind {
        RouterKind::Service => None,
        RouterKind::Istio => r.istio.as_ref().and_then(|i| i.virtual_service.clone()),
        RouterKind::GatewayApi => r.gateway_api.as_ref().and_then(|g| g.http_route.clone()),
        RouterKind::Teal => None,
    }
}

/// The objects router `kind` owns for `bg` (with `adopted` as its adopted
/// object, which it does not own).
pub fn owned(bg: &BlueGreen, kind: RouterKind, adopted: Option<&str>) -> Vec<Owned> {
    let svc = objects::service_name(bg);
    let mut v = vec![Owned {
        kind: Kind::Service,
        name: svc.clone(),
    }];
    match kind {
        RouterKind::Service => v.push(Owned {
            kind: Kind::Service,
            name: objects::preview_service_name(bg),
        }),
        RouterKind::Istio => {
            v.push(Owned {
                kind: Kind::DestinationRule,
                name: svc.clone(),
            });
            if adopted.is_none() {
                v.push(Owned {
                    kind: Kind::VirtualService,
                    name: svc,
                });
            }
        }
        RouterKind::GatewayApi => {
            for c in teal_core::Color::ALL {
                v.push(Owned {
                    kind: Kind::Service,
                    name: objects::color_service_name(bg, c),
                });
            }
            if adopted.is_none() {
                v.push(Owned {
                    kind: Kind::HttpRoute,
                    name: svc,
                });
            }
        }
        RouterKind::Teal => {
            for c in teal_core::Color::ALL {
                v.push(Owned {
                    kind: Kind::Service,
                    name: objects::color_service_name(bg, c),
                });
            }
            let name = teal::router_name(bg);
            for kind in [
                Kind::Deployment,
                Kind::ServiceAccount,
                Kind::Role,
                Kind::RoleBinding,
            ] {
                v.push(Owned {
                    kind,
                    name: name.clone(),
                });
            }
        }
    }
    v
}

/// The `Routed` condition: True once the data plane serves the routing,
/// False with the reason (`AwaitingAcknowledgement`, `RouteFailed`) and
/// what is awaited or wrong.
pub fn routed_condition(
    outcome: Result<&Ack, &Error>,
    generation: Option<i64>,
) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    let (ok, reason, message) = match outcome {
        Ok(Ack::Confirmed) => (true, "Routed", String::new()),
        Ok(Ack::Pending(m)) => (false, "AwaitingAcknowledgement", m.clone()),
        Err(e) => (false, "RouteFailed", e.to_string()),
    };
    k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
        type_: "Routed".into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::now(),
        ),
    }
}

/// Whether `c` is worth an Event: its reason changed, or a failure's message.
pub fn is_news(
    old: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    c: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition,
) -> bool {
    match old.iter().find(|o| o.type_ == c.type_) {
        None => true,
        Some(o) => o.reason != c.reason || (c.reason == "RouteFailed" && o.message != c.message),
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Writes `routing` with the BlueGreen's router, removes what a previous
/// router left, and records it all in `status`.
pub async fn route(
    t: &Target<'_>,
    routing: Routing,
    status: &mut Option<RouterStatus>,
) -> Result<Ack, Error> {
    let kind = t.bg.spec.router.kind;
    let adopted = adopted(t.bg);
    let now = now_ms();
    let prev = status.take();
    let switched = prev.as_ref().and_then(|p| p.active) != Some(routing.active);
    let changed = switched || prev.as_ref().and_then(|p| p.preview) != routing.preview;
    // The same routing, by the same router, already confirmed: Services
    // the cache holds as wanted need no write (a watch event wakes a
    // reconcile when one of them changes).
    let settled = !changed
        && prev.as_ref().is_some_and(|p| {
            p.kind == kind && p.adopted == adopted && p.switch_confirmed_at.is_some()
        });
    let t = &Target { settled, ..*t };
    let generation = prev.as_ref().map(|p| p.generation).unwrap_or(0) + i64::from(changed);
    // Resolved before anything is written: a missing Secret leaves the
    // live routes as they are.
    let header = match kind {
        RouterKind::Service => Ok(None),
        _ => preview::resolve(t).await,
    };
    let ack = match header {
        Err(e) => Err(e),
        Ok(header) => match kind {
            RouterKind::Service => service::route(t, routing).await,
            RouterKind::Istio => {
                istio::route(t, routing, adopted.as_deref(), header.as_ref()).await
            }
            RouterKind::GatewayApi => {
                gateway::route(t, routing, adopted.as_deref(), header.as_ref()).await
            }
            RouterKind::Teal => teal::route(t, routing, generation).await,
        },
    };
    let ack = match ack {
        Ok(a) => a,
        Err(e) => {
            *status = prev;
            return Err(e);
        }
    };
    // The new routes are in place: now remove the previous router's.
    if let Some(p) = prev.as_ref()
        && (p.kind != kind || p.adopted != adopted)
    {
        undo(t, p, kind, adopted.as_deref(), routing.active).await?;
    }
    let mut st = RouterStatus {
        kind,
        adopted,
        active: Some(routing.active),
        preview: routing.preview,
        generation,
        switch_requested_at: prev.as_ref().and_then(|p| p.switch_requested_at),
        switch_confirmed_at: prev.as_ref().and_then(|p| p.switch_confirmed_at),
    };
    if switched {
        st.switch_requested_at = Some(now);
        st.switch_confirmed_at = None;
    }
    if ack == Ack::Confirmed && st.switch_confirmed_at.is_none() {
        // Read the clock after the acknowledgement, not at the start of
        // this pass: a router replica may install the new table (and
        // report it) while the objects above are written, so `now` could
        // predate the moment the last replica switched.
        st.switch_confirmed_at = Some(now_ms());
    }
    *status = Some(st);
    Ok(ack)
}

/// Removes what router `prev` wrote and router `kind` (adopting
/// `adopted`) does not use.
async fn undo(
    t: &Target<'_>,
    prev: &RouterStatus,
    kind: RouterKind,
    adopted: Option<&str>,
    live: Color,
) -> Result<(), Error> {
    let keep = owned(t.bg, kind, adopted);
    for o in owned(t.bg, prev.kind, prev.adopted.as_deref()) {
        if !keep.contains(&o) {
            t.delete_owned(&o).await?;
        }
    }
    if let Some(name) = prev.adopted.as_deref()
        && (prev.kind != kind || Some(name) != adopted)
    {
        hand_back(t, prev.kind, name, live).await?;
    }
    Ok(())
}

/// Takes teal's routes out of a user's object: the preview route goes, the
/// active route is pointed at the live Service (which survives teal).
/// `live` is the live color: the live Service carries its ports.
async fn hand_back(t: &Target<'_>, kind: RouterKind, name: &str, live: Color) -> Result<(), Error> {
    match kind {
        RouterKind::Service => Ok(()),
        RouterKind::Istio => istio::hand_back(t, name, live).await,
        RouterKind::GatewayApi => gateway::hand_back(t, name, live).await,
        RouterKind::Teal => Ok(()),
    }
}

/// On deletion of the BlueGreen: hand back the adopted object, if any.
pub async fn release(client: &Client, bg: &BlueGreen, ports: &ColorPorts) -> Result<(), Error> {
    let ns = bg.metadata.namespace.clone().unwrap_or_default();
    let t = Target {
        client,
        bg,
        ns: &ns,
        ports,
        cache: None,
        settled: false,
        router_image: None,
    };
    let st = bg.status.as_ref().and_then(|s| s.router.clone());
    if let Some(st) = st
        && let Some(name) = st.adopted.as_deref()
    {
        let live = st.active.unwrap_or(Color::Blue);
        match hand_back(&t, st.kind, name, live).await {
            Ok(()) => {}
            // The user deleted it first: nothing to hand back.
            Err(Error::Config(Misconfigured::RouterObjectMissing { .. })) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_keeps_user_routes_in_place() {
        let user = json!({"name": "api", "match": [{"uri": {"prefix": "/api"}}]});
        let mut list = vec![user.clone()];
        let p = json!({"name": PREVIEW_ROUTE, "v": 1});
        let a = json!({"name": ACTIVE_ROUTE, "v": 1});
        merge_routes(&mut list, Some(p.clone()), a.clone());
        assert_eq!(list, vec![p, user.clone(), a]);
        let p2 = json!({"name": PREVIEW_ROUTE, "v": 2});
        let a2 = json!({"name": ACTIVE_ROUTE, "v": 2});
        merge_routes(&mut list, Some(p2.clone()), a2.clone());
        assert_eq!(list, vec![p2, user.clone(), a2.clone()]);
        merge_routes(&mut list, None, a2.clone());
        assert_eq!(list, vec![user, a2]);
    }
}
