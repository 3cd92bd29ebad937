//! Metric templates: a provider and its query written once and used by many
//! BlueGreens, each with its own argument values — `MetricTemplate` in a
//! namespace, `ClusterMetricTemplate` for the whole cluster.
//!
//! A template holds what is the same for every user of it (where to ask and
//! what); the BlueGreen keeps what is its own (the metric's name, its range,
//! `dryRun`) and the argument values. `{{args.NAME}}` in the template's
//! provider (a prometheus address or query; a web url, body or jsonPath;
//! a literal header value) is replaced by the value the BlueGreen gives, or else by
//! the argument's default; the variables every query gets (`{{name}}`,
//! `{{color}}`, …) are replaced afterwards, as in an inline query.

use std::collections::{BTreeMap, BTreeSet};

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{MetricHeader, MetricSpec, PrometheusMetric, WebMetric};

/// A metric's provider and query with arguments, for the BlueGreens of its
/// namespace (`spec.analysis.*.metrics[].templateRef`).
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "teal.dev",
    version = "v1alpha1",
    kind = "MetricTemplate",
    plural = "metrictemplates",
    shortname = "mt",
    namespaced
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("has(self.prometheus) != has(self.web)").message("set exactly one provider: prometheus or web"))]
pub struct MetricTemplateSpec {
    /// The arguments that `{{args.NAME}}` stands for: in a prometheus
    /// query and address, in a web url, body and jsonPath, and in literal
    /// header values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub args: Vec<TemplateArg>,
    /// A PromQL query returning one number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusMetric>,
    /// An HTTP GET or POST to a JSON API, the number read by a JSONPath.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web: Option<WebMetric>,
}

/// A metric's provider and query with arguments, for BlueGreens of every
/// namespace (`templateRef.kind: ClusterMetricTemplate`).
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "teal.dev",
    version = "v1alpha1",
    kind = "ClusterMetricTemplate",
    plural = "clustermetrictemplates",
    shortname = "cmt"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("has(self.prometheus) != has(self.web)").message("set exactly one provider: prometheus or web"))]
pub struct ClusterMetricTemplateSpec {
    /// The arguments that `{{args.NAME}}` stands for: in a prometheus
    /// query and address, in a web url, body and jsonPath, and in literal
    /// header values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub args: Vec<TemplateArg>,
    /// A PromQL query returning one number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusMetric>,
    /// An HTTP GET or POST to a JSON API, the number read by a JSONPath.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web: Option<WebMetric>,
}

impl From<ClusterMetricTemplateSpec> for MetricTemplateSpec {
    fn from(c: ClusterMetricTemplateSpec) -> MetricTemplateSpec {
        MetricTemplateSpec {
            args: c.args,
            prometheus: c.prometheus,
            web: c.web,
        }
    }
}

/// One argument of a template.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TemplateArg {
    #[schemars(length(min = 1, max = 63), pattern(r"^[A-Za-z_][A-Za-z0-9_-]*$"))]
    pub name: String,
    /// The default; without one, every user of the template must give a
    /// value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// Which kind of template a metric uses.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum TemplateKind {
    /// In the BlueGreen's namespace.
    #[default]
    MetricTemplate,
    /// Cluster-wide.
    ClusterMetricTemplate,
}

impl TemplateKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TemplateKind::MetricTemplate => "MetricTemplate",
            TemplateKind::ClusterMetricTemplate => "ClusterMetricTemplate",
        }
    }
}

/// A metric's template and the values of its arguments.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TemplateRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// `MetricTemplate` (default: in the BlueGreen's namespace) or
    /// `ClusterMetricTemplate`.
    #[serde(default)]
    pub kind: TemplateKind,
    /// Values of the template's arguments, by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub args: BTreeMap<String, String>,
}

/// Why a metric's template could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("{kind} {name} not found")]
    NotFound { kind: &'static str, name: String },
    #[error("{kind} {name}: argument {arg:?} has no value: give it in templateRef.args")]
    MissingArg {
        kind: &'static str,
        name: String,
        arg: String,
    },
    #[error(
        "{kind} {name} has no argument {arg:?} (it has: {known}); remove it from templateRef.args"
    )]
    UnknownArg {
        kind: &'static str,
        name: String,
        arg: String,
        known: String,
    },
    #[error("{kind} {name} cannot be read: {reason}")]
    Unreadable {
        kind: &'static str,
        name: String,
        reason: String,
    },
}

/// `metric` with its template's provider in place of `templateRef`, the
/// arguments replaced.
pub fn resolve(
    metric: &MetricSpec,
    r: &TemplateRef,
    template: &MetricTemplateSpec,
) -> Result<MetricSpec, TemplateError> {
    let (kind, name) = (r.kind.as_str(), r.name.clone());
    let declared: BTreeSet<&str> = template.args.iter().map(|a| a.name.as_str()).collect();
    if let Some(arg) = r.args.keys().find(|a| !declared.contains(a.as_str())) {
        return Err(TemplateError::UnknownArg {
            kind,
            name,
            arg: arg.clone(),
            known: if declared.is_empty() {
                "none".into()
            } else {
                declared.into_iter().collect::<Vec<_>>().join(", ")
            },
        });
    }
    let mut values = Vec::with_capacity(template.args.len());
    for a in &template.args {
        match r.args.get(&a.name).or(a.value.as_ref()) {
            Some(v) => values.push((format!("{{{{args.{}}}}}", a.name), v.as_str())),
            None => {
                return Err(TemplateError::MissingArg {
                    kind,
                    name,
                    arg: a.name.clone(),
                });
            }
        }
    }
    let fill = |s: &str| {
        values
            .iter()
            .fold(s.to_owned(), |s, (from, to)| s.replace(from, to))
    };
    let fill_headers = |headers: &mut [MetricHeader]| {
        for h in headers {
            if let Some(v) = &mut h.value {
                *v = fill(v);
            }
        }
    };
    let prometheus = template.prometheus.clone().map(|mut p| {
        p.address = fill(&p.address);
        p.query = fill(&p.query);
        fill_headers(&mut p.headers);
        p
    });
    let web = template.web.clone().map(|mut w| {
        w.url = fill(&w.url);
        w.body = w.body.as_deref().map(fill);
        w.json_path = fill(&w.json_path);
        fill_headers(&mut w.headers);
        w
    });
    Ok(MetricSpec {
        prometheus,
        web,
        template_ref: None,
        ..metric.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn template() -> MetricTemplateSpec {
        serde_json::from_value(json!({
            "args": [{"name": "app"}, {"name": "window", "value": "1m"}],
            "prometheus": {
                "address": "http://prometheus:9090",
                "query": "rate(errors{app=\"{{args.app}}\",color=\"{{color}}\"}[{{args.window}}])"
            }
        }))
        .unwrap()
    }

    fn metric(args: serde_json::Value) -> (MetricSpec, TemplateRef) {
        let m: MetricSpec = serde_json::from_value(json!({
            "name": "errors", "max": 1,
            "templateRef": {"name": "error-rate", "args": args}
        }))
        .unwrap();
        let r = m.template_ref.clone().unwrap();
        (m, r)
    }

    #[test]
    fn arguments_are_replaced_and_defaults_apply() {
        let (m, r) = metric(json!({"app": "shop"}));
        let got = resolve(&m, &r, &template()).unwrap();
        assert_eq!(
            got.prometheus.unwrap().query,
            "rate(errors{app=\"shop\",color=\"{{color}}\"}[1m])",
            "the variables every query gets are left for later"
        );
        assert_eq!((got.name.as_str(), got.max), ("errors", Some(1.0)));
        assert!(got.template_ref.is_none());
        let (m, r) = metric(json!({"app": "cart", "window": "5m"}));
        let q = resolve(&m, &r, &template())
            .unwrap()
            .prometheus
            .unwrap()
            .query;
        assert_eq!(q, "rate(errors{app=\"cart\",color=\"{{color}}\"}[5m])");
    }

    #[test]
    fn web_arguments_are_replaced_in_url_body_json_path_and_header_values() {
        let t: MetricTemplateSpec = serde_json::from_value(json!({
            "args": [{"name": "app"}, {"name": "account", "value": "42"}],
            "web": {
                "url": "https://api.example.com/{{args.account}}/q?app={{args.app}}&c={{color}}",
                "method": "POST",
                "body": "{\"app\": \"{{args.app}}\"}",
                "jsonPath": "$.results[?@.app == '{{args.app}}'].value",
                "headers": [{"name": "X-Account", "value": "{{args.account}}"},
                            {"name": "Api-Key", "secretRef": {"name": "k", "key": "{{args.app}}"}}]
            }
        }))
        .unwrap();
        let (m, r) = metric(json!({"app": "shop"}));
        let w = resolve(&m, &r, &t).unwrap().web.unwrap();
        assert_eq!(w.url, "https://api.example.com/42/q?app=shop&c={{color}}");
        assert_eq!(w.body.as_deref(), Some("{\"app\": \"shop\"}"));
        assert_eq!(w.json_path, "$.results[?@.app == 'shop'].value");
        assert_eq!(w.headers[0].value.as_deref(), Some("42"));
        assert_eq!(
            w.headers[1].secret_ref.as_ref().unwrap().key.as_deref(),
            Some("{{args.app}}"),
            "secret references are not templated"
        );
    }

    #[test]
    fn a_missing_or_unknown_argument_is_named() {
        let (m, r) = metric(json!({}));
        assert_eq!(
            resolve(&m, &r, &template()).unwrap_err().to_string(),
            "MetricTemplate error-rate: argument \"app\" has no value: give it in templateRef.args"
        );
        let (m, r) = metric(json!({"app": "shop", "windw": "5m"}));
        assert_eq!(
            resolve(&m, &r, &template()).unwrap_err().to_string(),
            "MetricTemplate error-rate has no argument \"windw\" (it has: app, window); remove it from templateRef.args"
        );
    }
}
