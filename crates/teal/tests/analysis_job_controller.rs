//! A `job` metric's Job as the `teal controller` binary writes it, on the plain control plane
//! (its pods run on the simulated nodes and never end, so the Job stays under way): owned by
//! the BlueGreen, labelled, with the preview environment (the header's value from its Secret);
//! a controller killed while it runs finds the same Job again instead of starting another; an
//! abort deletes it, and so does deleting the BlueGreen. Whether a Job that ends passes or fails
//! the release is analysis_job_real_node.rs's, where pods really run.

mod k8s_support;

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_support::{
    ControllerProcess, apply_deploy_files, kubectl, set_image, wait_bluegreen, wait_healthy,
    workload_and_bluegreen,
};
use kube::Api;
use kube::api::ListParams;
use teal_api::BlueGreen;
use teal_testenv::{TestEnv, wait_for};

const EXTRA: &str = r#"  scaleDownDelay: 0s
  preview:
    header: {name: x-preview}
    headerValueFrom: {secretKeyRef: {name: preview, key: value}}
  analysis:
    prePromotion:
      interval: 1s
      checks: 1
      metrics:
      - name: Smoke_Test
        job:
          activeDeadlineSeconds: 300
          template:
            metadata: {labels: {team: shop}}
            spec:
              containers:
              - name: smoke
                image: smoke:1
                env: [{name: TEAL_COLOR, value: overridden}]
"#;

/// The Jobs of BlueGreen `shop` in `ns`.
async fn jobs(api: &Api<Job>) -> Vec<Job> {
    api.list(&ListParams::default().labels("teal.dev/analysis-of=shop"))
        .await
        .unwrap()
        .items
}

/// Waits until exactly one Job of `shop` exists and returns it.
async fn one_job(api: &Api<Job>) -> Job {
    wait_for("the Job of the check", Duration::from_secs(60), || async {
        let j = jobs(api).await;
        match j.len() {
            1 => Ok(j.into_iter().next().unwrap()),
            n => Err(format!("{n} Jobs")),
        }
    })
    .await
}

async fn no_job(api: &Api<Job>, what: &str) {
    wait_for(what, Duration::from_secs(60), || async {
        let j = jobs(api).await;
        if j.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{:?}",
                j.iter()
                    .map(|j| j.metadata.name.clone())
                    .collect::<Vec<_>>()
            ))
        }
    })
    .await
}

#[tokio::test]
async fn the_job_is_built_found_again_after_a_restart_and_deleted_on_abort_and_deletion() {
    let env = TestEnv::shared();
    apply_deploy_files(env, &["crd.yaml"]);
    let ns = env.namespace("job-ctl").await;
    kubectl(
        env,
        &[
            "-n",
            &ns,
            "create",
            "secret",
            "generic",
            "preview",
            "--from-literal=value=s3cret",
        ],
        None,
    );
    kubectl(
        env,
        &["apply", "-n", &ns, "-f", "-"],
        Some(&workload_and_bluegreen("shop", EXTRA)),
    );
    let client = env.client();
    let bgs: Api<BlueGreen> = Api::namespaced(client.clone(), &ns);
    let deps: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let api: Api<Job> = Api::namespaced(client.clone(), &ns);
    let args = ["--no-leader-election", "--metrics-addr", "127.0.0.1:0"];
    let mut ctl = ControllerProcess::start(env, &ns, &args);
    wait_healthy(&bgs, "shop", None).await;

    // A release: its pre-promotion check starts the Job.
    let rev = set_image(&deps, "shop", "shop:2").await;
    let job = one_job(&api).await;
    let name = job.metadata.name.clone().unwrap();
    assert!(name.starts_with("shop-smoke-test-"), "{name}");
    let bg = bgs.get("shop").await.unwrap();
    let owner = &job.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), Some(&owner.uid)),
        ("BlueGreen", "shop", bg.metadata.uid.as_ref())
    );
    let labels = job.metadata.labels.clone().unwrap();
    assert_eq!(labels["teal.dev/stage"], "prePromotion");
    assert_eq!(labels["teal.dev/metric"], "Smoke_Test");
    assert!(!labels.contains_key("teal.dev/bluegreen"), "{labels:?}");
    let spec = job.spec.clone().unwrap();
    assert_eq!(spec.backoff_limit, Some(0));
    assert_eq!(spec.active_deadline_seconds, Some(300));
    let pod_labels = spec.template.metadata.clone().unwrap().labels.unwrap();
    assert_eq!(pod_labels["team"], "shop");
    assert_eq!(pod_labels["teal.dev/analysis-of"], "shop");
    let pod = spec.template.spec.clone().unwrap();
    assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
    let env_vars = pod.containers[0].env.clone().unwrap();
    let value = |n: &str| {
        env_vars
            .iter()
            .rfind(|e| e.name == n)
            .and_then(|e| e.value.clone())
    };
    let color = bg
        .status
        .as_ref()
        .unwrap()
        .preview_color
        .unwrap()
        .to_string();
    let analysed = env_vars.iter().find(|e| e.name == "TEAL_COLOR").unwrap();
    assert_eq!(analysed.value.as_deref(), Some(color.as_str()));
    // The container's own variable comes after teal's: it wins.
    assert_eq!(value("TEAL_COLOR").as_deref(), Some("overridden"));
    assert_eq!(value("TEAL_REVISION"), Some(rev.clone()));
    assert_eq!(value("TEAL_STAGE").as_deref(), Some("prePromotion"));
    assert_eq!(
        value("TEAL_PREVIEW_URL"),
        Some(format!("http://shop-preview.{ns}.svc:8080"))
    );
    assert_eq!(
        value("TEAL_PREVIEW_SERVICE").as_deref(),
        Some("shop-preview")
    );
    assert_eq!(
        value("TEAL_PREVIEW_HEADER_NAME").as_deref(),
        Some("x-preview")
    );
    assert_eq!(
        value("TEAL_PREVIEW_HEADER").as_deref(),
        Some("x-preview: $(TEAL_PREVIEW_HEADER_VALUE)")
    );
    // The header's value stays in its Secret.
    let secret = env_vars
        .iter()
        .find(|e| e.name == "TEAL_PREVIEW_HEADER_VALUE")
        .unwrap();
    assert_eq!(secret.value, None);
    let r = secret
        .value_from
        .as_ref()
        .and_then(|v| v.secret_key_ref.as_ref())
        .unwrap();
    assert_eq!((r.name.as_str(), r.key.as_str()), ("preview", "value"));
    assert!(
        !serde_json::to_string(&job).unwrap().contains("s3cret"),
        "the Secret's value is in the Job"
    );

    // The controller is killed while the Job runs: the one that follows finds it again.
    let uid = job.metadata.uid.clone();
    ctl.kill();
    ctl = ControllerProcess::start(env, &ns, &args);
    let log = ControllerProcess::log_path(&ns);
    wait_for("the Job found again", Duration::from_secs(60), || async {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains(&format!(
            "found Job {ns}/{name} for metric Smoke_Test again"
        )) {
            Ok(())
        } else {
            Err("not yet".to_owned())
        }
    })
    .await;
    let again = one_job(&api).await;
    assert_eq!(
        (again.metadata.name.as_deref(), again.metadata.uid.clone()),
        (Some(name.as_str()), uid)
    );

    // An abort ends the stage: the Job is deleted without waiting for it.
    kubectl(
        env,
        &[
            "-n",
            &ns,
            "annotate",
            "bluegreen",
            "shop",
            "teal.dev/command=abort/1",
        ],
        None,
    );
    wait_bluegreen(&bgs, "shop", "aborted", 60, |st| {
        st.phase.as_deref() == Some("Aborted")
    })
    .await;
    no_job(&api, "the Job deleted after the abort").await;

    // Another release, and the BlueGreen deleted while its Job runs.
    set_image(&deps, "shop", "shop:3").await;
    let job = one_job(&api).await;
    assert_ne!(job.metadata.name.as_deref(), Some(name.as_str()));
    kubectl(
        env,
        &["-n", &ns, "delete", "bluegreen", "shop", "--wait=false"],
        None,
    );
    no_job(&api, "the Job deleted with its BlueGreen").await;
    drop(ctl);
}
