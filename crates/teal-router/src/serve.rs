//! Accepting client connections: limits, timeouts, graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};

use crate::body::{ConnActivity, FlushWatch};
use crate::proxy::handle;
use crate::{Router, UpstreamProtocol};

/// A client connection handed from the acceptor to a worker.
struct Accepted {
    stream: std::net::TcpStream,
    addr: SocketAddr,
    permit: OwnedSemaphorePermit,
}

/// A worker thread: its own single-threaded runtime serving the
/// connections it is handed.
struct Worker {
    tx: mpsc::UnboundedSender<Accepted>,
    done: oneshot::Receiver<()>,
}

impl Router {
    /// Serves client connections from `listener` until `shutdown` completes,
    /// then stops accepting, lets open connections finish their requests
    /// (bounded by [`crate::RouterConfig::shutdown_grace`]) and returns.
    ///
    /// Connections are accepted here and handed round-robin to
    /// [`crate::RouterConfig::worker_threads`] threads, each with a
    /// single-threaded runtime: a connection, its requests and the upstream
    /// connections they use are all driven by one thread, with no work
    /// stealing or wake-ups across threads on the request path. Connections
    /// still open when the grace period ends are closed.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> std::io::Result<()> {
        let config = &self.shared.config;
        let max = config
            .max_connections
            .clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
        let limit = Arc::new(Semaphore::new(max));
        let (stop_tx, stop_rx) = watch::channel(false);
        let builder = Arc::new(self.conn_builder());
        let workers = (1..=config.worker_threads())
            .map(|n| self.spawn_worker(n, builder.clone(), stop_rx.clone()))
            .collect::<std::io::Result<Vec<Worker>>>()?;
        let mut next = 0;
        let mut backoff = crate::AcceptBackoff::new("proxy");
        tokio::pin!(shutdown);
        loop {
            let permit = tokio::select! {
                _ = &mut shutdown => break,
                p = limit.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let (stream, addr) = tokio::select! {
                _ = &mut shutdown => break,
                r = listener.accept() => match r {
                    Ok(pair) => {
                        backoff.accepted();
                        let at = self.shared.started.elapsed().as_millis() as u64 + 1;
                        self.shared.last_accept.store(at, std::sync::atomic::Ordering::Relaxed);
                        pair
                    }
                    Err(e) => {
                        // Out of descriptors: wait (longer each time, up to
                        // a second) instead of spinning; a connection reset
                        // before accept: go on at once.
                        let wait = backoff.failed(&e);
                        drop(permit);
                        tokio::select! {
                            _ = &mut shutdown => break,
                            _ = tokio::time::sleep(wait) => {}
                        }
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let stream = match stream.into_std() {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(client = %addr, error = %e, "cannot hand a connection to a worker");
                    continue;
                }
            };
            let accepted = Accepted {
                stream,
                addr,
                permit,
            };
            if workers[next].tx.send(accepted).is_err() {
                tracing::error!(worker = next + 1, "router worker thread is gone");
            }
            next = (next + 1) % workers.len();
        }
        drop(listener);
        let _ = stop_tx.send(true);
        let _ = tokio::time::timeout(config.shutdown_grace, limit.acquire_many(max as u32)).await;
        for worker in workers {
            drop(worker.tx);
            let _ = worker.done.await;
        }
        Ok(())
    }

    fn spawn_worker(
        &self,
        n: usize,
        builder: Arc<auto::Builder<TokioExecutor>>,
        stop: watch::Receiver<bool>,
    ) -> std::io::Result<Worker> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (tx, mut rx) = mpsc::unbounded_channel::<Accepted>();
        let (done_tx, done) = oneshot::channel();
        let router = self.clone();
        std::thread::Builder::new()
            .name(format!("teal-router-{n}"))
            .spawn(move || {
                crate::upstream::set_worker_shard(n);
                runtime.block_on(async move {
                    while let Some(a) = rx.recv().await {
                        let stream = match TcpStream::from_std(a.stream) {
                            Ok(s) => s,
                            Err(e) => {
                                tracing::warn!(client = %a.addr, error = %e, "cannot register a client connection");
                                continue;
                            }
                        };
                        let router = router.clone();
                        let builder = builder.clone();
                        let stop = stop.clone();
                        tokio::spawn(async move {
                            router
                                .serve_conn(&builder, stream, a.addr, a.permit, stop)
                                .await;
                        });
                    }
                });
                // Dropping the runtime closes what is still open.
                drop(runtime);
                let _ = done_tx.send(());
            })?;
        Ok(Worker { tx, done })
    }

    fn conn_builder(&self) -> auto::Builder<TokioExecutor> {
        let config = &self.shared.config;
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(config.header_read_timeout)
            .max_buf_size(config.max_header_bytes.max(8192))
            .keep_alive(true);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(config.max_concurrent_streams)
            .max_header_list_size(config.max_header_bytes.min(u32::MAX as usize) as u32)
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .keep_alive_timeout(Duration::from_secs(20));
        builder
    }

    async fn serve_conn(
        self,
        builder: &auto::Builder<TokioExecutor>,
        stream: TcpStream,
        addr: std::net::SocketAddr,
        _permit: OwnedSemaphorePermit,
        stop: watch::Receiver<bool>,
    ) {
        let Some(tls) = self.shared.config.tls.clone() else {
            let config = &self.shared.config;
            if config.lean_http1 && config.upstream_protocol == UpstreamProtocol::Http1 {
                return crate::h1::serve(self, builder, stream, addr, stop).await;
            }
            return self.serve_io(builder, stream, addr, false, stop).await;
        };
        // The handshake counts against the header-read timeout: a client
        // that stalls it cannot hold a connection.
        let timeout = self.shared.config.header_read_timeout;
        match tokio::time::timeout(timeout, tls.acceptor().accept(stream)).await {
            Ok(Ok(stream)) => self.serve_io(builder, stream, addr, true, stop).await,
            Ok(Err(e)) => tracing::debug!(client = %addr, error = %e, "TLS handshake failed"),
            Err(_) => {
                tracing::debug!(client = %addr, "TLS handshake not done within the header-read timeout")
            }
        }
    }

    pub(crate) async fn serve_io<I>(
        self,
        builder: &auto::Builder<TokioExecutor>,
        stream: I,
        addr: std::net::SocketAddr,
        tls: bool,
        mut stop: watch::Receiver<bool>,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let activity = ConnActivity::new(self.shared.clone(), tls);
        let idle_timeout = self.shared.config.idle_timeout;
        let router = self.clone();
        let act = activity.clone();
        let service = service_fn(move |req| handle(router.clone(), req, addr, act.clone()));
        let io = TokioIo::new(FlushWatch::new(stream, activity.clone()));
        let conn = builder.serve_connection_with_upgrades(io, service);
        tokio::pin!(conn);
        let check_every =
            (idle_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
        let mut tick = tokio::time::interval(check_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut closing = false;
        loop {
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(client = %addr, error = %e, "client connection ended with an error");
                    }
                    break;
                }
                _ = stop.changed(), if !closing => {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
                _ = tick.tick(), if !closing => {
                    let idle_for = activity.now_ms().saturating_sub(activity.idle_since_ms.load(Ordering::SeqCst));
                    if activity.active.load(Ordering::SeqCst) == 0 && idle_for >= idle_timeout.as_millis() as u64 {
                        tracing::debug!(client = %addr, "closing idle client connection");
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
        }
    }
}
