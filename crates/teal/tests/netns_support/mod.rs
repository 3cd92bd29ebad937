//! A BlueGreen with router type `teal` whose router replicas and app
//! upstreams run as real processes in a network namespace the test creates,
//! each on the address kwok gave its pod (kwok's pod addresses are fake on
//! the host: nothing answers there, and traffic to them would leave the
//! loopback network). The controller and the apiserver stay on the host.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use teal_api::BlueGreen;
use teal_core::Color;
use teal_testenv::netns::NetNs;
use teal_testenv::{TestEnv, wait_for};

use crate::k8s_support;
use crate::router_support::kubernetes::{
    Killed, color_pods, controller, follow, lease_generation, ready_router_pods,
};
use crate::router_support::{self, Proc, spawn_command};

pub const BG: &str = "shop";
pub const APP_PORT: u16 = 8080;
pub const ROUTER_PORT: u16 = 8080;

/// The namespace, the addresses added to it, and the app processes inside.
pub struct Pods {
    // Dropped in this order: the processes go before the namespace.
    pub procs: Vec<(IpAddr, Proc)>,
    pub added: BTreeSet<IpAddr>,
    pub ns: NetNs,
}

impl Pods {
    pub fn add(&mut self, ip: IpAddr) {
        if self.added.insert(ip) {
            self.ns.add_address(ip).unwrap();
        }
    }

    /// `teal sample-app` as the pod at `ip`, reporting `color` and `revision`.
    pub fn upstream(&mut self, ip: IpAddr, color: &str, revision: &str) {
        self.upstream_with(ip, color, revision, &[]);
    }

    /// [`Pods::upstream`] with more `teal sample-app` arguments (e.g.
    /// `--error-rate 0.3`).
    pub fn upstream_with(&mut self, ip: IpAddr, color: &str, revision: &str, extra: &[&str]) {
        self.add(ip);
        let ip_s = ip.to_string();
        let port = APP_PORT.to_string();
        let p = spawn_command(
            self.ns.command(env!("CARGO_BIN_EXE_teal")),
            &[
                "sample-app",
                "--color",
                color,
                "--version",
                revision,
                "--listen",
                &ip_s,
                "--port",
                &port,
            ]
            .into_iter()
            .chain(extra.iter().copied())
            .collect::<Vec<_>>(),
            &[],
        );
        self.procs.push((ip, p));
    }

    /// Stops the upstreams at `ips` (what the kubelet does to deleted pods).
    pub fn stop(&mut self, ips: &[IpAddr]) {
        self.procs.retain(|(ip, _)| !ips.contains(ip));
    }
}

/// `host:port` of the apiserver in the kubeconfig (on the host's loopback).
pub fn apiserver(env: &TestEnv) -> SocketAddr {
    let kc = kube::config::Kubeconfig::read_from(env.kubeconfig_path()).unwrap();
    let server = kc.clusters[0]
        .cluster
        .as_ref()
        .and_then(|c| c.server.clone())
        .unwrap();
    server
        .trim_start_matches("https://")
        .trim_end_matches('/')
        .parse()
        .unwrap_or_else(|e| panic!("apiserver address {server:?}: {e}"))
}

/// Waits until `color` has `n` pods with addresses and returns them.
pub async fn wait_color_pods(pods: &Api<Pod>, color: &str, n: usize) -> Vec<(IpAddr, String)> {
    wait_for(
        &format!("{n} {color} pods with addresses"),
        Duration::from_secs(90),
        || async move {
            let v = color_pods(pods, BG, color).await;
            if v.len() == n && v.iter().all(|(_, rev)| !rev.is_empty()) {
                Ok(v)
            } else {
                Err(format!("{v:?}"))
            }
        },
    )
    .await
}

/// Waits until the Lease of each of `router_pods` reports `generation`.
pub async fn wait_leases(leases: &Api<Lease>, router_pods: &[String], generation: i64) {
    for pod in router_pods {
        wait_for(
            &format!("router {pod} reports generation {generation}"),
            Duration::from_secs(60),
            || async move {
                match lease_generation(leases, pod).await {
                    Some(g) if g == generation => Ok(()),
                    g => Err(format!("{g:?}")),
                }
            },
        )
        .await;
    }
}

/// A BlueGreen `shop` with router type `teal` (2 replicas), Healthy on
/// blue, with every process of it running in the namespace.
pub struct Cluster {
    // Dropped in this order: routers, app processes, namespace, controller.
    pub routers: Vec<Proc>,
    pub world: Pods,
    pub _controller: Killed,
    pub router_addrs: Vec<SocketAddr>,
    pub router_names: Vec<String>,
    /// The Kubernetes namespace of the BlueGreen.
    pub namespace: String,
    pub bgs: Api<BlueGreen>,
    pub pods: Api<Pod>,
    pub leases: Api<Lease>,
    pub deployments: Api<k8s_openapi::api::apps::v1::Deployment>,
    pub blue: Vec<(IpAddr, String)>,
    /// Holds the routers' kubeconfig.
    pub dir: std::path::PathBuf,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Cluster {
    /// `spec` is appended to the BlueGreen's spec, `extra` to the manifest.
    pub async fn start(prefix: &str, spec: &str, extra: &str) -> Cluster {
        // Fails (never skips) when namespaces cannot be made here.
        let ns = NetNs::create(prefix).unwrap_or_else(|e| panic!("{e}"));
        let mut world = Pods {
            procs: Vec::new(),
            added: BTreeSet::new(),
            ns,
        };
        let env = TestEnv::shared();
        k8s_support::apply_deploy_files(env, &["crd.yaml"]);
        let client = env.client();
        let kns = env.namespace(prefix).await;
        let manifest = k8s_support::workload_and_bluegreen(
            BG,
            &format!(
                "  scaleDownDelay: 5s\n  progressDeadline: 180s\n  promotion: {{mode: manual}}\n  \
                 router: {{type: teal, teal: {{replicas: 2}}}}\n{spec}{extra}"
            ),
        );
        k8s_support::kubectl(env, &["apply", "-n", &kns, "-f", "-"], Some(&manifest));

        // The routers inside reach the apiserver with the same kubeconfig: a
        // namespace has its own 127.0.0.1, so a relay listens on the
        // apiserver's loopback address inside and connects to it on the
        // host. (A veth pair would need a routable host address, a
        // rewritten kubeconfig and an apiserver certificate for it; the
        // relay keeps all three as they are.)
        let api = apiserver(env);
        world.ns.forward_from_host(api, api).unwrap();

        let controller = controller(env, &kns);
        let bgs: Api<BlueGreen> = Api::namespaced(client.clone(), &kns);
        let pods: Api<Pod> = Api::namespaced(client.clone(), &kns);
        let leases: Api<Lease> = Api::namespaced(client.clone(), &kns);

        // Blue's upstreams on blue's pod addresses.
        let blue = wait_color_pods(&pods, "blue", 2).await;
        for (ip, rev) in &blue {
            world.upstream(*ip, "blue", rev);
        }

        // The router replicas on the router pods' addresses, authenticated
        // as the router's ServiceAccount (so its Role is what they may do).
        let router_pods = ready_router_pods(&pods, BG, 2).await;
        let dir = router_support::temp_dir();
        let kubeconfig =
            k8s_support::service_account_kubeconfig(env, &kns, &format!("{BG}-router"), &dir);
        let (mut routers, mut router_addrs, mut router_names) =
            (Vec::new(), Vec::new(), Vec::new());
        for pod in &router_pods {
            let ip: IpAddr = pod
                .status
                .as_ref()
                .and_then(|s| s.pod_ip.as_ref())
                .unwrap()
                .parse()
                .unwrap();
            world.add(ip);
            let listen = SocketAddr::new(ip, ROUTER_PORT);
            let (p, _) = follow(
                world.ns.command(env!("CARGO_BIN_EXE_teal")),
                &kubeconfig,
                &kns,
                BG,
                pod,
                &listen.to_string(),
            );
            routers.push(p);
            router_addrs.push(listen);
            router_names.push(pod.metadata.name.clone().unwrap());
        }
        let st = k8s_support::wait_healthy(&bgs, BG, Some(&blue[0].1)).await;
        assert_eq!(st.active_color, Some(Color::Blue));
        wait_leases(&leases, &router_names, st.router.unwrap().generation).await;
        Cluster {
            routers,
            world,
            _controller: controller,
            router_addrs,
            router_names,
            bgs,
            pods,
            leases,
            namespace: kns.clone(),
            deployments: Api::namespaced(client, &kns),
            blue,
            dir,
        }
    }

    /// v2: green comes up with its upstreams and is previewed by every
    /// router replica. Returns green's pods.
    pub async fn preview_green(&mut self) -> Vec<(IpAddr, String)> {
        let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "shop:2"}]}}}});
        self.deployments
            .patch(BG, &PatchParams::default(), &Patch::Strategic(patch))
            .await
            .unwrap();
        let green = wait_color_pods(&self.pods, "green", 2).await;
        assert_ne!(green[0].1, self.blue[0].1);
        for (ip, rev) in &green {
            self.world.upstream(*ip, "green", rev);
        }
        let st = k8s_support::wait_bluegreen(
            &self.bgs,
            BG,
            "AwaitingPromotion with green previewed",
            120,
            |st| {
                st.phase.as_deref() == Some("AwaitingPromotion")
                    && st
                        .router
                        .as_ref()
                        .is_some_and(|r| r.preview == Some(Color::Green))
            },
        )
        .await;
        wait_leases(
            &self.leases,
            &self.router_names,
            st.router.unwrap().generation,
        )
        .await;
        green
    }
}
