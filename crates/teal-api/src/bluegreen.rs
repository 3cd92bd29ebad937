//! The `BlueGreen` custom resource (`teal.dev/v1alpha1`).

use k8s_openapi::api::core::v1::ServicePort;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::hooks::{NotifierSpec, WebhookSpec};
use crate::{AnalysisSpec, Duration, PreviewSpec, PromotionSpec};
use teal_core::Color;

/// Releases a Deployment blue/green: each new pod template runs as the idle
/// color, is previewed and checked, then takes all traffic at once.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "teal.dev",
    version = "v1alpha1",
    kind = "BlueGreen",
    plural = "bluegreens",
    shortname = "bg",
    namespaced,
    status = "BlueGreenStatus",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Active","type":"string","jsonPath":".status.activeColor"}"#,
    printcolumn = r#"{"name":"Preview","type":"string","jsonPath":".status.previewColor"}"#,
    printcolumn = r#"{"name":"Revision","type":"string","jsonPath":".status.activeRevision"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    validation = Rule::new("!has(self.spec.preview.replicas) || !has(self.spec.replicas) || self.spec.preview.replicas <= self.spec.replicas").message("spec.preview.replicas must not exceed spec.replicas").field_path(".spec.preview.replicas"),
    validation = Rule::new("!has(self.spec.promotion.autoPromoteAfter) || self.spec.promotion.mode == 'manual'").message("spec.promotion.autoPromoteAfter only applies with mode: manual").field_path(".spec.promotion.autoPromoteAfter")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.router) && has(self.router.type) && self.router.type == 'teal') || !has(self.analysis) || !has(self.analysis.prePromotion) || self.analysis.prePromotion.metrics.all(m, !has(m.builtin))").message("spec.analysis.prePromotion.metrics[].builtin: built-in metrics are measured by teal's router and need spec.router.type teal; with service, istio and gatewayAPI teal does not see the traffic (use a prometheus metric)").field_path(".analysis.prePromotion"))]
#[x_kube(validation = Rule::new("(has(self.router) && has(self.router.type) && self.router.type == 'teal') || !has(self.analysis) || !has(self.analysis.postPromotion) || self.analysis.postPromotion.metrics.all(m, !has(m.builtin))").message("spec.analysis.postPromotion.metrics[].builtin: built-in metrics are measured by teal's router and need spec.router.type teal; with service, istio and gatewayAPI teal does not see the traffic (use a prometheus metric)").field_path(".analysis.postPromotion"))]
pub struct BlueGreenSpec {
    /// The Deployment whose pod template teal releases. Users keep editing
    /// it; teal scales it to zero and runs each color as its own Deployment.
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.workloadRef is immutable: create a new BlueGreen for another workload"))]
    pub workload_ref: WorkloadRef,
    /// Replicas of the live color, also served as the `scale` subresource
    /// (`kubectl scale`, a HorizontalPodAutoscaler or KEDA set it). A
    /// change resizes the live color at once; a release brings the new
    /// color to this size before cutover. Default: the workload's replicas
    /// when first adopted (teal then writes that number here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub replicas: Option<i32>,
    #[serde(default)]
    pub service: ServiceSpec,
    #[serde(default)]
    pub router: RouterSpec,
    #[serde(default)]
    pub preview: PreviewSpec,
    #[serde(default)]
    pub promotion: PromotionSpec,
    #[serde(default)]
    pub analysis: AnalysisSpec,
    /// How long the previous color stays up after cutover (instant rollback);
    /// scaling it down then closes its connections.
    #[serde(default = "default_scale_down_delay")]
    pub scale_down_delay: Duration,
    /// Time a color has to become ready, and a switch to be confirmed.
    #[serde(default = "default_progress_deadline")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s')").message("must be at least 1s"))]
    pub progress_deadline: Duration,
    /// Test hooks and promotion gates (see docs/analysis.md). Keyed by
    /// name (status.hooks holds one answer per name): two with the same
    /// name are refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub webhooks: Vec<WebhookSpec>,
    /// Where people hear about releases; URLs come from Secrets. Keyed by
    /// name, as webhooks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub notifications: Vec<NotifierSpec>,
}

fn default_scale_down_delay() -> Duration {
    Duration::from_secs(30)
}
fn default_progress_deadline() -> Duration {
    Duration::from_secs(600)
}

/// The workload teal releases.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadRef {
    pub kind: WorkloadKind,
    #[schemars(
        length(min = 1, max = 253),
        pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub name: String,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum WorkloadKind {
    Deployment,
}

/// The Services teal owns: `<name>` (live color) and `<name>-preview`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// Name of the live Service (default: the BlueGreen's name); the preview
    /// Service is this name with `-preview`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 55), pattern(r"^[a-z]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: Option<String>,
    /// Ports of both Services. Default: one port per named container port
    /// of the pod template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 100))]
    #[x_kube(
        validation = Rule::new("self.all(p, p.port >= 1 && p.port <= 65535)").message("every port must be between 1 and 65535"),
        validation = Rule::new("self.all(p, self.exists_one(q, q.port == p.port))").message("port numbers must be unique"),
        validation = Rule::new("self.size() == 1 || self.all(p, has(p.name) && p.name != '')").message("with several ports every port needs a name")
    )]
    pub ports: Option<Vec<ServicePort>>,
}

/// How traffic moves between colors.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.type == 'gatewayAPI' || !has(self.gatewayAPI)").message("spec.router.gatewayAPI only applies with type: gatewayAPI").field_path(".gatewayAPI"))]
#[x_kube(validation = Rule::new("self.type == 'teal' || !has(self.teal)").message("spec.router.teal only applies with type: teal").field_path(".teal"))]
#[x_kube(validation = Rule::new("self.type == 'istio' || !has(self.istio)").message("spec.router.istio only applies with type: istio").field_path(".istio"))]
#[x_kube(validation = Rule::new("self.type != 'gatewayAPI' || (has(self.gatewayAPI) && (has(self.gatewayAPI.httpRoute) != (has(self.gatewayAPI.parentRefs) && size(self.gatewayAPI.parentRefs) > 0)))").message("type gatewayAPI needs spec.router.gatewayAPI with exactly one of httpRoute (patch your HTTPRoute) or parentRefs (teal owns the HTTPRoute)").field_path(".gatewayAPI"))]
pub struct RouterSpec {
    #[serde(default, rename = "type")]
    pub kind: RouterKind,
    /// Settings of type `istio`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub istio: Option<IstioRouter>,
    /// Settings of type `gatewayAPI`.
    #[serde(
        default,
        rename = "gatewayAPI",
        skip_serializing_if = "Option::is_none"
    )]
    pub gateway_api: Option<GatewayApiRouter>,
    /// Settings of type `teal`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teal: Option<TealRouter>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum RouterKind {
    /// Patch the live Service's selector. Connections opened before the
    /// switch stay on the old pods until they close; the scale-down after
    /// `scaleDownDelay` ends them.
    #[default]
    Service,
    /// An Istio VirtualService and DestinationRule (subsets by color).
    Istio,
    /// A Gateway API HTTPRoute with one Service per color.
    #[serde(rename = "gatewayAPI")]
    GatewayApi,
    /// teal's own L7 router: a router Deployment in front of one Service
    /// per color; every router replica acknowledges each switch.
    Teal,
}

impl RouterKind {
    /// The name used in the spec.
    pub fn as_str(self) -> &'static str {
        match self {
            RouterKind::Service => "service",
            RouterKind::Istio => "istio",
            RouterKind::GatewayApi => "gatewayAPI",
            RouterKind::Teal => "teal",
        }
    }
}

/// Istio: teal writes a DestinationRule with one subset per color and two
/// HTTP routes, `teal-preview` (preview header to the preview color) and
/// `teal-active` (everything else to the active color).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IstioRouter {
    /// Adopt this existing VirtualService (same namespace): teal edits only
    /// its own routes in it, by name, and leaves every other route alone.
    /// Default: teal owns a VirtualService named like the live Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub virtual_service: Option<String>,
    /// `hosts` of an owned VirtualService. Default: the live Service's name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// `gateways` of an owned VirtualService (e.g. `mesh`, `ns/gateway`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
}

/// Gateway API: an HTTPRoute with a rule `teal-preview` (preview header to
/// the preview color's Service) and a rule `teal-active` (backendRefs
/// active: 100, idle: 0).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayApiRouter {
    /// Patch this existing HTTPRoute (same namespace): teal edits only its
    /// own rules in it, by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub http_route: Option<String>,
    /// Gateways of an HTTPRoute teal owns (named like the live Service).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parent_refs: Vec<ParentRef>,
    /// `hostnames` of an HTTPRoute teal owns.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hostnames: Vec<String>,
}

/// teal's router: Deployment `<service>-router` running `teal router
/// --kubernetes` (image: the controller's `TEAL_ROUTER_IMAGE`), the live
/// Service `<service>` in front of it, Services `<service>-blue`/`-green`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TealRouter {
    /// Router replicas (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub replicas: Option<i32>,
    /// Port the router listens on in its pods (default 8080).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
}

/// A Gateway an HTTPRoute attaches to.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ParentRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Default: the BlueGreen's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// A listener of the Gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
}

/// What teal last wrote for traffic, so that a change of router type (or
/// of the adopted object) removes what the previous one wrote. Unset fields
/// are written as null, so that the status merge patch clears them.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouterStatus {
    #[serde(rename = "type")]
    pub kind: RouterKind,
    /// The user's VirtualService or HTTPRoute teal edits, if any.
    #[serde(default)]
    pub adopted: Option<String>,
    /// The color the routes send production traffic to.
    #[serde(default)]
    pub active: Option<Color>,
    /// The color the preview route sends to, if any.
    #[serde(default)]
    pub preview: Option<Color>,
    /// Counts changes of `active`/`preview`; teal's router replicas report
    /// the generation they serve.
    #[serde(default)]
    pub generation: i64,
    /// When the switch to `active` was requested (Unix milliseconds).
    #[serde(default)]
    pub switch_requested_at: Option<i64>,
    /// When the router confirmed it serves `active` (Unix milliseconds).
    #[serde(default)]
    pub switch_confirmed_at: Option<i64>,
}

/// What teal reports about a BlueGreen.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BlueGreenStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_color: Option<Color>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_revision: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview_color: Option<Color>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview_revision: Option<String>,
    /// Replicas of the live color's Deployment (the `scale` subresource's
    /// status).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// A label selector of the live color's pods only, as the `scale`
    /// subresource serves it to autoscalers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// The revision (pod-template hash) of the workload now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_revision: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Finished releases, newest last.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<ReleaseRecord>,
    /// The last analysis measurements.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<AnalysisStatus>,
    /// What the router wrote and when it confirmed the last switch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router: Option<RouterStatus>,
    /// The last operator command handled (`teal.dev/command` annotation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_command: Option<String>,
    /// The last answer of every webhook, one entry per hook.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hooks: Vec<crate::hooks::HookStatus>,
    /// The release engine's state; read by the controller, not by people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_unknown")]
    pub engine: Option<serde_json::Value>,
}

fn preserve_unknown(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// A finished release.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReleaseRecord {
    pub revision: String,
    pub color: Color,
    /// promoted, rolled_back, aborted, failed or superseded.
    pub outcome: String,
    pub reason: String,
    /// Unix milliseconds.
    pub started_at: i64,
    pub ended_at: i64,
    /// True for an operator rollback to an earlier revision (`teal rollback`
    /// after the release it undoes had finished).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rollback: bool,
}

impl From<&teal_core::release::Record> for ReleaseRecord {
    fn from(r: &teal_core::release::Record) -> Self {
        ReleaseRecord {
            revision: r.revision.clone(),
            color: r.color,
            outcome: serde_json::to_value(r.outcome)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            reason: r.reason.clone(),
            started_at: r.started_at as i64,
            ended_at: r.ended_at as i64,
            rollback: r.rollback,
        }
    }
}

/// Progress of the running (or last) analysis stage.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisStatus {
    /// prePromotion or postPromotion.
    pub stage: String,
    pub revision: String,
    pub checks: u32,
    pub failures: u32,
    pub inconclusive: u32,
    /// Checks with a provider error (counted neither as failed nor as
    /// inconclusive).
    #[serde(default)]
    pub errors: u32,
    /// The latest check's metrics.
    pub metrics: Vec<MetricValue>,
    /// The metrics of the checks before the latest, oldest first (at most
    /// 10).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<CheckValues>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<String>,
}

/// The metrics of one earlier check.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckValues {
    /// Which check of the stage (1 for the first).
    pub check: u32,
    pub metrics: Vec<MetricValue>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricValue {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// No value because the provider failed (see note).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub error: bool,
    /// A dry-run metric: reported, never decisive.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
}

impl From<&teal_core::analysis::Measurement> for MetricValue {
    fn from(m: &teal_core::analysis::Measurement) -> MetricValue {
        MetricValue {
            name: m.metric.clone(),
            value: m.value,
            note: m.note.clone(),
            error: m.error,
            dry_run: m.dry_run,
        }
    }
}

/// Annotations people (and `teal`) set on a BlueGreen.
pub mod annotations {
    /// `promote`, `promote-full`, `abort`, `rollback` or `retry`, followed by
    /// `/` and a unique id so the same command can be given twice.
    pub const COMMAND: &str = "teal.dev/command";
}

/// Labels teal puts on what it creates.
pub mod labels {
    /// The BlueGreen an object belongs to.
    pub const BLUEGREEN: &str = "teal.dev/bluegreen";
    /// `blue` or `green`.
    pub const COLOR: &str = "teal.dev/color";
    /// The revision (pod-template hash) a color runs.
    pub const REVISION: &str = "teal.dev/revision";
}
