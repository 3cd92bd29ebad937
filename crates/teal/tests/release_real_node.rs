//! Releases with router type `teal` under real traffic, everything in containers on the real
//! node: the controller installed with Helm (two replicas, leader election; the router image is
//! the chart's default, its own), the workload (`teal sample-app`), and the router pods the
//! controller creates. The node is slow to start, so one scenario walks through it all while a
//! client on the host sends requests to the live Service's ClusterIP (through kube-proxy) the
//! whole time, from the moment it first answers:
//!
//! 1. adoption: router pods are Ready only once their route table is installed, and the live
//!    Service moves to them only then, so no request fails while they start;
//! 2. a release with manual promotion: while it waits, the preview header reaches only the idle
//!    color and every other request the live one;
//! 3. the leader controller pod is deleted mid-release, a 5 s request is started on v1, then
//!    the release is promoted: the slow request completes on v1 although its color is retired
//!    at the switch (scaleDownDelay 0s), and the switch is made exactly once;
//! 4. a router pod is deleted under traffic;
//! 5. `helm uninstall` removes the controller: the app keeps serving.
//!
//! Throughout: no request fails; v1 answers until the switch, and only v2 once every router
//! replica confirmed it.

mod k8s_support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_support::{deploy_path, kubectl, wait_bluegreen, wait_healthy};
use kube::Api;
use teal_api::BlueGreen;
use teal_testenv::TestEnv;
use teal_testenv::real_node::{self, NODE_NAME, RealNode};

const PREVIEW_HEADER: &str = "x-shop-preview";
const PREVIEW_VALUE: &str = "c2e1f0a9b8d7c6e5f4a3b2c1";

/// One GET on a fresh connection (with `header`, if any); the `version` the app reported.
fn get_version(
    addr: SocketAddr,
    path: &str,
    header: Option<(&str, &str)>,
) -> Result<String, String> {
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(3)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .map_err(|e| e.to_string())?;
    let extra = header.map_or_else(String::new, |(n, v)| format!("{n}: {v}\r\n"));
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: shop\r\n{extra}Connection: close\r\n\r\n")
                .as_bytes(),
        )
        .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| e.to_string())?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no end of head: {response:?}"))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("{head} {body}"));
    }
    let v: serde_json::Value = serde_json::from_str(body).map_err(|e| format!("{e}: {body}"))?;
    Ok(v["version"].as_str().unwrap_or_default().to_owned())
}

fn workload(version: &str) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: shop}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: shop}}}}
  template:
    metadata: {{labels: {{app: shop}}}}
    spec:
      containers:
      - name: app
        image: teal:{image}
        imagePullPolicy: IfNotPresent
        args: [sample-app, --color, blue, --version, {version}, --listen, 0.0.0.0, --port, "8080"]
        ports: [{{name: http, containerPort: 8080}}]
        readinessProbe: {{httpGet: {{path: /healthz, port: 8080}}, periodSeconds: 1}}
"#,
        image = env!("CARGO_PKG_VERSION")
    )
}

fn bluegreen() -> String {
    format!(
        r#"
apiVersion: teal.dev/v1alpha1
kind: BlueGreen
metadata: {{name: shop}}
spec:
  workloadRef: {{kind: Deployment, name: shop}}
  scaleDownDelay: 0s
  promotion: {{mode: manual}}
  preview:
    header: {{name: {PREVIEW_HEADER}, value: {PREVIEW_VALUE}}}
  router:
    type: teal
    teal: {{replicas: 2}}
"#
    )
}

fn helm(env: &TestEnv, args: &[&str]) {
    let helm =
        std::env::var_os("TEAL_HELM").expect("TEAL_HELM is not set (scripts/control-plane env)");
    let out = std::process::Command::new(helm)
        .env("KUBECONFIG", env.kubeconfig_path())
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "helm {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `kubectl get KIND NAME -o jsonpath=PATH` in namespace `ns` (empty when it does not exist).
fn get(env: &TestEnv, ns: &str, kind: &str, name: &str, path: &str) -> String {
    let jsonpath = format!("jsonpath={path}");
    kubectl(
        env,
        &[
            "-n",
            ns,
            "get",
            kind,
            name,
            "-o",
            &jsonpath,
            "--ignore-not-found",
        ],
        None,
    )
}

fn leader(env: &TestEnv) -> String {
    get(
        env,
        "teal-system",
        "lease",
        "teal-controller",
        "{.spec.holderIdentity}",
    )
}

/// When a request was sent, and the version that answered it (or what went wrong).
type Answer = (Instant, Result<String, String>);

/// Requests sent to the live Service, one every 20 ms, each on a new connection.
struct Traffic {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Answer>>>,
    thread: std::thread::JoinHandle<()>,
}

impl Traffic {
    fn start(addr: SocketAddr) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let seen: Arc<Mutex<Vec<Answer>>> = Arc::default();
        let thread = {
            let (stop, seen) = (stop.clone(), seen.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let sent = Instant::now();
                    let answer = get_version(addr, "/", None);
                    seen.lock().unwrap().push((sent, answer));
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        };
        Traffic { stop, seen, thread }
    }

    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    fn stop(self) -> Vec<Answer> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap();
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn teal_router_releases_on_the_real_node_fail_no_request_and_never_mix() {
    let image = tokio::task::spawn_blocking(real_node::teal_image)
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}"));
    let node = tokio::task::spawn_blocking(move || RealNode::start(&[&image]))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}"));
    let env = node.env();

    // Every pod of this test on the real node: its taint off, the kwok node cordoned (the
    // router Deployment the controller writes carries no placement of its own).
    kubectl(env, &["taint", "node", NODE_NAME, "teal.dev/node-"], None);
    kubectl(env, &["cordon", "kwok-node-0"], None);

    // As users install it: the chart's defaults, the router image included.
    let chart = deploy_path("helm/teal");
    helm(
        env,
        &[
            "install",
            "teal",
            chart.to_str().unwrap(),
            "-n",
            "teal-system",
            "--create-namespace",
            "--wait",
            "--timeout",
            "300s",
        ],
    );
    let router_image = get(
        env,
        "teal-system",
        "deployment",
        "teal",
        "{.spec.template.spec.containers[0].env[?(@.name==\"TEAL_ROUTER_IMAGE\")].value}",
    );
    assert_eq!(router_image, format!("teal:{}", env!("CARGO_PKG_VERSION")));

    // 1. Adoption, with traffic from the moment the live Service first answers.
    let ns = env.namespace("release").await;
    kubectl(env, &["apply", "-n", &ns, "-f", "-"], Some(&workload("v1")));
    kubectl(env, &["apply", "-n", &ns, "-f", "-"], Some(&bluegreen()));
    let client = env.client();
    let bgs: Api<BlueGreen> = Api::namespaced(client.clone(), &ns);
    let ip = teal_testenv::wait_for("the live Service", Duration::from_secs(120), || async {
        let ip = get(env, &ns, "service", "shop", "{.spec.clusterIP}");
        if ip.is_empty() {
            Err("no Service yet".to_owned())
        } else {
            Ok(ip)
        }
    })
    .await;
    let addr: SocketAddr = format!("{ip}:8080").parse().unwrap();
    let first_answer = Instant::now() + Duration::from_secs(120);
    loop {
        match get_version(addr, "/", None) {
            Ok(v) if v == "v1" => break,
            other if Instant::now() >= first_answer => panic!("v1 on {addr}: {other:?}"),
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    let traffic = Traffic::start(addr);
    // Where the traffic stood at each step, to place a failed request in the scenario.
    let mut marks: Vec<(&str, usize)> = vec![("traffic started", 0)];
    let first = wait_healthy(&bgs, "shop", None).await;
    marks.push(("adopted, Healthy", traffic.count()));
    let probe = get(
        env,
        &ns,
        "deployment",
        "shop-router",
        "{.spec.template.spec.containers[0].readinessProbe.httpGet.path}",
    );
    assert_eq!(probe, "/readyz");
    let selector = get(env, &ns, "service", "shop", "{.spec.selector}");
    assert!(
        selector.contains("teal.dev/router"),
        "live Service selector {selector}"
    );
    let pods = kubectl(
        env,
        &[
            "-n",
            &ns,
            "get",
            "pods",
            "-o",
            "jsonpath={range .items[*]}{.spec.nodeName}{\"\\n\"}{end}",
        ],
        None,
    );
    assert!(
        pods.lines().all(|n| n == NODE_NAME) && pods.lines().count() >= 4,
        "app and router pods on the real node: {pods:?}"
    );

    // 2. A release that waits for promotion: the preview header reaches v2 only.
    kubectl(env, &["apply", "-n", &ns, "-f", "-"], Some(&workload("v2")));
    marks.push(("v2 applied", traffic.count()));
    wait_bluegreen(&bgs, "shop", "v2 awaiting promotion", 240, |st| {
        st.phase.as_deref() == Some("AwaitingPromotion")
    })
    .await;
    for _ in 0..10 {
        assert_eq!(
            get_version(addr, "/", Some((PREVIEW_HEADER, PREVIEW_VALUE))).as_deref(),
            Ok("v2")
        );
        assert_eq!(
            get_version(addr, "/", Some((PREVIEW_HEADER, "not-the-value"))).as_deref(),
            Ok("v1")
        );
    }

    // 3. The leader goes mid-release; the standby takes over; a slow request is in flight on
    // v1 when the release is promoted.
    let old_leader = leader(env);
    assert!(!old_leader.is_empty(), "no leader");
    marks.push(("leader deleted", traffic.count()));
    kubectl(
        env,
        &[
            "-n",
            "teal-system",
            "delete",
            "pod",
            &old_leader,
            "--wait=false",
        ],
        None,
    );
    teal_testenv::wait_for("a new leader", Duration::from_secs(120), || async {
        let now = leader(env);
        if !now.is_empty() && now != old_leader {
            Ok(())
        } else {
            Err(format!("holder {now:?}"))
        }
    })
    .await;
    let slow = std::thread::spawn(move || {
        let r = get_version(addr, "/sleep?ms=5000", None);
        (r, Instant::now())
    });
    std::thread::sleep(Duration::from_secs(1));
    marks.push(("promoted", traffic.count()));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_teal"))
        .env("KUBECONFIG", env.kubeconfig_path())
        .args(["promote", "shop", "-n", &ns])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "teal promote: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let old = first.active_revision.clone();
    let done = wait_bluegreen(&bgs, "shop", "v2 live and Healthy", 240, |st| {
        st.phase.as_deref() == Some("Healthy")
            && st.active_revision.is_some()
            && st.active_revision != old
    })
    .await;
    // Requests sent from here on were sent after every router replica reported the switch.
    let confirmed = Instant::now();
    marks.push(("switch confirmed", traffic.count()));
    let (slow_answer, slow_done) = slow.join().unwrap();
    assert_eq!(
        slow_answer.as_deref(),
        Ok("v1"),
        "the request in flight at the switch"
    );
    let switched = kubectl(
        env,
        &[
            "-n",
            &ns,
            "get",
            "events",
            "--field-selector",
            "reason=Switched",
            "-o",
            "jsonpath={range .items[*]}{.count} {.series.count} {.note}{.message}{\"\\n\"}{end}",
        ],
        None,
    );
    let to_green: u64 = switched
        .lines()
        .filter(|l| l.contains("green"))
        .map(|l| {
            let mut words = l.split_whitespace();
            let count = words.next().and_then(|w| w.parse().ok()).unwrap_or(1u64);
            let series = words.next().and_then(|w| w.parse().ok()).unwrap_or(0u64);
            count.max(series)
        })
        .sum();
    assert_eq!(to_green, 1, "switch events: {switched}");

    // 4. A router pod deleted under traffic.
    let pick = ["-n", &ns, "get", "pods", "-l", "teal.dev/router=shop"];
    let routers = kubectl(env, &[&pick[..], &["-o", "name"]].concat(), None);
    let router_pod = routers.lines().next().expect("a router pod").to_owned();
    let before_delete = traffic.count();
    marks.push(("router pod deleted", before_delete));
    kubectl(
        env,
        &["-n", &ns, "delete", &router_pod, "--wait=false"],
        None,
    );
    // Gone (its shutdown delay over, its process ended), then its replacement Ready.
    kubectl(
        env,
        &[
            "-n",
            &ns,
            "wait",
            "--for=delete",
            &router_pod,
            "--timeout=120s",
        ],
        None,
    );
    marks.push(("router pod gone", traffic.count()));
    kubectl(
        env,
        &[
            "-n",
            &ns,
            "rollout",
            "status",
            "deployment/shop-router",
            "--timeout=180s",
        ],
        None,
    );
    marks.push(("router rollout done", traffic.count()));
    std::thread::sleep(Duration::from_secs(8));

    // 5. The controller uninstalled: the app keeps serving.
    marks.push(("uninstall started", traffic.count()));
    helm(
        env,
        &[
            "uninstall",
            "teal",
            "-n",
            "teal-system",
            "--wait",
            "--timeout",
            "120s",
        ],
    );
    let after_uninstall = traffic.count();
    marks.push(("uninstalled", after_uninstall));
    std::thread::sleep(Duration::from_secs(5));
    let seen = traffic.stop();

    let errors: Vec<(usize, &String)> = seen
        .iter()
        .enumerate()
        .filter_map(|(i, (_, r))| r.as_ref().err().map(|e| (i, e)))
        .collect();
    let start = seen.first().map(|(t, _)| *t);
    for (i, e) in &errors {
        let step = marks
            .iter()
            .rev()
            .find(|(_, at)| at <= i)
            .map_or("", |(m, _)| m);
        let at = start.map(|s| seen[*i].0 - s).unwrap_or_default();
        eprintln!("failed request {i} at {at:.1?}, after step {step:?}: {e}");
    }
    eprintln!("steps (request count when reached): {marks:?}");
    let versions: Vec<(Instant, &str)> = seen
        .iter()
        .filter_map(|(t, r)| r.as_deref().ok().map(|v| (*t, v)))
        .collect();
    eprintln!(
        "{} requests: {} v1, {} v2, {} failed; active {:?} -> {:?}; router pod deleted at request {before_delete}, uninstalled at {after_uninstall}",
        seen.len(),
        versions.iter().filter(|(_, v)| *v == "v1").count(),
        versions.iter().filter(|(_, v)| *v == "v2").count(),
        errors.len(),
        old,
        done.active_revision
    );
    assert!(
        errors.is_empty(),
        "failed requests (index of {}, error): {errors:?}",
        seen.len()
    );
    assert!(
        seen.len() > after_uninstall + 50,
        "{} requests, {after_uninstall} before the uninstall",
        seen.len()
    );
    let switch = versions
        .iter()
        .position(|(_, v)| *v == "v2")
        .unwrap_or_else(|| panic!("v2 never answered"));
    assert!(switch > 0, "v2 answered before the release started");
    assert!(versions[..switch].iter().all(|(_, v)| *v == "v1"));
    assert!(
        versions[switch].0 < slow_done,
        "the slow request ended before the switch: not in flight at it"
    );
    let after: Vec<&str> = versions
        .iter()
        .filter(|(t, _)| *t >= confirmed)
        .map(|(_, v)| *v)
        .collect();
    assert!(
        after.len() > 100 && after.iter().all(|v| *v == "v2"),
        "after the confirmed switch: {after:?}"
    );
    drop(node);
}
