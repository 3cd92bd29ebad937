//! `job` metrics: a test run as a Kubernetes Job against the analysed
//! color, once per check. The Job is built from the metric's pod template
//! with the environment that reaches the color (the preview Service or the
//! live Service with the preview header), owned by the BlueGreen (so the
//! garbage collector removes it with the BlueGreen) and named from the
//! release, stage, check and metric: a controller that restarts during a
//! check finds its Job again instead of starting a second one.
//!
//! The value is 1 when the Job succeeded and 0 when it failed; a failed
//! Job's reason and the tail of its pod's log go in the measurement's note,
//! which status shows. The Job is deleted (with its pods) once judged, and
//! when the stage ends without it (abort, rollback, a newer revision).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, Pod, SecretKeySelector, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, ListParams, LogParams, PostParams, PropagationPolicy};
use kube::{Api, ResourceExt};
use teal_analysis::{CheckContext, Measuring, MetricProvider, QueryVars};
use teal_api::bluegreen::RouterKind;
use teal_api::spec::JobMetric;
use teal_api::{BlueGreen, MetricSpec};
use teal_core::analysis::Measurement;
use teal_core::release::{Millis, Stage};

use crate::objects;

/// The label naming the BlueGreen on a Job and its pods. Not
/// `teal.dev/bluegreen` and `teal.dev/color`: those select a color's pods
/// (its Services' endpoints, its readiness), which a test pod is not.
pub const ANALYSIS_OF_LABEL: &str = "teal.dev/analysis-of";
/// The label naming the check's metric on a Job and its pods.
pub const METRIC_LABEL: &str = "teal.dev/metric";
/// The label naming the analysis stage on a Job and its pods.
pub const STAGE_LABEL: &str = "teal.dev/stage";
/// Lines of a failed pod's log kept in status.
pub const LOG_LINES: i64 = 10;
/// Bytes of a failed pod's log kept in status, at most.
pub const LOG_BYTES: usize = 1024;
/// How often a running Job is looked at.
const POLL: Duration = Duration::from_secs(2);
/// Time allowed past the Job's own deadline before the check gives up on
/// it (Kubernetes marks it failed at its deadline; this covers a Job
/// controller that is down).
const GRACE: Duration = Duration::from_secs(60);

/// Which check a Job belongs to.
#[derive(Debug, Clone)]
pub struct CheckId {
    pub stage: Stage,
    /// When the release started (ms): tells two releases of one revision
    /// apart.
    pub started_at: Millis,
    /// The check's number in its stage, from 0.
    pub check: u32,
}

/// Measures `job` metrics for one BlueGreen's check.
pub struct JobProvider {
    pub client: kube::Client,
    pub bg: BlueGreen,
    pub id: CheckId,
}

impl MetricProvider for JobProvider {
    fn measure<'a>(&'a self, m: &'a MetricSpec, cx: &'a CheckContext<'a>) -> Measuring<'a> {
        Box::pin(async move {
            match &m.job {
                Some(job) => self.run(m, job, cx.vars).await,
                None => teal_analysis::provider_error(m, "not a job metric"),
            }
        })
    }
}

/// A measurement of job metric `m` (passes at 1).
fn of(m: &MetricSpec) -> Measurement {
    Measurement::of(m.name.clone(), Some(1.0), None)
}

/// How a Job ended, when it has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    Succeeded,
    /// The Job's failure reason and message.
    Failed(String),
}

/// Whether `job` has ended: its `Complete` or `Failed` condition.
pub fn judge(job: &Job) -> Option<Ended> {
    let conditions = job.status.as_ref()?.conditions.as_ref()?;
    let holds = |kind: &str| {
        conditions
            .iter()
            .find(|c| c.type_ == kind && c.status == "True")
    };
    if holds("Complete").is_some() {
        return Some(Ended::Succeeded);
    }
    holds("Failed").map(|c| {
        let reason = c.reason.clone().unwrap_or_else(|| "Failed".into());
        Ended::Failed(match c.message.as_deref() {
            Some(msg) if !msg.is_empty() => format!("{reason}: {msg}"),
            _ => reason,
        })
    })
}

/// The Job's name: the BlueGreen and the metric (shortened to stay a
/// DNS label) and a hash of the release, stage, check and metric.
pub fn job_name(bg: &str, metric: &str, revision: &str, id: &CheckId) -> String {
    let key = format!(
        "{bg}\n{metric}\n{revision}\n{}\n{:?}\n{}",
        id.started_at, id.stage, id.check
    );
    let h = objects::fnv1a(key.as_bytes());
    format!(
        "{}-{}-{:010x}",
        dns_part(bg, 30),
        dns_part(metric, 20),
        h & 0xff_ffff_ffff
    )
}

/// `s` in lowercase letters, digits and dashes, at most `max` long, not
/// starting or ending with a dash (`job` when nothing is left).
fn dns_part(s: &str, max: usize) -> String {
    let mapped: String = s
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9') => c,
            _ => '-',
        })
        .take(max)
        .collect();
    let t = mapped.trim_matches('-');
    if t.is_empty() { "job".into() } else { t.into() }
}

/// A label value from `s`: letters, digits, `-`, `_` and `.`, at most 63.
fn label_value(s: &str) -> String {
    let mapped: String = s
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '-' | '_' | '.' => c,
            _ => '-',
        })
        .take(63)
        .collect();
    mapped
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .into()
}

fn stage_name(stage: Stage) -> &'static str {
    match stage {
        Stage::PrePromotion => "prePromotion",
        Stage::PostPromotion => "postPromotion",
    }
}

/// The environment every container of the Job gets: how to reach the
/// analysed color (`url`) and what it is.
pub fn env(bg: &BlueGreen, vars: &QueryVars, stage: Stage, url: &str) -> Vec<EnvVar> {
    let var = |name: &str, value: &str| EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    };
    let preview = match bg.spec.router.kind {
        RouterKind::Service if stage == Stage::PrePromotion => objects::preview_service_name(bg),
        _ => objects::service_name(bg),
    };
    let mut env = vec![
        var("TEAL_NAME", &vars.name),
        var("TEAL_NAMESPACE", &vars.namespace),
        var("TEAL_STAGE", stage_name(stage)),
        var("TEAL_COLOR", &vars.color.to_string()),
        var("TEAL_REVISION", &vars.revision),
        var("TEAL_SERVICE", &objects::service_name(bg)),
        var("TEAL_PREVIEW_SERVICE", &preview),
        var("TEAL_PREVIEW_URL", url),
    ];
    let p = &bg.spec.preview;
    if let Some(h) = &p.header {
        env.push(var("TEAL_PREVIEW_HEADER_NAME", &h.name));
        // A value from a Secret stays in the Secret: the pod reads it.
        env.push(match &p.header_value_from {
            Some(from) => EnvVar {
                name: "TEAL_PREVIEW_HEADER_VALUE".into(),
                value: None,
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: from.secret_key_ref.name.clone(),
                        key: from.secret_key_ref.key.clone(),
                        optional: None,
                    }),
                    ..EnvVarSource::default()
                }),
            },
            None => var("TEAL_PREVIEW_HEADER_VALUE", &h.value),
        });
        // `Name: value`, for `curl -H` or `wget --header`.
        env.push(var(
            "TEAL_PREVIEW_HEADER",
            &format!("{}: $(TEAL_PREVIEW_HEADER_VALUE)", h.name),
        ));
    }
    if let Some(c) = &p.cookie {
        env.push(var(
            "TEAL_PREVIEW_COOKIE",
            &format!("{}={}", c.name, c.value),
        ));
    }
    env
}

/// The Job for metric `metric` of `bg`: the metric's pod template with
/// `env` before each container's own variables (so a container can
/// override one), owned by the BlueGreen and labelled with it. The error
/// says what is wrong with the template.
pub fn build(
    bg: &BlueGreen,
    metric: &str,
    job: &JobMetric,
    name: &str,
    stage: Stage,
    env: &[EnvVar],
) -> Result<Job, String> {
    let template = job.pod_template()?;
    let mut labels = BTreeMap::from([
        (ANALYSIS_OF_LABEL.to_string(), bg.name_any()),
        (STAGE_LABEL.to_string(), stage_name(stage).to_string()),
        (METRIC_LABEL.to_string(), label_value(metric)),
    ]);
    labels.retain(|_, v| !v.is_empty());
    let mut template = template;
    let meta = template.metadata.get_or_insert_with(ObjectMeta::default);
    meta.labels
        .get_or_insert_with(BTreeMap::new)
        .extend(labels.clone());
    let spec = template.spec.get_or_insert_with(Default::default);
    if spec.restart_policy.is_none() {
        spec.restart_policy = Some("Never".into());
    }
    for c in spec
        .containers
        .iter_mut()
        .chain(spec.init_containers.iter_mut().flatten())
    {
        let own = c.env.take().unwrap_or_default();
        c.env = Some(env.iter().cloned().chain(own).collect());
    }
    Ok(Job {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: bg.namespace(),
            labels: Some(labels),
            owner_references: Some(vec![objects::owner(bg)]),
            ..ObjectMeta::default()
        },
        spec: Some(JobSpec {
            template,
            backoff_limit: Some(job.backoff_limit.unwrap_or(0)),
            active_deadline_seconds: Some(job.deadline_seconds()),
            ..JobSpec::default()
        }),
        status: None,
    })
}

/// The last `LOG_LINES` lines of `log`, at most `LOG_BYTES` bytes (cut at a
/// character boundary), without trailing blank lines.
pub fn tail(log: &str) -> String {
    let log = log.trim_end();
    let lines: Vec<&str> = log.lines().collect();
    let from = lines.len().saturating_sub(LOG_LINES as usize);
    let kept = lines[from..].join("\n");
    if kept.len() <= LOG_BYTES {
        return kept;
    }
    let mut start = kept.len() - LOG_BYTES;
    while !kept.is_char_boundary(start) {
        start += 1;
    }
    kept[start..].to_string()
}

/// Whether the phase status shows means that `stage` of the release at
/// `revision` is over (its Job is no longer wanted). The phase before the
/// stage's own counts as not over: status may not show the stage yet.
pub fn stage_over(stage: Stage, revision: &str, bg: Option<&BlueGreen>) -> bool {
    let Some(bg) = bg else { return true };
    let Some(status) = bg.status.as_ref() else {
        return false;
    };
    if status
        .desired_revision
        .as_deref()
        .is_some_and(|d| d != revision)
    {
        return true;
    }
    let (own, before) = match stage {
        Stage::PrePromotion => ("Previewing", "Deploying"),
        Stage::PostPromotion => ("PostPromotion", "CuttingOver"),
    };
    const PHASES: [&str; 15] = [
        "Deploying",
        "Previewing",
        "AwaitingPromotion",
        "ScalingUp",
        "CuttingOver",
        "PostPromotion",
        "ScaleDownDelay",
        "Reverting",
        "Succeeded",
        "Aborted",
        "RolledBack",
        "Failed",
        "Superseded",
        "Healthy",
        "Degraded",
    ];
    status
        .phase
        .as_deref()
        .is_some_and(|p| PHASES.contains(&p) && p != own && p != before)
}

impl JobProvider {
    async fn run(&self, m: &MetricSpec, job: &JobMetric, vars: &QueryVars) -> Measurement {
        let ns = vars.namespace.clone();
        let jobs: Api<Job> = Api::namespaced(self.client.clone(), &ns);
        let name = job_name(&vars.name, &m.name, &vars.revision, &self.id);
        let url = self.url(vars).await;
        let env = env(&self.bg, vars, self.id.stage, &url);
        let obj = match build(&self.bg, &m.name, job, &name, self.id.stage, &env) {
            Ok(j) => j,
            Err(e) => return of(m).failed(format!("job.template: {e}")),
        };
        match jobs.create(&PostParams::default(), &obj).await {
            Ok(_) => tracing::info!("started Job {ns}/{name} for metric {}", m.name),
            // Started before a restart of the controller: judged as it is.
            Err(kube::Error::Api(e)) if e.code == 409 => {
                tracing::info!("found Job {ns}/{name} for metric {} again", m.name)
            }
            Err(e) => return of(m).failed(format!("creating Job {name}: {e}")),
        }
        let deadline = tokio::time::Instant::now()
            + Duration::from_secs(job.deadline_seconds().unsigned_abs())
            + GRACE;
        let bgs: Api<BlueGreen> = Api::namespaced(self.client.clone(), &ns);
        let ended = loop {
            tokio::time::sleep(POLL).await;
            match jobs.get_opt(&name).await {
                Ok(Some(j)) => {
                    if let Some(e) = judge(&j) {
                        break Ok(e);
                    }
                }
                Ok(None) => break Err(format!("Job {name} was deleted before it ended")),
                Err(e) => tracing::debug!("reading Job {ns}/{name}: {e}"),
            }
            if tokio::time::Instant::now() >= deadline {
                break Err(format!(
                    "Job {name} did not end within {}s",
                    job.deadline_seconds() + GRACE.as_secs() as i64
                ));
            }
            match bgs.get_opt(&vars.name).await {
                Ok(found) => {
                    let found = found.filter(|b| b.uid() == self.bg.uid());
                    if stage_over(self.id.stage, &vars.revision, found.as_ref()) {
                        self.delete(&jobs, &name).await;
                        return of(m)
                            .no_data(format!("Job {name} stopped: the stage ended before it did"));
                    }
                }
                Err(e) => tracing::debug!("reading BlueGreen {ns}/{}: {e}", vars.name),
            }
        };
        let measured = match ended {
            Ok(Ended::Succeeded) => {
                let mut r = of(m).value(1.0);
                r.note = Some(format!("Job {name} succeeded"));
                r
            }
            Ok(Ended::Failed(why)) => {
                let mut note = format!("Job {name} failed: {why}");
                match self.log_tail(&ns, &name).await {
                    Some(t) if !t.is_empty() => note.push_str(&format!("; log: {t}")),
                    _ => {}
                }
                let mut r = of(m).value(0.0);
                r.note = Some(note);
                r
            }
            Err(e) => of(m).failed(e),
        };
        self.delete(&jobs, &name).await;
        measured
    }

    /// The URL that reaches the analysed color: the preview Service (router
    /// type `service`, before promotion) or the live Service, at its first
    /// port.
    async fn url(&self, vars: &QueryVars) -> String {
        let svc = match self.bg.spec.router.kind {
            RouterKind::Service if self.id.stage == Stage::PrePromotion => {
                objects::preview_service_name(&self.bg)
            }
            _ => objects::service_name(&self.bg),
        };
        let api: Api<Service> = Api::namespaced(self.client.clone(), &vars.namespace);
        let port = match api.get_opt(&svc).await {
            Ok(Some(s)) => s
                .spec
                .and_then(|s| s.ports)
                .and_then(|p| p.first().map(|p| p.port))
                .unwrap_or(80),
            _ => 80,
        };
        format!("http://{svc}.{}.svc:{port}", vars.namespace)
    }

    /// The tail of the log of the Job's last failed pod.
    async fn log_tail(&self, ns: &str, job: &str) -> Option<String> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let list = pods
            .list(&ListParams::default().labels(&format!("job-name={job}")))
            .await
            .map_err(|e| tracing::debug!("listing the pods of Job {ns}/{job}: {e}"))
            .ok()?;
        // The newest failed pod (restartPolicy Never), else the newest one.
        let pod = list.items.into_iter().max_by_key(|p| {
            let failed = p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed");
            (failed, p.creation_timestamp())
        })?;
        let params = LogParams {
            tail_lines: Some(LOG_LINES),
            limit_bytes: Some(LOG_BYTES as i64 * 4),
            ..LogParams::default()
        };
        match pods.logs(&pod.name_any(), &params).await {
            Ok(log) => Some(tail(&log)),
            Err(e) => {
                tracing::debug!("reading the log of pod {ns}/{}: {e}", pod.name_any());
                None
            }
        }
    }

    async fn delete(&self, jobs: &Api<Job>, name: &str) {
        let dp = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            ..DeleteParams::default()
        };
        match jobs.delete(name, &dp).await {
            Ok(_) => tracing::info!("deleted Job {name}"),
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => tracing::warn!("deleting Job {name}: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::batch::v1::{JobCondition, JobStatus};
    use teal_core::Color;

    fn bluegreen(preview: &str) -> BlueGreen {
        let mut bg: BlueGreen = serde_json::from_value(serde_json::json!({
            "apiVersion": "teal.dev/v1alpha1",
            "kind": "BlueGreen",
            "metadata": {"name": "shop", "namespace": "prod", "uid": "u-1"},
            "spec": {
                "workloadRef": {"kind": "Deployment", "name": "shop"},
                "router": {"type": "service"},
                "preview": serde_json::from_str::<serde_json::Value>(preview).unwrap(),
            }
        }))
        .unwrap();
        bg.metadata.uid = Some("u-1".into());
        bg
    }

    fn vars() -> QueryVars {
        QueryVars {
            name: "shop".into(),
            namespace: "prod".into(),
            color: Color::Green,
            revision: "abc123".into(),
            service: "shop".into(),
        }
    }

    fn metric() -> JobMetric {
        serde_json::from_value(serde_json::json!({
            "backoffLimit": 1,
            "template": {"spec": {"containers": [
                {"name": "smoke", "image": "busybox", "env": [{"name": "TEAL_COLOR", "value": "mine"}]}
            ]}}
        }))
        .unwrap()
    }

    fn id(check: u32) -> CheckId {
        CheckId {
            stage: Stage::PrePromotion,
            started_at: 1_700_000_000_000,
            check,
        }
    }

    #[test]
    fn the_job_is_owned_labelled_and_gets_the_preview_environment() {
        let bg = bluegreen(r#"{"header": {"name": "X-Preview", "value": "yes"}}"#);
        let m = metric();
        let name = job_name("shop", "Smoke_Test", "abc123", &id(0));
        let env = env(
            &bg,
            &vars(),
            Stage::PrePromotion,
            "http://shop-preview.prod.svc:8080",
        );
        let job = build(&bg, "Smoke_Test", &m, &name, Stage::PrePromotion, &env).unwrap();
        assert!(name.starts_with("shop-smoke-test-"), "{name}");
        assert!(name.len() <= 63);
        assert_eq!(job.metadata.name.as_deref(), Some(name.as_str()));
        assert_eq!(job.metadata.namespace.as_deref(), Some("prod"));
        let owner = &job.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str()),
            ("BlueGreen", "shop")
        );
        assert_eq!(owner.uid, "u-1");
        assert_eq!(owner.controller, Some(true));
        let labels = job.metadata.labels.as_ref().unwrap();
        let want = BTreeMap::from([
            (ANALYSIS_OF_LABEL.to_string(), "shop".to_string()),
            (STAGE_LABEL.to_string(), "prePromotion".to_string()),
            (METRIC_LABEL.to_string(), "Smoke_Test".to_string()),
        ]);
        assert_eq!(labels, &want);
        let spec = job.spec.as_ref().unwrap();
        assert_eq!(spec.backoff_limit, Some(1));
        assert_eq!(spec.active_deadline_seconds, Some(600));
        let pod = spec.template.spec.as_ref().unwrap();
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        let pod_labels = spec
            .template
            .metadata
            .as_ref()
            .unwrap()
            .labels
            .as_ref()
            .unwrap();
        // Not a pod of a color: the color's Services do not select it.
        assert_eq!(pod_labels, &want);
        let got: Vec<(String, String)> = pod.containers[0]
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
            .collect();
        let want = [
            ("TEAL_NAME", "shop"),
            ("TEAL_NAMESPACE", "prod"),
            ("TEAL_STAGE", "prePromotion"),
            ("TEAL_COLOR", "green"),
            ("TEAL_REVISION", "abc123"),
            ("TEAL_SERVICE", "shop"),
            ("TEAL_PREVIEW_SERVICE", "shop-preview"),
            ("TEAL_PREVIEW_URL", "http://shop-preview.prod.svc:8080"),
            ("TEAL_PREVIEW_HEADER_NAME", "X-Preview"),
            ("TEAL_PREVIEW_HEADER_VALUE", "yes"),
            (
                "TEAL_PREVIEW_HEADER",
                "X-Preview: $(TEAL_PREVIEW_HEADER_VALUE)",
            ),
            // The container's own variable comes last: it wins.
            ("TEAL_COLOR", "mine"),
        ];
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn a_header_value_from_a_secret_stays_in_the_secret() {
        let bg = bluegreen(
            r#"{"header": {"name": "X-Preview"}, "headerValueFrom": {"secretKeyRef": {"name": "pv", "key": "v"}}}"#,
        );
        let env = env(
            &bg,
            &vars(),
            Stage::PostPromotion,
            "http://shop.prod.svc:80",
        );
        let v = env
            .iter()
            .find(|e| e.name == "TEAL_PREVIEW_HEADER_VALUE")
            .unwrap();
        assert_eq!(v.value, None);
        let r = v
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap();
        assert_eq!((r.name.as_str(), r.key.as_str()), ("pv", "v"));
        // After promotion the analysed color is live.
        let svc = env
            .iter()
            .find(|e| e.name == "TEAL_PREVIEW_SERVICE")
            .unwrap();
        assert_eq!(svc.value.as_deref(), Some("shop"));
    }

    #[test]
    fn names_are_stable_per_check_and_differ_between_checks() {
        let a = job_name("shop", "smoke", "abc123", &id(0));
        assert_eq!(a, job_name("shop", "smoke", "abc123", &id(0)));
        assert_ne!(a, job_name("shop", "smoke", "abc123", &id(1)));
        assert_ne!(a, job_name("shop", "other", "abc123", &id(0)));
        let mut later = id(0);
        later.started_at += 1;
        assert_ne!(a, job_name("shop", "smoke", "abc123", &later));
        let long = job_name(&"a".repeat(63), &"-".repeat(63), "r", &id(0));
        assert!(long.len() <= 63, "{long}");
        assert!(long.contains("-job-"), "{long}");
    }

    fn with(conditions: &[(&str, &str, Option<&str>, Option<&str>)]) -> Job {
        Job {
            status: Some(JobStatus {
                conditions: Some(
                    conditions
                        .iter()
                        .map(|(t, s, r, m)| JobCondition {
                            type_: t.to_string(),
                            status: s.to_string(),
                            reason: r.map(Into::into),
                            message: m.map(Into::into),
                            ..JobCondition::default()
                        })
                        .collect(),
                ),
                ..JobStatus::default()
            }),
            ..Job::default()
        }
    }

    #[test]
    fn a_job_is_judged_by_its_conditions() {
        assert_eq!(judge(&Job::default()), None);
        assert_eq!(judge(&with(&[("Suspended", "True", None, None)])), None);
        assert_eq!(judge(&with(&[("Complete", "False", None, None)])), None);
        assert_eq!(
            judge(&with(&[
                ("SuccessCriteriaMet", "True", None, None),
                ("Complete", "True", None, None)
            ])),
            Some(Ended::Succeeded)
        );
        assert_eq!(
            judge(&with(&[(
                "Failed",
                "True",
                Some("BackoffLimitExceeded"),
                Some("Job has reached the specified backoff limit")
            )])),
            Some(Ended::Failed(
                "BackoffLimitExceeded: Job has reached the specified backoff limit".into()
            ))
        );
        assert_eq!(
            judge(&with(&[("Failed", "True", Some("DeadlineExceeded"), None)])),
            Some(Ended::Failed("DeadlineExceeded".into()))
        );
    }

    #[test]
    fn the_log_tail_is_bounded() {
        let log: String = (1..=30).map(|i| format!("line {i}\n")).collect();
        let t = tail(&log);
        assert_eq!(t.lines().count(), 10);
        assert!(t.starts_with("line 21\n") && t.ends_with("line 30"), "{t}");
        let wide = format!("{}\n", "é".repeat(2000));
        let t = tail(&wide);
        assert!(
            t.len() <= LOG_BYTES && t.chars().all(|c| c == 'é'),
            "{}",
            t.len()
        );
    }

    #[test]
    fn the_stage_is_over_when_the_release_moved_on() {
        let mut bg = bluegreen("{}");
        let at = |bg: &mut BlueGreen, phase: &str, desired: &str| {
            bg.status = Some(teal_api::bluegreen::BlueGreenStatus {
                phase: Some(phase.into()),
                desired_revision: Some(desired.into()),
                ..Default::default()
            });
        };
        assert!(stage_over(Stage::PrePromotion, "abc123", None));
        at(&mut bg, "Previewing", "abc123");
        assert!(!stage_over(Stage::PrePromotion, "abc123", Some(&bg)));
        at(&mut bg, "Deploying", "abc123");
        assert!(!stage_over(Stage::PrePromotion, "abc123", Some(&bg)));
        for over in ["Aborted", "RolledBack", "Healthy", "AwaitingPromotion"] {
            at(&mut bg, over, "abc123");
            assert!(
                stage_over(Stage::PrePromotion, "abc123", Some(&bg)),
                "{over}"
            );
        }
        at(&mut bg, "Previewing", "def456");
        assert!(stage_over(Stage::PrePromotion, "abc123", Some(&bg)));
        at(&mut bg, "PostPromotion", "abc123");
        assert!(!stage_over(Stage::PostPromotion, "abc123", Some(&bg)));
        at(&mut bg, "Reverting", "abc123");
        assert!(stage_over(Stage::PostPromotion, "abc123", Some(&bg)));
    }
}
