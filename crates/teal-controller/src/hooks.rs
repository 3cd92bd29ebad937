//! Webhooks and notifications for BlueGreens: hook rounds the release
//! engine asks for, rollout/rollback hooks with analysis checks, and
//! notifiers whose URLs (and HMAC keys) come from Secrets in the
//! BlueGreen's namespace. Secret values are never logged nor put in status.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Mutex, OnceLock};

use k8s_openapi::api::core::v1::Secret as KubeSecret;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client, ResourceExt};
use teal_api::BlueGreen;
use teal_api::hooks::{HookStatus, NotificationEvent, SecretRef, WebhookSpec, WebhookType};
use teal_core::Color;
use teal_core::hooks::{HookKind, HookResult};
use teal_core::release::{Event, Input, Machine, Millis};
use teal_notify::webhook::{self, HookColors, HookEvent, HookPayload};
use teal_notify::{Backoff, Notification, Notifier, Secret, Target};
use tokio::sync::broadcast;

fn payload(bg: &BlueGreen, m: &Machine, revision: &str, color: Color) -> HookPayload {
    HookPayload {
        name: bg.name_any(),
        namespace: bg.namespace().unwrap_or_default(),
        kind: String::new(),
        phase: m.phase_name(),
        revision: revision.to_string(),
        colors: HookColors {
            active: m.routing.map(|r| r.active),
            release: color,
        },
        event: None,
        metadata: Default::default(),
    }
}

fn webhook_type(kind: HookKind) -> WebhookType {
    match kind {
        HookKind::PreRollout => WebhookType::PreRollout,
        HookKind::Rollout => WebhookType::Rollout,
        HookKind::ConfirmPromotion => WebhookType::ConfirmPromotion,
        HookKind::PostRollout => WebhookType::PostRollout,
        HookKind::Rollback => WebhookType::Rollback,
        HookKind::Event => WebhookType::Event,
    }
}

fn id(bg: &BlueGreen) -> String {
    format!("{}/{}", bg.namespace().unwrap_or_default(), bg.name_any())
}

/// The last answer of every hook per BlueGreen, kept in memory too so a
/// reconcile that started from an older copy of the object still writes it.
fn answers() -> &'static Mutex<HashMap<String, BTreeMap<String, HookStatus>>> {
    static A: OnceLock<Mutex<HashMap<String, BTreeMap<String, HookStatus>>>> = OnceLock::new();
    A.get_or_init(Default::default)
}

/// The BlueGreens reconciled and not deleted since: an answer that comes in
/// for another (a hook still under way when its BlueGreen was deleted) is
/// not kept.
fn known() -> &'static Mutex<HashSet<String>> {
    static K: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    K.get_or_init(Default::default)
}

/// Notes that `bg` exists (every reconcile of it does, before any hook).
pub fn track(bg: &BlueGreen) {
    let id = id(bg);
    let mut g = known().lock().expect("known");
    if !g.contains(&id) {
        g.insert(id);
    }
}

/// Forgets everything kept for `bg` (it was deleted): its hook answers,
/// rounds and notifier (whose queue then ends).
pub fn forget(bg: &BlueGreen) {
    let id = id(bg);
    known().lock().expect("known").remove(&id);
    answers().lock().expect("answers").remove(&id);
    {
        let mut g = rounds().lock().expect("rounds");
        g.in_flight.retain(|k| k.0 != id);
        g.done.retain(|k, _| k.0 != id);
        g.heard.retain(|k, _| k.0 != id);
    }
    notifiers().lock().expect("notifiers").remove(&id);
}

/// `new` replaces `old` only when the answer changed (the time stays that
/// of the first such answer).
fn same_answer(old: &HookStatus, new: &HookStatus) -> bool {
    old.kind == new.kind
        && old.revision == new.revision
        && old.passed == new.passed
        && old.code == new.code
        && old.message == new.message
}

async fn call_one(id: &str, spec: &WebhookSpec, p: &HookPayload) -> HookResult {
    let (result, attempts) = webhook::call_counted(spec, p).await;
    let entry = HookStatus {
        name: result.name.clone(),
        kind: spec.kind,
        revision: p.revision.clone(),
        passed: result.passed(),
        code: result.status,
        message: result.describe(),
        time: k8s_openapi::jiff::Timestamp::now()
            .round(k8s_openapi::jiff::Unit::Second)
            .map(|t| t.to_string())
            .unwrap_or_default(),
        attempts,
    };
    if !known().lock().expect("known").contains(id) {
        return result;
    }
    let mut g = answers().lock().expect("answers");
    let hooks = g.entry(id.to_string()).or_default();
    if !hooks
        .get(&entry.name)
        .is_some_and(|o| same_answer(o, &entry))
    {
        hooks.insert(entry.name.clone(), entry);
    }
    result
}

/// Calls every webhook of `kind`, one after the other, keeping the answers
/// for status.
async fn call_all(bg: &BlueGreen, kind: WebhookType, p: &HookPayload) -> Vec<HookResult> {
    let id = id(bg);
    let mut out = Vec::new();
    for s in bg.spec.webhooks.iter().filter(|s| s.kind == kind) {
        out.push(call_one(&id, s, p).await);
    }
    out
}

/// Calls the webhooks of `kind` in the background (post-rollout, event):
/// answers only go to status and the log.
fn fire(bg: &BlueGreen, kind: WebhookType, p: HookPayload) {
    let specs: Vec<WebhookSpec> = bg
        .spec
        .webhooks
        .iter()
        .filter(|s| s.kind == kind)
        .cloned()
        .collect();
    if specs.is_empty() {
        return;
    }
    let id = id(bg);
    tokio::spawn(async move {
        for s in &specs {
            let r = call_one(&id, s, &p).await;
            if !r.passed() {
                tracing::warn!("{}", r.describe());
            }
        }
    });
}

/// Puts the last answers into `hooks` (one entry per webhook of the
/// spec). An entry is replaced only when the answer changed, so polling a
/// closed gate does not rewrite status.
pub fn record_status(bg: &BlueGreen, hooks: &mut Vec<HookStatus>) {
    let known = answers()
        .lock()
        .expect("answers")
        .get(&id(bg))
        .cloned()
        .unwrap_or_default();
    for entry in known.into_values() {
        match hooks.iter_mut().find(|h| h.name == entry.name) {
            Some(h) if same_answer(h, &entry) => {}
            Some(h) => *h = entry,
            None => hooks.push(entry),
        }
    }
    hooks.retain(|h| {
        bg.spec
            .webhooks
            .iter()
            .any(|w| w.name == h.name && w.kind == h.kind)
    });
}

/// A round of hooks: which BlueGreen, release (revision and start) and kind.
type RoundKey = (String, String, Millis, HookKind);

/// A confirm-promotion gate is asked again this long after its last answer.
const GATE_POLL_MS: Millis = 2_000;

#[derive(Default)]
struct Rounds {
    /// Rounds being called now; a key is never called twice at once.
    in_flight: HashSet<RoundKey>,
    /// Answered rounds the engine has not heard yet.
    done: HashMap<RoundKey, Vec<HookResult>>,
    /// When the engine heard a round. A reconcile may start from an older
    /// copy of the object that still waits: a heard pre-rollout round is
    /// not called again, a gate not before [`GATE_POLL_MS`].
    heard: HashMap<RoundKey, Millis>,
}

fn now_ms() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0)
}

fn rounds() -> &'static Mutex<Rounds> {
    static R: OnceLock<Mutex<Rounds>> = OnceLock::new();
    R.get_or_init(Default::default)
}

fn finished_tx() -> &'static broadcast::Sender<ObjectRef<BlueGreen>> {
    static T: OnceLock<broadcast::Sender<ObjectRef<BlueGreen>>> = OnceLock::new();
    T.get_or_init(|| broadcast::channel(1024).0)
}

/// Reconciles `bg` at once (its hook round or analysis check is done).
pub fn wake(bg: &BlueGreen) {
    let _ = finished_tx().send(ObjectRef::from_obj(bg));
}

/// BlueGreens whose hook round was answered: the controller reconciles
/// them at once to feed the answers to the engine.
pub fn finished() -> impl futures_util::Stream<Item = ObjectRef<BlueGreen>> + Send + 'static {
    futures_util::stream::unfold(finished_tx().subscribe(), |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(r) => return Some((r, rx)),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
}

/// Starts a round of `kind` hooks in the background (the answer to
/// `Action::RunHooks`, and the poll of a closed confirm-promotion gate),
/// unless the same round is being called or waits to be heard. A reconcile
/// never waits for webhooks: a slow one holds only its own round.
pub fn start_round(bg: &BlueGreen, m: &Machine, kind: HookKind) {
    let Some(r) = m.release.as_ref() else {
        return;
    };
    let key = (id(bg), r.revision.clone(), r.started_at, kind);
    {
        let mut g = rounds().lock().expect("rounds");
        let again = match g.heard.get(&key) {
            None => true,
            Some(_) if kind != HookKind::ConfirmPromotion => false,
            Some(at) => now_ms() >= at + GATE_POLL_MS,
        };
        if !again || g.in_flight.contains(&key) || g.done.contains_key(&key) {
            return;
        }
        g.in_flight.insert(key.clone());
    }
    let p = payload(bg, m, &r.revision, r.color);
    let bg = bg.clone();
    tokio::spawn(async move {
        let results = call_all(&bg, webhook_type(kind), &p).await;
        {
            let mut g = rounds().lock().expect("rounds");
            // Not when the BlueGreen was deleted meanwhile.
            if g.in_flight.remove(&key) {
                g.done.insert(key, results);
            }
        }
        wake(&bg);
    });
}

/// What a waiting release hears on this reconcile: the answers of its
/// round if they came in; else a new round is started (a closed gate is
/// asked again) and the engine hears nothing yet.
pub fn due(bg: &BlueGreen, m: &Machine) -> Option<Input> {
    let r = m.release.as_ref()?;
    let kind = r.waiting_on?;
    let key = (id(bg), r.revision.clone(), r.started_at, kind);
    let done = {
        let mut g = rounds().lock().expect("rounds");
        let done = g.done.remove(&key);
        if done.is_some() {
            let now = now_ms();
            // Forget what is long over, keep what may still be asked about.
            g.heard.retain(|_, at| now.saturating_sub(*at) < 3_600_000);
            g.heard.insert(key, now);
        }
        done
    };
    match done {
        Some(results) => Some(Input::Hooks {
            kind,
            revision: r.revision.clone(),
            results,
        }),
        None => {
            start_round(bg, m, kind);
            None
        }
    }
}

/// Rollout and rollback hooks called with one analysis check.
pub async fn with_check(
    bg: &BlueGreen,
    m: &Machine,
    revision: &str,
    color: Color,
) -> Vec<HookResult> {
    if bg.spec.webhooks.is_empty() {
        return Vec::new();
    }
    let p = payload(bg, m, revision, color);
    let mut out = call_all(bg, WebhookType::Rollout, &p).await;
    out.extend(call_all(bg, WebhookType::Rollback, &p).await);
    out
}

/// Notifiers per BlueGreen, kept while its notification spec is unchanged.
fn notifiers() -> &'static Mutex<HashMap<String, (String, Notifier)>> {
    static N: OnceLock<Mutex<HashMap<String, (String, Notifier)>>> = OnceLock::new();
    N.get_or_init(Default::default)
}

/// The Secrets `bg`'s notifiers refer to, read now (by name; missing ones
/// are absent).
async fn read_secrets(
    api: &Api<KubeSecret>,
    bg: &BlueGreen,
) -> Result<BTreeMap<String, KubeSecret>, String> {
    let mut out = BTreeMap::new();
    for (i, n) in bg.spec.notifications.iter().enumerate() {
        for (field, r) in [
            ("secretRef", &n.secret_ref),
            ("hmacSecretRef", &n.hmac_secret_ref),
        ] {
            let Some(name) = r.as_ref().and_then(|r| r.name.clone()) else {
                continue;
            };
            if out.contains_key(&name) {
                continue;
            }
            if let Some(s) = api.get_opt(&name).await.map_err(|e| {
                format!("spec.notifications[{i}].{field}: reading Secret {name}: {e}")
            })? {
                out.insert(name, s);
            }
        }
    }
    Ok(out)
}

pub(crate) fn secret_value(
    secrets: &BTreeMap<String, KubeSecret>,
    s: &SecretRef,
    field: &str,
) -> Result<Secret, String> {
    let (Some(name), Some(key)) = (&s.name, &s.key) else {
        return Err(format!("{field}: needs name and key of a Secret"));
    };
    let secret = secrets
        .get(name)
        .ok_or_else(|| format!("{field}: Secret {name} does not exist"))?;
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| b.0.clone())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(key))
                .map(|s| s.clone().into_bytes())
        })
        .ok_or_else(|| format!("{field}: Secret {name} has no key {key:?}"))?;
    let v = String::from_utf8(bytes)
        .map_err(|_| format!("{field}: Secret {name} key {key:?} is not UTF-8"))?;
    Ok(Secret::new(v.trim_end().to_string()))
}

/// The notifier of `bg`, rebuilt when its spec or the resourceVersion of
/// a Secret it reads changed (a rotated webhook URL is used from the next
/// notification on).
async fn notifier(client: &Client, bg: &BlueGreen) -> Result<Option<Notifier>, String> {
    if bg.spec.notifications.is_empty() {
        return Ok(None);
    }
    let id = id(bg);
    let api: Api<KubeSecret> = Api::namespaced(client.clone(), &bg.namespace().unwrap_or_default());
    let secrets = read_secrets(&api, bg).await?;
    let versions: Vec<String> = secrets
        .iter()
        .map(|(n, s)| {
            format!(
                "{n}@{}",
                s.metadata.resource_version.clone().unwrap_or_default()
            )
        })
        .collect();
    let spec = format!(
        "{}|{}",
        serde_json::to_string(&bg.spec.notifications).unwrap_or_default(),
        versions.join(",")
    );
    if let Some((s, n)) = notifiers().lock().expect("notifiers").get(&id)
        && *s == spec
    {
        return Ok(Some(n.clone()));
    }
    let mut targets = Vec::new();
    for (i, n) in bg.spec.notifications.iter().enumerate() {
        let field = format!("spec.notifications[{i}]");
        let url = match (&n.url, &n.secret_ref) {
            (Some(u), _) => Secret::new(u.clone()),
            (None, Some(s)) => secret_value(&secrets, s, &format!("{field}.secretRef"))?,
            (None, None) => return Err(format!("{field}: set url or secretRef")),
        };
        let hmac = match &n.hmac_secret_ref {
            Some(s) => Some(secret_value(
                &secrets,
                s,
                &format!("{field}.hmacSecretRef"),
            )?),
            None => None,
        };
        targets.push(Target {
            name: n.name.clone(),
            kind: n.kind,
            url,
            hmac,
            events: n.events.clone(),
        });
    }
    let n = Notifier::start(targets, Backoff::default());
    notifiers()
        .lock()
        .expect("notifiers")
        .insert(id, (spec, n.clone()));
    Ok(Some(n))
}

/// Tells notifiers and fire-and-forget hooks about an event. Returns a
/// problem to report (a missing Secret…); the release goes on regardless.
pub async fn on_event(client: &Client, bg: &BlueGreen, m: &Machine, e: &Event) -> Option<String> {
    let color = m
        .release
        .as_ref()
        .filter(|r| r.revision == e.revision)
        .map(|r| r.color)
        .unwrap_or(m.active.color);
    let mut p = payload(bg, m, &e.revision, color);
    p.event = Some(HookEvent {
        kind: format!("{:?}", e.kind),
        message: e.message.clone(),
    });
    for kind in teal_core::hooks::fired_by(e.kind) {
        fire(bg, webhook_type(*kind), p.clone());
    }
    let event = NotificationEvent::of(e.kind)?;
    match notifier(client, bg).await {
        Ok(Some(n)) => {
            n.notify(&Notification {
                event,
                name: bg.name_any(),
                namespace: bg.namespace().unwrap_or_default(),
                revision: e.revision.clone(),
                phase: m.phase_name(),
                message: e.message.clone(),
                at: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(0),
            });
            None
        }
        Ok(None) => None,
        Err(e) => Some(e),
    }
}

/// Entries per map kept for BlueGreens: hook answers, hook rounds (under
/// way, answered, heard) and notifiers.
pub fn sizes() -> [(&'static str, usize); 4] {
    let answers = answers().lock().expect("answers").len();
    let rounds = {
        let g = rounds().lock().expect("rounds");
        g.in_flight.len() + g.done.len() + g.heard.len()
    };
    let notifiers = notifiers().lock().expect("notifiers").len();
    let known = known().lock().expect("known").len();
    [
        ("bluegreens_known", known),
        ("hook_answers", answers),
        ("hook_rounds", rounds),
        ("notifiers", notifiers),
    ]
}

/// Delivery figures of a BlueGreen's notifiers.
pub fn delivery_stats(
    bg: &BlueGreen,
) -> std::collections::BTreeMap<String, teal_notify::DeliveryStats> {
    let id = id(bg);
    notifiers()
        .lock()
        .expect("notifiers")
        .get(&id)
        .map(|(_, n)| n.stats())
        .unwrap_or_default()
}
