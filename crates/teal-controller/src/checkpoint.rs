//! Crash safety of traffic switches.
//!
//! A reconcile carries out the engine's actions and then writes status. If
//! the process dies in between, the next reconcile starts from the state
//! before those actions and decides again. For Deployments that is
//! harmless (the same apply again), but not for the live Service: the
//! replayed decisions can first route to the old color (entering preview)
//! and then to the new one (cutover), a switch back and forth that people
//! see. So the engine state is written *before* any routing change, and a
//! restored engine whose switch was decided but not confirmed routes to the
//! color it chose (the same Service write again) instead of deciding anew.

use kube::Api;
use kube::api::Patch;
use teal_api::BlueGreen;
use teal_core::release::{Action, Phase};

use crate::reconcile::{EngineState, Error};

/// Writes the engine state to status when `queue` changes routing.
pub async fn before_routing(
    api: &Api<BlueGreen>,
    bg: &BlueGreen,
    state: &EngineState,
    queue: &[Action],
) -> Result<(), Error> {
    if !queue.iter().any(|a| matches!(a, Action::Route(_))) {
        return Ok(());
    }
    let engine = engine_value(bg.status.as_ref().and_then(|s| s.engine.as_ref()), state)?;
    let name = bg.metadata.name.clone().unwrap_or_default();
    // Conditional on the version this reconcile read: a reconcile that
    // started from a stale copy (the cache may lag behind our own last
    // write) fails here with a conflict and is retried, instead of writing
    // an older state over a newer one and routing from it.
    let patch = Patch::Merge(serde_json::json!({
        "metadata": {"resourceVersion": bg.metadata.resource_version},
        "status": {"engine": engine},
    }));
    api.patch_status(&name, &crate::reconcile::patch_params(), &patch)
        .await?;
    Ok(())
}

/// The engine state as written to status with a merge patch. A merge patch
/// keeps fields it does not mention, so every field the stored state has and
/// `state` lacks is set to null (removed): otherwise a field of an earlier
/// release (say, when its switch was confirmed) would come back on restore.
/// Nothing is added when nothing was removed, so an unchanged state still
/// compares equal to the stored one.
pub fn engine_value(
    old: Option<&serde_json::Value>,
    state: &EngineState,
) -> Result<serde_json::Value, Error> {
    let mut engine = stored_form(state)?;
    if let Some(old) = old {
        null_removed(old, &mut engine);
    }
    Ok(engine)
}

/// The engine state as status holds it once written: a merge patch removes
/// the fields it sets to null (an unset `Option` serializes as null), so
/// they are left out here too. Compared with the stored state, this tells
/// whether writing `state` would change anything.
pub fn stored_form(state: &EngineState) -> Result<serde_json::Value, Error> {
    let mut value = serde_json::to_value(state).map_err(Error::serialize("the engine state"))?;
    drop_null_fields(&mut value);
    Ok(value)
}

/// Removes null object fields, recursively through objects (a merge patch
/// takes arrays as they are).
fn drop_null_fields(value: &mut serde_json::Value) {
    if let Some(object) = value.as_object_mut() {
        object.retain(|_, v| !v.is_null());
        object.values_mut().for_each(drop_null_fields);
    }
}

/// Sets to null, in `new`, every object field that `old` has and `new` lacks.
fn null_removed(old: &serde_json::Value, new: &mut serde_json::Value) {
    if let (Some(old), Some(new)) = (old.as_object(), new.as_object_mut()) {
        for (k, v) in old {
            match new.get_mut(k) {
                Some(n) => null_removed(v, n),
                None => {
                    new.insert(k.clone(), serde_json::Value::Null);
                }
            }
        }
    }
}

/// The routing to apply again after a restart, when a switch was decided
/// and written down but not confirmed.
pub fn unconfirmed_switch(state: &EngineState) -> Option<Action> {
    let m = &state.machine;
    let r = m.release.as_ref()?;
    (r.phase == Phase::CuttingOver && r.switch_confirmed_at.is_none())
        .then_some(())
        .and(m.routing)
        .filter(|routing| routing.active == r.color)
        .map(Action::Route)
}

#[cfg(test)]
mod tests {
    use super::null_removed;
    use serde_json::json;

    #[test]
    fn null_fields_are_left_out_as_a_merge_patch_stores_them() {
        let mut v = json!({"routing": {"active": "blue", "preview": null}, "list": [null, {"a": null}], "n": null});
        super::drop_null_fields(&mut v);
        assert_eq!(
            v,
            json!({"routing": {"active": "blue"}, "list": [null, {"a": null}]})
        );
    }

    #[test]
    fn removed_fields_become_null_and_unchanged_ones_stay() {
        let old = json!({"release": {"phase": "ScaleDownDelay", "switchConfirmedAt": 5}, "analysis": {"x": 1}, "same": 1});
        let mut new = json!({"release": {"phase": "CuttingOver"}, "same": 1});
        null_removed(&old, &mut new);
        assert_eq!(
            new,
            json!({"release": {"phase": "CuttingOver", "switchConfirmedAt": null}, "analysis": null, "same": 1})
        );
        let mut unchanged = old.clone();
        null_removed(&old, &mut unchanged);
        assert_eq!(unchanged, old);
    }
}

/// The engine sequence number this process last wrote for each BlueGreen
/// (by uid). A reconcile reads its BlueGreen from the watch cache, which
/// can lag behind the controller's own last status write; a copy older
/// than that write would replay inputs already consumed (commands, events,
/// notifications) and write an older state over a newer one. Such a
/// reconcile does nothing and runs again shortly, when the cache caught up.
#[derive(Default)]
pub struct Written(std::sync::Mutex<std::collections::HashMap<String, u64>>);

impl Written {
    /// Whether a BlueGreen whose stored engine has `seq` is older than what
    /// this process wrote for it.
    pub fn is_stale(&self, uid: &str, seq: u64) -> bool {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.get(uid).is_some_and(|&w| seq < w)
    }

    pub fn record(&self, uid: &str, seq: u64) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let w = map.entry(uid.to_string()).or_default();
        *w = (*w).max(seq);
    }

    pub fn forget(&self, uid: &str) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(uid);
    }

    /// BlueGreens with a recorded write.
    pub fn entries(&self) -> usize {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod written_tests {
    use super::Written;

    #[test]
    fn an_older_copy_than_the_last_write_is_stale() {
        let w = Written::default();
        assert!(!w.is_stale("a", 0), "nothing written yet");
        w.record("a", 3);
        assert!(w.is_stale("a", 2));
        assert!(!w.is_stale("a", 3));
        assert!(!w.is_stale("b", 0), "per BlueGreen");
        w.record("a", 1);
        assert!(w.is_stale("a", 2), "never goes back");
        w.forget("a");
        assert!(!w.is_stale("a", 0));
    }
}
