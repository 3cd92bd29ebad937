//! Smoke tests of the real control plane: the behaviour teal relies on, checked against a
//! real apiserver, controller-manager and scheduler with kwok's simulated nodes.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Container, Pod, PodSpec, PodTemplateSpec, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use kube::api::{ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use teal_testenv::{TestEnv, sim, wait_for};

const WAIT: Duration = Duration::from_secs(90);

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// A Deployment of `replicas` pods labelled `app=<name>`, with `annotations` on its pods.
fn deployment(name: &str, replicas: i32, annotations: &[(&str, &str)]) -> Deployment {
    let pod_labels = labels(&[("app", name)]);
    Deployment {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..ObjectMeta::default()
        },
        spec: DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(pod_labels.clone()),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(labels(annotations)),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![Container {
                        name: "app".to_owned(),
                        image: Some("registry.invalid/teal/app:1".to_owned()),
                        ..Container::default()
                    }],
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        },
        ..Deployment::default()
    }
}

async fn create(client: &Client, ns: &str, d: &Deployment) -> Api<Deployment> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    api.create(&PostParams::default(), d)
        .await
        .unwrap_or_else(|e| panic!("creating deployment {:?}: {e}", d.metadata.name));
    api
}

/// "ready=1 available=0 updated=2 conditions=[Available=False ...]" for wait messages.
fn describe(d: &Deployment) -> String {
    let Some(s) = &d.status else {
        return "no status yet".to_owned();
    };
    let conditions: Vec<String> = s
        .conditions
        .iter()
        .flatten()
        .map(|c| {
            let text = |v: &Option<String>| v.clone().unwrap_or_default();
            format!(
                "{}={} ({})",
                text(&c.type_),
                text(&c.status),
                text(&c.reason)
            )
        })
        .collect();
    format!(
        "ready={:?} available={:?} updated={:?} conditions=[{}]",
        s.ready_replicas,
        s.available_replicas,
        s.updated_replicas,
        conditions.join(", ")
    )
}

fn condition<'a>(d: &'a Deployment, type_: &str) -> Option<&'a str> {
    d.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_.as_deref() == Some(type_))
        .and_then(|c| c.status.as_deref())
}

fn pod_condition<'a>(p: &'a Pod, type_: &str) -> Option<(&'a str, Option<&'a Time>)> {
    p.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.as_str(), c.last_transition_time.as_ref()))
}

async fn pods(client: &Client, ns: &str, app: &str) -> Result<Vec<Pod>, kube::Error> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    Ok(api
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await?
        .items)
}

#[tokio::test]
async fn deployment_becomes_ready_and_its_service_gets_ready_endpoints() {
    let env = TestEnv::shared();
    let client = env.client();
    let ns = env.namespace("ready").await;
    let deployments = create(&client, &ns, &deployment("web", 3, &[])).await;
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let service = Service {
        metadata: ObjectMeta {
            name: Some("web".to_owned()),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            selector: Some(labels(&[("app", "web")])),
            ports: Some(vec![ServicePort {
                port: 80,
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };
    services
        .create(&PostParams::default(), &service)
        .await
        .unwrap();

    let d = wait_for("deployment web to have 3 ready replicas", WAIT, || async {
        let d = deployments.get("web").await.map_err(|e| e.to_string())?;
        let s = d.status.clone().unwrap_or_default();
        if s.ready_replicas == Some(3) && s.available_replicas == Some(3) {
            Ok(d)
        } else {
            Err(describe(&d))
        }
    })
    .await;
    assert_eq!(condition(&d, "Available"), Some("True"), "{}", describe(&d));

    let pods = pods(&client, &ns, "web").await.unwrap();
    assert_eq!(pods.len(), 3);
    let mut pod_ips: Vec<String> = pods
        .iter()
        .map(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.pod_ip.clone())
                .expect("kwok assigns a pod IP")
        })
        .collect();
    pod_ips.sort();

    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), &ns);
    let ready_ips = wait_for(
        "an EndpointSlice of service web with 3 ready endpoints",
        WAIT,
        || async {
            let list = slices
                .list(&ListParams::default().labels("kubernetes.io/service-name=web"))
                .await
                .map_err(|e| e.to_string())?;
            let mut ready: Vec<String> = list
                .items
                .iter()
                .flat_map(|s| s.endpoints.iter().flatten())
                .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
                .flat_map(|e| e.addresses.iter().cloned())
                .collect();
            ready.sort();
            if ready.len() == 3 {
                Ok(ready)
            } else {
                Err(format!(
                    "{} slices, ready addresses {ready:?}",
                    list.items.len()
                ))
            }
        },
    )
    .await;
    assert_eq!(
        ready_ips, pod_ips,
        "the endpoints are the pods' (simulated) IPs"
    );
}

#[tokio::test]
async fn changing_a_deployment_selector_is_rejected_as_immutable() {
    let env = TestEnv::shared();
    let client = env.client();
    let ns = env.namespace("immutable").await;
    let deployments = create(&client, &ns, &deployment("api", 1, &[])).await;

    // A merge patch carries no resourceVersion, so only validation can refuse it.
    let patch = serde_json::json!({"spec": {
        "selector": {"matchLabels": {"app": "api", "color": "green"}},
        "template": {"metadata": {"labels": {"app": "api", "color": "green"}}},
    }});
    let err = deployments
        .patch("api", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect_err("the apiserver must refuse a new selector");
    match err {
        kube::Error::Api(status) => {
            assert_eq!(status.code, 422, "{status:?}");
            assert!(
                status.message.contains("spec.selector"),
                "{}",
                status.message
            );
            assert!(
                status.message.contains("field is immutable"),
                "{}",
                status.message
            );
        }
        other => panic!("expected a validation error from the apiserver, got {other}"),
    }
}

#[tokio::test]
async fn a_never_ready_pod_keeps_the_deployment_unavailable() {
    let env = TestEnv::shared();
    let client = env.client();
    let ns = env.namespace("never-ready").await;
    let mut d = deployment("stuck", 2, &[(sim::NEVER_READY, "true")]);
    // Let the deployment controller give up quickly, so "unavailable" is a state it reports.
    d.spec.progress_deadline_seconds = Some(5);
    let deployments = create(&client, &ns, &d).await;

    let d = wait_for(
        "deployment stuck to exceed its progress deadline",
        WAIT,
        || async {
            let d = deployments.get("stuck").await.map_err(|e| e.to_string())?;
            let exceeded = d
                .status
                .iter()
                .flat_map(|s| s.conditions.iter().flatten())
                .any(|c| {
                    c.type_.as_deref() == Some("Progressing")
                        && c.status.as_deref() == Some("False")
                        && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
                });
            if exceeded { Ok(d) } else { Err(describe(&d)) }
        },
    )
    .await;
    assert_eq!(
        condition(&d, "Available"),
        Some("False"),
        "{}",
        describe(&d)
    );
    let status = d.status.unwrap();
    assert_eq!(status.ready_replicas.unwrap_or(0), 0);
    assert_eq!(status.available_replicas.unwrap_or(0), 0);

    // The pods are there and running, just never Ready.
    let pods = pods(&client, &ns, "stuck").await.unwrap();
    assert_eq!(pods.len(), 2);
    for p in &pods {
        let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
        assert_eq!(phase, Some("Running"), "pod {:?}", p.metadata.name);
        assert_eq!(pod_condition(p, "Ready").map(|c| c.0), Some("False"));
    }
}

#[tokio::test]
async fn a_crash_looping_pod_restarts_and_is_never_ready() {
    let env = TestEnv::shared();
    let client = env.client();
    let ns = env.namespace("crash").await;
    let annotations = [
        (sim::CRASH_LOOP, "true"),
        (sim::CRASH_AFTER, "500ms"),
        (sim::RESTART_AFTER, "500ms"),
    ];
    let deployments = create(&client, &ns, &deployment("crash", 1, &annotations)).await;

    let restarts = wait_for("pod of deployment crash to restart twice", WAIT, || async {
        let pods = pods(&client, &ns, "crash")
            .await
            .map_err(|e| e.to_string())?;
        let statuses: Vec<_> = pods
            .iter()
            .flat_map(|p| {
                p.status
                    .iter()
                    .flat_map(|s| s.container_statuses.iter().flatten())
            })
            .collect();
        match statuses.first() {
            Some(c) if c.restart_count >= 2 => Ok(c.restart_count),
            Some(c) => Err(format!(
                "restartCount={} state={:?}",
                c.restart_count, c.state
            )),
            None => Err(format!("{} pods, no container status yet", pods.len())),
        }
    })
    .await;
    assert!(restarts >= 2);
    let d = deployments.get("crash").await.unwrap();
    let status = d.status.clone().unwrap_or_default();
    assert_eq!(
        status.available_replicas.unwrap_or(0),
        0,
        "{}",
        describe(&d)
    );
}

#[tokio::test]
async fn a_readiness_delay_delays_readiness() {
    let env = TestEnv::shared();
    let client = env.client();
    let ns = env.namespace("slow").await;
    create(
        &client,
        &ns,
        &deployment("slow", 1, &[(sim::READY_AFTER, "6s")]),
    )
    .await;

    // Seen running but not yet ready ...
    wait_for("pod of deployment slow to run", WAIT, || async {
        let pods = pods(&client, &ns, "slow")
            .await
            .map_err(|e| e.to_string())?;
        let running = pods.iter().any(|p| {
            p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                && pod_condition(p, "Ready").map(|c| c.0) == Some("False")
        });
        if running {
            Ok(())
        } else {
            Err(format!(
                "{} pods: {:?}",
                pods.len(),
                pods.iter().map(|p| &p.status).collect::<Vec<_>>()
            ))
        }
    })
    .await;
    // ... then ready, and the apiserver's own timestamps show the delay.
    let pod = wait_for("pod of deployment slow to become ready", WAIT, || async {
        let pods = pods(&client, &ns, "slow")
            .await
            .map_err(|e| e.to_string())?;
        pods.into_iter()
            .find(|p| pod_condition(p, "Ready").map(|c| c.0) == Some("True"))
            .ok_or_else(|| "not ready yet".to_owned())
    })
    .await;
    let started = pod
        .status
        .as_ref()
        .unwrap()
        .container_statuses
        .as_ref()
        .unwrap()[0]
        .state
        .as_ref()
        .and_then(|s| s.running.as_ref())
        .and_then(|r| r.started_at.clone())
        .expect("a ready container is running");
    let ready_at = pod_condition(&pod, "Ready")
        .and_then(|c| c.1)
        .cloned()
        .expect("Ready has a transition time");
    let delay = ready_at.0.as_second() - started.0.as_second();
    assert!(
        delay >= 5,
        "ready {delay}s after the container started; expected about 6s"
    );
}

#[tokio::test]
async fn kubectl_works_with_the_kubeconfig() {
    let env = TestEnv::shared();
    let client = env.client();
    let ns = env.namespace("kubectl").await;
    create(&client, &ns, &deployment("seen", 1, &[])).await;
    let pod = wait_for("a pod of deployment seen", WAIT, || async {
        let pods = pods(&client, &ns, "seen")
            .await
            .map_err(|e| e.to_string())?;
        pods.into_iter()
            .find_map(|p| p.metadata.name)
            .ok_or_else(|| "no pod yet".to_owned())
    })
    .await;

    let out = env
        .kubectl()
        .args(["get", "nodes,pods", "-A"])
        .output()
        .expect("running kubectl");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "kubectl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("node/kwok-node-0"), "{stdout}");
    assert!(stdout.contains(&format!("pod/{pod}")), "{stdout}");
}
