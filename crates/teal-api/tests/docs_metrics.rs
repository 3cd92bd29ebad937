//! The metric examples of docs/analysis.md and the migration guides pass
//! teal's own validation, beyond what the apiserver checks (the docs
//! objects test applies them with `kubectl apply --dry-run=server`): a web
//! metric's whole JSONPath is parsed, its URL and secrets are checked, its
//! body is JSON.

use teal_api::hooks::SecretSource;
use teal_api::spec::FieldError;
use teal_api::template::MetricTemplateSpec;
use teal_api::{AnalysisSpec, BlueGreenSpec, WebMetric};

const DOCS: [(&str, &str); 3] = [
    (
        "docs/analysis.md",
        include_str!("../../../docs/analysis.md"),
    ),
    (
        "docs/migrate-argo-rollouts.md",
        include_str!("../../../docs/migrate-argo-rollouts.md"),
    ),
    (
        "docs/migrate-flagger.md",
        include_str!("../../../docs/migrate-flagger.md"),
    ),
];

/// The YAML blocks of `doc`.
fn yaml_blocks(doc: &str) -> Vec<String> {
    doc.split("```yaml\n")
        .skip(1)
        .filter_map(|b| b.split("```").next())
        .map(str::to_owned)
        .collect()
}

/// The errors of a template's provider.
fn template_errors(t: &MetricTemplateSpec) -> Vec<FieldError> {
    let mut e = Vec::new();
    if let Some(p) = &t.prometheus {
        p.validate("spec.prometheus", SecretSource::Kubernetes, &mut e);
    }
    if let Some(w) = &t.web {
        w.validate("spec.web", SecretSource::Kubernetes, &mut e);
        e.extend(body_errors(w, "spec.web"));
    }
    e
}

/// A web metric's body is sent as JSON: with every `{{…}}` put in as `1`,
/// it must be JSON.
fn body_errors(w: &WebMetric, path: &str) -> Option<FieldError> {
    let body = w.body.as_deref()?;
    let mut filled = String::new();
    let mut rest = body;
    while let Some(at) = rest.find("{{") {
        filled.push_str(&rest[..at]);
        let end = rest[at..].find("}}").map_or(rest.len(), |e| at + e + 2);
        filled.push('1');
        rest = &rest[end..];
    }
    filled.push_str(rest);
    serde_json::from_str::<serde_json::Value>(&filled)
        .err()
        .map(|e| FieldError::new(format!("{path}.body"), format!("not JSON: {e}")))
}

#[test]
fn metric_examples_in_the_docs_are_valid() {
    let mut web_metrics = 0;
    let mut failures = Vec::new();
    for (file, doc) in DOCS {
        for block in yaml_blocks(doc) {
            let Ok(v) = serde_saphyr::from_str::<serde_json::Value>(&block) else {
                continue;
            };
            let errors = match v["kind"].as_str() {
                Some("MetricTemplate" | "ClusterMetricTemplate") => {
                    let t: MetricTemplateSpec = serde_json::from_value(v["spec"].clone())
                        .unwrap_or_else(|e| panic!("{file}: {e}\n{block}"));
                    web_metrics += usize::from(t.web.is_some());
                    template_errors(&t)
                }
                Some("BlueGreen") if v["apiVersion"] == "teal.dev/v1alpha1" => {
                    let spec: BlueGreenSpec = serde_json::from_value(v["spec"].clone())
                        .unwrap_or_else(|e| panic!("{file}: {e}\n{block}"));
                    web_metrics += count_web(&spec.analysis);
                    let mut e = Vec::new();
                    spec.analysis
                        .validate("spec.analysis", SecretSource::Kubernetes, &mut e);
                    e.extend(web_of(&spec.analysis).filter_map(|w| body_errors(w, "web")));
                    e
                }
                _ => continue,
            };
            if !errors.is_empty() {
                failures.push(format!("{file}: {errors:?}\n{block}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    // The in-house service, Datadog, New Relic, Grafana Cloud.
    assert!(web_metrics >= 4, "only {web_metrics} web metrics found");
}

fn web_of(a: &AnalysisSpec) -> impl Iterator<Item = &WebMetric> {
    [&a.pre_promotion, &a.post_promotion]
        .into_iter()
        .flatten()
        .flat_map(|s| &s.metrics)
        .filter_map(|m| m.web.as_ref())
}

fn count_web(a: &AnalysisSpec) -> usize {
    web_of(a).count()
}
