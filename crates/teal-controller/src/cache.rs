//! Watch-fed caches shared by every reconcile: the Pods and the color
//! Deployments teal created (both carry the `teal.dev/bluegreen` label).
//!
//! A reconcile then reads both colors' state without a request to the
//! apiserver: with thousands of BlueGreens, listing Pods per reconcile
//! would cost two LIST calls each time (and their memory on the apiserver).

use std::pin::Pin;

use futures_util::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use teal_api::bluegreen::labels;
use teal_core::Color;

/// The caches; cheap to clone.
#[derive(Clone)]
pub struct Cache {
    pods: Store<Pod>,
    deployments: Store<Deployment>,
}

/// A watch stream of `K`, yielding each object after the cache holds it.
pub type Feed<K> = Pin<Box<dyn Stream<Item = Result<K, watcher::Error>> + Send>>;

/// A watch of teal-labelled `K` feeding `writer`; the stream yields each
/// object after the cache holds it, so a reconcile it triggers reads at
/// least that state. It retries on its own (see `retry`) and yields no
/// errors: they would also hold up every other trigger of the controller
/// behind its shared backoff.
fn watched<K>(api: Api<K>, writer: reflector::store::Writer<K>) -> Feed<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let config = watcher::Config::default()
        .labels(labels::BLUEGREEN)
        .any_semantic();
    watcher(api, config)
        .backoff(crate::retry::WatchBackoff::default())
        .modify(|o: &mut K| {
            // Managed fields are large and never read: do not keep them.
            o.meta_mut().managed_fields = None;
        })
        .reflect(writer)
        .touched_objects()
        .filter_map(|r| async move {
            match r {
                Ok(obj) => Some(Ok(obj)),
                Err(e) => {
                    tracing::debug!("watching {}: {e}", K::plural(&()));
                    None
                }
            }
        })
        .boxed()
}

/// Watch streams feeding a [`Cache`]; the controller polls them (as the
/// triggers of its reconciles), which keeps the cache current.
pub struct Feeds {
    pub pods: Feed<Pod>,
    pub deployments: Feed<Deployment>,
}

impl Cache {
    /// The caches and the streams that fill them.
    pub fn new(pods: Api<Pod>, deployments: Api<Deployment>) -> (Cache, Feeds) {
        let (pod_reader, pod_writer) = reflector::store();
        let (dep_reader, dep_writer) = reflector::store();
        let feeds = Feeds {
            pods: watched(pods, pod_writer),
            deployments: watched(deployments, dep_writer),
        };
        (
            Cache {
                pods: pod_reader,
                deployments: dep_reader,
            },
            feeds,
        )
    }

    /// The BlueGreen a teal-labelled object belongs to.
    pub fn owner_of<K: kube::Resource>(obj: &K) -> Option<ObjectRef<teal_api::BlueGreen>> {
        let name = obj.meta().labels.as_ref()?.get(labels::BLUEGREEN)?;
        let ns = obj.meta().namespace.as_deref()?;
        Some(ObjectRef::new(name).within(ns))
    }

    /// Waits until both caches hold a complete first listing.
    pub async fn ready(&self) {
        let _ = self.pods.wait_until_ready().await;
        let _ = self.deployments.wait_until_ready().await;
    }

    /// A Deployment teal created, by namespace and name.
    pub fn deployment(&self, ns: &str, name: &str) -> Option<Deployment> {
        self.deployments
            .get(&ObjectRef::new(name).within(ns))
            .map(|d| (*d).clone())
    }

    /// The Pods of one color of a BlueGreen.
    pub fn pods(&self, ns: &str, bluegreen: &str, color: Color) -> Vec<Pod> {
        let color = color.to_string();
        self.pods
            .state_filter(|p| {
                p.namespace().as_deref() == Some(ns)
                    && p.labels().get(labels::BLUEGREEN).map(String::as_str) == Some(bluegreen)
                    && p.labels().get(labels::COLOR) == Some(&color)
            })
            .into_iter()
            .map(|p| (*p).clone())
            .collect()
    }
}
