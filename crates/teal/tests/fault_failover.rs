//! Fault: failover of a controller running as deployed — two replicas with
//! leader election — over 20 BlueGreens in every phase (Healthy, Previewing,
//! AwaitingPromotion, ScaleDownDelay, being adopted). The leader is SIGKILLed
//! at random points many times and comes back (as the same pod restarted or
//! as a new one); after each kill a change to a random BlueGreen must be
//! released, and an operator's command must act, within [`BOUND`].
//!
//! The kill points come from a seed printed at the start; set
//! `TEAL_FAULT_SEED` to replay a run and `TEAL_FAILOVER_KILLS` for more kills.

mod k8s_support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_support::{
    ControllerProcess, Rng, apply_deploy_files, kubectl, set_image, wait_bluegreen,
    workload_and_bluegreen,
};
use kube::Api;
use kube::api::{Patch, PatchParams};
use teal_api::BlueGreen;
use teal_testenv::TestEnv;

/// A change is released, and a command acts, within this long of being
/// made, whatever was killed before (a standby takes the lease after at most
/// [`LEASE_SECONDS`]).
const BOUND: Duration = Duration::from_secs(60);
const LEASE_SECONDS: &str = "4";
const KILLS: usize = 12;

/// BlueGreens 0..8 release at once (a change to them must go live).
const AUTO: std::ops::Range<usize> = 0..8;
/// 8..12 wait for `promote` (the command under test).
const MANUAL: std::ops::Range<usize> = 8..12;
/// 12..15 stay in ScaleDownDelay for an hour after their release.
const DELAYED: std::ops::Range<usize> = 12..15;
/// 15..18 stay in Previewing (their first analysis check is 10 minutes out).
const PREVIEWING: std::ops::Range<usize> = 15..18;
/// 18..20 Healthy and otherwise left alone.
const TOTAL: usize = 20;

fn name(i: usize) -> String {
    format!("app-{i:02}")
}

fn manifest(name: &str, spec: &str) -> String {
    format!(
        "---{}",
        workload_and_bluegreen(name, &format!("  progressDeadline: 300s\n{spec}"))
    )
}

fn spec_of(i: usize) -> &'static str {
    if MANUAL.contains(&i) {
        "  scaleDownDelay: 1s\n  promotion: {mode: manual}\n"
    } else if DELAYED.contains(&i) {
        "  scaleDownDelay: 1h\n"
    } else if PREVIEWING.contains(&i) {
        // Nothing listens on port 1: the check would fail, but it is not
        // due before the test ends.
        "  scaleDownDelay: 1s\n  analysis:\n    prePromotion:\n      interval: 10m\n      checks: 1\n      metrics:\n        - {name: errors, prometheus: {address: \"http://127.0.0.1:1\", query: \"vector(0)\"}, max: 1}\n"
    } else {
        "  scaleDownDelay: 1s\n"
    }
}

/// The controllers: two replicas as deployed, each with its own identity
/// (a pod name); a killed one comes back under the same name (its pod
/// restarted) or a new one (a new pod).
struct Replicas {
    env: &'static TestEnv,
    ns: String,
    running: BTreeMap<String, ControllerProcess>,
    next: usize,
}

impl Replicas {
    fn start(&mut self, identity: String) {
        let p = ControllerProcess::start(
            self.env,
            &self.ns,
            &[
                "--metrics-addr",
                "127.0.0.1:0",
                "--lease-namespace",
                &self.ns,
                "--lease-seconds",
                LEASE_SECONDS,
                "--identity",
                &identity,
            ],
        );
        self.running.insert(identity, p);
    }

    fn start_new(&mut self) {
        self.next += 1;
        self.start(format!("teal-controller-{}", self.next));
    }
}

async fn leader(leases: &Api<Lease>) -> Option<String> {
    leases
        .get_opt("teal-controller")
        .await
        .ok()
        .flatten()?
        .spec?
        .holder_identity
}

async fn command(bgs: &Api<BlueGreen>, name: &str, verb: &str, id: usize) {
    let patch = serde_json::json!({"metadata": {"annotations": {"teal.dev/command": format!("{verb}/{id}")}}});
    bgs.patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
}

#[tokio::test]
async fn the_leader_killed_at_random_points_with_twenty_bluegreens_in_every_phase() {
    let env = TestEnv::shared();
    apply_deploy_files(env, &["crd.yaml"]);
    let ns = env.namespace("failover").await;
    let all: String = (0..TOTAL).map(|i| manifest(&name(i), spec_of(i))).collect();
    kubectl(env, &["apply", "-n", &ns, "-f", "-"], Some(&all));
    let client = env.client();
    let bgs: Api<BlueGreen> = Api::namespaced(client.clone(), &ns);
    let deps: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let mut rng = Rng::from_env();
    let seed = rng.0;
    let kills: usize = std::env::var("TEAL_FAILOVER_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(KILLS);
    eprintln!("TEAL_FAILOVER_KILLS={kills}");

    let mut replicas = Replicas {
        env,
        ns: ns.clone(),
        running: BTreeMap::new(),
        next: 0,
    };
    replicas.start_new();
    replicas.start_new();
    let log = ControllerProcess::log_path(&ns);
    let context = |what: &str| format!("{what} (seed {seed}; controller log {})", log.display());

    let phase = |i: usize, want: &'static str| {
        let bgs = bgs.clone();
        async move {
            wait_bluegreen(&bgs, &name(i), &format!("{} {want}", name(i)), 120, |st| {
                st.phase.as_deref() == Some(want)
            })
            .await
        }
    };
    for i in 0..TOTAL {
        phase(i, "Healthy").await;
    }
    // Each waiting kind into its phase.
    let mut version = BTreeMap::<usize, usize>::new();
    for i in MANUAL.chain(DELAYED).chain(PREVIEWING) {
        set_image(&deps, &name(i), &format!("{}:2", name(i))).await;
        version.insert(i, 2);
    }
    for i in MANUAL {
        phase(i, "AwaitingPromotion").await;
    }
    for i in DELAYED {
        phase(i, "ScaleDownDelay").await;
    }
    for i in PREVIEWING {
        phase(i, "Previewing").await;
    }

    let mut adopted = 0;
    for kill in 0..kills {
        // Something in flight when the leader dies: a release, a command,
        // a BlueGreen being adopted.
        let before = rng.pick(AUTO);
        let v = version.entry(before).or_insert(1);
        *v += 1;
        let before_rev = set_image(&deps, &name(before), &format!("{}:{v}", name(before))).await;
        adopted += 1;
        let new = format!("new-{adopted:02}");
        kubectl(
            env,
            &["apply", "-n", &ns, "-f", "-"],
            Some(&manifest(&new, "  scaleDownDelay: 1s\n")),
        );
        tokio::time::sleep(Duration::from_millis(rng.below(2500))).await;

        let Some(holder) = leader(&leases).await else {
            panic!("{}", context("no leader"))
        };
        let Some(p) = replicas.running.remove(&holder) else {
            panic!(
                "{}",
                context(&format!("the leader {holder} is not one of ours"))
            )
        };
        p.kill();
        tokio::time::sleep(Duration::from_millis(rng.below(1000))).await;
        if rng.below(2) == 0 {
            replicas.start(holder.clone());
        } else {
            replicas.start_new();
        }
        eprintln!(
            "kill {kill}: killed leader {holder}; in flight: {before_rev} of {}, {new}",
            name(before)
        );
        // The reported case: a change made a few seconds after the restart.
        tokio::time::sleep(Duration::from_millis(rng.below(6000))).await;
        let after = rng.pick(AUTO);
        let v = version.entry(after).or_insert(1);
        *v += 1;
        let after_rev = set_image(&deps, &name(after), &format!("{}:{v}", name(after))).await;
        let promoted = rng.pick(MANUAL);
        let changed = Instant::now();
        command(&bgs, &name(promoted), "promote", kill).await;

        // When the same app was changed twice, its first revision may be
        // superseded before it goes live: only the second one is owed.
        let owed = if after == before {
            vec![(after, &after_rev)]
        } else {
            vec![(before, &before_rev), (after, &after_rev)]
        };
        for (i, rev) in owed {
            let left = BOUND.saturating_sub(changed.elapsed());
            wait_bluegreen(
                &bgs,
                &name(i),
                &context(&format!("{} to release {rev} after kill {kill}", name(i))),
                left.as_secs().max(1),
                |st| {
                    st.phase.as_deref() == Some("Healthy")
                        && st.active_revision.as_deref() == Some(rev.as_str())
                },
            )
            .await;
        }
        let left = BOUND.saturating_sub(changed.elapsed());
        let want = version[&promoted];
        let st = wait_bluegreen(
            &bgs,
            &name(promoted),
            &context(&format!(
                "promote of {} to act after kill {kill}",
                name(promoted)
            )),
            left.as_secs().max(1),
            |st| st.phase.as_deref() == Some("Healthy"),
        )
        .await;
        let promoted_rev = st.active_revision.clone().unwrap_or_default();
        wait_bluegreen(
            &bgs,
            &new,
            &context(&format!("{new} adopted after kill {kill}")),
            BOUND.saturating_sub(changed.elapsed()).as_secs().max(1),
            |st| st.phase.as_deref() == Some("Healthy"),
        )
        .await;
        eprintln!(
            "kill {kill}: released within {:.1}s (promoted {} at {promoted_rev})",
            changed.elapsed().as_secs_f64(),
            name(promoted)
        );
        // The promoted one waits for promotion again with its next revision.
        let next = want + 1;
        version.insert(promoted, next);
        set_image(
            &deps,
            &name(promoted),
            &format!("{}:{next}", name(promoted)),
        )
        .await;
        phase(promoted, "AwaitingPromotion").await;
    }

    // Every BlueGreen ends where it should, each release recorded once.
    for i in 0..TOTAL {
        let d = deps.get(&name(i)).await.unwrap();
        let want = teal_controller::objects::revision_of(&d.spec.template);
        let st = bgs.get(&name(i)).await.unwrap().status.unwrap_or_default();
        if AUTO.contains(&i) || i >= PREVIEWING.end {
            assert_eq!(
                st.phase.as_deref(),
                Some("Healthy"),
                "{}",
                context(&name(i))
            );
            assert_eq!(st.active_revision.as_deref(), Some(want.as_str()));
        }
        let mut seen = std::collections::HashSet::new();
        for h in &st.history {
            assert!(
                seen.insert(h.revision.clone()),
                "{}: {:?}",
                context(&name(i)),
                st.history
            );
        }
    }
    drop(replicas);
}
