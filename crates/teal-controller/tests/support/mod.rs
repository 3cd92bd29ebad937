//! Test support: the BlueGreen CRD on the real control plane, a controller
//! per test (watching only the test's namespace), and object helpers.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams, PostParams};
use kube::core::{ApiResource, DynamicObject};
use kube::{Api, Client};
use serde_json::json;
use teal_api::BlueGreen;
use teal_testenv::{TestEnv, wait_for};
use tokio::task::JoinHandle;

pub struct Case {
    pub client: Client,
    pub ns: String,
    pub controller: Option<JoinHandle<()>>,
}

impl Drop for Case {
    fn drop(&mut self) {
        if let Some(c) = self.controller.take() {
            c.abort();
        }
    }
}

/// Installs teal's CRDs (BlueGreen and the metric templates) and waits
/// until the apiserver serves them.
pub async fn install_crd(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in teal_api::crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        crds.patch(
            &name,
            &PatchParams::apply("teal-tests").force(),
            &Patch::Apply(&crd),
        )
        .await
        .expect("install the CRD");
        wait_for(
            &format!("the CRD {name} to be established"),
            Duration::from_secs(30),
            || {
                let (crds, name) = (crds.clone(), name.clone());
                async move {
                    let c = crds.get(&name).await.map_err(|e| e.to_string())?;
                    let ok = c
                        .status
                        .and_then(|s| s.conditions)
                        .unwrap_or_default()
                        .iter()
                        .any(|c| c.type_ == "Established" && c.status == "True");
                    if ok {
                        Ok(())
                    } else {
                        Err("not established yet".to_string())
                    }
                }
            },
        )
        .await;
    }
}

pub async fn case(prefix: &str) -> Case {
    let env = TestEnv::shared();
    let client = env.client();
    install_crd(&client).await;
    let ns = env.namespace(prefix).await;
    Case {
        client,
        ns,
        controller: None,
    }
}

impl Case {
    pub fn start_controller(&mut self) {
        self.start_controller_with(teal_controller::DEFAULT_CONCURRENCY);
    }

    /// [`Case::start_controller`] with `concurrency` reconciles at once.
    pub fn start_controller_with(&mut self, concurrency: u16) {
        self.start_controller_opts(|o| o.concurrency = concurrency);
    }

    /// [`Case::start_controller`] with the options `set` changes.
    pub fn start_controller_opts(&mut self, set: impl FnOnce(&mut teal_controller::Options)) {
        let mut opts = self.options(SocketAddr::from(([127, 0, 0, 1], 0)));
        set(&mut opts);
        self.spawn(self.client.clone(), opts);
    }

    /// The API server's URL, as the tests' kubeconfig names it.
    pub async fn api_server_url() -> http::Uri {
        Self::admin_config().await.cluster_url
    }

    fn options(&self, metrics_addr: SocketAddr) -> teal_controller::Options {
        teal_controller::Options {
            metrics_addr,
            namespace: Some(self.ns.clone()),
            lease: None,
            router_image: None,
            concurrency: teal_controller::DEFAULT_CONCURRENCY,
            stall_after: teal_controller::liveness::DEFAULT_STALL_AFTER,
            egress: Default::default(),
        }
    }

    fn spawn(&mut self, client: Client, opts: teal_controller::Options) {
        self.controller = Some(tokio::spawn(async move {
            if let Err(e) = teal_controller::run(client, opts).await {
                panic!("controller stopped: {e}");
            }
        }));
    }

    async fn admin_config() -> kube::Config {
        let env = TestEnv::shared();
        let kubeconfig = kube::config::Kubeconfig::read_from(env.kubeconfig_path()).unwrap();
        kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .unwrap()
    }

    /// Starts the controller with a client whose requests are counted in
    /// `teal_controller_api_requests_total` (as `teal controller` builds
    /// it) and `router_image` for router type teal; returns the address of
    /// its `/metrics`. The counter belongs to the process: tests that read
    /// it must not run another counted controller at the same time.
    pub async fn start_counted_controller(&mut self, router_image: Option<&str>) -> SocketAddr {
        let client = teal_controller::client(Self::admin_config().await).unwrap();
        // A free port, taken back by the controller at once.
        let metrics_addr = std::net::TcpListener::bind(("127.0.0.1", 0))
            .unwrap()
            .local_addr()
            .unwrap();
        let mut opts = self.options(metrics_addr);
        opts.router_image = router_image.map(String::from);
        self.spawn(client, opts);
        metrics_addr
    }

    /// A client acting as the ServiceAccount `name` of the case's
    /// namespace (impersonated), so only that account's RBAC lets it act.
    pub async fn client_as(&self, name: &str) -> Client {
        let mut config = Self::admin_config().await;
        config.auth_info.impersonate = Some(format!("system:serviceaccount:{}:{name}", self.ns));
        config.auth_info.impersonate_groups = Some(vec![
            "system:serviceaccounts".into(),
            "system:authenticated".into(),
        ]);
        Client::try_from(config).unwrap()
    }

    /// Starts the controller acting as the ServiceAccount `name` (see
    /// [`Case::client_as`]).
    pub async fn start_controller_as(&mut self, name: &str) {
        let client = self.client_as(name).await;
        self.spawn(client, self.options(SocketAddr::from(([127, 0, 0, 1], 0))));
    }

    /// Binds the ServiceAccount `name` of the case's namespace to `role`
    /// (`"Role"` or `"ClusterRole"`, and its name) in that namespace.
    pub async fn bind(&self, name: &str, (kind, role): (&str, &str)) {
        let bindings: Api<k8s_openapi::api::rbac::v1::RoleBinding> =
            Api::namespaced(self.client.clone(), &self.ns);
        let binding = serde_json::from_value(json!({
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": self.ns}]
        }))
        .unwrap();
        bindings
            .create(&PostParams::default(), &binding)
            .await
            .unwrap();
    }

    /// Workload `shop` (image `shop:1`, one replica) and BlueGreen `shop`
    /// with `spec`, the controller started and the BlueGreen adopted.
    pub async fn adopted(&mut self, spec: serde_json::Value) {
        self.create_workload("shop", "shop:1", 1, BTreeMap::new())
            .await;
        self.create_bluegreen("shop", spec).await.unwrap();
        self.start_controller();
        self.wait_status("adoption", "shop", |s| {
            s.phase.as_deref() == Some("Healthy")
        })
        .await;
    }

    pub fn stop_controller(&mut self) {
        if let Some(c) = self.controller.take() {
            c.abort();
        }
    }

    pub fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    pub fn services(&self) -> Api<Service> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// The `group`/v1 kind `kind` (plural `plural`) in the case's namespace.
    pub fn dynamic(&self, group: &str, kind: &str, plural: &str) -> Api<DynamicObject> {
        let r = ApiResource {
            group: group.into(),
            version: "v1".into(),
            api_version: format!("{group}/v1"),
            kind: kind.into(),
            plural: plural.into(),
        };
        Api::namespaced_with(self.client.clone(), &self.ns, &r)
    }

    pub fn virtual_services(&self) -> Api<DynamicObject> {
        self.dynamic("networking.istio.io", "VirtualService", "virtualservices")
    }

    pub fn destination_rules(&self) -> Api<DynamicObject> {
        self.dynamic("networking.istio.io", "DestinationRule", "destinationrules")
    }

    pub fn http_routes(&self) -> Api<DynamicObject> {
        self.dynamic("gateway.networking.k8s.io", "HTTPRoute", "httproutes")
    }

    /// A user's VirtualService `front` for host shop.example.com with one
    /// route of its own (`api`) and the fields of `extra` in its spec;
    /// returns that route.
    pub async fn create_user_virtual_service(&self, extra: serde_json::Value) -> serde_json::Value {
        let user_route = json!({"name": "api", "match": [{"uri": {"prefix": "/api"}}], "route": [{"destination": {"host": "api"}}]});
        let mut spec = json!({"hosts": ["shop.example.com"], "http": [user_route]});
        for (k, v) in extra.as_object().into_iter().flatten() {
            spec[k] = v.clone();
        }
        create_dynamic(
            &self.virtual_services(),
            json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                   "metadata": {"name": "front"}, "spec": spec}),
        )
        .await;
        user_route
    }

    /// A user's HTTPRoute `front` under Gateway `public` with one rule of its
    /// own (`static`); returns that rule.
    pub async fn create_user_http_route(&self) -> serde_json::Value {
        let static_rule = json!({"name": "static",
            "matches": [{"path": {"type": "PathPrefix", "value": "/static"}}],
            "backendRefs": [{"group": "", "kind": "Service", "name": "cdn", "port": 80, "weight": 1}]});
        create_dynamic(
            &self.http_routes(),
            json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                   "metadata": {"name": "front"},
                   "spec": {"parentRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "public"}],
                            "rules": [static_rule]}}),
        )
        .await;
        static_rule
    }

    pub fn bluegreens(&self) -> Api<BlueGreen> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// The user's Deployment: `app=<name>`, image `<image>`, port `http` 8080.
    pub async fn create_workload(
        &self,
        name: &str,
        image: &str,
        replicas: i32,
        annotations: BTreeMap<String, String>,
    ) {
        let d: Deployment = serde_json::from_value(json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}, "annotations": annotations},
                    "spec": {"containers": [{
                        "name": "app",
                        "image": image,
                        "ports": [{"name": "http", "containerPort": 8080}]
                    }]}
                }
            }
        }))
        .unwrap();
        self.deployments()
            .create(&PostParams::default(), &d)
            .await
            .unwrap();
    }

    /// Changes the workload's image (a new revision), optionally with pod annotations.
    pub async fn set_image(&self, name: &str, image: &str, annotations: BTreeMap<String, String>) {
        let patch = json!({"spec": {"template": {
            "metadata": {"annotations": annotations},
            "spec": {"containers": [{"name": "app", "image": image}]}
        }}});
        self.deployments()
            .patch(name, &PatchParams::default(), &Patch::Strategic(patch))
            .await
            .unwrap();
    }

    pub async fn create_bluegreen(
        &self,
        name: &str,
        spec: serde_json::Value,
    ) -> Result<BlueGreen, kube::Error> {
        let bg: BlueGreen = serde_json::from_value(json!({
            "apiVersion": "teal.dev/v1alpha1",
            "kind": "BlueGreen",
            "metadata": {"name": name},
            "spec": spec,
        }))
        .unwrap();
        self.bluegreens().create(&PostParams::default(), &bg).await
    }

    /// Creates a BlueGreen from raw JSON, as `kubectl apply` would send it,
    /// so the apiserver (not the Rust types) judges it.
    pub async fn create_raw(&self, name: &str, spec: serde_json::Value) -> Result<(), kube::Error> {
        let ar = kube::core::ApiResource::erase::<BlueGreen>(&());
        let api: Api<kube::core::DynamicObject> =
            Api::namespaced_with(self.client.clone(), &self.ns, &ar);
        let obj: kube::core::DynamicObject = serde_json::from_value(json!({
            "apiVersion": "teal.dev/v1alpha1",
            "kind": "BlueGreen",
            "metadata": {"name": name},
            "spec": spec,
        }))
        .unwrap();
        api.create(&PostParams::default(), &obj).await.map(|_| ())
    }

    /// Sets the `teal.dev/command` annotation, as `kubectl teal` does.
    pub async fn command(&self, name: &str, verb: &str) {
        let id = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let patch =
            json!({"metadata": {"annotations": {"teal.dev/command": format!("{verb}/{id}")}}});
        self.bluegreens()
            .patch(name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .unwrap();
    }

    /// Waits until the BlueGreen's status satisfies `ok`; the error text
    /// shows what was last seen.
    pub async fn wait_status(
        &self,
        what: &str,
        name: &str,
        ok: impl Fn(&teal_api::BlueGreenStatus) -> bool,
    ) -> teal_api::BlueGreenStatus {
        let api = self.bluegreens();
        wait_for(what, Duration::from_secs(60), || {
            let api = api.clone();
            let ok = &ok;
            async move {
                let bg = api.get(name).await.map_err(|e| e.to_string())?;
                let st = bg.status.unwrap_or_default();
                if ok(&st) {
                    Ok(st)
                } else {
                    Err(format!(
                        "phase {:?} active {:?}/{:?} preview {:?} message {:?} history {:?}",
                        st.phase,
                        st.active_color,
                        st.active_revision,
                        st.preview_color,
                        st.message,
                        st.history
                            .iter()
                            .map(|h| format!("{}:{}", h.revision, h.outcome))
                            .collect::<Vec<_>>()
                    ))
                }
            }
        })
        .await
    }

    pub async fn selector_color(&self, service: &str) -> Option<String> {
        let s = self.services().get(service).await.ok()?;
        s.spec?.selector?.get("teal.dev/color").cloned()
    }

    pub async fn replicas(&self, deployment: &str) -> Option<i32> {
        self.deployments().get(deployment).await.ok()?.spec.replicas
    }

    pub async fn ready(&self, deployment: &str) -> i32 {
        self.deployments()
            .get(deployment)
            .await
            .ok()
            .and_then(|d| d.status)
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0)
    }

    /// Reasons of the Events about a BlueGreen, oldest first.
    pub async fn event_reasons(&self, name: &str) -> Vec<String> {
        let events: Api<k8s_openapi::api::events::v1::Event> =
            Api::namespaced(self.client.clone(), &self.ns);
        let mut list = events.list(&Default::default()).await.unwrap().items;
        list.retain(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name));
        list.sort_by_key(|e| e.event_time.as_ref().map(|t| t.0));
        list.into_iter().filter_map(|e| e.reason).collect()
    }

    /// Events about a BlueGreen as (type, reason, note), oldest first.
    pub async fn events(&self, name: &str) -> Vec<(String, String, String)> {
        let events: Api<k8s_openapi::api::events::v1::Event> =
            Api::namespaced(self.client.clone(), &self.ns);
        let mut list = events.list(&Default::default()).await.unwrap().items;
        list.retain(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name));
        list.sort_by_key(|e| e.event_time.as_ref().map(|t| t.0));
        list.into_iter()
            .map(|e| {
                (
                    e.type_.unwrap_or_default(),
                    e.reason.unwrap_or_default(),
                    e.note.unwrap_or_default(),
                )
            })
            .collect()
    }
}

/// Fetches (cached) the upstream CRDs with `scripts/upstream-crds`, applies
/// `files` of its output server-side as a cluster admin would, and waits
/// until the `crds` (e.g. `crd/httproutes.gateway.networking.k8s.io`) are
/// established. Blocking: call it through `spawn_blocking`.
pub fn install_upstream_crds(files: &[&str], crds: &[&str]) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = std::process::Command::new(root.join("scripts/upstream-crds"))
        .arg("fetch")
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("run scripts/upstream-crds");
    assert!(out.status.success(), "scripts/upstream-crds fetch failed");
    let dir = std::path::PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    let env = TestEnv::shared();
    for file in files {
        let out = env
            .kubectl()
            .args(["apply", "--server-side", "--force-conflicts", "-f"])
            .arg(dir.join(file))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kubectl apply {file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = env
        .kubectl()
        .args(["wait", "--for=condition=Established", "--timeout=60s"])
        .args(crds)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The Istio and Gateway API CRDs teal's routers write, installed as
/// [`install_upstream_crds`] does.
pub fn install_router_crds() {
    install_upstream_crds(
        &["istio.yaml", "gateway-api.yaml"],
        &[
            "crd/virtualservices.networking.istio.io",
            "crd/destinationrules.networking.istio.io",
            "crd/httproutes.gateway.networking.k8s.io",
        ],
    );
}

/// Creates `obj` (a whole object as JSON) through `api`.
pub async fn create_dynamic(api: &Api<DynamicObject>, obj: serde_json::Value) {
    let o: DynamicObject = serde_json::from_value(obj).unwrap();
    api.create(&PostParams::default(), &o).await.unwrap();
}

/// The text of `/metrics` at `addr` (plain HTTP/1.0).
pub async fn scrape(addr: SocketAddr) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out)
        .await
        .map_err(|e| e.to_string())?;
    match out.split_once("\r\n\r\n") {
        Some((head, body))
            if head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200") =>
        {
            Ok(body.to_string())
        }
        _ => Err(format!("GET /metrics: {out}")),
    }
}

/// The sum of the samples of metric `name` in Prometheus text, over the
/// series whose labels satisfy `labels` (the text between the braces).
pub fn metric_sum(text: &str, name: &str, labels: impl Fn(&str) -> bool) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, l) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            (n == name && labels(l)).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// Everything the controller logs (all crates, debug and up) in this test
/// binary, from the first call on.
pub fn log() -> std::sync::Arc<std::sync::Mutex<Vec<u8>>> {
    use std::sync::{Arc, Mutex, OnceLock};
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let w = buf.clone();
        tracing_subscriber::fmt()
            .with_env_filter("debug")
            .with_ansi(false)
            .with_writer(move || Capture(w.clone()))
            .init();
        buf
    })
    .clone()
}

struct Capture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `kubectl apply` of `manifest` in `ns`.
pub fn kubectl_apply(ns: &str, manifest: &str) {
    use std::io::Write;
    let mut child = TestEnv::shared()
        .kubectl()
        .args(["apply", "-n", ns, "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run kubectl");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(manifest.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "kubectl apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
