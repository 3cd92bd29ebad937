//! Why a reconcile did not finish, by kind: each kind has its own label
//! in `teal_controller_reconcile_errors_total`, its own log level and its
//! own time until the next try.

use std::time::Duration;

use kube::runtime::finalizer::Error as FinalizerError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The apiserver refused or did not answer a request.
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
    /// Adding or removing teal's finalizer failed, or what apply or
    /// cleanup returned under it.
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<FinalizerError<Error>>),
    /// An object teal built could not be written as JSON (a bug of teal).
    #[error("cannot serialize {what}: {source}")]
    Serialize {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// The engine asked for a revision whose pod template neither the
    /// workload nor a color Deployment holds any more.
    #[error("no pod template is known for revision {revision}")]
    NoTemplate { revision: String },
    /// The BlueGreen names something the cluster does not have; the user
    /// fixes it (the message says how).
    #[error("{0}")]
    Config(#[from] Misconfigured),
    /// The BlueGreen is being deleted and its workload is not ready to take
    /// the traffic back yet: not a failure, the finalizer waits.
    #[error("{0}")]
    HandingBack(#[from] HandingBack),
}

/// What the BlueGreen (or the controller's settings) asks for that the
/// cluster does not have.
#[derive(Debug, thiserror::Error)]
pub enum Misconfigured {
    #[error(
        "spec.router.type teal needs the router image: set {env} on the controller (its own image)"
    )]
    NoRouterImage { env: &'static str },
    #[error("spec.preview.headerValueFrom.secretKeyRef: {problem}")]
    PreviewSecret { problem: String },
    #[error(
        "{kind} {namespace}/{name} (spec.router) does not exist: create it, or leave the field out to let teal own one"
    )]
    RouterObjectMissing {
        kind: String,
        namespace: String,
        name: String,
    },
    #[error(
        "{kind} ({api_version}) is not served by this cluster (no CRD {plural}.{group}): {fix} or choose another spec.router.type"
    )]
    RouterApiMissing {
        kind: String,
        api_version: String,
        plural: String,
        group: String,
        fix: &'static str,
    },
}

/// Deleting a BlueGreen: steps of the hand-back that need another turn.
#[derive(Debug, thiserror::Error)]
pub enum HandingBack {
    #[error(
        "restored the live revision {revision} in Deployment {workload} before handing its traffic back"
    )]
    LiveRevisionRestored { revision: String, workload: String },
    #[error(
        "waiting for Deployment {workload} to have {replicas} available replicas before handing its traffic back"
    )]
    WorkloadNotAvailable { workload: String, replicas: i32 },
}

/// Every label [`Error::metric_label`] gives, exported at 0 from the start.
pub const ERROR_KINDS: [&str; 7] = [
    "kube",
    "finalizer",
    "conflict",
    "serialize",
    "template",
    "config",
    "handback",
];

/// After a finalizer write refused for a stale cached BlueGreen: long enough
/// for the watch event already under way, far shorter than other errors.
const STALE_READ_RETRY: Duration = Duration::from_millis(500);
/// After an apiserver error: soon, it may pass.
const KUBE_RETRY: Duration = Duration::from_secs(5);
/// While the cleanup waits for the workload's pods.
const HANDBACK_RETRY: Duration = Duration::from_secs(2);
/// After an error only the user can fix: a Secret, CRD or object the
/// BlueGreen names may be created at any time, and no watch sees it.
const CONFIG_RETRY: Duration = Duration::from_secs(10);
/// After an error a change of the workload or of teal fixes (a watch on
/// the workload wakes it sooner).
const LATER_RETRY: Duration = Duration::from_secs(30);

impl Error {
    pub fn serialize(what: &'static str) -> impl FnOnce(serde_json::Error) -> Error {
        move |source| Error::Serialize { what, source }
    }

    /// What apply or cleanup returned, seen through the finalizer's wrapper.
    fn inner(&self) -> &Error {
        match self {
            Error::Finalizer(f) => match f.as_ref() {
                FinalizerError::ApplyFailed(e) | FinalizerError::CleanupFailed(e) => e.inner(),
                _ => self,
            },
            e => e,
        }
    }

    pub fn metric_label(&self) -> &'static str {
        if self.is_stale_read() {
            return "conflict";
        }
        match self.inner() {
            Error::Kube(_) => "kube",
            Error::Finalizer(_) => "finalizer",
            Error::Serialize { .. } => "serialize",
            Error::NoTemplate { .. } => "template",
            Error::Config(_) => "config",
            Error::HandingBack(_) => "handback",
        }
    }

    /// Adding or removing the finalizer was refused because the BlueGreen
    /// read from the watch cache was older than the apiserver's (the patch
    /// tests the list it read: 422; or a stale resourceVersion: 409). The
    /// watch event with the newer object is on its way: retry soon, without
    /// a warning.
    pub fn is_stale_read(&self) -> bool {
        match self {
            Error::Finalizer(f) => matches!(
                f.as_ref(),
                FinalizerError::AddFinalizer(kube::Error::Api(e))
                    | FinalizerError::RemoveFinalizer(kube::Error::Api(e))
                    if e.code == 422 || e.code == 409
            ),
            _ => false,
        }
    }

    /// When to try again.
    pub fn retry_after(&self) -> Duration {
        if self.is_stale_read() {
            return STALE_READ_RETRY;
        }
        match self.inner() {
            Error::HandingBack(_) => HANDBACK_RETRY,
            Error::Config(_) => CONFIG_RETRY,
            Error::NoTemplate { .. } | Error::Serialize { .. } => LATER_RETRY,
            Error::Kube(_) | Error::Finalizer(_) => KUBE_RETRY,
        }
    }

    /// Whether it is worth a warning in the log (a wait is not).
    pub fn is_warning(&self) -> bool {
        !self.is_stale_read() && !matches!(self.inner(), Error::HandingBack(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(code: u16) -> kube::Error {
        kube::Error::Api(
            kube::core::Status::failure("refused", "Invalid")
                .with_code(code)
                .boxed(),
        )
    }

    fn every_kind() -> Vec<Error> {
        vec![
            Error::Kube(api_error(500)),
            Error::Finalizer(Box::new(FinalizerError::AddFinalizer(api_error(403)))),
            Error::Finalizer(Box::new(FinalizerError::AddFinalizer(api_error(409)))),
            Error::Serialize {
                what: "status",
                source: serde_json::from_str::<u8>("x").unwrap_err(),
            },
            Error::NoTemplate {
                revision: "r".into(),
            },
            Error::Config(Misconfigured::NoRouterImage { env: "E" }),
            Error::HandingBack(HandingBack::WorkloadNotAvailable {
                workload: "w".into(),
                replicas: 1,
            }),
        ]
    }

    #[test]
    fn every_error_kind_has_its_own_label_exported_from_the_start() {
        let labels: Vec<_> = every_kind().iter().map(Error::metric_label).collect();
        assert_eq!(labels, ERROR_KINDS);
        let text = crate::metrics::Metrics::default().render();
        for kind in ERROR_KINDS {
            assert!(
                text.contains(&format!(
                    "teal_controller_reconcile_errors_total{{kind=\"{kind}\"}} 0"
                )),
                "{text}"
            );
        }
    }

    #[test]
    fn a_finalizer_write_refused_for_a_stale_read_is_a_conflict_not_a_failure() {
        let add = |code| Error::Finalizer(Box::new(FinalizerError::AddFinalizer(api_error(code))));
        let remove =
            |code| Error::Finalizer(Box::new(FinalizerError::RemoveFinalizer(api_error(code))));
        for e in [add(422), add(409), remove(422), remove(409)] {
            assert!(e.is_stale_read(), "{e}");
            assert_eq!(e.metric_label(), "conflict");
            assert!(!e.is_warning());
            assert_eq!(e.retry_after(), STALE_READ_RETRY);
        }
        for e in [
            add(403),
            remove(500),
            Error::Finalizer(Box::new(FinalizerError::ApplyFailed(Error::NoTemplate {
                revision: "x".into(),
            }))),
            Error::Kube(api_error(422)),
        ] {
            assert!(!e.is_stale_read(), "{e}");
            assert_ne!(e.metric_label(), "conflict");
        }
    }

    #[test]
    fn an_error_of_apply_or_cleanup_keeps_its_kind_under_the_finalizer() {
        let wrapped = |f: FinalizerError<Error>| Error::Finalizer(Box::new(f));
        let waiting = wrapped(FinalizerError::CleanupFailed(Error::HandingBack(
            HandingBack::LiveRevisionRestored {
                revision: "r".into(),
                workload: "w".into(),
            },
        )));
        assert_eq!(waiting.metric_label(), "handback");
        assert_eq!(waiting.retry_after(), HANDBACK_RETRY);
        assert!(!waiting.is_warning());
        let kube = wrapped(FinalizerError::CleanupFailed(Error::Kube(api_error(500))));
        assert_eq!(kube.metric_label(), "kube");
        assert_eq!(kube.retry_after(), KUBE_RETRY);
        assert!(kube.is_warning());
        let config = wrapped(FinalizerError::ApplyFailed(Error::Config(
            Misconfigured::NoRouterImage { env: "E" },
        )));
        assert_eq!(config.metric_label(), "config");
        assert_eq!(config.retry_after(), CONFIG_RETRY);
        assert_eq!(
            wrapped(FinalizerError::AddFinalizer(api_error(403))).metric_label(),
            "finalizer"
        );
    }
}
