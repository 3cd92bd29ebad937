//! Watch-fed caches shared by every reconcile: the Pods, color Deployments,
//! their ReplicaSets and Services teal created (all carry the `teal.dev/bluegreen` label),
//! and the other Deployments (the workloads BlueGreens release).
//!
//! A reconcile then reads its workload, both colors' state and its
//! Services without a request to the apiserver: with thousands of
//! BlueGreens, reading them per reconcile would cost several requests each
//! time, most of them on reconciles that find nothing to do.
//!
//! The objects of router types `istio`, `gatewayAPI` and `teal` are cached
//! too, each kind once a router has written or read it (see
//! [`Cache::watch`]): only where that router type is in use, and only when
//! the cluster serves the kind (Istio's and Gateway API's CRDs are optional).

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};

use futures_util::stream::{BoxStream, SelectAll};
use futures_util::{FutureExt, Stream, StreamExt};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::core::{ApiResource, DynamicObject};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use teal_api::BlueGreen;
use teal_api::bluegreen::{RouterKind, labels};
use teal_core::Color;
use tokio::sync::mpsc;

use crate::routers::{self, Kind};

/// The caches; cheap to clone.
#[derive(Clone)]
pub struct Cache {
    pods: Store<Pod>,
    pods_by_bluegreen: Index,
    deployments: Store<Deployment>,
    /// ReplicaSets of the color Deployments (they carry the template's
    /// teal labels).
    replica_sets: Store<ReplicaSet>,
    replica_sets_by_bluegreen: Index,
    services: Store<Service>,
    workloads: Store<Deployment>,
    /// Router objects, once [`Cache::routers`] enabled them.
    extra: Option<Arc<Extras>>,
    /// Whether the five caches above hold their first listing.
    ready: Ready,
    /// Watches failing now.
    errors: WatchErrors,
}

/// The last error of every watch that has not delivered since, by
/// resource. A watch retries on its own with a backoff; until it works, the
/// caches it fills are not ready (a missing permission keeps them so), and
/// reconciles report these errors in their BlueGreen's status.
#[derive(Clone, Default)]
pub struct WatchErrors {
    any: Arc<std::sync::atomic::AtomicBool>,
    by_resource: Arc<Mutex<std::collections::BTreeMap<String, String>>>,
}

impl WatchErrors {
    /// The watch of `resource` failed with `e`: logged at warning when it
    /// is a new error for that watch (the same one again, at each retry,
    /// at debug).
    fn failed(&self, resource: &str, e: &watcher::Error) {
        use std::sync::atomic::Ordering;
        use watcher::Error as W;
        // The apiserver's own words where it answered.
        let msg = match e {
            W::InitialListFailed(kube::Error::Api(s))
            | W::WatchStartFailed(kube::Error::Api(s))
            | W::WatchFailed(kube::Error::Api(s))
            | W::WatchError(s) => format!("{} (HTTP {})", s.message, s.code),
            e => e.to_string(),
        };
        let mut g = self.by_resource.lock().expect("watch errors");
        if g.get(resource) == Some(&msg) {
            tracing::debug!("watching {resource}: {msg}");
        } else {
            tracing::warn!("watching {resource}: {msg}");
            g.insert(resource.to_string(), msg);
            self.any.store(true, Ordering::Release);
        }
    }

    /// The watch of `resource` delivered: its error, if any, is over.
    fn delivered(&self, resource: &str) {
        use std::sync::atomic::Ordering;
        if !self.any.load(Ordering::Acquire) {
            return;
        }
        let mut g = self.by_resource.lock().expect("watch errors");
        if g.remove(resource).is_some() {
            tracing::info!("watching {resource} works again");
        }
        self.any.store(!g.is_empty(), Ordering::Release);
    }

    /// "resource: error" for every watch failing now.
    pub fn current(&self) -> Vec<String> {
        self.by_resource
            .lock()
            .expect("watch errors")
            .iter()
            .map(|(r, e)| format!("{r}: {e}"))
            .collect()
    }
}

/// That the caches hold their first listing, awaited by any number of
/// reconciles at once.
///
/// kube-runtime's `Store::wait_until_ready` keeps one waker only, that of
/// the task that polled it last: of several tasks waiting on one store, the
/// others are never woken. A controller started next to twenty existing
/// BlueGreens has twenty reconciles waiting for its caches; all but one
/// waited forever, holding their BlueGreen's place in the queue, so no
/// change to them was ever released. Here one waiter at a time waits on the
/// stores, the others queue on a fair lock, and whoever finds the caches
/// ready passes at once.
#[derive(Clone, Default)]
struct Ready {
    done: Arc<std::sync::atomic::AtomicBool>,
    one_at_a_time: Arc<tokio::sync::Mutex<()>>,
}

impl Ready {
    /// Returns once `stores` (waiting on every store) has completed, in
    /// this call or an earlier one.
    async fn wait<F: std::future::Future<Output = ()>>(&self, stores: impl FnOnce() -> F) {
        use std::sync::atomic::Ordering;
        if self.done.load(Ordering::Acquire) {
            return;
        }
        let _one = self.one_at_a_time.lock().await;
        if self.done.load(Ordering::Acquire) {
            return;
        }
        stores().await;
        self.done.store(true, Ordering::Release);
    }
}

/// The router objects cached on demand, by kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Extra {
    DestinationRules,
    /// Every VirtualService: a BlueGreen may adopt one without teal's label.
    VirtualServices,
    /// Every HTTPRoute, as VirtualServices.
    HttpRoutes,
    ServiceAccounts,
    Roles,
    RoleBindings,
    /// Pods of teal's router (labelled [`routers::teal::ROUTER_LABEL`]).
    RouterPods,
    /// The Leases router replicas report in.
    RouterLeases,
    /// Every HorizontalPodAutoscaler: one may target a BlueGreen or its
    /// workload (see [`crate::autoscaling`]).
    Autoscalers,
}

impl Extra {
    /// The cached kind a router writes as `kind`, if it is cached here
    /// (Services and Deployments are always cached).
    pub fn of(kind: Kind) -> Option<Extra> {
        match kind {
            Kind::DestinationRule => Some(Extra::DestinationRules),
            Kind::VirtualService => Some(Extra::VirtualServices),
            Kind::HttpRoute => Some(Extra::HttpRoutes),
            Kind::ServiceAccount => Some(Extra::ServiceAccounts),
            Kind::Role => Some(Extra::Roles),
            Kind::RoleBinding => Some(Extra::RoleBindings),
            Kind::Service | Kind::Deployment => None,
        }
    }

    fn resource(self) -> ApiResource {
        match self {
            Extra::DestinationRules => Kind::DestinationRule.resource(),
            Extra::VirtualServices => Kind::VirtualService.resource(),
            Extra::HttpRoutes => Kind::HttpRoute.resource(),
            Extra::ServiceAccounts => Kind::ServiceAccount.resource(),
            Extra::Roles => Kind::Role.resource(),
            Extra::RoleBindings => Kind::RoleBinding.resource(),
            Extra::RouterPods => ApiResource::erase::<Pod>(&()),
            Extra::RouterLeases => {
                ApiResource::erase::<k8s_openapi::api::coordination::v1::Lease>(&())
            }
            Extra::Autoscalers => {
                ApiResource::erase::<k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler>(&())
            }
        }
    }

    /// The label selecting what is cached; `None`: every object of the kind.
    fn labels(self) -> Option<&'static str> {
        match self {
            Extra::VirtualServices | Extra::HttpRoutes | Extra::Autoscalers => None,
            Extra::RouterPods | Extra::RouterLeases => Some(routers::teal::ROUTER_LABEL),
            _ => Some(labels::BLUEGREEN),
        }
    }
}

/// A stream of BlueGreens to reconcile.
pub type Wakes = BoxStream<'static, ObjectRef<BlueGreen>>;

struct Extras {
    client: Client,
    namespace: Option<String>,
    bluegreens: Store<BlueGreen>,
    stores: Mutex<HashMap<Extra, Store<DynamicObject>>>,
    /// Hands each new watch to the stream [`Cache::routers`] returned.
    started: mpsc::UnboundedSender<Wakes>,
}

impl Extras {
    /// The BlueGreens a change of `obj` concerns.
    fn wakes(&self, e: Extra, obj: &DynamicObject) -> Vec<ObjectRef<BlueGreen>> {
        let Some(ns) = obj.metadata.namespace.as_deref() else {
            return Vec::new();
        };
        let label = |l: &str| obj.metadata.labels.as_ref().and_then(|m| m.get(l)).cloned();
        match e {
            Extra::RouterPods | Extra::RouterLeases => label(routers::teal::ROUTER_LABEL)
                .map(|bg| ObjectRef::new(&bg).within(ns))
                .into_iter()
                .collect(),
            Extra::VirtualServices | Extra::HttpRoutes => {
                let kind = if e == Extra::VirtualServices {
                    RouterKind::Istio
                } else {
                    RouterKind::GatewayApi
                };
                let name = obj.metadata.name.as_deref();
                let mut v: Vec<_> = self
                    .bluegreens
                    .state()
                    .into_iter()
                    .filter(|bg| {
                        bg.metadata.namespace.as_deref() == Some(ns)
                            && bg.spec.router.kind == kind
                            && routers::adopted(bg).as_deref() == name
                    })
                    .map(|bg| ObjectRef::from_obj(&*bg))
                    .collect();
                v.extend(Cache::owner_of(obj));
                v
            }
            Extra::Autoscalers => {
                let target = crate::autoscaling::target(obj);
                self.bluegreens
                    .state()
                    .into_iter()
                    .filter(|bg| {
                        bg.metadata.namespace.as_deref() == Some(ns)
                            && crate::autoscaling::concerns(bg, target.as_ref()).is_some()
                    })
                    .map(|bg| ObjectRef::from_obj(&*bg))
                    .collect()
            }
            _ => Cache::owner_of(obj).into_iter().collect(),
        }
    }
}

/// The BlueGreens the dashboard shows, kept by one watch that starts on
/// the first request; from then on a request reads them here and sends
/// nothing to the apiserver. Any replica can serve the dashboard (the
/// standby too), so this does not rely on the leader's controller.
#[derive(Clone)]
pub struct BlueGreens {
    api: Api<BlueGreen>,
    started: Arc<std::sync::OnceLock<(Store<BlueGreen>, tokio::sync::watch::Receiver<bool>)>>,
}

impl BlueGreens {
    pub fn new(api: Api<BlueGreen>) -> BlueGreens {
        BlueGreens {
            api,
            started: Arc::default(),
        }
    }

    /// The cached BlueGreens (without `status.engine`), once the first
    /// listing has arrived; `None` if it has not within `wait`.
    pub async fn state(&self, wait: std::time::Duration) -> Option<Vec<Arc<BlueGreen>>> {
        let (store, ready) = self.started.get_or_init(|| self.start());
        let mut ready = ready.clone();
        tokio::time::timeout(wait, ready.wait_for(|r| *r))
            .await
            .ok()?
            .ok()?;
        Some(store.state())
    }

    fn start(&self) -> (Store<BlueGreen>, tokio::sync::watch::Receiver<bool>) {
        let (reader, writer) = reflector::store();
        let (listed, ready) = tokio::sync::watch::channel(false);
        let config = watcher::Config::default().any_semantic();
        let events = watcher(self.api.clone(), config)
            .backoff(crate::retry::WatchBackoff::default())
            .modify(|bg: &mut BlueGreen| {
                keep::meta(bg);
                if let Some(s) = bg.status.as_mut() {
                    s.engine = None;
                }
            })
            .inspect(move |e| {
                if matches!(e, Ok(watcher::Event::InitDone)) {
                    listed.send_replace(true);
                }
            })
            .reflect(writer);
        tokio::spawn(events.for_each(|r| async move {
            if let Err(e) = r {
                tracing::warn!("watching BlueGreens for the dashboard: {e}");
            }
        }));
        (reader, ready)
    }
}

/// The BlueGreens' own watch: the store reconciles read them from, kept
/// without managed fields and kubectl's last applied copy (no reconcile
/// reads them, and a BlueGreen's managed fields can outweigh its spec),
/// and the stream of the BlueGreens it touched, the controller's first
/// trigger.
pub fn bluegreens(api: Api<BlueGreen>) -> (Store<BlueGreen>, Feed<BlueGreen>) {
    let (reader, writer) = reflector::store();
    let feed = watcher(api, watcher::Config::default())
        .modify(keep::bluegreen)
        .reflect(writer)
        .applied_objects()
        .boxed();
    (reader, feed)
}

/// Whether a watch failed because the cluster does not serve the kind
/// (its CRD was removed).
fn not_served(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => s.code == 404,
        watcher::Error::WatchError(s) => s.code == 404,
        _ => false,
    }
}

/// A watch stream of `K`, yielding each object after the cache holds it.
pub type Feed<K> = Pin<Box<dyn Stream<Item = Result<K, watcher::Error>> + Send>>;

/// What each cache keeps of an object it receives: what reconciles read,
/// and nothing else (`benches/cache_footprint.rs` measures it).
pub mod keep {
    use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
    use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, Service};
    use teal_api::BlueGreen;
    use teal_api::bluegreen::labels;

    const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

    /// Managed fields and kubectl's copy of the last applied object are
    /// large and never read: no cache keeps them.
    pub fn meta<K: kube::Resource>(o: &mut K) {
        let meta = o.meta_mut();
        meta.managed_fields = None;
        if let Some(a) = meta.annotations.as_mut() {
            a.remove(LAST_APPLIED);
        }
    }

    /// BlueGreens: whole but for [`meta`].
    pub fn bluegreen(bg: &mut BlueGreen) {
        meta(bg);
    }

    /// Workloads: whole but for [`meta`]; their pod template is what a
    /// release deploys, and its hash is the revision.
    pub fn workload(d: &mut Deployment) {
        meta(d);
    }

    /// Color Deployments keep of their pod template the labels and each
    /// container's name and ports (what their Services are built from); a
    /// reconcile that needs the whole template of a color (a rollback to
    /// what it runs) reads it from the apiserver. Other Deployments teal
    /// labels (the routers') are kept whole: they are compared with what
    /// teal would write.
    pub fn color_deployment(d: &mut Deployment) {
        meta(d);
        let is_color = d
            .metadata
            .labels
            .as_ref()
            .is_some_and(|l| l.contains_key(labels::COLOR));
        if !is_color {
            return;
        }
        if let Some(spec) = d.spec.template.spec.as_mut() {
            let containers = std::mem::take(&mut spec.containers)
                .into_iter()
                .map(|c| Container {
                    name: c.name,
                    ports: c.ports,
                    ..Default::default()
                })
                .collect();
            *spec = PodSpec {
                containers,
                ..Default::default()
            };
        }
    }

    /// ReplicaSets are kept without their pod spec: only their owner, size,
    /// template labels and status are read, and a color Deployment keeps
    /// several old ones.
    pub fn replica_set(rs: &mut ReplicaSet) {
        meta(rs);
        if let Some(t) = rs.spec.template.as_mut() {
            t.spec = None;
        }
    }

    /// Pods are kept without their spec: only their labels, deletion and
    /// status (conditions, container states) are read, and the spec is the
    /// larger part of a pod.
    pub fn pod(p: &mut Pod) {
        meta(p);
        p.spec = None;
    }

    /// Services: whole but for [`meta`].
    pub fn service(s: &mut Service) {
        meta(s);
    }
}

/// A watch of the `K` that `labels` selects feeding `writer`; the stream
/// yields each object after the cache holds it, so a reconcile it triggers
/// reads at least that state. It retries on its own (see `retry`) and yields
/// no errors: they would also hold up every other trigger of the controller
/// behind its shared backoff. `trim` drops what is never read before the
/// cache keeps an object; `index`, if given, follows the cache.
fn watched<K>(
    api: Api<K>,
    labels: &str,
    writer: reflector::store::Writer<K>,
    trim: fn(&mut K),
    index: Option<Index>,
    errors: WatchErrors,
) -> Feed<K>
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
    let events = watcher(api, config).backoff(crate::retry::WatchBackoff::default());
    let resource = K::plural(&()).to_string();
    cached(events, writer, trim, index)
        .filter_map(move |r| {
            std::future::ready(match r {
                Ok(obj) => {
                    errors.delivered(&resource);
                    Some(Ok(obj))
                }
                Err(e) => {
                    errors.failed(&resource, &e);
                    None
                }
            })
        })
        .boxed()
}

/// A watch's events into the cache: trimmed, taken in by `index` and then
/// by the store, so the index is complete when the store says it is ready
/// (a reconcile waiting for that must not find an empty index). Yields the
/// objects touched, once the store holds them.
fn cached<K, S>(
    events: S,
    writer: reflector::store::Writer<K>,
    trim: fn(&mut K),
    index: Option<Index>,
) -> impl Stream<Item = Result<K, watcher::Error>>
where
    K: kube::Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
{
    events
        .modify(trim)
        .inspect(move |r| {
            if let (Some(index), Ok(event)) = (&index, r) {
                index.follow(event);
            }
        })
        .reflect(writer)
        .touched_objects()
}

/// Watch streams feeding a [`Cache`]; the controller polls them (as the
/// triggers of its reconciles), which keeps the cache current.
pub struct Feeds {
    pub pods: Feed<Pod>,
    /// Color Deployments (teal-labelled).
    pub deployments: Feed<Deployment>,
    /// Their ReplicaSets (teal-labelled).
    pub replica_sets: Feed<ReplicaSet>,
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
        replica_sets: Api<ReplicaSet>,
        services: Api<Service>,
    ) -> (Cache, Feeds) {
        let (pod_reader, pod_writer) = reflector::store();
        let (dep_reader, dep_writer) = reflector::store();
        let (rs_reader, rs_writer) = reflector::store();
        let (svc_reader, svc_writer) = reflector::store();
        let (work_reader, work_writer) = reflector::store();
        let not_teal = format!("!{}", labels::BLUEGREEN);
        let (pod_index, rs_index) = (Index::default(), Index::default());
        let errors = WatchErrors::default();
        let feeds = Feeds {
            pods: watched(
                pods,
                labels::BLUEGREEN,
                pod_writer,
                keep::pod,
                Some(pod_index.clone()),
                errors.clone(),
            ),
            deployments: watched(
                deployments.clone(),
                labels::BLUEGREEN,
                dep_writer,
                keep::color_deployment,
                None,
                errors.clone(),
            ),
            replica_sets: watched(
                replica_sets,
                labels::BLUEGREEN,
                rs_writer,
                keep::replica_set,
                Some(rs_index.clone()),
                errors.clone(),
            ),
            services: watched(
                services,
                labels::BLUEGREEN,
                svc_writer,
                keep::service,
                None,
                errors.clone(),
            ),
            workloads: watched(
                deployments,
                &not_teal,
                work_writer,
                keep::workload,
                None,
                errors.clone(),
            ),
        };
        (
            Cache {
                pods: pod_reader,
                pods_by_bluegreen: pod_index,
                deployments: dep_reader,
                replica_sets: rs_reader,
                replica_sets_by_bluegreen: rs_index,
                services: svc_reader,
                workloads: work_reader,
                extra: None,
                ready: Ready::default(),
                errors,
            },
            feeds,
        )
    }

    /// Enables the caches of router objects (see [`Cache::watch`]) for
    /// the namespace `namespace` (all when `None`); `bluegreens` tells which
    /// BlueGreen adopts a VirtualService or HTTPRoute. The stream returned
    /// carries the watches started later: poll it (as a trigger of
    /// reconciles) for as long as the cache is used; it yields the
    /// BlueGreens whose router objects changed.
    pub fn routers(
        &mut self,
        client: Client,
        namespace: Option<String>,
        bluegreens: Store<BlueGreen>,
    ) -> Wakes {
        let (tx, rx) = mpsc::unbounded_channel::<Wakes>();
        self.extra = Some(Arc::new(Extras {
            client,
            namespace,
            bluegreens,
            stores: Mutex::new(HashMap::new()),
            started: tx,
        }));
        // The watches started so far, and the channel that brings new ones;
        // ends when both are done (the cache is gone).
        futures_util::stream::unfold(
            (Some(rx), SelectAll::<Wakes>::new()),
            |(mut rx, mut all)| async move {
                enum Next {
                    Started(Option<Wakes>),
                    Wake(ObjectRef<BlueGreen>),
                }
                async fn recv(rx: &mut Option<mpsc::UnboundedReceiver<Wakes>>) -> Option<Wakes> {
                    rx.as_mut()?.recv().await
                }
                loop {
                    let next = tokio::select! {
                        s = recv(&mut rx), if rx.is_some() => Next::Started(s),
                        Some(r) = all.next(), if !all.is_empty() => Next::Wake(r),
                        else => return None,
                    };
                    match next {
                        Next::Started(Some(s)) => all.push(s),
                        Next::Started(None) => rx = None,
                        Next::Wake(r) => return Some((r, (rx, all))),
                    }
                }
            },
        )
        .boxed()
    }

    /// Starts caching the router objects of kind `e`, unless they are
    /// already. Routers call it once they wrote or read such an object, so
    /// a watch runs only for a kind in use that the cluster serves; if the
    /// kind stops being served (its CRD deleted), the watch ends and the
    /// kind is read from the apiserver again until the next call.
    pub fn watch(&self, e: Extra) {
        let Some(x) = &self.extra else {
            return;
        };
        let mut stores = x.stores.lock().expect("router caches");
        if stores.contains_key(&e) {
            return;
        }
        let ar = e.resource();
        let api: Api<DynamicObject> = match &x.namespace {
            Some(ns) => Api::namespaced_with(x.client.clone(), ns, &ar),
            None => Api::all_with(x.client.clone(), &ar),
        };
        let writer = reflector::store::Writer::new(ar);
        stores.insert(e, writer.as_reader());
        let mut config = watcher::Config::default().any_semantic();
        if let Some(l) = e.labels() {
            config = config.labels(l);
        }
        let (gone, wake) = (x.clone(), x.clone());
        let (errors, plural) = (self.errors.clone(), e.resource().plural);
        // Leases change with every traffic report of a router replica:
        // only a new route generation wakes the BlueGreen.
        let mut generations: HashMap<(Option<String>, Option<String>), Option<String>> =
            HashMap::new();
        let s = watcher(api, config)
            .backoff(crate::retry::WatchBackoff::default())
            .modify(keep::meta::<DynamicObject>)
            .reflect(writer)
            .touched_objects()
            .take_while(move |r| {
                let served = !matches!(r, Err(err) if not_served(err));
                if !served {
                    tracing::info!(
                        "{} are not served any more: no longer cached",
                        e.resource().plural
                    );
                    gone.stores.lock().expect("router caches").remove(&e);
                }
                std::future::ready(served)
            })
            .filter_map(move |r| {
                let obj = match r {
                    Ok(obj) => {
                        errors.delivered(&plural);
                        Some(obj)
                    }
                    Err(err) => {
                        errors.failed(&plural, &err);
                        None
                    }
                };
                let obj = obj.filter(|o| {
                    e != Extra::RouterLeases || {
                        let g = o
                            .metadata
                            .annotations
                            .as_ref()
                            .and_then(|a| a.get(routers::teal::GENERATION_ANNOTATION))
                            .cloned();
                        let key = (o.metadata.namespace.clone(), o.metadata.name.clone());
                        generations.insert(key, g.clone()) != Some(g)
                    }
                });
                std::future::ready(obj)
            })
            .flat_map(move |o| futures_util::stream::iter(wake.wakes(e, &o)))
            .boxed();
        let _ = x.started.send(s);
    }

    fn extra_store(&self, e: Extra) -> Option<Store<DynamicObject>> {
        let x = self.extra.as_ref()?;
        let store = x.stores.lock().expect("router caches").get(&e).cloned()?;
        // Only once the first listing is complete.
        matches!(store.wait_until_ready().now_or_never(), Some(Ok(()))).then_some(store)
    }

    /// Whether the router objects of kind `e` are cached (their first
    /// listing complete).
    pub fn caches(&self, e: Extra) -> bool {
        self.extra_store(e).is_some()
    }

    /// A router object of kind `e` by namespace and name: `None` if that
    /// kind is not cached (yet), `Some(None)` if the cache holds no such
    /// object.
    pub fn extra(&self, e: Extra, ns: &str, name: &str) -> Option<Option<DynamicObject>> {
        let store = self.extra_store(e)?;
        Some(
            store
                .get(&ObjectRef::new_with(name, e.resource()).within(ns))
                .map(|o| (*o).clone()),
        )
    }

    /// The cached router objects of kind `e` in `ns` whose label `label`
    /// is `value`; `None` if that kind is not cached (yet).
    pub fn extra_labelled(
        &self,
        e: Extra,
        ns: &str,
        label: &str,
        value: &str,
    ) -> Option<Vec<DynamicObject>> {
        let store = self.extra_store(e)?;
        Some(
            store
                .state_filter(|o| {
                    o.metadata.namespace.as_deref() == Some(ns)
                        && o.metadata
                            .labels
                            .as_ref()
                            .and_then(|l| l.get(label))
                            .map(String::as_str)
                            == Some(value)
                })
                .into_iter()
                .map(|o| (*o).clone())
                .collect(),
        )
    }

    /// The cached objects of kind `e` in `ns`; `None` if that kind is not
    /// cached (yet).
    pub fn extra_in(&self, e: Extra, ns: &str) -> Option<Vec<DynamicObject>> {
        let store = self.extra_store(e)?;
        Some(
            store
                .state_filter(|o| o.metadata.namespace.as_deref() == Some(ns))
                .into_iter()
                .map(|o| (*o).clone())
                .collect(),
        )
    }

    /// The BlueGreen a teal-labelled object belongs to.
    pub fn owner_of<K: kube::Resource>(obj: &K) -> Option<ObjectRef<teal_api::BlueGreen>> {
        let name = obj.meta().labels.as_ref()?.get(labels::BLUEGREEN)?;
        let ns = obj.meta().namespace.as_deref()?;
        Some(ObjectRef::new(name).within(ns))
    }

    /// Whether every cache holds its first listing already.
    pub fn is_ready(&self) -> bool {
        self.ready.done.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The watches failing now ("resource: error"); see [`WatchErrors`].
    pub fn watch_errors(&self) -> Vec<String> {
        self.errors.current()
    }

    /// Waits until every cache holds a complete first listing. Any number
    /// of reconciles may wait at once (see [`Ready`]).
    pub async fn ready(&self) {
        self.ready
            .wait(|| async {
                let _ = self.pods.wait_until_ready().await;
                let _ = self.deployments.wait_until_ready().await;
                let _ = self.replica_sets.wait_until_ready().await;
                let _ = self.services.wait_until_ready().await;
                let _ = self.workloads.wait_until_ready().await;
            })
            .await
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

    /// The ReplicaSets of one color of a BlueGreen.
    pub fn replica_sets(&self, ns: &str, bluegreen: &str, color: Color) -> Vec<ReplicaSet> {
        of_color(
            &self.replica_sets,
            &self.replica_sets_by_bluegreen,
            ns,
            bluegreen,
            color,
        )
    }

    /// The Pods of one color of a BlueGreen.
    pub fn pods(&self, ns: &str, bluegreen: &str, color: Color) -> Vec<Pod> {
        of_color(&self.pods, &self.pods_by_bluegreen, ns, bluegreen, color)
    }
}

/// The objects in `store` labelled with a BlueGreen's name and one color,
/// found through `index` (the store itself has no index but by name).
fn of_color<K>(store: &Store<K>, index: &Index, ns: &str, bluegreen: &str, color: Color) -> Vec<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    let color = color.to_string();
    index
        .names(ns, bluegreen)
        .into_iter()
        .filter_map(|name| store.get(&ObjectRef::new(&name).within(ns)))
        // The store decides: the index may still name an object deleted
        // while the watch was relisting, or one since relabelled.
        .filter(|o| {
            o.labels().get(labels::BLUEGREEN).map(String::as_str) == Some(bluegreen)
                && o.labels().get(labels::COLOR) == Some(&color)
        })
        .map(|o| (*o).clone())
        .collect()
}

/// The names of the cached objects of each BlueGreen, by namespace and
/// BlueGreen label, following a store's watch: a reconcile finds its own
/// pods and ReplicaSets without going through every cached one (tens of
/// thousands with thousands of BlueGreens).
#[derive(Clone, Default)]
struct Index(Arc<RwLock<Names>>);

/// A namespace and a BlueGreen's name.
type Key = (String, String);

#[derive(Default)]
struct Names {
    live: HashMap<Key, HashSet<String>>,
    /// A (re)list in progress, replacing `live` at its end as the store's
    /// own buffer replaces the store.
    relisting: Option<HashMap<Key, HashSet<String>>>,
}

impl Index {
    fn key<K: kube::Resource>(o: &K) -> Option<(Key, String)> {
        let bg = o.meta().labels.as_ref()?.get(labels::BLUEGREEN)?;
        let ns = o.meta().namespace.as_ref()?;
        let name = o.meta().name.as_ref()?;
        Some(((ns.clone(), bg.clone()), name.clone()))
    }

    /// Takes in one watch event, before the store does.
    fn follow<K: kube::Resource>(&self, event: &watcher::Event<K>) {
        let mut names = self.0.write().expect("cache index");
        let add = |map: &mut HashMap<Key, HashSet<String>>, o: &K| {
            if let Some((key, name)) = Self::key(o) {
                map.entry(key).or_default().insert(name);
            }
        };
        match event {
            watcher::Event::Apply(o) => add(&mut names.live, o),
            watcher::Event::Delete(o) => {
                if let Some((key, name)) = Self::key(o)
                    && let Some(set) = names.live.get_mut(&key)
                {
                    set.remove(&name);
                    if set.is_empty() {
                        names.live.remove(&key);
                    }
                }
            }
            // Objects deleted while the watch was down are not relisted
            // and so leave the index at the relist's end, as the store.
            watcher::Event::Init => names.relisting = Some(HashMap::new()),
            watcher::Event::InitApply(o) => add(names.relisting.get_or_insert_default(), o),
            watcher::Event::InitDone => names.live = names.relisting.take().unwrap_or_default(),
        }
    }

    fn names(&self, ns: &str, bluegreen: &str) -> Vec<String> {
        let names = self.0.read().expect("cache index");
        names
            .live
            .get(&(ns.to_owned(), bluegreen.to_owned()))
            .map(|set| set.iter().cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Deployment as the apiserver serves it: labels `labels`, one
    /// container with a port, env and a probe, managed fields.
    fn served_deployment(labels: serde_json::Value) -> Deployment {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "shop-blue", "namespace": "prod", "labels": labels,
                         "annotations": {labels::REVISION: "r1"},
                         "managedFields": [{"manager": "teal-controller", "operation": "Apply"}]},
            "spec": {"replicas": 2, "selector": {}, "template": {
                "metadata": {"labels": {"app": "shop"}},
                "spec": {"serviceAccountName": "shop", "containers": [{
                    "name": "app", "image": "shop:1",
                    "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                    "env": [{"name": "A", "value": "1"}],
                    "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}}}]}}},
            "status": {"replicas": 2, "readyReplicas": 2},
        }))
        .unwrap()
    }

    #[test]
    fn a_color_deployment_keeps_its_ports_and_a_router_deployment_all_of_its_template() {
        let color = served_deployment(serde_json::json!({
            labels::BLUEGREEN: "shop", labels::COLOR: "blue"}));
        let mut kept = color.clone();
        keep::color_deployment(&mut kept);
        assert!(kept.metadata.managed_fields.is_none());
        assert_eq!(kept.metadata.annotations, color.metadata.annotations);
        assert_eq!(kept.spec.replicas, Some(2));
        assert_eq!(kept.status, color.status);
        assert_eq!(kept.spec.template.metadata, color.spec.template.metadata);
        let spec = kept.spec.template.spec.as_ref().unwrap();
        assert_eq!(spec.service_account_name, None);
        assert_eq!(spec.containers.len(), 1);
        let c = &spec.containers[0];
        assert_eq!(c.name, "app");
        assert_eq!(c.image, None);
        assert_eq!(c.env, None);
        assert_eq!(c.readiness_probe, None);
        let want = color.spec.template.spec.as_ref().unwrap().containers[0]
            .ports
            .clone();
        assert_eq!(c.ports, want);

        // The router's Deployment: compared whole with what teal writes.
        let router = served_deployment(serde_json::json!({labels::BLUEGREEN: "shop"}));
        let mut kept = router.clone();
        keep::color_deployment(&mut kept);
        assert!(kept.metadata.managed_fields.is_none());
        assert_eq!(kept.spec, router.spec);
    }

    #[test]
    fn a_trimmed_pod_keeps_what_readiness_and_crash_loops_are_read_from() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "shop-green-1",
                "labels": {"teal.dev/bluegreen": "shop", "teal.dev/revision": "v2"},
                "deletionTimestamp": "2026-01-01T00:00:00Z",
                "managedFields": [{"manager": "kubelet", "operation": "Update"}],
            },
            "spec": {"containers": [{"name": "app", "image": "shop:2"}], "nodeName": "n1"},
            "status": {
                "conditions": [{"type": "Ready", "status": "True"}],
                "containerStatuses": [{
                    "name": "app", "image": "shop:2", "imageID": "", "ready": false,
                    "restartCount": 7, "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                }],
            },
        }))
        .unwrap();
        let mut kept = pod.clone();
        keep::pod(&mut kept);
        assert!(kept.spec.is_none());
        assert!(kept.metadata.managed_fields.is_none());
        assert_eq!(kept.metadata.name, pod.metadata.name);
        assert_eq!(kept.metadata.labels, pod.metadata.labels);
        assert_eq!(
            kept.metadata.deletion_timestamp,
            pod.metadata.deletion_timestamp
        );
        assert_eq!(kept.status, pod.status);
    }

    fn pod(name: &str, bluegreen: &str, color: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": name,
                "namespace": "shop",
                "labels": {"teal.dev/bluegreen": bluegreen, "teal.dev/color": color},
            },
        }))
        .unwrap()
    }

    /// What `of_color` finds through the index, next to going through
    /// every cached pod.
    fn both(
        store: &Store<Pod>,
        index: &Index,
        bg: &str,
        color: Color,
    ) -> (Vec<String>, Vec<String>) {
        let mut indexed: Vec<_> = of_color(store, index, "shop", bg, color)
            .iter()
            .map(|p| p.name_any())
            .collect();
        let color = color.to_string();
        let mut scanned: Vec<_> = store
            .state()
            .iter()
            .filter(|p| {
                p.labels().get(labels::BLUEGREEN).map(String::as_str) == Some(bg)
                    && p.labels().get(labels::COLOR) == Some(&color)
            })
            .map(|p| p.name_any())
            .collect();
        indexed.sort();
        scanned.sort();
        (indexed, scanned)
    }

    /// Wakes a reconcile waiting for the store; records what the index
    /// names at that very instant (the store itself is still locked then).
    struct Woken {
        index: Index,
        seen: Mutex<Option<Vec<String>>>,
    }

    impl std::task::Wake for Woken {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref()
        }
        fn wake_by_ref(self: &Arc<Self>) {
            let mut names = self.index.names("shop", "a");
            names.sort();
            *self.seen.lock().unwrap() = Some(names);
        }
    }

    #[tokio::test]
    async fn the_index_is_complete_when_the_store_says_it_is_ready() {
        let writer = reflector::store::Writer::<Pod>::default();
        let store = writer.as_reader();
        let index = Index::default();
        let woken = Arc::new(Woken {
            index: index.clone(),
            seen: Mutex::new(None),
        });
        let waker = std::task::Waker::from(woken.clone());
        let mut ready = Box::pin(store.wait_until_ready());
        let mut cx = std::task::Context::from_waker(&waker);
        assert!(ready.as_mut().poll(&mut cx).is_pending());
        let events = [
            watcher::Event::Init,
            watcher::Event::InitApply(pod("a-1", "a", "blue")),
            watcher::Event::InitApply(pod("a-2", "a", "green")),
            watcher::Event::InitDone,
        ];
        let touched: Vec<_> = cached(
            futures_util::stream::iter(events.map(Ok)),
            writer,
            |_| {},
            Some(index),
        )
        .collect()
        .await;
        assert_eq!(touched.len(), 2);
        assert_eq!(
            woken.seen.lock().unwrap().as_deref(),
            Some(&["a-1".to_string(), "a-2".to_string()][..]),
            "woken before the index held the list"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_reconcile_waiting_for_the_caches_is_woken_when_they_are_ready() {
        let mut writer = reflector::store::Writer::<Pod>::default();
        let store = writer.as_reader();
        let ready = Ready::default();
        let waiting = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let (store, ready, waiting) = (store.clone(), ready.clone(), waiting.clone());
                tokio::spawn(async move {
                    waiting.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    ready
                        .wait(|| async {
                            let _ = store.wait_until_ready().await;
                        })
                        .await
                })
            })
            .collect();
        while waiting.load(std::sync::atomic::Ordering::SeqCst) < 20 {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        writer.apply_watcher_event(&watcher::Event::Init);
        writer.apply_watcher_event(&watcher::Event::InitDone);
        for (i, t) in tasks.into_iter().enumerate() {
            tokio::time::timeout(std::time::Duration::from_secs(5), t)
                .await
                .unwrap_or_else(|_| panic!("waiter {i} was never woken"))
                .unwrap();
        }
        // Later callers pass at once.
        tokio::time::timeout(
            std::time::Duration::from_millis(100),
            ready.wait(std::future::pending),
        )
        .await
        .expect("ready stays ready");
    }

    #[test]
    fn the_index_by_bluegreen_follows_the_store_through_changes_and_relists() {
        let mut writer = reflector::store::Writer::<Pod>::default();
        let store = writer.as_reader();
        let index = Index::default();
        let mut apply = |event: watcher::Event<Pod>| {
            index.follow(&event);
            writer.apply_watcher_event(&event);
        };
        apply(watcher::Event::Init);
        apply(watcher::Event::InitApply(pod("a-1", "a", "blue")));
        apply(watcher::Event::InitApply(pod("a-2", "a", "green")));
        apply(watcher::Event::InitApply(pod("b-1", "b", "blue")));
        apply(watcher::Event::InitDone);
        apply(watcher::Event::Apply(pod("a-3", "a", "blue")));
        // Relabelled to the other color, then one deleted.
        apply(watcher::Event::Apply(pod("a-2", "a", "blue")));
        apply(watcher::Event::Delete(pod("a-1", "a", "blue")));
        let (indexed, scanned) = both(&store, &index, "a", Color::Blue);
        assert_eq!(indexed, ["a-2", "a-3"]);
        assert_eq!(indexed, scanned);
        assert_eq!(
            both(&store, &index, "a", Color::Green).0,
            Vec::<String>::new()
        );
        let held = |index: &Index| {
            index
                .0
                .read()
                .unwrap()
                .live
                .values()
                .map(HashSet::len)
                .sum::<usize>()
        };
        assert_eq!(held(&index), 3, "a deleted pod leaves the index");
        // A relist that no longer has b-1 (deleted while the watch was
        // down) and moved a-3 to BlueGreen b.
        apply(watcher::Event::Init);
        apply(watcher::Event::InitApply(pod("a-2", "a", "blue")));
        apply(watcher::Event::InitApply(pod("a-3", "b", "blue")));
        // Until the relist is done the store still holds the old objects.
        assert_eq!(both(&store, &index, "b", Color::Blue).0, ["b-1"]);
        apply(watcher::Event::InitDone);
        for bg in ["a", "b"] {
            let (indexed, scanned) = both(&store, &index, bg, Color::Blue);
            assert_eq!(indexed, scanned, "BlueGreen {bg}");
        }
        assert_eq!(both(&store, &index, "b", Color::Blue).0, ["a-3"]);
        assert_eq!(held(&index), 2, "the relist rebuilt the index");
    }
}
