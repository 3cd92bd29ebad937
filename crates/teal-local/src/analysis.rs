//! Local mode's analysis stage: a check every interval, each metric
//! measured by its provider (`teal_analysis`) over the window of the
//! router's counters since the previous check, the rollout and rollback
//! webhooks called, a report sent to the engine.

use teal_analysis::{CheckContext, QueryVars, Reading, Secrets};
use teal_api::AnalysisStageSpec;
use teal_api::hooks::{SecretRef, WebhookSpec, WebhookType};
use teal_core::analysis::Run;
use teal_core::release::{Stage, Verdict};
use teal_router::Router;
use tokio::sync::mpsc;

/// Local mode's secrets: environment variables and files (relative paths
/// were anchored at `teal.yaml`'s folder when it was loaded).
struct LocalSecrets;

impl Secrets for LocalSecrets {
    fn get<'a>(&'a self, r: &'a SecretRef, field: &'a str) -> Reading<'a> {
        Box::pin(async move {
            crate::hooks::resolve(r, field, std::path::Path::new("."))
                .map(|s| s.expose().to_string())
        })
    }
}

/// Rollout and rollback webhooks called with every check.
#[derive(Debug, Clone, Default)]
pub struct StageHooks {
    pub hooks: Vec<WebhookSpec>,
    pub payload: Option<teal_notify::HookPayload>,
}

impl StageHooks {
    async fn call(&self) -> Vec<teal_core::hooks::HookResult> {
        let Some(p) = &self.payload else {
            return Vec::new();
        };
        let mut out = teal_notify::webhook::call_all(&self.hooks, WebhookType::Rollout, p).await;
        out.extend(teal_notify::webhook::call_all(&self.hooks, WebhookType::Rollback, p).await);
        out
    }
}

/// Progress and end of one analysis stage, as sent to the engine.
#[derive(Debug, Clone)]
pub struct Report {
    pub stage: Stage,
    pub revision: String,
    pub run: Run,
    pub verdict: Option<Verdict>,
}

/// Runs one analysis stage on `color` until it has a verdict, sending a
/// report after every check.
pub async fn run_stage(
    router: Router,
    spec: AnalysisStageSpec,
    stage: Stage,
    vars: QueryVars,
    hooks: StageHooks,
    reports: mpsc::UnboundedSender<Report>,
) {
    let mut run = Run::new(spec.limits());
    let mut prev = router.stats(vars.color);
    let mut ticker = tokio::time::interval(spec.interval.std());
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    if let Some(delay) = spec.initial_delay {
        tokio::time::sleep(delay.std()).await;
        ticker.reset();
        prev = router.stats(vars.color);
    }
    loop {
        ticker.tick().await;
        let now = router.stats(vars.color);
        let window = now.since(&prev);
        prev = now;
        let cx = CheckContext {
            vars: &vars,
            secrets: &LocalSecrets,
            window: Ok(&window),
        };
        let mut ms = Vec::with_capacity(spec.metrics.len());
        for m in &spec.metrics {
            ms.push(teal_analysis::measure(m, &cx).await);
        }
        spec.mark_dry_run(&mut ms);
        let results = hooks.call().await;
        let verdict = run.record_checks(ms, results);
        let done = verdict.is_some();
        let _ = reports.send(Report {
            stage,
            revision: vars.revision.clone(),
            run: run.clone(),
            verdict,
        });
        if done {
            return;
        }
    }
}
