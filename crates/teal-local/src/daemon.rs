//! `teal local serve`: the daemon owning the router, the app's processes
//! and the release engine, with its control API.

use std::future::Future;
use std::io::Read;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use teal_router::{AdminListener, RouterConfig};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::Config;
use crate::engine::Engine;

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{field}: cannot listen on {addr}: {source}")]
    Bind {
        field: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("another teal daemon (pid {pid}) is using the state directory {dir}")]
    AlreadyRunning { pid: u32, dir: PathBuf },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Files in the state directory.
pub fn control_addr_file(dir: &Path) -> PathBuf {
    dir.join("control.addr")
}
pub fn control_token_file(dir: &Path) -> PathBuf {
    dir.join("control.token")
}
pub fn admin_token_file(dir: &Path) -> PathBuf {
    dir.join("admin.token")
}
fn pid_file(dir: &Path) -> PathBuf {
    dir.join("daemon.pid")
}

/// A random token, hex-encoded, from the kernel's generator.
pub fn random_token() -> std::io::Result<String> {
    let mut buf = [0u8; 24];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

fn write_private(path: &Path, content: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    std::fs::rename(tmp, path)
}

async fn bind(field: &'static str, addr: SocketAddr) -> Result<TcpListener, DaemonError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| DaemonError::Bind {
            field,
            addr,
            source,
        })
}

/// Addresses the daemon listens on once started.
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub control: SocketAddr,
}

/// Binds every listener (so a port in use fails before any process starts),
/// starts the engine and serves until `shutdown`; then stops the app's
/// processes. `ready` receives the bound addresses.
pub async fn serve(
    mut config: Config,
    router_config: RouterConfig,
    shutdown: impl Future<Output = ()> + Send,
    ready: Option<tokio::sync::oneshot::Sender<(Bound, Engine)>>,
) -> Result<(), DaemonError> {
    let dir = config.state_dir.clone();
    std::fs::create_dir_all(&dir)?;
    if let Ok(pid) = std::fs::read_to_string(pid_file(&dir))
        && let Ok(pid) = pid.trim().parse::<u32>()
        && pid != std::process::id()
        && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok()
        && std::fs::read_to_string(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.contains("teal"))
    {
        return Err(DaemonError::AlreadyRunning { pid, dir });
    }
    let listener = bind("listen", config.listen).await?;
    let admin = bind("admin", config.admin).await?;
    let control = bind("control", config.control).await?;
    let bound = Bound {
        listen: listener.local_addr()?,
        admin: admin.local_addr()?,
        control: control.local_addr()?,
    };
    config.listen = bound.listen;
    config.admin = bound.admin;
    config.control = bound.control;
    std::fs::write(pid_file(&dir), std::process::id().to_string())?;
    let control_token = random_token()?;
    let admin_token = random_token()?;
    write_private(&control_token_file(&dir), &control_token)?;
    write_private(&admin_token_file(&dir), &admin_token)?;
    write_private(&control_addr_file(&dir), &bound.control.to_string())?;

    let engine = Engine::start(config, router_config)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let router = engine.router.clone();
    let proxy = tokio::spawn({
        let router = router.clone();
        let s = stopped(stop_rx.clone());
        async move { router.serve(listener, s).await }
    });
    let admin_task = tokio::spawn({
        let s = stopped(stop_rx.clone());
        async move {
            router
                .serve_admin(
                    AdminListener::Tcp {
                        listener: admin,
                        token: admin_token,
                    },
                    s,
                )
                .await
        }
    });
    let control_task = tokio::spawn(crate::api::serve(
        engine.clone(),
        control,
        control_token,
        stopped(stop_rx.clone()),
    ));
    tracing::info!("dashboard on http://{}/", bound.control);
    if let Some(r) = ready {
        let _ = r.send((bound, engine.clone()));
    }
    shutdown.await;
    tracing::info!("shutting down: stopping the app's processes");
    let _ = std::fs::remove_file(control_addr_file(&dir));
    engine.shutdown().await;
    let _ = stop_tx.send(true);
    for t in [proxy, admin_task, control_task] {
        let _ = tokio::time::timeout(Duration::from_secs(15), t).await;
    }
    let _ = std::fs::remove_file(pid_file(&dir));
    Ok(())
}
