//! Traffic per color in `teal get` and `teal watch`, counted by real `teal
//! router --kubernetes-bluegreen` replicas against the real control plane.
//!
//! kwok's pod addresses are fake: nothing answers on them, and traffic to
//! them would leave the loopback network. So the router replicas and the
//! upstreams run in a network namespace this test creates: there the pod
//! addresses of the workload are put on the namespace's own loopback
//! device and served by `teal sample-app` processes. The routers reach the
//! apiserver through a forwarder: a listener on the namespace's 127.0.0.1
//! at the apiserver's port, whose connections the test relays to the real
//! apiserver. The test sends a known set of requests into the namespace
//! and checks the CLI shows exactly those counts, by color and status class.

mod k8s_support;
mod router_support;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};
use router_support::Proc;
use serde_json::json;
use teal_api::BlueGreen;
use teal_controller::routers::teal::ready;
use teal_testenv::{TestEnv, wait_for};

/// A network namespace of this test, deleted on drop.
struct Netns(String);

impl Netns {
    fn new() -> Netns {
        let name = format!("teal-traffic-{}", std::process::id());
        ip(&["netns", "add", &name]);
        let ns = Netns(name);
        ip(&["-n", &ns.0, "link", "set", "lo", "up"]);
        ns
    }

    /// Runs `f` on a thread that entered the namespace: sockets it creates
    /// live there (and stay there, whichever thread uses them later).
    fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.0);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap();
            nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            f()
        })
        .join()
        .unwrap()
    }

    /// `teal ARGS` inside the namespace, waiting for its "listening" line.
    fn teal(&self, args: &[&str], env: &[(&str, &str)]) -> Proc {
        let mut full = vec!["netns", "exec", self.0.as_str(), env!("CARGO_BIN_EXE_teal")];
        full.extend_from_slice(args);
        router_support::spawn_cmd(Command::new("ip").args(&full).envs(env.iter().copied()))
    }

    /// One HTTP/1.1 request from inside the namespace; the status code.
    fn get(&self, addr: SocketAddr, path: &str, header: Option<(&str, &str)>) -> u16 {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: shop\r\n{}Connection: close\r\n\r\n",
            header
                .map(|(k, v)| format!("{k}: {v}\r\n"))
                .unwrap_or_default()
        );
        let response = self.enter(move || {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
            s.write_all(request.as_bytes()).unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        });
        response
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("no status line in {response:?}"))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Relays connections to `port` on the namespace's loopback to the same
/// port on the host's loopback (the apiserver).
fn forward_apiserver(netns: &Netns, port: u16) {
    let listener = netns.enter(move || {
        let l = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
        l.set_nonblocking(true).unwrap();
        l
    });
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    tokio::spawn(async move {
        while let Ok((mut inside, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(mut host) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                    let _ = tokio::io::copy_bidirectional(&mut inside, &mut host).await;
                }
            });
        }
    });
}

/// The apiserver port of the test kubeconfig.
fn apiserver_port(env: &TestEnv) -> u16 {
    let kc = std::fs::read_to_string(env.kubeconfig_path()).unwrap();
    kc.lines()
        .find_map(|l| l.trim().strip_prefix("server: https://127.0.0.1:"))
        .and_then(|p| p.trim_matches('"').parse().ok())
        .unwrap_or_else(|| panic!("no loopback apiserver in the kubeconfig:\n{kc}"))
}

/// Ready pods matching `labels`, once there are `n`.
async fn ready_pods(pods: &Api<Pod>, labels: &str, n: usize) -> Vec<Pod> {
    wait_for(
        &format!("{n} ready pods {labels}"),
        Duration::from_secs(120),
        || async {
            let l = pods
                .list(&ListParams::default().labels(labels))
                .await
                .map_err(|e| e.to_string())?;
            let ready: Vec<Pod> = l.items.into_iter().filter(ready).collect();
            if ready.len() == n {
                Ok(ready)
            } else {
                Err(format!("{} ready", ready.len()))
            }
        },
    )
    .await
}

/// Serves every pod of `color` at its address in the namespace.
async fn serve_color(netns: &Netns, pods: &Api<Pod>, color: &str) -> Vec<Proc> {
    let labels = format!("teal.dev/bluegreen=shop,teal.dev/color={color}");
    let mut apps = Vec::new();
    for p in ready_pods(pods, &labels, 2).await {
        let addr: IpAddr = p.status.unwrap().pod_ip.unwrap().parse().unwrap();
        ip(&[
            "-n",
            &netns.0,
            "addr",
            "add",
            &format!("{addr}/32"),
            "dev",
            "lo",
        ]);
        let addr = addr.to_string();
        apps.push(netns.teal(
            &[
                "sample-app",
                "--color",
                color,
                "--listen",
                &addr,
                "--port",
                "8080",
            ],
            &[],
        ));
    }
    apps
}

/// Waits until every router replica reports the BlueGreen's current route
/// generation in its Lease (it installed that table first).
async fn wait_routers_serve(bgs: &Api<BlueGreen>, leases: &Api<Lease>, pods: &[String]) {
    wait_for(
        "router replicas serve the current generation",
        Duration::from_secs(120),
        || async {
            let bg = bgs.get("shop").await.map_err(|e| e.to_string())?;
            let want = bg
                .status
                .and_then(|s| s.router)
                .map(|r| r.generation)
                .ok_or("no status.router")?;
            for p in pods {
                let got = leases
                    .get_opt(p)
                    .await
                    .map_err(|e| e.to_string())?
                    .and_then(|l| l.metadata.annotations)
                    .and_then(|a| a.get("teal.dev/route-generation").cloned());
                if got != Some(want.to_string()) {
                    return Err(format!("{p} serves {got:?}, want {want}"));
                }
            }
            Ok(())
        },
    )
    .await
}

fn teal_cli(env: &TestEnv, ns: &str, args: &[&str]) -> String {
    k8s_support::run_ok(
        Command::new(env!("CARGO_BIN_EXE_teal"))
            .args(args)
            .args(["-n", ns])
            .env("KUBECONFIG", env.kubeconfig_path()),
        None,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_and_watch_show_the_exact_responses_the_router_replicas_counted() {
    let env = TestEnv::shared();
    k8s_support::apply_deploy_files(env, &["crd.yaml"]);
    let client = env.client();
    let ns = env.namespace("clitraffic").await;
    let manifest = k8s_support::workload_and_bluegreen(
        "shop",
        "  promotion: {mode: manual}\n  preview: {header: {name: x-version, value: preview}}\n  router: {type: teal, teal: {replicas: 2}}\n",
    );
    k8s_support::kubectl(env, &["apply", "-n", &ns, "-f", "-"], Some(&manifest));
    let _controller = router_support::spawn_quiet(
        Command::new(env!("CARGO_BIN_EXE_teal"))
            .args(["controller", "--namespace", &ns, "--no-leader-election"])
            .args(["--metrics-addr", "127.0.0.1:0"])
            .env("KUBECONFIG", env.kubeconfig_path())
            .env("TEAL_ROUTER_IMAGE", "teal:test"),
    );

    let netns = Netns::new();
    forward_apiserver(&netns, apiserver_port(env));
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let router_pods: Vec<String> = ready_pods(&pods, "teal.dev/router=shop", 2)
        .await
        .into_iter()
        .map(|p| p.metadata.name.unwrap())
        .collect();
    let kubeconfig = env.kubeconfig_path().display().to_string();
    let mut routers = Vec::new();
    for pod in &router_pods {
        let p = pods.get(pod).await.unwrap();
        let uid = p.metadata.uid.unwrap();
        let mut args = router_support::loopback_router_args(&router_support::temp_dir());
        args.extend(
            [
                "--kubernetes-bluegreen",
                "shop",
                "--kubernetes-namespace",
                &ns,
                "--pod-name",
                pod,
                "--pod-uid",
                &uid,
            ]
            .map(String::from),
        );
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = netns.teal(&args, &[("KUBECONFIG", kubeconfig.as_str())]);
        let proxy: SocketAddr = router_support::field(&r.line, "proxy=").parse().unwrap();
        routers.push((r, proxy));
    }

    // Blue is live behind both replicas.
    let bgs: Api<BlueGreen> = Api::namespaced(client.clone(), &ns);
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let _blue = serve_color(&netns, &pods, "blue").await;
    k8s_support::wait_healthy(&bgs, "shop", None).await;
    wait_routers_serve(&bgs, &leases, &router_pods).await;
    let (r1, r2) = (routers[0].1, routers[1].1);
    for _ in 0..3 {
        assert_eq!(netns.get(r1, "/", None), 200);
    }
    assert_eq!(netns.get(r1, "/no-such-page", None), 404);
    for _ in 0..2 {
        assert_eq!(netns.get(r2, "/", None), 200);
    }

    // Green in preview: the preview header reaches it.
    let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "shop:2"}]}}}});
    let deps: Api<k8s_openapi::api::apps::v1::Deployment> = Api::namespaced(client.clone(), &ns);
    deps.patch("shop", &PatchParams::default(), &Patch::Strategic(patch))
        .await
        .unwrap();
    let _green = serve_color(&netns, &pods, "green").await;
    k8s_support::wait_bluegreen(&bgs, "shop", "AwaitingPromotion", 120, |st| {
        st.phase.as_deref() == Some("AwaitingPromotion")
    })
    .await;
    wait_routers_serve(&bgs, &leases, &router_pods).await;
    for _ in 0..2 {
        assert_eq!(netns.get(r2, "/", Some(("x-version", "preview"))), 200);
    }

    // The CLI sums what the replicas published.
    let want = json!({
        "blue": {"total": 6, "responses": {"2xx": 5, "4xx": 1}},
        "green": {"total": 2, "responses": {"2xx": 2}},
    });
    let traffic = wait_for(
        "teal get -o json shows the counts",
        Duration::from_secs(120),
        || async {
            let out = teal_cli(env, &ns, &["get", "shop", "-o", "json"]);
            let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| e.to_string())?;
            if v["traffic"]["colors"] == want {
                Ok(v["traffic"].clone())
            } else {
                Err(format!("traffic {}", v["traffic"]))
            }
        },
    )
    .await;
    assert_eq!(traffic["router"], "teal");
    assert_eq!(traffic["measured"], true);
    assert_eq!(traffic["replicas"], 2);

    let table = teal_cli(env, &ns, &["get", "shop"]);
    for line in [
        "Traffic:   2 router replica(s) reporting; responses since each replica started\n",
        "  blue          6 responses (2xx 5, 4xx 1)\n",
        "  green         2 responses (2xx 2)\n",
    ] {
        assert!(table.contains(line), "{line:?} not in\n{table}");
    }
    let watch = teal_cli(env, &ns, &["watch", "shop", "--count", "1"]);
    assert_eq!(watch.matches("Phase:").count(), 1, "{watch}");
    // The rate is not asserted: it depends on how long ago the replicas
    // last reported (the rate logic has its own unit tests).
    for line in [
        "  blue          6 responses (2xx 5, 4xx 1)   ",
        "  green         2 responses (2xx 2)   ",
    ] {
        assert!(watch.contains(line), "{line:?} not in\n{watch}");
    }
    drop(routers);
}
