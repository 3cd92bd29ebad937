//! Analysis checks in the background: a check's Prometheus queries and its
//! rollout/rollback webhooks are network calls to endpoints the
//! BlueGreen's author chose, which may answer slowly or never (a hook's
//! timeout may be an hour), and a `job` metric waits for a Job that may
//! run for minutes. Run inside a reconcile, they would hold one of
//! the `--concurrency` turns all that time, and a few such BlueGreens would
//! stall every other one. So a reconcile only starts a check and records
//! its result on a later reconcile (woken when it is done); at most one
//! check per BlueGreen is under way at a time, and answers are read only
//! as far as a cap.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use k8s_openapi::api::core::v1::Secret as KubeSecret;
use kube::ResourceExt;
use teal_analysis::{CheckContext, QueryVars, Reading, Secrets};
use teal_api::BlueGreen;
use teal_api::bluegreen::RouterKind;
use teal_api::hooks::SecretRef;
use teal_api::spec::{AnalysisStageSpec, MetricSpec};
use teal_core::analysis::Measurement;
use teal_core::hooks::HookResult;
use teal_core::release::{Machine, Millis, Stage};

use crate::builtin::{self, Readings, Traffic};

type Baseline = (tokio::time::Instant, Readings);

/// A check: which BlueGreen (`namespace/name`), and the stage, revision
/// and start of the release it belongs to.
type Key = (String, Stage, String, Millis);

/// What one check measured and what its hooks answered.
pub type Outcome = (Vec<Measurement>, Vec<HookResult>);

#[derive(Default)]
struct Checks {
    /// A check under way (`None`) or done and not yet recorded, per
    /// BlueGreen: at most one each.
    by_bluegreen: HashMap<String, (Key, Option<Outcome>)>,
    /// The router replicas' counters read at the previous check (or when
    /// the stage began), and when, per BlueGreen: where the next check's
    /// window of built-in metrics starts. `None` while the first reading
    /// of a stage is being taken.
    baselines: HashMap<String, (Key, Option<Baseline>)>,
    /// Checks started of the current stage, per BlueGreen: the number of
    /// the next one (it names a `job` metric's Job).
    started: HashMap<String, (Key, u32)>,
}

fn checks() -> &'static Mutex<Checks> {
    static C: OnceLock<Mutex<Checks>> = OnceLock::new();
    C.get_or_init(Default::default)
}

fn id(bg: &BlueGreen) -> String {
    format!("{}/{}", bg.namespace().unwrap_or_default(), bg.name_any())
}

fn key(bg: &BlueGreen, m: &Machine, stage: Stage, revision: &str) -> Key {
    (
        id(bg),
        stage,
        revision.to_string(),
        m.release.as_ref().map_or(0, |r| r.started_at),
    )
}

/// The outcome of the check of this stage that finished since the last
/// reconcile, if any. A finished check of an earlier stage or release is
/// dropped.
pub fn take(bg: &BlueGreen, m: &Machine, stage: Stage, revision: &str) -> Option<Outcome> {
    let key = key(bg, m, stage, revision);
    let mut g = checks().lock().expect("checks");
    match g.by_bluegreen.get(&key.0) {
        Some((k, Some(_))) if *k == key => g.by_bluegreen.remove(&key.0).and_then(|(_, o)| o),
        Some((k, Some(_))) if *k != key => {
            g.by_bluegreen.remove(&key.0);
            None
        }
        _ => None,
    }
}

/// Starts a check of `spec`'s metrics and of the rollout/rollback hooks in
/// the background, unless one of `bg` is still under way (then `false`).
/// When it is done the BlueGreen is reconciled again.
pub fn start(
    client: &kube::Client,
    bg: &BlueGreen,
    m: &Machine,
    stage: Stage,
    spec: &AnalysisStageSpec,
    vars: QueryVars,
) -> bool {
    let key = key(bg, m, stage, &vars.revision);
    let client = client.clone();
    {
        let mut g = checks().lock().expect("checks");
        if g.by_bluegreen.get(&key.0).is_some_and(|(_, o)| o.is_none()) {
            return false;
        }
        g.by_bluegreen.insert(key.0.clone(), (key.clone(), None));
        match g.started.get_mut(&key.0) {
            Some((k, n)) if *k == key => *n += 1,
            _ => {
                g.started.insert(key.0.clone(), (key.clone(), 0));
            }
        }
    }
    let check = checks().lock().expect("checks").started[&key.0].1;
    let (bg, m, spec) = (bg.clone(), m.clone(), spec.clone());
    tokio::spawn(async move {
        let window = match uses_builtin(&bg, &spec) {
            true => Some(router_window(&client, &bg, &key, &spec, &vars).await),
            false => None,
        };
        let secrets = NamespaceSecrets {
            client: client.clone(),
            namespace: bg.namespace().unwrap_or_default(),
        };
        // Templates are read for every check: a changed one applies to the
        // next check.
        let resolved = crate::templates::resolve_stage(&client, &vars.namespace, &spec).await;
        let jobs = crate::jobs::JobProvider {
            client: client.clone(),
            bg: bg.clone(),
            id: crate::jobs::CheckId {
                stage,
                started_at: key.3,
                check,
            },
        };
        let mut ms = Vec::new();
        for (metric, r) in spec.metrics.iter().zip(resolved) {
            ms.push(match r {
                Ok(metric) => measure(&metric, &vars, &secrets, window.as_ref(), &jobs).await,
                Err(e) => Measurement::of(metric.name.clone(), metric.min, metric.max)
                    .failed(format!("templateRef: {e}")),
            });
        }
        let hooks = crate::hooks::with_check(&bg, &m, &vars.revision, vars.color).await;
        {
            let mut g = checks().lock().expect("checks");
            // Still wanted: not forgotten (the BlueGreen deleted) meanwhile.
            if let Some((k, o)) = g.by_bluegreen.get_mut(&key.0)
                && *k == key
            {
                *o = Some((ms, hooks));
            }
        }
        crate::hooks::wake(&bg);
    });
    true
}

/// Takes the first reading of the router replicas' counters of a stage
/// that begins (router type `teal` with built-in metrics), in the
/// background, [`builtin::SETTLE`] after it began: by then every replica
/// has published what it counted before, so the first window holds only
/// traffic of this stage.
pub fn begin(client: &kube::Client, bg: &BlueGreen, m: &Machine, stage: Stage, revision: &str) {
    let spec = match stage {
        Stage::PrePromotion => bg.spec.analysis.pre_promotion.as_ref(),
        Stage::PostPromotion => bg.spec.analysis.post_promotion.as_ref(),
    };
    if !spec.is_some_and(|s| uses_builtin(bg, s)) {
        return;
    }
    let key = key(bg, m, stage, revision);
    checks()
        .lock()
        .expect("checks")
        .baselines
        .insert(key.0.clone(), (key.clone(), None));
    // Traffic during the stage's initialDelay is not measured: the first
    // window starts after it.
    let delay = spec
        .and_then(|s| s.initial_delay)
        .map_or(std::time::Duration::ZERO, |d| d.std());
    let (client, bg) = (client.clone(), bg.clone());
    tokio::spawn(async move {
        tokio::time::sleep(builtin::SETTLE + delay).await;
        let ns = bg.namespace().unwrap_or_default();
        let read = builtin::read(&client, &ns, &bg.name_any()).await;
        let mut g = checks().lock().expect("checks");
        if !g
            .baselines
            .get(&key.0)
            .is_some_and(|(k, b)| *k == key && b.is_none())
        {
            return;
        }
        match read {
            Ok((now, _)) => {
                let at = tokio::time::Instant::now();
                g.baselines.insert(key.0.clone(), (key, Some((at, now))));
            }
            // The first check then starts its window itself.
            Err(e) => {
                tracing::debug!("reading the router Leases of {}: {e}", key.0);
                g.baselines.remove(&key.0);
            }
        }
    });
}

/// Whether `spec` has built-in metrics that `bg`'s router measures.
fn uses_builtin(bg: &BlueGreen, spec: &AnalysisStageSpec) -> bool {
    bg.spec.router.kind == RouterKind::Teal && spec.metrics.iter().any(|m| m.builtin.is_some())
}

/// The traffic `bg`'s router replicas counted for the analysed color since
/// the previous reading of this stage, summed over the replicas; the
/// window lasts at least an interval. Without a previous reading (the
/// controller started during the stage) this one starts the window.
async fn router_window(
    client: &kube::Client,
    bg: &BlueGreen,
    key: &Key,
    spec: &AnalysisStageSpec,
    vars: &QueryVars,
) -> Result<teal_core::ColorStats, String> {
    let ns = bg.namespace().unwrap_or_default();
    let read = || async {
        builtin::read(client, &ns, &bg.name_any())
            .await
            .map_err(|e| format!("reading the router replicas' Leases: {e}"))
    };
    // The stage's first reading may still be under way.
    let deadline = tokio::time::Instant::now() + builtin::SETTLE * 2;
    let before = loop {
        let found = {
            let g = checks().lock().expect("checks");
            g.baselines
                .get(&key.0)
                .filter(|(k, _)| k == key)
                .map(|(_, b)| b.clone())
        };
        match found {
            Some(Some(b)) => break b,
            Some(None) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            _ => break (tokio::time::Instant::now(), read().await?.0),
        }
    };
    tokio::time::sleep_until(before.0 + spec.interval.std()).await;
    let (now, notes) = read().await?;
    for n in notes {
        tracing::warn!("{n}");
    }
    let window = builtin::window(&before.1, &now, vars.color, Traffic::of(key.1));
    let at = tokio::time::Instant::now();
    checks()
        .lock()
        .expect("checks")
        .baselines
        .insert(key.0.clone(), (key.clone(), Some((at, now))));
    Ok(window)
}

/// Forgets `bg`'s checks (it was deleted); one under way is not recorded.
pub fn forget(bg: &BlueGreen) {
    let mut g = checks().lock().expect("checks");
    g.by_bluegreen.remove(&id(bg));
    g.baselines.remove(&id(bg));
    g.started.remove(&id(bg));
}

/// BlueGreens with a check under way or not yet recorded.
pub fn tracked() -> usize {
    checks().lock().expect("checks").by_bluegreen.len()
}

/// Measures `m` through its provider; `window` is what the `teal` router
/// counted since the previous check (`None` when the BlueGreen's router is
/// another type); `jobs` runs `job` metrics, which need the cluster.
async fn measure(
    m: &MetricSpec,
    vars: &QueryVars,
    secrets: &dyn Secrets,
    window: Option<&Result<teal_core::ColorStats, String>>,
    jobs: &crate::jobs::JobProvider,
) -> Measurement {
    let window = match window {
        Some(Ok(w)) => Ok(w),
        // The router replicas' Leases could not be read: a provider error,
        // not a window without traffic.
        Some(Err(e)) if m.builtin.is_some() => {
            return teal_analysis::provider_error(m, e.clone());
        }
        Some(Err(e)) => Err(e.as_str()),
        None => Err(BUILTIN_NEEDS_TEAL),
    };
    let cx = CheckContext {
        vars,
        secrets,
        window,
    };
    match m.job {
        Some(_) => teal_analysis::MetricProvider::measure(jobs, m, &cx).await,
        None => teal_analysis::measure(m, &cx).await,
    }
}

/// The Secrets of one namespace, read when a metric needs them (a rotated
/// credential is used from the next check on).
struct NamespaceSecrets {
    client: kube::Client,
    namespace: String,
}

impl Secrets for NamespaceSecrets {
    fn get<'a>(&'a self, r: &'a SecretRef, field: &'a str) -> Reading<'a> {
        Box::pin(async move {
            let Some(name) = r.name.as_deref() else {
                return Err(format!("{field}: needs name and key of a Secret"));
            };
            let api: kube::Api<KubeSecret> =
                kube::Api::namespaced(self.client.clone(), &self.namespace);
            let found = api
                .get_opt(name)
                .await
                .map_err(|e| format!("{field}: reading Secret {name}: {e}"))?;
            let secrets: std::collections::BTreeMap<String, KubeSecret> =
                found.map(|s| (name.to_string(), s)).into_iter().collect();
            crate::hooks::secret_value(&secrets, r, field).map(|s| s.expose().to_string())
        })
    }
}

/// Why a built-in metric has no value with a router other than `teal`
/// (the apiserver refuses such a spec; one stored before that rule may
/// remain).
pub const BUILTIN_NEEDS_TEAL: &str = "built-in metrics need spec.router.type teal: with service, istio and gatewayAPI teal does not see the traffic (use a prometheus metric)";
