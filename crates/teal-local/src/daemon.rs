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
    Inherited(String),
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

/// The router's listening socket handed over on standard input by a
/// supervisor (systemd's `StandardInput=socket`), checked to be a listening
/// TCP socket. It outlives the daemon in the supervisor, so connections
/// arriving while the daemon restarts wait in its backlog instead of being
/// refused. (systemd's `LISTEN_FDS` way passes descriptor 3 and up, which
/// safe Rust cannot take ownership of; standard input it can.)
pub fn listener_from_stdin() -> Result<std::net::TcpListener, DaemonError> {
    use std::os::fd::AsFd;
    let not = |why: String| {
        DaemonError::Inherited(format!(
            "standard input is not a listening TCP socket ({why}): start the daemon from a socket unit with StandardInput=socket"
        ))
    };
    let fd = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| not(e.to_string()))?;
    let socket = socket2::Socket::from(fd);
    match socket.r#type() {
        Ok(t) if t == socket2::Type::STREAM => {}
        Ok(_) => return Err(not("not a stream socket".into())),
        Err(e) => return Err(not(e.to_string())),
    }
    match socket.is_listener() {
        Ok(true) => {}
        Ok(false) => return Err(not("it does not listen".into())),
        Err(e) => return Err(not(e.to_string())),
    }
    let listener = std::net::TcpListener::from(socket);
    listener
        .local_addr()
        .map_err(|e| not(format!("no TCP address: {e}")))?;
    Ok(listener)
}

/// How long a restarted daemon holds back accepting production connections
/// until the live color is routed again.
pub const RESUME_ROUTING_WAIT: Duration = Duration::from_secs(10);

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
    config: Config,
    router_config: RouterConfig,
    shutdown: impl Future<Output = ()> + Send,
    ready: Option<tokio::sync::oneshot::Sender<(Bound, Engine)>>,
) -> Result<(), DaemonError> {
    serve_on(config, router_config, None, shutdown, ready).await
}

/// [`serve`], with the router on `inherited` (see [`listener_from_stdin`])
/// instead of a socket bound to `listen`. `listen` must name the socket's
/// address (or port 0).
pub async fn serve_on(
    mut config: Config,
    router_config: RouterConfig,
    inherited: Option<std::net::TcpListener>,
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
    let listener = match inherited {
        None => bind("listen", config.listen).await?,
        Some(l) => {
            let addr = l.local_addr()?;
            let wanted = config.listen;
            if wanted.port() != 0 && (addr.port() != wanted.port() || addr.ip() != wanted.ip()) {
                return Err(DaemonError::Inherited(format!(
                    "listen: the config says {wanted}, the socket on standard input is bound to {addr}: make them the same"
                )));
            }
            l.set_nonblocking(true)?;
            TcpListener::from_std(l)?
        }
    };
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
        let engine = engine.clone();
        async move {
            // After a restart, connections that arrived while the daemon was
            // down (kept in the backlog of a handed-over socket) and those
            // arriving now wait until the live color is routed again, a
            // matter of a probe, instead of being answered 503 by a router
            // without a route table. Bounded, in case the live color has to
            // start afresh.
            if engine.resumed_routing() {
                let _ = tokio::time::timeout(RESUME_ROUTING_WAIT, engine.wait_routed()).await;
            }
            router.serve(listener, s).await
        }
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
