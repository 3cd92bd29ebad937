//! A release with router type `teal` under real traffic, everything in containers on the real
//! node: the controller installed with Helm (router image: its own, `TEAL_ROUTER_IMAGE`), the
//! workload (`teal sample-app`), and the router pods the controller creates. The test sends
//! requests from the host to the live Service's ClusterIP the whole time and releases v2:
//! every request is answered, by v1 until the switch and by v2 after it.

mod k8s_support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_support::{deploy_path, kubectl, wait_bluegreen, wait_healthy};
use kube::Api;
use teal_api::BlueGreen;
use teal_testenv::real_node::{self, NODE_NAME, RealNode};

/// One GET on a fresh connection; the `version` the app reported.
fn get_version(addr: SocketAddr) -> Result<String, String> {
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(3)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: shop\r\nConnection: close\r\n\r\n")
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

const BLUEGREEN: &str = r#"
apiVersion: teal.dev/v1alpha1
kind: BlueGreen
metadata: {name: shop}
spec:
  workloadRef: {kind: Deployment, name: shop}
  scaleDownDelay: 5s
  router:
    type: teal
    teal: {replicas: 2}
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_teal_router_release_on_the_real_node_answers_every_request() {
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

    let helm =
        std::env::var_os("TEAL_HELM").expect("TEAL_HELM is not set (scripts/control-plane env)");
    let router_image = format!("teal:{}", env!("CARGO_PKG_VERSION"));
    let out = std::process::Command::new(helm)
        .env("KUBECONFIG", env.kubeconfig_path())
        .args([
            "install",
            "teal",
            deploy_path("helm/teal").to_str().unwrap(),
        ])
        .args([
            "-n",
            "teal-system",
            "--create-namespace",
            "--wait",
            "--timeout",
            "300s",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "helm install: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    kubectl(
        env,
        &[
            "-n",
            "teal-system",
            "set",
            "env",
            "deployment/teal",
            &format!("TEAL_ROUTER_IMAGE={router_image}"),
        ],
        None,
    );
    kubectl(
        env,
        &[
            "-n",
            "teal-system",
            "rollout",
            "status",
            "deployment/teal",
            "--timeout=180s",
        ],
        None,
    );

    let ns = env.namespace("release").await;
    kubectl(env, &["apply", "-n", &ns, "-f", "-"], Some(&workload("v1")));
    kubectl(env, &["apply", "-n", &ns, "-f", "-"], Some(BLUEGREEN));
    let client = env.client();
    let bgs: Api<BlueGreen> = Api::namespaced(client.clone(), &ns);
    let first = wait_healthy(&bgs, "shop", None).await;
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

    // A router replica is Ready (TCP probe on its port) before it has installed its first
    // route table, and answers 503 until then; the BlueGreen counts only replicas that were
    // ready when it confirmed. Measure the release, not that start-up gap: wait until every
    // replica answers on its own pod address.
    let router_ips = kubectl(
        env,
        &[
            "-n",
            &ns,
            "get",
            "pods",
            "-l",
            "teal.dev/router=shop",
            "-o",
            "jsonpath={.items[*].status.podIP}",
        ],
        None,
    );
    assert_eq!(router_ips.split_whitespace().count(), 2, "{router_ips}");
    for router_ip in router_ips.split_whitespace() {
        let at: SocketAddr = format!("{router_ip}:8080").parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match get_version(at) {
                Ok(v) if v == "v1" => break,
                other if Instant::now() >= deadline => panic!("router replica {at}: {other:?}"),
                _ => std::thread::sleep(Duration::from_millis(300)),
            }
        }
    }
    let ip = kubectl(
        env,
        &[
            "-n",
            &ns,
            "get",
            "service",
            "shop",
            "-o",
            "jsonpath={.spec.clusterIP}",
        ],
        None,
    );
    let addr: SocketAddr = format!("{ip}:8080").parse().unwrap();
    // Traffic from the host through kube-proxy to the router pods, until told to stop.
    let first_answer = Instant::now() + Duration::from_secs(60);
    loop {
        match get_version(addr) {
            Ok(v) if v == "v1" => break,
            other if Instant::now() >= first_answer => panic!("v1 on {addr}: {other:?}"),
            _ => std::thread::sleep(Duration::from_millis(300)),
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let seen: Arc<Mutex<Vec<Result<String, String>>>> = Arc::default();
    let traffic = {
        let (stop, seen) = (stop.clone(), seen.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let answer = get_version(addr);
                seen.lock().unwrap().push(answer);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };

    tokio::time::sleep(Duration::from_secs(2)).await;
    kubectl(env, &["apply", "-n", &ns, "-f", "-"], Some(&workload("v2")));
    let old = first.active_revision.clone();
    let done = wait_bluegreen(&bgs, "shop", "v2 live and Healthy", 240, |st| {
        st.phase.as_deref() == Some("Healthy")
            && st.active_revision.is_some()
            && st.active_revision != old
    })
    .await;
    // Requests sent from here on were sent after every router replica reported the switch.
    let confirmed = seen.lock().unwrap().len() + 1;
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    traffic.join().unwrap();
    let seen = std::mem::take(&mut *seen.lock().unwrap());

    let errors: Vec<(usize, &String)> = seen
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.as_ref().err().map(|e| (i, e)))
        .collect();
    let versions: Vec<&str> = seen.iter().filter_map(|r| r.as_deref().ok()).collect();
    eprintln!(
        "{} requests during the release: {} v1, {} v2, {} failed; active {:?} -> {:?}",
        seen.len(),
        versions.iter().filter(|v| **v == "v1").count(),
        versions.iter().filter(|v| **v == "v2").count(),
        errors.len(),
        old,
        done.active_revision
    );
    assert!(
        errors.is_empty(),
        "failed requests (index of {}, error) during the release: {errors:?}",
        seen.len()
    );
    assert!(seen.len() >= 50, "only {} requests", seen.len());
    // v1 until the switch; v2 from the first v2 answer on, except from a router replica
    // that had not installed the new table yet; only v2 once the switch was confirmed.
    let switch = versions
        .iter()
        .position(|v| *v == "v2")
        .unwrap_or_else(|| panic!("v2 never answered: {versions:?}"));
    assert!(switch > 0, "v2 answered before the release started");
    assert!(
        versions[..switch].iter().all(|v| *v == "v1"),
        "{versions:?}"
    );
    assert!(
        versions[confirmed.min(versions.len())..]
            .iter()
            .all(|v| *v == "v2")
            && versions.len() > confirmed,
        "after the confirmed switch (request {confirmed}): {:?}",
        &versions[switch..]
    );
    drop(node);
}
