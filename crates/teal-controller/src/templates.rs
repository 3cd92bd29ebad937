//! Metric templates (`MetricTemplate`, `ClusterMetricTemplate`): a metric
//! with a `templateRef` is resolved when a check starts, so a changed
//! template applies to the next check, and on every reconcile, for the
//! `MetricTemplates` condition that names what is missing.

use kube::{Api, Client, ResourceExt};
use teal_api::BlueGreen;
use teal_api::spec::{AnalysisStageSpec, MetricSpec};
use teal_api::template::{
    self, ClusterMetricTemplate, MetricTemplate, MetricTemplateSpec, TemplateError, TemplateKind,
    TemplateRef,
};

/// The condition type about a BlueGreen's metric templates (present only
/// when one of its metrics uses one).
pub const CONDITION: &str = "MetricTemplates";
/// Its reason when every template was found and every argument has a value.
pub const RESOLVED: &str = "Resolved";
/// Its reason when one could not be used.
pub const UNRESOLVED: &str = "TemplateUnresolved";
/// How soon a BlueGreen whose template could not be used is looked at
/// again (templates are read, not watched).
pub const RETRY_MS: u64 = 5_000;

/// Reads the template `r` names, for a BlueGreen in `ns`.
async fn fetch(
    client: &Client,
    ns: &str,
    r: &TemplateRef,
) -> Result<MetricTemplateSpec, TemplateError> {
    let kind = r.kind.as_str();
    let got = match r.kind {
        TemplateKind::MetricTemplate => Api::<MetricTemplate>::namespaced(client.clone(), ns)
            .get_opt(&r.name)
            .await
            .map(|t| t.map(|t| t.spec)),
        TemplateKind::ClusterMetricTemplate => Api::<ClusterMetricTemplate>::all(client.clone())
            .get_opt(&r.name)
            .await
            .map(|t| t.map(|t| t.spec.into())),
    };
    match got {
        Ok(Some(t)) => Ok(t),
        Ok(None) => Err(TemplateError::NotFound {
            kind,
            name: r.name.clone(),
        }),
        Err(kube::Error::Api(s)) if s.code == 404 => Err(TemplateError::Unreadable {
            kind,
            name: r.name.clone(),
            reason: format!(
                "{} (is the {kind} CRD installed? apply deploy/crd.yaml)",
                s.message
            ),
        }),
        Err(e) => Err(TemplateError::Unreadable {
            kind,
            name: r.name.clone(),
            reason: e.to_string(),
        }),
    }
}

/// `m` with its template's provider in place of `templateRef` (as is when
/// it has none).
pub async fn resolve(
    client: &Client,
    ns: &str,
    m: &MetricSpec,
) -> Result<MetricSpec, TemplateError> {
    let Some(r) = &m.template_ref else {
        return Ok(m.clone());
    };
    let t = fetch(client, ns, r).await?;
    template::resolve(m, r, &t)
}

/// Every metric of `stage`, resolved, in order.
pub async fn resolve_stage(
    client: &Client,
    ns: &str,
    stage: &AnalysisStageSpec,
) -> Vec<Result<MetricSpec, TemplateError>> {
    let mut out = Vec::with_capacity(stage.metrics.len());
    for m in &stage.metrics {
        out.push(resolve(client, ns, m).await);
    }
    out
}

/// What a resolved metric asks: a PromQL query, or a web metric's
/// method, URL and JSONPath.
fn resolved_query(m: &MetricSpec) -> String {
    match (&m.prometheus, &m.web) {
        (Some(p), _) => p.query.clone(),
        (None, Some(w)) => format!("{} {} {}", w.method.as_str(), w.url, w.json_path),
        (None, None) => String::new(),
    }
}

/// The `MetricTemplates` condition of `bg`: `None` when no metric uses a
/// template; otherwise whether all resolve, and a message naming each
/// field that does not, then each resolved query.
pub async fn condition(client: &Client, bg: &BlueGreen) -> Option<(bool, String)> {
    let ns = bg.namespace().unwrap_or_default();
    let mut problems = Vec::new();
    let mut resolved = Vec::new();
    for (stage, spec) in [
        ("prePromotion", &bg.spec.analysis.pre_promotion),
        ("postPromotion", &bg.spec.analysis.post_promotion),
    ] {
        for (i, m) in spec.iter().flat_map(|s| s.metrics.iter()).enumerate() {
            let Some(r) = &m.template_ref else {
                continue;
            };
            match resolve(client, &ns, m).await {
                Ok(got) => resolved.push(format!(
                    "{stage} {}: {} {}: {}",
                    m.name,
                    r.kind.as_str(),
                    r.name,
                    resolved_query(&got)
                )),
                Err(e) => problems.push(format!(
                    "spec.analysis.{stage}.metrics[{i}].templateRef: {e}"
                )),
            }
        }
    }
    if problems.is_empty() && resolved.is_empty() {
        return None;
    }
    let ok = problems.is_empty();
    problems.extend(resolved);
    Some((ok, problems.join("; ")))
}
