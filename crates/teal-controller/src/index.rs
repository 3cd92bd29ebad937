//! Which BlueGreens release each workload: a change of a Deployment wakes
//! the BlueGreens that name it, found in one lookup rather than by reading
//! every BlueGreen (at 10,000 BlueGreens, every workload event would
//! otherwise compare 10,000 specs).
//!
//! Kept by the reconciles: each notes its BlueGreen's `spec.workloadRef`
//! first thing (so a BlueGreen waiting for its workload to exist is found
//! when it is created), and a deleted BlueGreen is forgotten. A BlueGreen not
//! reconciled yet is not found, which costs nothing: its first reconcile,
//! due anyway, reads the workload as it is then.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use teal_api::BlueGreen;

/// A workload: namespace and name.
type Workload = (String, String);

#[derive(Default)]
struct Inner {
    by_workload: HashMap<Workload, HashSet<ObjectRef<BlueGreen>>>,
    of: HashMap<ObjectRef<BlueGreen>, Workload>,
}

/// Cheap to clone: every clone is the same index.
#[derive(Clone, Default)]
pub struct Workloads(Arc<Mutex<Inner>>);

impl Workloads {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records (or moves) the workload `bg` releases.
    pub fn note(&self, bg: &BlueGreen) {
        let key = ObjectRef::from_obj(bg);
        let workload = (
            bg.namespace().unwrap_or_default(),
            bg.spec.workload_ref.name.clone(),
        );
        let mut g = self.inner();
        if g.of.get(&key) == Some(&workload) {
            return;
        }
        remove(&mut g, &key);
        g.by_workload
            .entry(workload.clone())
            .or_default()
            .insert(key.clone());
        g.of.insert(key, workload);
    }

    /// Drops `bg` (deleted).
    pub fn forget(&self, bg: &BlueGreen) {
        remove(&mut self.inner(), &ObjectRef::from_obj(bg));
    }

    /// The BlueGreens that release Deployment `namespace`/`name`.
    pub fn releasing(&self, namespace: &str, name: &str) -> Vec<ObjectRef<BlueGreen>> {
        let key = (namespace.to_string(), name.to_string());
        self.inner()
            .by_workload
            .get(&key)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// How many BlueGreens are indexed.
    pub fn len(&self) -> usize {
        self.inner().of.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn remove(g: &mut Inner, key: &ObjectRef<BlueGreen>) {
    let Some(old) = g.of.remove(key) else {
        return;
    };
    if let Some(set) = g.by_workload.get_mut(&old) {
        set.remove(key);
        if set.is_empty() {
            g.by_workload.remove(&old);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bg(ns: &str, name: &str, workload: &str) -> BlueGreen {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "teal.dev/v1alpha1", "kind": "BlueGreen",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"workloadRef": {"kind": "Deployment", "name": workload}},
        }))
        .unwrap()
    }

    fn names(v: Vec<ObjectRef<BlueGreen>>) -> Vec<String> {
        let mut n: Vec<_> = v.into_iter().map(|r| r.name).collect();
        n.sort();
        n
    }

    #[test]
    fn a_workload_finds_the_bluegreens_that_name_it_in_its_namespace_only() {
        let w = Workloads::default();
        w.note(&bg("a", "shop", "web"));
        w.note(&bg("a", "shop-canary", "web"));
        w.note(&bg("b", "shop", "web"));
        w.note(&bg("a", "cart", "cart"));
        assert_eq!(names(w.releasing("a", "web")), ["shop", "shop-canary"]);
        assert_eq!(names(w.releasing("b", "web")), ["shop"]);
        assert!(w.releasing("a", "other").is_empty());
        assert_eq!(w.len(), 4);
    }

    #[test]
    fn a_changed_workload_ref_moves_and_a_deleted_bluegreen_goes() {
        let w = Workloads::default();
        w.note(&bg("a", "shop", "web"));
        w.note(&bg("a", "shop", "web-v2"));
        assert!(w.releasing("a", "web").is_empty());
        assert_eq!(names(w.releasing("a", "web-v2")), ["shop"]);
        w.forget(&bg("a", "shop", "web-v2"));
        assert!(w.releasing("a", "web-v2").is_empty());
        assert!(w.is_empty());
        assert!(w.0.lock().unwrap().by_workload.is_empty());
    }
}
