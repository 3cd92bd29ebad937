//! `teal.yaml`: what local mode runs and how it releases it.
//!
//! The preview, promotion and analysis sections are the same types the
//! Kubernetes `BlueGreen` resource uses ([`teal_api`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use teal_api::hooks::{NotifierSpec, SecretSource, WebhookSpec};
use teal_api::{AnalysisSpec, Duration, FieldError, MatchSpec, PreviewSpec, PromotionSpec};
use teal_core::release::Policy;

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
    pub app: AppSpec,
    /// Name of the revision the app command runs at first start.
    #[serde(default = "default_revision")]
    pub revision: String,
    /// Where users' traffic arrives (the router).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The router's admin and metrics listener (loopback; port 0 = any).
    #[serde(default = "default_admin")]
    pub admin: SocketAddr,
    /// The daemon's control API used by `teal local …` (loopback; 0 = any).
    #[serde(default = "default_control")]
    pub control: SocketAddr,
    /// State, logs, token and addresses, relative to the config file.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    #[serde(default = "default_preview")]
    pub preview: PreviewSpec,
    #[serde(default)]
    pub promotion: PromotionSpec,
    #[serde(default)]
    pub analysis: AnalysisSpec,
    /// How long the previous color stays up after cutover (instant rollback).
    #[serde(default = "default_scale_down_delay")]
    pub scale_down_delay: Duration,
    /// How long in-flight requests to a retired color may take to finish.
    #[serde(default = "default_drain_timeout")]
    pub drain_timeout: Duration,
    /// When set, responses name the color that served them in this header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub color_header: Option<String>,
    /// Test hooks and promotion gates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub webhooks: Vec<WebhookSpec>,
    /// Where people hear about releases; URLs from `env` or `file`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notifications: Vec<NotifierSpec>,
}

/// The application teal runs in each color.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AppSpec {
    /// Program and arguments. `{port}`, `{color}` and `{revision}` are
    /// replaced; the environment also gets PORT, TEAL_COLOR, TEAL_REVISION.
    pub command: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory, relative to the config file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<PathBuf>,
    #[serde(default = "one")]
    pub replicas: u32,
    #[serde(default)]
    pub health: HealthSpec,
    /// Time a new color has to become healthy (the progress deadline).
    #[serde(default = "default_startup_deadline")]
    pub startup_deadline: Duration,
    /// SIGTERM, then SIGKILL after this long.
    #[serde(default = "default_stop_grace")]
    pub stop_grace_period: Duration,
}

/// HTTP health check of each replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HealthSpec {
    #[serde(default = "default_health_path")]
    pub path: String,
    #[serde(default = "default_health_interval")]
    pub interval: Duration,
    #[serde(default = "default_health_timeout")]
    pub timeout: Duration,
    /// Consecutive passes before a replica takes traffic.
    #[serde(default = "one")]
    pub healthy_threshold: u32,
    /// Consecutive failures before a replica stops taking traffic.
    #[serde(default = "three")]
    pub unhealthy_threshold: u32,
}

impl Default for HealthSpec {
    fn default() -> Self {
        HealthSpec {
            path: default_health_path(),
            interval: default_health_interval(),
            timeout: default_health_timeout(),
            healthy_threshold: 1,
            unhealthy_threshold: 3,
        }
    }
}

fn default_revision() -> String {
    "v1".into()
}
fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_admin() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}
fn default_control() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}
fn default_state_dir() -> PathBuf {
    PathBuf::from(".teal")
}
/// The header that reaches the idle color when the config names none.
pub const DEFAULT_PREVIEW_HEADER: &str = "x-teal-preview";
/// The shortest preview header or cookie value accepted when the router
/// listens on a non-loopback address.
pub const MIN_PREVIEW_VALUE: usize = 16;
fn default_preview() -> PreviewSpec {
    PreviewSpec {
        header: Some(MatchSpec {
            name: DEFAULT_PREVIEW_HEADER.into(),
            value: "1".into(),
        }),
        header_value_from: None,
        cookie: None,
        replicas: None,
    }
}
fn default_scale_down_delay() -> Duration {
    Duration::from_secs(30)
}
fn default_drain_timeout() -> Duration {
    Duration::from_secs(30)
}
fn one() -> u32 {
    1
}
fn three() -> u32 {
    3
}
fn default_health_path() -> String {
    "/healthz".into()
}
fn default_health_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_health_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_startup_deadline() -> Duration {
    Duration::from_secs(60)
}
fn default_stop_grace() -> Duration {
    Duration::from_secs(10)
}

/// A configuration that cannot be used, with every reason found.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: invalid configuration:\n{}", .errors.iter().map(|e| format!("  - {e}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        path: PathBuf,
        errors: Vec<FieldError>,
    },
}

impl Config {
    /// Reads, parses and validates a config file. Relative paths in it are
    /// made relative to the file's folder.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::parse(&text, base).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_path_buf(),
                message,
            },
            ConfigError::Invalid { errors, .. } => ConfigError::Invalid {
                path: path.to_path_buf(),
                errors,
            },
            other => other,
        })
    }

    /// Parses and validates YAML text; `base` anchors relative paths.
    pub fn parse(text: &str, base: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = serde_saphyr::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("config"),
            message: e.to_string(),
        })?;
        let errors = config.validate();
        if !errors.is_empty() {
            return Err(ConfigError::Invalid {
                path: PathBuf::from("config"),
                errors,
            });
        }
        if config.state_dir.is_relative() {
            config.state_dir = base.join(&config.state_dir);
        }
        if let Some(w) = &config.app.workdir
            && w.is_relative()
        {
            config.app.workdir = Some(base.join(w));
        }
        // Secret files of notifiers and of Prometheus metrics.
        let notifier_secrets = config
            .notifications
            .iter_mut()
            .flat_map(|n| [n.secret_ref.as_mut(), n.hmac_secret_ref.as_mut()])
            .flatten();
        for s in notifier_secrets.chain(config.analysis.secret_refs_mut()) {
            if let Some(f) = &s.file
                && f.is_relative()
            {
                s.file = Some(base.join(f));
            }
        }
        Ok(config)
    }

    /// Every problem with the config, each naming its field.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut e = Vec::new();
        let app = &self.app;
        if app.command.is_empty() || app.command[0].trim().is_empty() {
            e.push(FieldError::new(
                "app.command",
                "must name the program to run, e.g. [\"./server\", \"--port\", \"{port}\"]",
            ));
        }
        if app.replicas == 0 || app.replicas > 64 {
            e.push(FieldError::new(
                "app.replicas",
                format!("must be between 1 and 64, got {}", app.replicas),
            ));
        }
        if !app.health.path.starts_with('/') {
            e.push(FieldError::new(
                "app.health.path",
                format!("must start with '/', got {:?}", app.health.path),
            ));
        }
        if app.health.healthy_threshold == 0 || app.health.unhealthy_threshold == 0 {
            e.push(FieldError::new(
                "app.health",
                "healthyThreshold and unhealthyThreshold must be at least 1",
            ));
        }
        if app.health.interval.as_millis() < 50 {
            e.push(FieldError::new(
                "app.health.interval",
                "must be at least 50ms",
            ));
        }
        if app.health.timeout.as_millis() == 0 {
            e.push(FieldError::new(
                "app.health.timeout",
                "must be more than 0s",
            ));
        }
        if app.startup_deadline.as_millis() < 1000 {
            e.push(FieldError::new(
                "app.startupDeadline",
                "must be at least 1s",
            ));
        }
        for k in app.env.keys() {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                e.push(FieldError::new(
                    format!("app.env.{k}"),
                    "is not a valid variable name",
                ));
            }
        }
        for (field, addr) in [("admin", self.admin), ("control", self.control)] {
            if !addr.ip().is_loopback() {
                e.push(FieldError::new(
                    field,
                    format!("must be a loopback address (127.0.0.0/8 or ::1), got {addr}: it controls traffic"),
                ));
            }
        }
        if self.revision.is_empty() || self.revision.len() > 63 {
            e.push(FieldError::new("revision", "must be 1 to 63 characters"));
        }
        if self.preview.header.is_none() && self.preview.cookie.is_none() {
            e.push(FieldError::new(
                "preview",
                "needs a header or a cookie: without one the idle color cannot be tested",
            ));
        }
        self.preview.validate("preview", app.replicas, &mut e);
        if !self.listen.ip().is_loopback() {
            // Off loopback, whoever sends the preview value sees the
            // unreleased revision: it is a credential, so not a guessable one.
            let matches = [
                ("preview.header.value", self.preview.header.as_ref()),
                ("preview.cookie.value", self.preview.cookie.as_ref()),
            ];
            for (field, m) in matches {
                if let Some(m) = m
                    && m.value.chars().count() < MIN_PREVIEW_VALUE
                {
                    e.push(FieldError::new(
                        field,
                        format!(
                            "with listen on {} (not loopback) anyone who sends this value reaches the unreleased revision: \
                             use at least {MIN_PREVIEW_VALUE} characters nobody can guess (e.g. the output of `openssl rand -hex 16`), \
                             not {:?}",
                            self.listen, m.value
                        ),
                    ));
                }
            }
        }
        self.promotion.validate("promotion", &mut e);
        self.analysis
            .validate("analysis", teal_api::hooks::SecretSource::Local, &mut e);
        for (stage, spec) in [
            ("prePromotion", &self.analysis.pre_promotion),
            ("postPromotion", &self.analysis.post_promotion),
        ] {
            for (i, m) in spec.iter().flat_map(|s| s.metrics.iter()).enumerate() {
                if m.template_ref.is_some() {
                    e.push(FieldError::new(
                        format!("analysis.{stage}.metrics[{i}].templateRef"),
                        "metric templates are Kubernetes objects; in teal.yaml give the provider inline (builtin, prometheus or web)",
                    ));
                }
            }
        }
        teal_api::hooks::validate(
            &self.webhooks,
            &self.notifications,
            self.analysis.pre_promotion.is_some() || self.analysis.post_promotion.is_some(),
            SecretSource::Local,
            &mut e,
        );
        if let Some(h) = &self.color_header
            && http::HeaderName::from_bytes(h.as_bytes()).is_err()
        {
            e.push(FieldError::new(
                "colorHeader",
                format!("{h:?} is not a valid header name"),
            ));
        }
        e
    }

    /// The release policy the state machine runs with.
    pub fn policy(&self) -> Policy {
        Policy {
            replicas: self.app.replicas,
            preview_replicas: self.preview.replicas,
            promotion: self.promotion.to_core(),
            pre_promotion_analysis: self.analysis.pre_promotion.is_some(),
            post_promotion_analysis: self.analysis.post_promotion.is_some(),
            progress_deadline_ms: self.app.startup_deadline.as_millis(),
            scale_down_delay_ms: self.scale_down_delay.as_millis(),
            hooks: teal_api::hooks::hook_policy(&self.webhooks),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors_of(yaml: &str) -> String {
        match Config::parse(yaml, Path::new(".")) {
            Ok(_) => panic!("accepted: {yaml}"),
            Err(e) => e.to_string(),
        }
    }

    /// The example of docs/analysis.md is a valid `analysis` section.
    #[test]
    fn the_analysis_docs_example_is_valid() {
        let doc = include_str!("../../../docs/analysis.md");
        let block = doc
            .split("```yaml\n")
            .nth(1)
            .and_then(|b| b.split("```").next())
            .expect("a yaml block in docs/analysis.md");
        let yaml = format!("app:\n  command: [./server]\n{block}");
        let c = Config::parse(&yaml, Path::new(".")).unwrap_or_else(|e| panic!("{e}"));
        let pre = c.analysis.pre_promotion.expect("prePromotion");
        assert_eq!(pre.consecutive_error_limit, 4);
        assert_eq!(pre.initial_delay.map(|d| d.as_millis()), Some(30_000));
        assert!(pre.metrics.iter().any(|m| m.dry_run));
        assert!(c.analysis.post_promotion.is_some());
    }

    #[test]
    fn kubernetes_only_metrics_are_refused_naming_the_field() {
        for (metric, want) in [
            (
                "{name: errors, max: 1, templateRef: {name: error-rate}}",
                "analysis.prePromotion.metrics[0].templateRef: metric templates are Kubernetes objects",
            ),
            (
                "{name: smoke, job: {template: {spec: {containers: [{name: t, image: t}]}}}}",
                "analysis.prePromotion.metrics[0].job: runs only on Kubernetes",
            ),
        ] {
            let e = errors_of(&format!(
                "app:\n  command: [./server]\nanalysis:\n  prePromotion:\n    metrics:\n      - {metric}\n"
            ));
            assert!(e.contains(want), "{e}");
        }
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = Config::parse("app:\n  command: [./server]\n", Path::new("/srv/app")).unwrap();
        assert_eq!(c.app.replicas, 1);
        assert_eq!(c.listen.port(), 8080);
        assert_eq!(c.state_dir, Path::new("/srv/app/.teal"));
        assert_eq!(
            c.preview.header.as_ref().unwrap().name,
            DEFAULT_PREVIEW_HEADER
        );
        assert_eq!(c.policy().progress_deadline_ms, 60_000);
    }

    #[test]
    fn prometheus_secret_files_are_relative_to_the_config() {
        let c = Config::parse(
            "app:\n  command: [./server]\nanalysis:\n  prePromotion:\n    metrics:\n      - name: m\n        max: 1\n        prometheus:\n          address: https://prom\n          query: up\n          tls: {caSecretRef: {file: ca.pem}}\n          auth: {basic: {username: u, passwordSecretRef: {file: /etc/pw}}}\n          headers: [{name: X-Org, secretRef: {file: org}}]\n",
            Path::new("/srv/app"),
        )
        .unwrap();
        let mut analysis = c.analysis.clone();
        let files: Vec<_> = analysis
            .secret_refs_mut()
            .map(|r| r.file.clone().unwrap())
            .collect();
        assert_eq!(
            files,
            [
                Path::new("/srv/app/ca.pem"),
                Path::new("/etc/pw"),
                Path::new("/srv/app/org")
            ]
        );
    }

    #[test]
    fn unknown_field_is_named() {
        let e = errors_of("app:\n  command: [./server]\n  replica: 2\n");
        assert!(e.contains("replica"), "{e}");
    }

    #[test]
    fn missing_command_is_named() {
        let e = errors_of("app:\n  replicas: 2\n");
        assert!(e.contains("command"), "{e}");
        let e = errors_of("app:\n  command: []\n");
        assert!(e.contains("app.command: must name the program"), "{e}");
    }

    #[test]
    fn bad_duration_is_named() {
        let e = errors_of("app:\n  command: [x]\nscaleDownDelay: soon\n");
        assert!(e.contains("invalid duration \"soon\""), "{e}");
    }

    #[test]
    fn every_problem_is_listed() {
        let e = errors_of(
            "app:\n  command: [x]\n  replicas: 0\n  health: {path: healthz}\ncontrol: 0.0.0.0:7000\npreview: {replicas: 3}\n",
        );
        for want in [
            "app.replicas",
            "app.health.path",
            "control: must be a loopback",
            "preview: needs a header",
        ] {
            assert!(e.contains(want), "missing {want}: {e}");
        }
    }

    #[test]
    fn off_loopback_the_preview_value_must_be_hard_to_guess() {
        let off = "app:\n  command: [x]\nlisten: 0.0.0.0:8080\n";
        let e = errors_of(off);
        assert!(
            e.contains("preview.header.value: with listen on 0.0.0.0:8080 (not loopback)"),
            "{e}"
        );
        assert!(e.contains("at least 16 characters"), "{e}");
        let e = errors_of(&format!(
            "{off}preview:\n  header: {{name: x-teal-preview, value: short-secret}}\n  cookie: {{name: c, value: \"1\"}}\n"
        ));
        assert!(e.contains("preview.header.value"), "{e}");
        assert!(e.contains("preview.cookie.value"), "{e}");
        let strong = "3f9c2a7d1e8b4c60a5d2f7e9b1c3d5a7";
        Config::parse(
            &format!("{off}preview:\n  header: {{name: x-teal-preview, value: {strong}}}\n"),
            Path::new("."),
        )
        .expect("a long value is accepted off loopback");
        // On loopback only this machine reaches the router: the default stays.
        Config::parse(
            "app:\n  command: [x]\nlisten: 127.0.0.1:8080\n",
            Path::new("."),
        )
        .expect("the default value is accepted on loopback");
    }
}
