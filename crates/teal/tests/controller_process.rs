//! The `teal controller` binary against the real control plane: killed
//! mid-release it resumes and finishes each release exactly once; two
//! replicas share one Lease and never act at once.

mod k8s_support;

use std::net::TcpListener;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_support::{
    ControllerProcess, apply_deploy_files, kubectl, live_color, set_image, wait_healthy,
    workload_and_bluegreen,
};
use kube::Api;
use teal_api::BlueGreen;
use teal_testenv::{TestEnv, wait_for};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Installs deploy/crd.yaml (the file users apply) and a workload + BlueGreen.
async fn setup(env: &TestEnv, prefix: &str, bg_extra: &str) -> String {
    apply_deploy_files(env, &["crd.yaml"]);
    let ns = env.namespace(prefix).await;
    let manifest = workload_and_bluegreen(
        "shop",
        &format!("  scaleDownDelay: 2s\n  progressDeadline: 60s\n{bg_extra}\n"),
    );
    kubectl(env, &["apply", "-n", &ns, "-f", "-"], Some(&manifest));
    ns
}

async fn status(api: &Api<BlueGreen>) -> teal_api::BlueGreenStatus {
    api.get("shop").await.unwrap().status.unwrap_or_default()
}

/// The revision teal computes for the workload's current pod template.
async fn workload_revision(deps: &Api<Deployment>) -> String {
    let d = deps.get("shop").await.unwrap();
    teal_controller::objects::revision_of(&d.spec.template)
}

async fn wait_healthy_at(
    api: &Api<BlueGreen>,
    revision: Option<&str>,
) -> teal_api::BlueGreenStatus {
    wait_healthy(api, "shop", revision).await
}

#[tokio::test]
async fn killed_mid_release_the_controller_resumes_and_finishes_exactly_once() {
    let env = TestEnv::shared();
    let ns = setup(env, "kill", "").await;
    let client = env.client();
    let bgs: Api<BlueGreen> = Api::namespaced(client.clone(), &ns);
    let deps: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let args = ["--no-leader-election", "--metrics-addr", "127.0.0.1:0"];
    let mut ctl = ControllerProcess::start(env, &ns, &args);
    wait_healthy_at(&bgs, None).await;

    // Kill the controller at different points of four releases.
    let kill_after_ms = [150u64, 600, 1200, 2500];
    for (i, delay) in kill_after_ms.iter().enumerate() {
        set_image(&deps, "shop", &format!("shop:{}", i + 2)).await;
        tokio::time::sleep(Duration::from_millis(*delay)).await;
        ctl.kill();
        let seen = status(&bgs).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        ctl = ControllerProcess::start(env, &ns, &args);
        let want = workload_revision(&deps).await;
        let st = wait_healthy_at(&bgs, Some(&want)).await;
        let rev = st.active_revision.clone().unwrap();
        let records: Vec<_> = st.history.iter().filter(|h| h.revision == rev).collect();
        assert_eq!(
            records.len(),
            1,
            "killed in {:?}: {:?}",
            seen.phase,
            st.history
        );
        assert_eq!(records[0].outcome, "promoted");
        assert_eq!(
            live_color(&client, &ns, "shop").await.as_deref(),
            st.active_color.map(|c| c.as_str())
        );
    }
    let st = status(&bgs).await;
    assert_eq!(
        st.history
            .iter()
            .filter(|h| h.outcome == "promoted")
            .count(),
        4,
        "{:?}",
        st.history
    );
}

#[tokio::test]
async fn two_controllers_share_one_lease() {
    let env = TestEnv::shared();
    let ns = setup(env, "lease", "").await;
    let client = env.client();
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let bgs: Api<BlueGreen> = Api::namespaced(client.clone(), &ns);
    let deps: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let ports = [free_port(), free_port()];
    let start = |id: &str, port: u16| {
        ControllerProcess::start(
            env,
            &ns,
            &[
                "--lease-namespace",
                &ns,
                "--lease-seconds",
                "3",
                "--identity",
                id,
                "--metrics-addr",
                &format!("127.0.0.1:{port}"),
            ],
        )
    };
    let a = start("a", ports[0]);
    let b = start("b", ports[1]);
    let holder = wait_for("a leader", Duration::from_secs(30), || async {
        let l = leases
            .get_opt("teal-controller")
            .await
            .map_err(|e| e.to_string())?;
        l.and_then(|l| l.spec?.holder_identity)
            .ok_or("no holder yet".to_string())
    })
    .await;
    wait_healthy_at(&bgs, None).await;

    let readyz = |port: u16| async move {
        let url = format!("http://127.0.0.1:{port}/readyz");
        teal_local::http::request("GET", &url, None, None, Duration::from_secs(5))
            .await
            .map(|a| a.status)
            .unwrap_or(0)
    };
    let (leader_port, follower_port) = if holder == "a" {
        (ports[0], ports[1])
    } else {
        (ports[1], ports[0])
    };
    wait_for("the leader's /readyz", Duration::from_secs(10), || async {
        if readyz(leader_port).await == 200 {
            Ok(())
        } else {
            Err("not 200")
        }
    })
    .await;
    assert_eq!(
        readyz(follower_port).await,
        503,
        "the follower is not ready: it does not act"
    );
    let metrics = teal_local::http::get(
        &format!("http://127.0.0.1:{leader_port}/metrics"),
        None,
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains("teal_controller_reconciles_total"),
        "{metrics}"
    );
    assert!(
        metrics.contains("teal_controller_reconcile_duration_seconds_bucket"),
        "{metrics}"
    );

    // The leader dies; the other takes over and finishes the next release.
    let (leader, follower) = if holder == "a" { (a, b) } else { (b, a) };
    leader.kill();
    let new_holder = wait_for("a new leader", Duration::from_secs(30), || async {
        let l = leases
            .get("teal-controller")
            .await
            .map_err(|e| e.to_string())?;
        let h = l.spec.and_then(|s| s.holder_identity).unwrap_or_default();
        if h != holder {
            Ok(h)
        } else {
            Err(format!("still {h}"))
        }
    })
    .await;
    assert_ne!(new_holder, holder);
    set_image(&deps, "shop", "shop:2").await;
    let want = workload_revision(&deps).await;
    let st = wait_healthy_at(&bgs, Some(&want)).await;
    assert_eq!(
        st.history
            .iter()
            .filter(|h| h.outcome == "promoted")
            .count(),
        1
    );
    drop(follower);
}

async fn http_status(port: u16, path: &str) -> (u16, String) {
    let url = format!("http://127.0.0.1:{port}{path}");
    match teal_local::http::request("GET", &url, None, None, Duration::from_secs(5)).await {
        Ok(a) => (a.status, String::from_utf8_lossy(&a.body).into_owned()),
        Err(e) => (0, e.to_string()),
    }
}

/// A BlueGreen whose pre-promotion checks call a rollout webhook that
/// never answers (with an hour's timeout): the listener accepts connections
/// (non-blocking `accept`) and never answers them.
async fn setup_with_hanging_hook(env: &TestEnv, prefix: &str) -> (TcpListener, String) {
    let hang = TcpListener::bind("127.0.0.1:0").unwrap();
    hang.set_nonblocking(true).unwrap();
    let port = hang.local_addr().unwrap().port();
    let ns = setup(
        env,
        prefix,
        &format!(
            "  analysis:\n    prePromotion:\n      interval: 1s\n      checks: 3\n      metrics:\n        - {{name: errors, prometheus: {{address: \"http://127.0.0.1:1\", query: \"vector(0)\"}}, max: 1}}\n  webhooks:\n    - {{name: load, type: rollout, url: \"http://127.0.0.1:{port}/\", timeout: 1h, retries: 0}}\n"
        ),
    )
    .await;
    (hang, ns)
}

/// Everything a controller needs in namespace `ns` but Pods: a
/// ServiceAccount `no-pods` with such a Role; returns the path of a
/// kubeconfig with its token.
fn no_pods_account(env: &TestEnv, ns: &str) -> std::path::PathBuf {
    let manifest = "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: no-pods}\n---\n\
apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {name: no-pods}\nrules:\n\
- {apiGroups: [teal.dev], resources: [bluegreens, bluegreens/status, bluegreens/finalizers], verbs: ['*']}\n\
- {apiGroups: [apps], resources: [deployments, replicasets], verbs: ['*']}\n\
- {apiGroups: [''], resources: [services, secrets], verbs: ['*']}\n\
- {apiGroups: [events.k8s.io], resources: [events], verbs: ['*']}\n---\n\
apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {name: no-pods}\n\
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: no-pods}\n\
subjects: [{kind: ServiceAccount, name: no-pods}]\n";
    kubectl(env, &["apply", "-n", ns, "-f", "-"], Some(manifest));
    k8s_support::service_account_kubeconfig(
        env,
        ns,
        "no-pods",
        &std::env::temp_dir().join(format!("teal-wedge-{ns}")),
    )
}

/// A controller whose reconciles are due and none finishes fails
/// `/healthz` (so the liveness probe restarts it), while an idle controller
/// stays healthy however long it idles. Webhooks and analysis checks run
/// in the background and wedge nothing any more: here reconciles wait for
/// caches that never fill, as the controller may not list Pods.
#[tokio::test]
async fn healthz_fails_when_reconciles_are_due_and_none_finishes() {
    let env = TestEnv::shared();
    let ns = setup(env, "wedge", "").await;
    let client = env.client();
    let bgs: Api<BlueGreen> = Api::namespaced(client.clone(), &ns);
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let args = [
        "--no-leader-election",
        "--metrics-addr",
        &addr,
        "--concurrency",
        "1",
        "--stall-seconds",
        "6",
    ];
    let ctl = ControllerProcess::start(env, &ns, &args);
    wait_healthy_at(&bgs, None).await;
    // Idle for longer than the stall limit: alive.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(http_status(port, "/healthz").await.0, 200);
    ctl.kill();

    // The same BlueGreen, reconciled by a controller that cannot list Pods.
    let kubeconfig = no_pods_account(env, &ns);
    let _ctl = ControllerProcess::start_logging(
        env,
        &ns,
        &args,
        &[
            ("TEAL_LOG", Some("info")),
            ("KUBECONFIG", kubeconfig.to_str()),
        ],
    );
    let (code, body) = wait_for("/healthz to fail", Duration::from_secs(60), || async {
        let (code, body) = http_status(port, "/healthz").await;
        if code == 503 {
            Ok((code, body))
        } else {
            Err(format!("{code} {body}"))
        }
    })
    .await;
    assert!(
        body.contains("wedged") && body.contains("6s"),
        "{code} {body}"
    );
}

/// SIGTERM ends the controller within `--shutdown-timeout` even while an
/// analysis check waits for a webhook that never answers (in the
/// background); a standby waiting for the lease stops at once.
#[tokio::test]
async fn sigterm_ends_the_controller_within_its_shutdown_timeout() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let env = TestEnv::shared();
    let (hang, ns) = setup_with_hanging_hook(env, "sigterm").await;
    let client = env.client();
    let bgs: Api<BlueGreen> = Api::namespaced(client.clone(), &ns);
    let deps: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let lease_args = |id: &'static str| {
        [
            "--lease-namespace".to_string(),
            ns.clone(),
            "--lease-seconds".into(),
            "30".into(),
            "--identity".into(),
            id.into(),
            "--metrics-addr".into(),
            "127.0.0.1:0".into(),
            "--shutdown-timeout".into(),
            "3".into(),
        ]
    };
    let leader_args = lease_args("leader");
    let leader_args: Vec<&str> = leader_args.iter().map(String::as_str).collect();
    let mut leader = ControllerProcess::start(env, &ns, &leader_args);
    wait_healthy_at(&bgs, None).await;
    let standby_args = lease_args("standby");
    let standby_args: Vec<&str> = standby_args.iter().map(String::as_str).collect();
    let mut standby = ControllerProcess::start(env, &ns, &standby_args);

    // The leader's analysis check now waits for the hook (up to an hour).
    set_image(&deps, "shop", "shop:2").await;
    // Accepted and kept open, never answered.
    let _call = wait_for("the hook to be called", Duration::from_secs(60), || {
        let c = hang.accept().map_err(|e| e.to_string());
        async move { c }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    for (who, p, bound) in [
        ("standby", &mut standby, Duration::from_secs(2)),
        ("leader", &mut leader, Duration::from_secs(3 + 3)),
    ] {
        let pid = Pid::from_raw(p.0.id() as i32);
        let sent = std::time::Instant::now();
        kill(pid, Signal::SIGTERM).unwrap();
        let status = wait_for(
            &format!("the {who} to exit"),
            Duration::from_secs(30),
            || {
                let s = p.exited();
                async move { s.ok_or("still running") }
            },
        )
        .await;
        let took = sent.elapsed();
        assert!(
            took <= bound,
            "the {who} took {took:?} to exit after SIGTERM ({status:?}); log {}",
            ControllerProcess::log_path(&ns).display()
        );
    }
}

/// Writes the Lease as a holder named `holder` whose clock is `skew` off
/// would: renewed now, by its clock.
async fn renew_as(leases: &Api<Lease>, holder: &str, skew: i64) {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
    let now = k8s_openapi::jiff::Timestamp::now()
        .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(skew))
        .unwrap();
    let mut lease = leases
        .get_opt("teal-controller")
        .await
        .unwrap()
        .unwrap_or_default();
    lease.metadata.name = Some("teal-controller".into());
    let spec = lease.spec.get_or_insert_with(Default::default);
    spec.holder_identity = Some(holder.into());
    spec.lease_duration_seconds = Some(3);
    spec.renew_time = Some(MicroTime(now));
    let r = if lease.metadata.resource_version.is_some() {
        leases
            .replace("teal-controller", &Default::default(), &lease)
            .await
    } else {
        leases.create(&Default::default(), &lease).await
    };
    r.unwrap();
}

async fn holder(leases: &Api<Lease>) -> String {
    leases
        .get("teal-controller")
        .await
        .unwrap()
        .spec
        .and_then(|s| s.holder_identity)
        .unwrap_or_default()
}

/// A candidate judges the holder's lease by how long it went unchanged, by
/// its own clock: a holder whose clock is 30 s behind (its renew times look
/// expired) keeps its lease while it renews, and one whose clock is 30 s
/// ahead (its last renew time looks fresh for 30 s more) is taken over
/// within about a lease duration after it stopped renewing.
#[tokio::test]
async fn leader_election_judges_the_holder_by_its_own_clock() {
    let env = TestEnv::shared();
    let ns = setup(env, "skew", "").await;
    let client = env.client();
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    renew_as(&leases, "behind", -30).await;
    let _candidate = ControllerProcess::start(
        env,
        &ns,
        &[
            "--lease-namespace",
            &ns,
            "--lease-seconds",
            "3",
            "--identity",
            "candidate",
            "--metrics-addr",
            "127.0.0.1:0",
        ],
    );
    // Renewed every second for ten seconds: never taken.
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(holder(&leases).await, "behind", "taken while renewed");
        renew_as(&leases, "behind", -30).await;
    }
    // A holder 30 s ahead renews once more, then dies.
    renew_as(&leases, "ahead", 30).await;
    let stopped = std::time::Instant::now();
    wait_for("the candidate to lead", Duration::from_secs(60), || async {
        match holder(&leases).await.as_str() {
            "candidate" => Ok(()),
            h => Err(format!("held by {h}")),
        }
    })
    .await;
    let took = stopped.elapsed();
    assert!(
        took < Duration::from_secs(15),
        "took over {took:?} after the last renewal (a 3 s lease)"
    );
}

/// At its default level the controller logs each release step with its
/// BlueGreen and revision; `RUST_LOG` sets the level when `TEAL_LOG` does
/// not.
#[tokio::test]
async fn the_log_says_what_each_release_does_at_the_default_level() {
    let env = TestEnv::shared();
    let ns = setup(env, "logs", "").await;
    let client = env.client();
    let bgs: Api<BlueGreen> = Api::namespaced(client.clone(), &ns);
    let deps: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let args = ["--no-leader-election", "--metrics-addr", "127.0.0.1:0"];
    let log = ControllerProcess::log_path(&ns);
    let read = || std::fs::read_to_string(&log).unwrap_or_default();

    let ctl = ControllerProcess::start_logging(env, &ns, &args, &[]);
    wait_healthy_at(&bgs, None).await;
    let v2 = set_image(&deps, "shop", "shop:2").await;
    wait_healthy_at(&bgs, Some(&v2)).await;
    ctl.kill();
    let text = read();
    let switched = text
        .lines()
        .find(|l| l.contains("production traffic switched to green"))
        .unwrap_or_else(|| panic!("no switch in the log:\n{text}"));
    assert!(
        switched.contains("INFO")
            && switched.contains(&format!("{ns}/shop"))
            && switched.contains(&v2),
        "{switched}"
    );

    // RUST_LOG=warn: release steps are not logged.
    std::fs::write(&log, "").unwrap();
    let ctl = ControllerProcess::start_logging(env, &ns, &args, &[("RUST_LOG", Some("warn"))]);
    let v3 = set_image(&deps, "shop", "shop:3").await;
    wait_healthy_at(&bgs, Some(&v3)).await;
    ctl.kill();
    let text = read();
    assert!(
        !text.contains("production traffic switched"),
        "RUST_LOG=warn still logged release steps:\n{text}"
    );
}
