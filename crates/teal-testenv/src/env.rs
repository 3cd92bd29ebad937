use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

use crate::Error;
use crate::supervisor::{self, Supervised};

/// How long the control plane may take to come up (a loaded two-core machine needs ~15s).
const START_TIMEOUT: Duration = Duration::from_secs(240);

/// A real control plane shared by every test of one test binary.
pub struct TestEnv {
    kubeconfig: PathBuf,
    dir: PathBuf,
    config: Config,
    // Holds the supervisor's standard input open for the life of the process (the shared
    // one) or of the value (a private one); the supervisor stops the control plane when it
    // closes.
    pub(crate) supervisor: Mutex<Supervised>,
}

static SHARED: OnceLock<Result<TestEnv, String>> = OnceLock::new();

impl TestEnv {
    /// The control plane of this test binary, started on first use. Panics with the reason
    /// (and the tail of the startup log) if it cannot start; every later call panics the same
    /// way. Blocks while starting, so it can be called from sync or async code.
    pub fn shared() -> &'static TestEnv {
        match Self::try_shared() {
            Ok(env) => env,
            Err(message) => panic!("teal-testenv: {message}"),
        }
    }

    /// Like [`TestEnv::shared`], but returns why it could not start instead of panicking.
    pub fn try_shared() -> Result<&'static TestEnv, String> {
        SHARED
            .get_or_init(|| Self::start(&[]).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(Clone::clone)
    }

    /// Starts a control plane with `options` for `scripts/control-plane run`.
    pub(crate) fn start(options: &[String]) -> Result<TestEnv, Error> {
        Self::start_within(options, START_TIMEOUT)
    }

    /// Like [`TestEnv::start`], waiting up to `timeout` for it to be ready.
    pub(crate) fn start_within(options: &[String], timeout: Duration) -> Result<TestEnv, Error> {
        // Ports are picked free just before use; in the rare case another process takes one in
        // between, a component fails to bind and a second attempt picks new ones.
        let mut attempt = 0;
        let supervised = loop {
            attempt += 1;
            let dir = supervisor::state_dir("control-plane")?;
            match supervisor::start("the control plane", "run", options, dir, &[], timeout) {
                Ok(supervised) => break supervised,
                Err(e @ Error::Start { .. }) if attempt < 2 => {
                    tracing::warn!("starting the control plane failed, trying again: {e}");
                }
                Err(e) => return Err(e),
            }
        };
        let kubeconfig = PathBuf::from(&supervised.detail);
        let config = load_config(&kubeconfig)?;
        Ok(TestEnv {
            kubeconfig,
            dir: supervised.dir.clone(),
            config,
            supervisor: Mutex::new(supervised),
        })
    }

    /// A client for the control plane, authenticated as a cluster admin. A `kube::Client`
    /// belongs to the tokio runtime it was made on, so call this in each test (each
    /// `#[tokio::test]` has its own runtime).
    pub fn client(&self) -> Client {
        Client::try_from(self.config.clone()).unwrap_or_else(|e| {
            panic!(
                "teal-testenv: building a client from {}: {e}",
                self.kubeconfig.display()
            )
        })
    }

    /// The admin kubeconfig, for tools such as kubectl or teal's own binaries.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// Where the control plane keeps its state; `logs/` holds one log per component.
    pub fn state_dir(&self) -> &Path {
        &self.dir
    }

    /// `kubectl` (the one built with the control plane when `TEAL_KUBECTL` is set, else the
    /// one on `PATH`) pointed at this control plane.
    pub fn kubectl(&self) -> Command {
        let kubectl = std::env::var_os("TEAL_KUBECTL").unwrap_or_else(|| "kubectl".into());
        let mut cmd = Command::new(kubectl);
        cmd.env("KUBECONFIG", &self.kubeconfig);
        cmd
    }

    /// Creates a fresh namespace named `<prefix>-<random suffix>` and returns its name once
    /// pods can be created in it (its `default` service account exists). Panics on failure.
    pub async fn namespace(&self, prefix: &str) -> String {
        match self.try_namespace(prefix).await {
            Ok(name) => name,
            Err(e) => panic!("teal-testenv: {e}"),
        }
    }

    /// Like [`TestEnv::namespace`], but returns the error.
    pub async fn try_namespace(&self, prefix: &str) -> Result<String, Error> {
        let client = self.client();
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let ns = Namespace {
            metadata: ObjectMeta {
                generate_name: Some(format!("{prefix}-")),
                labels: Some([("teal.dev/test".to_owned(), prefix.to_owned())].into()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        let created = namespaces
            .create(&PostParams::default(), &ns)
            .await
            .map_err(|source| Error::Kube {
                what: format!("creating a namespace named {prefix}-*"),
                source,
            })?;
        let name = created
            .metadata
            .name
            .expect("the apiserver names generated namespaces");
        let accounts: Api<ServiceAccount> = Api::namespaced(client, &name);
        crate::try_wait_for(
            &format!("service account default in namespace {name}"),
            Duration::from_secs(30),
            || async {
                match accounts.get_opt("default").await {
                    Ok(Some(_)) => Ok(()),
                    Ok(None) => Err("not created yet".to_owned()),
                    Err(e) => Err(e.to_string()),
                }
            },
        )
        .await?;
        Ok(name)
    }
}

impl Drop for TestEnv {
    /// Only private control planes are ever dropped (the shared one lives in a static): stop
    /// it and wait until every component is gone.
    fn drop(&mut self) {
        self.supervisor
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .stop();
    }
}

/// Reads the kubeconfig on a thread of its own: the kube API for it is async, and this may be
/// called from inside a runtime that must not be blocked on.
fn load_config(path: &Path) -> Result<Config, Error> {
    let err = |message: String| Error::Kubeconfig {
        path: path.to_owned(),
        message,
    };
    let kubeconfig = Kubeconfig::read_from(path).map_err(|e| err(e.to_string()))?;
    std::thread::scope(|s| {
        s.spawn(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| err(format!("starting a runtime: {e}")))?;
            runtime
                .block_on(Config::from_custom_kubeconfig(
                    kubeconfig,
                    &KubeConfigOptions::default(),
                ))
                .map_err(|e| err(e.to_string()))
        })
        .join()
        .unwrap_or_else(|_| Err(err("reading it panicked".to_owned())))
    })
}
