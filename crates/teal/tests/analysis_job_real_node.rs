//! A `job` metric on the real node: the pre-promotion analysis of a BlueGreen (router type
//! `service`) runs a smoke test as a Kubernetes Job, in busybox, against the idle color. The
//! test reads `$TEAL_PREVIEW_URL/status` with `$TEAL_PREVIEW_HEADER` and passes when the idle
//! color answers `ok …` and differs from the live one (so it reached the idle color through
//! the environment teal gave it). The app is busybox's httpd serving a status file.
//!
//! 1. A good release (v2 answers `ok v2`) is promoted: the metric's value is 1.
//! 2. A bad release (v3 answers `broken v3`) is rolled back before any production traffic:
//!    the metric's value is 0, and status names the Job's failure and its log's last line.
//!
//! After each, the Job and its pods are gone.

mod k8s_support;

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_support::{ControllerProcess, apply_deploy_files, kubectl, wait_bluegreen, wait_healthy};
use kube::Api;
use kube::api::ListParams;
use teal_api::BlueGreen;
use teal_testenv::real_node::{self, NODE_NAME, RealNode};

const PREVIEW_HEADER: &str = "x-shop-preview";
const PREVIEW_VALUE: &str = "let-me-in";

/// The app: busybox httpd serving `/status` with `status` in it.
fn workload(busybox: &str, status: &str) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: shop}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: shop}}}}
  template:
    metadata: {{labels: {{app: shop}}}}
    spec:
      containers:
      - name: app
        image: {busybox}
        imagePullPolicy: IfNotPresent
        args: [sh, -c, 'echo "$STATUS" > /www/status && exec httpd -f -p 8080 -h /www']
        env: [{{name: STATUS, value: "{status}"}}]
        ports: [{{name: http, containerPort: 8080}}]
        readinessProbe: {{httpGet: {{path: /status, port: 8080}}, periodSeconds: 1}}
        volumeMounts: [{{name: www, mountPath: /www}}]
      volumes: [{{name: www, emptyDir: {{}}}}]
"#
    )
}

/// The smoke test: the idle color through the preview URL and header must answer `ok …`, and
/// not what the live color answers.
const SMOKE: &str = r#"echo "testing $TEAL_COLOR ($TEAL_REVISION, $TEAL_STAGE) at $TEAL_PREVIEW_URL"
for i in 1 2 3 4 5; do
  s=$(wget -q -O- --header "$TEAL_PREVIEW_HEADER" "$TEAL_PREVIEW_URL/status") && break
  sleep 1
done
live=$(wget -q -O- "http://$TEAL_SERVICE:8080/status")
case "$s" in
  ok*) [ "$s" != "$live" ] || { echo "smoke: $TEAL_PREVIEW_URL/status answered the live color: $s"; exit 1; } ;;
  *) echo "smoke: $TEAL_PREVIEW_URL/status answered ${s:-nothing}"; exit 1 ;;
esac
echo "smoke: passed ($s)"
"#;

fn bluegreen(busybox: &str) -> String {
    let smoke = serde_json::to_string(SMOKE).unwrap();
    format!(
        r#"
apiVersion: teal.dev/v1alpha1
kind: BlueGreen
metadata: {{name: shop}}
spec:
  workloadRef: {{kind: Deployment, name: shop}}
  scaleDownDelay: 0s
  preview:
    header: {{name: {PREVIEW_HEADER}, value: {PREVIEW_VALUE}}}
  router: {{type: service}}
  analysis:
    prePromotion:
      interval: 1s
      checks: 1
      metrics:
      - name: smoke
        job:
          activeDeadlineSeconds: 120
          template:
            spec:
              containers:
              - name: smoke
                image: {busybox}
                imagePullPolicy: IfNotPresent
                args: [sh, -c, {smoke}]
"#
    )
}

/// Waits until no Job of the BlueGreen and no pod of such a Job is left.
async fn no_jobs_left(client: &kube::Client, ns: &str) {
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let lp = ListParams::default().labels("teal.dev/analysis-of=shop");
    teal_testenv::wait_for("the Job and its pods gone", Duration::from_secs(90), || {
        let (jobs, pods, lp) = (jobs.clone(), pods.clone(), lp.clone());
        async move {
            let j = jobs.list(&lp).await.map_err(|e| e.to_string())?.items;
            let p = pods.list(&lp).await.map_err(|e| e.to_string())?.items;
            if j.is_empty() && p.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "jobs {:?}, pods {:?}",
                    j.iter()
                        .map(|j| j.metadata.name.clone())
                        .collect::<Vec<_>>(),
                    p.iter()
                        .map(|p| p.metadata.name.clone())
                        .collect::<Vec<_>>()
                ))
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_metric_promotes_a_good_release_and_rolls_back_a_bad_one() {
    let work = std::env::temp_dir().join(format!("teal-analysis-job-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();
    let (archive, busybox) = real_node::busybox_image(&work).unwrap_or_else(|e| panic!("{e}"));
    let node = tokio::task::spawn_blocking(move || RealNode::start(&[&archive]))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}"));
    let env = node.env();
    // Every pod on the real node: its taint off, the kwok node cordoned (the Job's pod
    // template carries no placement of its own, as a user's would not).
    kubectl(env, &["taint", "node", NODE_NAME, "teal.dev/node-"], None);
    kubectl(env, &["cordon", "kwok-node-0"], None);
    apply_deploy_files(env, &["crd.yaml"]);

    let ns = env.namespace("job").await;
    let _controller = ControllerProcess::start(env, &ns, &[]);
    let client = env.client();
    let bgs: Api<BlueGreen> = Api::namespaced(client.clone(), &ns);
    let deps: Api<k8s_openapi::api::apps::v1::Deployment> = Api::namespaced(client.clone(), &ns);
    kubectl(
        env,
        &["apply", "-n", &ns, "-f", "-"],
        Some(&workload(&busybox, "ok v1")),
    );
    kubectl(
        env,
        &["apply", "-n", &ns, "-f", "-"],
        Some(&bluegreen(&busybox)),
    );
    let v1 = wait_healthy(&bgs, "shop", None).await.active_revision;

    // 1. A good release: the Job passes, v2 goes live.
    kubectl(
        env,
        &["apply", "-n", &ns, "-f", "-"],
        Some(&workload(&busybox, "ok v2")),
    );
    let v2 = teal_controller::objects::revision_of(&deps.get("shop").await.unwrap().spec.template);
    assert_ne!(Some(&v2), v1.as_ref());
    let st = wait_healthy(&bgs, "shop", Some(&v2)).await;
    let a = st.analysis.expect("analysis in status");
    assert_eq!(a.revision, v2);
    let smoke = a.metrics.iter().find(|m| m.name == "smoke").unwrap();
    eprintln!("good release: smoke = {:?} ({:?})", smoke.value, smoke.note);
    assert_eq!(smoke.value, Some(1.0), "{smoke:?}");
    let note = smoke.note.as_deref().unwrap_or_default();
    assert!(note.contains("succeeded"), "{note}");
    let h = st.history.last().expect("the release in history");
    assert_eq!(
        (h.revision.as_str(), h.outcome.as_str()),
        (v2.as_str(), "promoted")
    );
    eprintln!(
        "good release: promoted {} ms after it started",
        h.ended_at - h.started_at
    );
    no_jobs_left(&client, &ns).await;

    // 2. A bad release: the Job fails, v3 never goes live.
    kubectl(
        env,
        &["apply", "-n", &ns, "-f", "-"],
        Some(&workload(&busybox, "broken v3")),
    );
    let v3 = teal_controller::objects::revision_of(&deps.get("shop").await.unwrap().spec.template);
    let st = wait_bluegreen(&bgs, "shop", "the bad release ended", 240, |st| {
        st.analysis
            .as_ref()
            .is_some_and(|a| a.revision == v3 && a.verdict.is_some())
            && st.phase.as_deref() != Some("Previewing")
    })
    .await;
    eprintln!("bad release: phase {:?}, {:?}", st.phase, st.message);
    assert_eq!(st.phase.as_deref(), Some("RolledBack"));
    assert_eq!(st.active_revision.as_deref(), Some(v2.as_str()));
    let a = st.analysis.unwrap();
    let smoke = a.metrics.iter().find(|m| m.name == "smoke").unwrap();
    eprintln!("bad release: smoke = {:?} ({:?})", smoke.value, smoke.note);
    assert_eq!(smoke.value, Some(0.0), "{smoke:?}");
    let note = smoke.note.as_deref().unwrap_or_default();
    assert!(note.contains("failed: BackoffLimitExceeded"), "{note}");
    assert!(
        note.contains("smoke: http://shop-preview.") && note.contains("/status answered broken v3"),
        "{note}"
    );
    let h = st.history.last().expect("the release in history");
    eprintln!(
        "bad release: {h:?}, verdict {:?}, rolled back {} ms after it started",
        a.verdict,
        h.ended_at - h.started_at
    );
    assert_eq!(h.revision, v3);
    assert_eq!(h.outcome, "rolled_back", "{h:?}");
    assert!(h.reason.contains("smoke = 0"), "{h:?}");
    no_jobs_left(&client, &ns).await;
    drop(node);
}
