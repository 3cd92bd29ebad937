//! Leader election on a `coordination.k8s.io/v1` Lease, so two controller
//! replicas never act at once. The holder renews the lease; others take it
//! over only once it has expired. Updates use the lease's resourceVersion,
//! so two candidates can never both win the same round. A holder that could
//! not renew in time (the apiserver or etcd unreachable) stops acting before
//! its lease can expire ([`renew_deadline`]).

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};

/// Lease settings.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub duration: Duration,
}

/// Tries once to become (or stay) the holder. `Ok(true)` while leading.
pub async fn try_acquire(api: &Api<Lease>, cfg: &LeaseConfig) -> Result<bool, kube::Error> {
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
            let expired = match &spec.renew_time {
                Some(MicroTime(t)) => {
                    let dur = SignedDuration::from_secs(i64::from(
                        spec.lease_duration_seconds.unwrap_or(secs),
                    ));
                    t.checked_add(dur).map(|end| end < now).unwrap_or(true)
                }
                None => true,
            };
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

    #[test]
    fn a_leader_renews_several_times_and_stops_before_its_lease_can_expire() {
        for secs in [3, 15, 300] {
            let lease = Duration::from_secs(secs);
            assert!(renew_deadline(lease) < lease);
            assert!(renew_interval(lease) * 3 < renew_deadline(lease), "{secs}s");
        }
    }
}
