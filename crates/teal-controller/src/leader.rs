//! Leader election on a `coordination.k8s.io/v1` Lease, so two controller
//! replicas never act at once. The holder renews the lease; others take it
//! over only once it has expired. Updates use the lease's resourceVersion,
//! so two candidates can never both win the same round. A holder that could
//! not renew in time (the apiserver or etcd unreachable) stops acting before
//! its lease can expire ([`renew_deadline`]).

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};

/// Lease settings.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub duration: Duration,
}

/// What a candidate last saw of the Lease, and when by its own clock.
///
/// Whether another holder's lease expired is judged from how long the Lease
/// has gone unchanged as this process measured it, never from the renew
/// time the holder wrote: holders' clocks may be off. A holder whose clock
/// runs 30 s behind writes renew times that already look expired (judged by
/// them, two replicas would act at once); one whose clock runs ahead writes
/// renew times that look fresh long after it died (as client-go does, the
/// record's changes are what count).
#[derive(Debug, Default)]
pub struct Observed {
    /// The Lease's resourceVersion, which every renewal changes.
    version: Option<String>,
    /// When this process first saw that version.
    since: Option<std::time::Instant>,
}

impl Observed {
    /// Takes in the Lease as read at `now`; true when it has not changed
    /// for `duration` since this process first saw it so.
    fn expired(&mut self, lease: &Lease, duration: Duration, now: std::time::Instant) -> bool {
        let version = lease.metadata.resource_version.clone();
        if self.version != version || self.since.is_none() {
            self.version = version;
            self.since = Some(now);
        }
        self.since
            .is_some_and(|since| now.saturating_duration_since(since) >= duration)
    }
}

/// Tries once to become (or stay) the holder. `Ok(true)` while leading.
/// `observed` keeps what this process saw of the Lease between attempts.
pub async fn try_acquire(
    api: &Api<Lease>,
    cfg: &LeaseConfig,
    observed: &mut Observed,
) -> Result<bool, kube::Error> {
    let now = Timestamp::now();
    let secs = cfg.duration.as_secs().max(1) as i32;
    match api.get_opt(&cfg.name).await? {
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(cfg.name.clone()),
                    namespace: Some(cfg.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(cfg.identity.clone()),
                    lease_duration_seconds: Some(secs),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
        Some(mut lease) => {
            let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
            let holder = spec.holder_identity.clone().unwrap_or_default();
            let ours = holder == cfg.identity;
            let duration = Duration::from_secs(
                u64::try_from(spec.lease_duration_seconds.unwrap_or(secs)).unwrap_or(0),
            );
            let expired = observed.expired(&lease, duration, std::time::Instant::now());
            let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
            if !ours && !expired && !holder.is_empty() {
                return Ok(false);
            }
            if !ours {
                spec.acquire_time = Some(MicroTime(now));
                spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            }
            spec.holder_identity = Some(cfg.identity.clone());
            spec.renew_time = Some(MicroTime(now));
            spec.lease_duration_seconds = Some(secs);
            match api.replace(&cfg.name, &PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
    }
}

/// How long a leader may act after a renewal attempt that succeeded: two
/// thirds of the lease, so it has stopped well before another replica can
/// see the lease expired (as client-go's renew deadline). A leader that
/// cannot renew (apiserver or etcd unreachable) stops then, instead of acting
/// on while another replica takes over.
pub fn renew_deadline(lease: Duration) -> Duration {
    lease * 2 / 3
}

/// How often the leader renews (and retries a failed renewal): a sixth of
/// the lease, so a slow or failed attempt leaves several more before the
/// renew deadline.
pub fn renew_interval(lease: Duration) -> Duration {
    lease / 6
}

/// Releases the lease on a clean stop so another replica takes over at once.
pub async fn release(api: &Api<Lease>, cfg: &LeaseConfig) {
    if let Ok(Some(mut lease)) = api.get_opt(&cfg.name).await
        && let Some(spec) = lease.spec.as_mut()
        && spec.holder_identity.as_deref() == Some(cfg.identity.as_str())
    {
        spec.holder_identity = None;
        let _ = api.replace(&cfg.name, &PostParams::default(), &lease).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(version: &str) -> Lease {
        Lease {
            metadata: ObjectMeta {
                resource_version: Some(version.into()),
                ..Default::default()
            },
            spec: None,
        }
    }

    #[test]
    fn expiry_is_judged_by_how_long_the_lease_went_unchanged_here() {
        let d = Duration::from_secs(15);
        let t0 = std::time::Instant::now();
        let mut o = Observed::default();
        // However old its renew time looks, a lease just seen is not expired.
        assert!(!o.expired(&lease("1"), d, t0));
        assert!(!o.expired(&lease("1"), d, t0 + Duration::from_secs(14)));
        // Renewed: the clock starts again.
        assert!(!o.expired(&lease("2"), d, t0 + Duration::from_secs(14)));
        assert!(!o.expired(&lease("2"), d, t0 + Duration::from_secs(28)));
        assert!(o.expired(&lease("2"), d, t0 + Duration::from_secs(29)));
    }

    #[test]
    fn a_leader_renews_several_times_and_stops_before_its_lease_can_expire() {
        for secs in [3, 15, 300] {
            let lease = Duration::from_secs(secs);
            assert!(renew_deadline(lease) < lease);
            assert!(renew_interval(lease) * 3 < renew_deadline(lease), "{secs}s");
        }
    }
}
