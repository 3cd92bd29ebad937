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
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Active","type":"string","jsonPath":".status.activeColor"}"#,
    printcolumn = r#"{"name":"Preview","type":"string","jsonPath":".status.previewColor"}"#,
    printcolumn = r#"{"name":"Revision","type":"string","jsonPath":".status.activeRevision"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    validation = Rule::new("!has(self.spec.preview.replicas) || !has(self.spec.replicas) || self.spec.preview.replicas <= self.spec.replicas").message("spec.preview.replicas must not exceed spec.replicas").field_path(".spec.preview.replicas"),
    validation = Rule::new("!has(self.spec.promotion.autoPromoteAfter) || self.spec.promotion.mode == 'manual'").message("spec.promotion.autoPromoteAfter only applies with mode: manual").field_path(".spec.promotion.autoPromoteAfter")
)]
#[serde(rename_all = "camelCase")]
pub struct BlueGreenSpec {
    /// The Deployment whose pod template teal releases. Users keep editing
    /// it; teal scales it to zero and runs each color as its own Deployment.
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.workloadRef is immutable: create a new BlueGreen for another workload"))]
    pub workload_ref: WorkloadRef,
    /// Replicas of the live color. Default: the workload's replicas when
    /// first adopted.
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
    pub progress_deadline: Duration,
    /// Test hooks and promotion gates (see docs/analysis.md).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub webhooks: Vec<WebhookSpec>,
    /// Where people hear about releases; URLs come from Secrets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
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
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum WorkloadKind {
    Deployment,
}

/// The Services teal owns: `<name>` (live color) and `<name>-preview`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// Name of the live Service (default: the BlueGreen's name); the preview
    /// Service is this name with `-preview`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 55))]
    pub name: Option<String>,
    /// Ports of both Services. Default: one port per named container port
    /// of the pod template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<ServicePort>>,
}

/// How traffic moves between colors.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouterSpec {
    #[serde(default, rename = "type")]
    pub kind: RouterKind,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum RouterKind {
    /// Patch the live Service's selector. Connections opened before the
    /// switch stay on the old pods until they close; the scale-down after
    /// `scaleDownDelay` ends them.
    #[default]
    Service,
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
    pub metrics: Vec<MetricValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricValue {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
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
