//! Watch-fed caches shared by every reconcile: the Pods, color Deployments
//! and Services teal created (all carry the `teal.dev/bluegreen` label),
//! and the other Deployments (the workloads BlueGreens release).
//!
//! A reconcile then reads its workload, both colors' state and its
//! Services without a request to the apiserver: with thousands of
//! BlueGreens, reading them per reconcile would cost several requests each
//! time, most of them on reconciles that find nothing to do.

use std::pin::Pin;

use futures_util::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
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
    services: Store<Service>,
    workloads: Store<Deployment>,
}

/// A watch stream of `K`, yielding each object after the cache holds it.
pub type Feed<K> = Pin<Box<dyn Stream<Item = Result<K, watcher::Error>> + Send>>;

/// A watch of the `K` that `labels` selects feeding `writer`; the stream
/// yields each object after the cache holds it, so a reconcile it triggers
/// reads at least that state. It retries on its own (see `retry`) and yields
/// no errors: they would also hold up every other trigger of the controller
/// behind its shared backoff.
fn watched<K>(api: Api<K>, labels: &str, writer: reflector::store::Writer<K>) -> Feed<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let config = watcher::Config::default().labels(labels).any_semantic();
    watcher(api, config)
        .backoff(crate::retry::WatchBackoff::default())
        .modify(|o: &mut K| {
            // Managed fields and kubectl's copy of the last applied object
            // are large and never read: do not keep them.
            let meta = o.meta_mut();
            meta.managed_fields = None;
            if let Some(a) = meta.annotations.as_mut() {
                a.remove(LAST_APPLIED);
            }
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

const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Watch streams feeding a [`Cache`]; the controller polls them (as the
/// triggers of its reconciles), which keeps the cache current.
pub struct Feeds {
    pub pods: Feed<Pod>,
    /// Color Deployments (teal-labelled).
    pub deployments: Feed<Deployment>,
    /// Services teal wrote (teal-labelled).
    pub services: Feed<Service>,
    /// Every Deployment teal did not create: the workloads.
    pub workloads: Feed<Deployment>,
}

impl Cache {
    /// The caches and the streams that fill them.
    pub fn new(
        pods: Api<Pod>,
        deployments: Api<Deployment>,
        services: Api<Service>,
    ) -> (Cache, Feeds) {
        let (pod_reader, pod_writer) = reflector::store();
        let (dep_reader, dep_writer) = reflector::store();
        let (svc_reader, svc_writer) = reflector::store();
        let (work_reader, work_writer) = reflector::store();
        let not_teal = format!("!{}", labels::BLUEGREEN);
        let feeds = Feeds {
            pods: watched(pods, labels::BLUEGREEN, pod_writer),
            deployments: watched(deployments.clone(), labels::BLUEGREEN, dep_writer),
            services: watched(services, labels::BLUEGREEN, svc_writer),
            workloads: watched(deployments, &not_teal, work_writer),
        };
        (
            Cache {
                pods: pod_reader,
                deployments: dep_reader,
                services: svc_reader,
                workloads: work_reader,
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

    /// Waits until every cache holds a complete first listing.
    pub async fn ready(&self) {
        let _ = self.pods.wait_until_ready().await;
        let _ = self.deployments.wait_until_ready().await;
        let _ = self.services.wait_until_ready().await;
        let _ = self.workloads.wait_until_ready().await;
    }

    /// A Service teal wrote, by namespace and name.
    pub fn service(&self, ns: &str, name: &str) -> Option<Service> {
        self.services
            .get(&ObjectRef::new(name).within(ns))
            .map(|s| (*s).clone())
    }

    /// A Deployment teal did not create (a workload), by namespace and name.
    pub fn workload(&self, ns: &str, name: &str) -> Option<Deployment> {
        self.workloads
            .get(&ObjectRef::new(name).within(ns))
            .map(|d| (*d).clone())
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
