//! The real node (`scripts/control-plane run --real-node`, `scripts/cp/node.sh`): teal's image
//! runs in containerd on this machine, its Service answers on a ClusterIP from the host and is
//! balanced over both pods, a pod resolves a Service name through cluster DNS and reaches the
//! apiserver through the `kubernetes` Service, an image that was not loaded is never pulled
//! from anywhere, and stopping the node leaves the machine as it found it.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use teal_testenv::real_node::{self, NODE_IP, NODE_NAME, RealNode};

const NS: &str = "real-node";

/// The tests of this file compare the machine before and after a real node: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn run(mut cmd: Command, what: &str) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn kubectl_json(node: &RealNode, args: &[&str]) -> Value {
    let mut cmd = node.env().kubectl();
    cmd.args(args).args(["-o", "json"]);
    let out = run(cmd, &format!("kubectl {}", args.join(" ")));
    serde_json::from_slice(&out.stdout).expect("kubectl prints JSON")
}

fn apply(node: &RealNode, manifest: &Value) {
    let path = node
        .env()
        .state_dir()
        .join(format!("manifest-{}.json", rand_suffix()));
    std::fs::write(&path, serde_json::to_vec_pretty(manifest).unwrap()).unwrap();
    let mut cmd = node.env().kubectl();
    cmd.args(["apply", "-f"]).arg(&path);
    run(cmd, "kubectl apply");
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// A pod spec on the real node: `spec` plus the node selector and toleration.
fn on_real_node(mut spec: Value) -> Value {
    let placement = real_node::placement();
    for (k, v) in placement.as_object().unwrap() {
        spec[k] = v.clone();
    }
    spec
}

/// Polls `check` every half second until it returns `Some`, panicking with `what` and the
/// last state seen after `limit`.
fn wait<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        match check() {
            Ok(v) => return v,
            Err(seen) if Instant::now() >= deadline => {
                panic!("timed out after {limit:?} waiting for {what}; last seen: {seen}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

fn pod_phase(node: &RealNode, name: &str) -> Result<Value, String> {
    let mut cmd = node.env().kubectl();
    cmd.args(["-n", NS, "get", "pod", name, "-o", "json"]);
    let out = cmd.output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

/// Waits until a pod with restartPolicy Never has succeeded and returns its log.
fn finished_pod_log(node: &RealNode, name: &str) -> String {
    wait(
        &format!("pod {name} to succeed"),
        Duration::from_secs(120),
        || {
            let pod = pod_phase(node, name)?;
            match pod["status"]["phase"].as_str() {
                Some("Succeeded") => Ok(()),
                Some("Failed") => panic!("pod {name} failed: {}", pod["status"]),
                _ => Err(pod["status"].to_string()),
            }
        },
    );
    let mut cmd = node.env().kubectl();
    cmd.args(["-n", NS, "logs", name]);
    String::from_utf8_lossy(&run(cmd, &format!("kubectl logs {name}")).stdout).into_owned()
}

/// One HTTP/1.1 GET to `addr`, from this (the host's) network namespace; the response body.
fn http_get(addr: SocketAddr, path: &str) -> Result<String, String> {
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(3)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| e.to_string())?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no end of head in {response:?}"))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("not 200: {head}"));
    }
    Ok(body.to_owned())
}

fn in_pod_network(ip: &str) -> bool {
    ip.parse::<Ipv4Addr>()
        .is_ok_and(|a| a.octets()[..3] == [10, 85, 0] && a.octets()[3] > 1)
}

#[test]
fn real_node_runs_teal_behind_a_cluster_ip_resolves_services_and_leaves_nothing() {
    let _serial = serial();
    let before = real_node::snapshot().expect("snapshot before");
    let teal = real_node::teal_image().unwrap_or_else(|e| panic!("{e}"));
    let image = format!(
        "teal:{}",
        real_node::teal_image_name()
            .unwrap()
            .rsplit_once(':')
            .unwrap()
            .1
    );
    let work = std::env::temp_dir().join(format!("teal-real-node-test-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();
    let (busybox, busybox_name) = real_node::busybox_image(&work).unwrap_or_else(|e| panic!("{e}"));

    let started = Instant::now();
    let node = RealNode::start(&[&teal, &busybox]).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("real node ready in {:?}", started.elapsed());

    // The real node is Ready, labelled and tainted; the kwok node is still there.
    let nodes = kubectl_json(&node, &["get", "nodes"]);
    let items = nodes["items"].as_array().unwrap();
    let names: Vec<&str> = items
        .iter()
        .filter_map(|n| n["metadata"]["name"].as_str())
        .collect();
    assert!(names.contains(&"kwok-node-0"), "{names:?}");
    let real = items
        .iter()
        .find(|n| n["metadata"]["name"] == NODE_NAME)
        .unwrap_or_else(|| panic!("no node {NODE_NAME} in {names:?}"));
    assert_eq!(
        real["metadata"]["labels"][real_node::NODE_LABEL.0],
        real_node::NODE_LABEL.1
    );
    assert!(
        real["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True"),
        "{}",
        real["status"]["conditions"]
    );
    assert_eq!(
        real["spec"]["taints"],
        json!([{"key": "teal.dev/node", "value": "real", "effect": "NoSchedule"}])
    );
    assert!(
        real["status"]["addresses"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["type"] == "InternalIP" && a["address"] == NODE_IP),
        "{}",
        real["status"]["addresses"]
    );

    let mut create_ns = node.env().kubectl();
    create_ns.args(["create", "namespace", NS]);
    run(create_ns, "kubectl create namespace");
    wait(
        "the default service account",
        Duration::from_secs(60),
        || {
            let mut cmd = node.env().kubectl();
            cmd.args(["-n", NS, "get", "serviceaccount", "default"]);
            match cmd.output() {
                Ok(o) if o.status.success() => Ok(()),
                Ok(o) => Err(String::from_utf8_lossy(&o.stderr).into_owned()),
                Err(e) => Err(e.to_string()),
            }
        },
    );

    // teal's image runs: `teal --version` inside a container on the node.
    apply(
        &node,
        &json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "version", "namespace": NS},
            "spec": on_real_node(json!({
                "restartPolicy": "Never",
                "containers": [{"name": "teal", "image": image, "imagePullPolicy": "IfNotPresent",
                                "args": ["--version"]}],
            })),
        }),
    );
    let version = finished_pod_log(&node, "version");
    assert_eq!(
        version.trim(),
        format!("teal {}", env!("CARGO_PKG_VERSION")),
        "teal --version in the image"
    );

    // `teal sample-app`, two replicas behind a ClusterIP Service; each reports its pod's name.
    apply(
        &node,
        &json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": NS},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": on_real_node(json!({
                        "containers": [{
                            "name": "app", "image": image, "imagePullPolicy": "IfNotPresent",
                            "args": ["sample-app", "--color", "blue", "--version", "$(POD_NAME)",
                                     "--listen", "0.0.0.0", "--port", "8080"],
                            "env": [{"name": "POD_NAME",
                                     "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                            "ports": [{"containerPort": 8080}],
                            "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080},
                                               "periodSeconds": 1},
                        }],
                    })),
                },
            },
        }),
    );
    apply(
        &node,
        &json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": NS},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
        }),
    );
    let mut rollout = node.env().kubectl();
    rollout.args([
        "-n",
        NS,
        "rollout",
        "status",
        "deployment/web",
        "--timeout=180s",
    ]);
    run(rollout, "kubectl rollout status deployment/web");

    let pods = kubectl_json(&node, &["-n", NS, "get", "pods", "-l", "app=web"]);
    let mut pod_names = Vec::new();
    for pod in pods["items"].as_array().unwrap() {
        assert_eq!(pod["spec"]["nodeName"], NODE_NAME, "{}", pod["metadata"]);
        let ip = pod["status"]["podIP"].as_str().unwrap_or_default();
        assert!(
            in_pod_network(ip),
            "pod IP {ip} is not on the node's bridge"
        );
        pod_names.push(pod["metadata"]["name"].as_str().unwrap().to_owned());
    }
    assert_eq!(pod_names.len(), 2, "{pod_names:?}");

    let svc = kubectl_json(&node, &["-n", NS, "get", "service", "web"]);
    let cluster_ip = svc["spec"]["clusterIP"].as_str().unwrap().to_owned();
    let addr: SocketAddr = format!("{cluster_ip}:80").parse().unwrap();
    assert!(cluster_ip.starts_with("10.96."), "{cluster_ip}");
    // From the host, through kube-proxy's rules: both pods answer within a few requests.
    let mut seen = std::collections::BTreeSet::new();
    wait(
        "both pods to answer on the ClusterIP",
        Duration::from_secs(60),
        || {
            let body = http_get(addr, "/")?;
            let v: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
            assert_eq!(v["color"], "blue", "{body}");
            seen.insert(v["version"].as_str().unwrap_or_default().to_owned());
            if seen.len() == 2 {
                Ok(())
            } else {
                Err(format!("answered by {seen:?}"))
            }
        },
    );
    let mut expected: Vec<String> = pod_names.clone();
    expected.sort();
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), expected);

    // Inside a pod: the Service by its short name (cluster DNS and the search path the kubelet
    // writes), its full name, and the apiserver through the `kubernetes` Service (TLS answers a
    // plain HTTP request with 400, which shows the connection got there).
    apply(
        &node,
        &json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "client", "namespace": NS},
            "spec": on_real_node(json!({
                "restartPolicy": "Never",
                "containers": [{
                    "name": "busybox", "image": busybox_name, "imagePullPolicy": "IfNotPresent",
                    "args": ["sh", "-c", format!(
                        "cat /etc/resolv.conf; echo ---; wget -q -O - http://web/; echo; echo ---; \
                         nslookup web.{NS}.svc.cluster.local; echo ---; \
                         wget -q -O - http://kubernetes.default.svc:443/ 2>&1; true")],
                }],
            })),
        }),
    );
    let log = finished_pod_log(&node, "client");
    let parts: Vec<&str> = log.split("---\n").collect();
    assert_eq!(parts.len(), 4, "{log}");
    assert!(
        parts[0].contains(&format!("nameserver {NODE_IP}"))
            && parts[0].contains(&format!(
                "search {NS}.svc.cluster.local svc.cluster.local cluster.local"
            )),
        "resolv.conf in the pod:\n{}",
        parts[0]
    );
    let body: Value = serde_json::from_str(parts[1].trim())
        .unwrap_or_else(|e| panic!("wget http://web/ in a pod: {e}:\n{log}"));
    assert_eq!(body["color"], "blue", "{log}");
    assert!(
        parts[2].contains(&format!("Address: {cluster_ip}")),
        "nslookup in a pod:\n{}",
        parts[2]
    );
    assert!(
        parts[3].contains("400 Bad Request"),
        "the apiserver through the kubernetes Service:\n{}",
        parts[3]
    );

    // An image that was not loaded is not pulled: the runtime's only way out is a closed
    // loopback port.
    apply(
        &node,
        &json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "not-loaded", "namespace": NS},
            "spec": on_real_node(json!({
                "containers": [{"name": "c", "image": "registry.invalid/not-loaded:1",
                                "imagePullPolicy": "IfNotPresent"}],
            })),
        }),
    );
    let message = wait(
        "the pull of an image that was not loaded to fail",
        Duration::from_secs(60),
        || {
            let pod = pod_phase(&node, "not-loaded")?;
            let waiting = &pod["status"]["containerStatuses"][0]["state"]["waiting"];
            match waiting["reason"].as_str() {
                Some("ErrImagePull" | "ImagePullBackOff") => {
                    Ok(waiting["message"].as_str().unwrap_or_default().to_owned())
                }
                _ => Err(pod["status"].to_string()),
            }
        },
    );
    assert!(message.contains("127.0.0.1:9"), "{message}");

    let stopping = Instant::now();
    node.stop();
    eprintln!("real node stopped and cleaned in {:?}", stopping.elapsed());
    let after = real_node::snapshot().expect("snapshot after");
    assert_eq!(
        before, after,
        "the machine differs after the real node stopped (left: before, right: after)"
    );
    let _ = std::fs::remove_dir_all(&work);
}

/// Set in the child process of the test below.
const ABORT_CHILD: &str = "TEAL_REAL_NODE_TEST_ABORT";

/// A test process that dies with the real node up (abort: no unwinding, no Drop) still
/// leaves nothing: the supervisor sees its pipe close and cleans up.
#[test]
fn a_test_process_that_dies_with_the_real_node_up_leaves_nothing() {
    if std::env::var_os(ABORT_CHILD).is_some() {
        let _node = RealNode::start(&[]).unwrap_or_else(|e| panic!("{e}"));
        assert!(std::path::Path::new("/run/teal-node/owner").exists());
        eprintln!("child: the real node is up; aborting");
        std::process::abort();
    }
    let _serial = serial();
    let before = real_node::snapshot().expect("snapshot before");
    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_test_process_that_dies_with_the_real_node_up_leaves_nothing",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ABORT_CHILD, "1")
        .output()
        .expect("running the child test process");
    let stderr = String::from_utf8_lossy(&child.stderr);
    assert!(
        !child.status.success() && stderr.contains("child: the real node is up; aborting"),
        "the child did not bring the node up and abort ({}):\n{stderr}",
        child.status
    );
    wait(
        "the machine to be as before the child started its node",
        Duration::from_secs(90),
        || {
            let now = real_node::snapshot().map_err(|e| e.to_string())?;
            if now == before { Ok(()) } else { Err(now) }
        },
    );
}
