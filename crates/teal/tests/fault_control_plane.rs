//! Fault: the control plane fails under a running `teal controller`.
//!
//! On a private control plane (teal-testenv's `faults::ControlPlane`), three
//! manually promoted releases run while
//! - kube-apiserver is SIGKILLed and started again three times: while a
//!   release waits for promotion, right after the image change (the
//!   controller is deploying the idle color), and after the controller
//!   switched the live Service but before it could confirm the switch in
//!   status. That window is milliseconds wide, so an admission policy holds
//!   it open: the apiserver refuses status writes that change the live
//!   color until the test lifts it after the restart. Meanwhile the
//!   controller retries; the same switch again must not write the
//!   BlueGreen each time (it did, about 30 times a second);
//! - etcd is paused (SIGSTOP) for ten seconds right after a switch, and
//!   again, with a three-second leader lease, until the controller stops
//!   because it cannot renew the lease (it must not act on: another replica
//!   could take the lease over); started again, it finishes the release;
//! - every watch the controller holds is dropped: a killed apiserver closes
//!   all of them, and the controller has to list and watch again against the
//!   new one (BlueGreens, Deployments, Pods, Services).
//!
//! A `teal promote` right after a restart must be acted on; every release
//! must end exactly once, promoted, with its color live; the controller
//! process must not exit while its lease outlives the outages. Switches are
//! counted from etcd itself: the private control plane stores objects as
//! JSON and never compacts, so every version of the live Service since the
//! first release is still in etcd, whatever the apiserver and its watches
//! went through. Each version whose selector names another color is one
//! switch; there must be exactly one per release, and at the etcd revision
//! of each switch the new color must have had all its replicas Ready (read
//! from the Pods stored at that same revision).

mod k8s_support;

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_support::{
    ControllerProcess, apply_deploy_files, kubectl, live_color, set_image, wait_bluegreen,
    wait_healthy, workload_and_bluegreen,
};
use kube::Api;
use teal_api::BlueGreen;
use teal_api::bluegreen::labels;
use teal_testenv::faults::{Component, ControlPlane};
use teal_testenv::wait_for;

/// How long the apiserver stays down after the kill that follows a switch.
const APISERVER_DOWN: Duration = Duration::from_secs(3);
/// How long the switch of release 1 stays unconfirmed before the apiserver
/// is killed.
const HELD: Duration = Duration::from_secs(6);
/// How long etcd stays paused.
const ETCD_PAUSE: Duration = Duration::from_secs(10);

#[tokio::test]
async fn apiserver_restarts_and_an_etcd_pause_never_switch_twice() {
    let cp = ControlPlane::start()
        .await
        .expect("a private control plane");
    let env = cp.env();
    apply_deploy_files(env, &["crd.yaml"]);
    let ns = env.namespace("fault-cp").await;
    let manifest = workload_and_bluegreen(
        "shop",
        "  replicas: 2\n  preview: {replicas: 1}\n  promotion: {mode: manual}\n  scaleDownDelay: 5s\n  progressDeadline: 300s\n",
    );
    kubectl(env, &["apply", "-n", &ns, "-f", "-"], Some(&manifest));
    // With leader election, as deployed; the lease outlives every outage
    // here, so the controller keeps leading through them.
    let mut ctl = ControllerProcess::start(
        env,
        &ns,
        &[
            "--lease-namespace",
            &ns,
            "--lease-seconds",
            "120",
            "--metrics-addr",
            "127.0.0.1:0",
        ],
    );
    let client = env.client();
    let bgs: Api<BlueGreen> = Api::namespaced(client.clone(), &ns);
    let deps: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let first = wait_healthy(&bgs, "shop", None).await;
    let service_key = format!("/registry/services/specs/{ns}/shop");
    let since = cp.etcd_revision().await.unwrap();
    let mut live = first.active_color.expect("a live color").to_string();
    let mut expected_switches = Vec::new();

    // Release 1: the apiserver restarted while the release waits for
    // promotion, promoted right after, killed after the switch was written
    // but before status confirmed it (held back by an admission policy).
    let want = set_image(&deps, "shop", "shop:2").await;
    wait_awaiting_promotion(&bgs, &want).await;
    hold_confirmation(env, &ns, &live).await;
    cp.restart(Component::KubeApiserver).await.unwrap();
    let asked = std::time::Instant::now();
    let out = teal_promote(env, &ns).await;
    eprintln!("promote acted on {:?} after the restart", asked.elapsed());
    assert!(out.contains("promote accepted"), "{out}");
    live = fault_after_switch(
        &cp,
        &bgs,
        &ns,
        &want,
        &live,
        Fault::ApiserverDownBeforeConfirmation,
    )
    .await;
    expected_switches.push(live.clone());

    // Release 2: the apiserver restarted right after the image change,
    // promoted by annotation, etcd paused right after the switch.
    let want = set_image(&deps, "shop", "shop:3").await;
    cp.restart(Component::KubeApiserver).await.unwrap();
    wait_awaiting_promotion(&bgs, &want).await;
    kubectl(
        env,
        &[
            "annotate",
            "-n",
            &ns,
            "bluegreen/shop",
            "--overwrite",
            &format!(
                "{}=promote/after-restart",
                teal_api::bluegreen::annotations::COMMAND
            ),
        ],
        None,
    );
    live = fault_after_switch(&cp, &bgs, &ns, &want, &live, Fault::EtcdPaused).await;
    expected_switches.push(live.clone());

    // The controller rode it all out (its lease outlived every outage).
    assert_eq!(ctl.exited(), None, "the controller exited");
    ctl.kill();

    // Release 3: a lease shorter than an etcd pause. Unable to renew, the
    // leader must stop before another replica could take the lease over,
    // not act on; started again (as Kubernetes restarts it), it leads and
    // finishes the release.
    let short = [
        "--lease-namespace",
        &ns,
        "--lease-name",
        "short",
        "--lease-seconds",
        "3",
        "--metrics-addr",
        "127.0.0.1:0",
    ];
    let mut ctl = ControllerProcess::start(env, &ns, &short);
    let want = set_image(&deps, "shop", "shop:4").await;
    wait_awaiting_promotion(&bgs, &want).await;
    cp.pause(Component::Etcd).await.unwrap();
    let exit = wait_for(
        "the controller to stop while it cannot renew its lease",
        Duration::from_secs(60),
        || {
            let exited = ctl.exited();
            async move { exited.ok_or("still running") }
        },
    )
    .await;
    cp.resume(Component::Etcd).await.unwrap();
    let log = std::fs::read_to_string(ControllerProcess::log_path(&ns)).unwrap();
    assert!(!exit.success(), "{exit}");
    assert!(
        log.contains("could not renew the leader lease short in time"),
        "{log}"
    );
    let _ctl = ControllerProcess::start(env, &ns, &short);
    let out = teal_promote(env, &ns).await;
    assert!(out.contains("promote accepted"), "{out}");
    let to = wait_switch(&client, &ns, &live).await;
    live = release_ended(&bgs, &client, &ns, &want, &to).await;
    expected_switches.push(live.clone());

    // Every version of the live Service since the first release, from etcd.
    let versions = cp.etcd_versions(&service_key, since).await.unwrap();
    let mut color = first.active_color.unwrap().to_string();
    let mut switches = Vec::new();
    for v in &versions {
        let now = v.value["spec"]["selector"][labels::COLOR]
            .as_str()
            .unwrap_or_else(|| panic!("a live Service without a color: {}", v.value))
            .to_owned();
        if now != color {
            switches.push((v.mod_revision, now.clone()));
            color = now;
        }
    }
    let to: Vec<&String> = switches.iter().map(|(_, c)| c).collect();
    assert!(
        to == expected_switches.iter().collect::<Vec<_>>(),
        "one switch per release, to {expected_switches:?}; etcd holds {} switches in {} versions \
         of the Service since revision {since}, the first ones to {:?}",
        to.len(),
        versions.len(),
        &to[..to.len().min(10)]
    );
    eprintln!(
        "{} versions of the live Service since etcd revision {since}; switches at {switches:?}",
        versions.len()
    );
    for (revision, color) in &switches {
        let (ready, wanted) = ready_at(&cp, &ns, color, *revision).await;
        eprintln!("at revision {revision}: {ready} of {wanted} replicas of {color} Ready");
        assert!(
            wanted >= 1 && ready >= wanted,
            "switched to {color} at etcd revision {revision} with {ready} of {wanted} replicas Ready"
        );
    }
}

/// What fails right after a switch.
enum Fault {
    /// kube-apiserver SIGKILLed before the switch was confirmed in status
    /// (see [`hold_confirmation`]), started again after [`APISERVER_DOWN`];
    /// then the hold is lifted.
    ApiserverDownBeforeConfirmation,
    /// etcd paused for [`ETCD_PAUSE`].
    EtcdPaused,
}

/// Waits until the controller switched the live Service away from `live`,
/// lets `fault` happen at once, and returns the new live color once the
/// release of `revision` ended (checked by [`release_ended`]).
async fn fault_after_switch(
    cp: &ControlPlane,
    bgs: &Api<BlueGreen>,
    ns: &str,
    revision: &str,
    live: &str,
    fault: Fault,
) -> String {
    let client = cp.env().client();
    let to = wait_switch(&client, ns, live).await;
    match fault {
        Fault::ApiserverDownBeforeConfirmation => {
            // Held long enough for the controller to retry the refused
            // confirmation (every 5 s after a failed reconcile).
            let key = format!("/registry/teal.dev/bluegreens/{ns}/shop");
            let switched_at = cp.etcd_revision().await.unwrap();
            tokio::time::sleep(HELD).await;
            cp.kill(Component::KubeApiserver).await.unwrap();
            // What status said when the apiserver died, read from etcd.
            let at = cp.etcd_revision().await.unwrap();
            let stored = cp.etcd_prefix_at(&key, at).await.unwrap();
            let release = &stored[0].value["status"]["engine"]["machine"]["release"];
            assert_eq!(release["phase"], "CuttingOver", "{release}");
            assert!(release["switchConfirmedAt"].is_null(), "{release}");
            // Retrying, the controller writes the same switch again; that
            // must not be a write of the BlueGreen each time (each write
            // wakes the controller again: a loop as fast as the apiserver).
            let writes = cp.etcd_versions(&key, switched_at).await.unwrap().len();
            eprintln!("{writes} writes of the BlueGreen while its switch was held unconfirmed");
            assert!(writes < 10, "{writes} writes of the BlueGreen in {HELD:?}");
            tokio::time::sleep(APISERVER_DOWN).await;
            cp.start_again(Component::KubeApiserver).await.unwrap();
            kubectl(
                cp.env(),
                &["delete", "validatingadmissionpolicybinding", HOLD],
                None,
            );
        }
        Fault::EtcdPaused => {
            cp.pause(Component::Etcd).await.unwrap();
            tokio::time::sleep(ETCD_PAUSE).await;
            cp.resume(Component::Etcd).await.unwrap();
        }
    }
    release_ended(bgs, &client, ns, revision, &to).await
}

/// Name of the admission policy that holds back switch confirmations.
const HOLD: &str = "hold-switch-confirmation";

/// Makes the apiserver refuse status writes that change a BlueGreen's
/// live color, so the controller can switch the Service but not confirm
/// the switch in status (it retries, re-applying the same selector), and
/// returns once the policy is in force: a server-side dry run of such a
/// write to `ns/shop`, currently live in `live`, is refused.
async fn hold_confirmation(env: &teal_testenv::TestEnv, ns: &str, live: &str) {
    let policy = format!(
        r#"
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {{name: {HOLD}}}
spec:
  failurePolicy: Fail
  matchConstraints:
    resourceRules:
    - {{apiGroups: [teal.dev], apiVersions: ["*"], operations: [UPDATE], resources: [bluegreens/status]}}
  validations:
  - expression: >-
      !(has(oldObject.status) && has(oldObject.status.activeColor) &&
      has(object.status) && has(object.status.activeColor)) ||
      object.status.activeColor == oldObject.status.activeColor
    message: held by the test
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {{name: {HOLD}}}
spec: {{policyName: {HOLD}, validationActions: [Deny]}}
"#
    );
    kubectl(env, &["apply", "-f", "-"], Some(&policy));
    let other = if live == "blue" { "green" } else { "blue" };
    let patch = format!(r#"{{"status":{{"activeColor":"{other}"}}}}"#);
    wait_for(
        "the admission policy to refuse a change of the live color",
        Duration::from_secs(60),
        || {
            let out = env
                .kubectl()
                .args([
                    "patch",
                    "bluegreen",
                    "shop",
                    "-n",
                    ns,
                    "--subresource=status",
                ])
                .args(["--type=merge", "-p", &patch, "--dry-run=server"])
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            async move {
                if !out.status.success() && stderr.contains("held by the test") {
                    Ok(())
                } else {
                    Err(format!("dry run: {}; {stderr}", out.status))
                }
            }
        },
    )
    .await;
}

/// `teal promote shop`, which must be accepted; returns its output.
async fn teal_promote(env: &teal_testenv::TestEnv, ns: &str) -> String {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_teal"))
        .args(["promote", "shop", "-n", ns, "--command-timeout", "120s"])
        .env("KUBECONFIG", env.kubeconfig_path())
        .output()
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "teal promote: {text}");
    text
}

async fn wait_awaiting_promotion(bgs: &Api<BlueGreen>, revision: &str) {
    wait_bluegreen(
        bgs,
        "shop",
        &format!("revision {revision} awaiting promotion"),
        180,
        |st| {
            st.phase.as_deref() == Some("AwaitingPromotion")
                && st.preview_revision.as_deref() == Some(revision)
        },
    )
    .await;
}

/// Polls the live Service until it selects another color than `from`, and
/// returns that color: the moment right after the controller wrote the
/// switch. Failed reads count as "not yet" (the client may still hold a
/// connection to an apiserver that was killed).
async fn wait_switch(client: &kube::Client, ns: &str, from: &str) -> String {
    let svcs: Api<Service> = Api::namespaced(client.clone(), ns);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    loop {
        let last = match svcs.get("shop").await {
            Ok(svc) => {
                let color = svc
                    .spec
                    .and_then(|s| s.selector)
                    .and_then(|s| s.get(labels::COLOR).cloned());
                match color {
                    Some(c) if c != from => return c,
                    other => format!("selects {other:?}"),
                }
            }
            Err(e) => e.to_string(),
        };
        assert!(
            tokio::time::Instant::now() < deadline,
            "no switch away from {from} within 180s; last seen: {last}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the release of `revision` ended, and checks it ended once,
/// promoted, with `color` live; returns the live color.
async fn release_ended(
    bgs: &Api<BlueGreen>,
    client: &kube::Client,
    ns: &str,
    revision: &str,
    color: &str,
) -> String {
    let st = wait_healthy(bgs, "shop", Some(revision)).await;
    let records: Vec<_> = st
        .history
        .iter()
        .filter(|h| h.revision == revision)
        .collect();
    assert_eq!(records.len(), 1, "{:?}", st.history);
    assert_eq!(records[0].outcome, "promoted", "{:?}", st.history);
    let active = st.active_color.expect("a live color").to_string();
    assert_eq!(active, color, "{st:?}");
    assert_eq!(live_color(client, ns, "shop").await.as_deref(), Some(color));
    active
}

/// Ready and wanted replicas of `color` as stored in etcd at `revision`:
/// Pods of its Deployment's revision that are Ready and not being deleted,
/// and the Deployment's replicas.
async fn ready_at(cp: &ControlPlane, ns: &str, color: &str, revision: u64) -> (u64, u64) {
    let dep = cp
        .etcd_prefix_at(
            &format!("/registry/deployments/{ns}/shop-{color}"),
            revision,
        )
        .await
        .unwrap()
        .into_iter()
        .find(|d| d.value["metadata"]["name"] == format!("shop-{color}"))
        .unwrap_or_else(|| panic!("no Deployment shop-{color} at revision {revision}"))
        .value;
    let wanted = dep["spec"]["replicas"].as_u64().unwrap_or(1);
    let rev = dep["metadata"]["annotations"][labels::REVISION].clone();
    let pods = cp
        .etcd_prefix_at(&format!("/registry/pods/{ns}/"), revision)
        .await
        .unwrap();
    let ready = pods
        .iter()
        .map(|p| &p.value)
        .filter(|p| {
            p["metadata"]["labels"][labels::COLOR] == color
                && p["metadata"]["labels"][labels::REVISION] == rev
                && p["metadata"]["deletionTimestamp"].is_null()
                && p["status"]["conditions"].as_array().is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                })
        })
        .count() as u64;
    (ready, wanted)
}
