//! Upstream HTTP/1.1 connections, pooled per color and endpoint.
//!
//! A connection is driven by the task of the request that uses it: the
//! request future polls the connection while it waits for the response head,
//! and the response body polls it while the client side reads the body. No
//! background task per connection and no hand-off between tasks, so a
//! proxied request costs one task's polls, as in an event-loop proxy. An idle
//! connection sits in its pool unpolled; a connection the upstream closed
//! meanwhile is noticed when it is checked out (its sender reports closed, or
//! it is not ready), and the request is sent on another one, since it was
//! never written.

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::{RouterConfig, UpstreamProtocol};

type Conn = http1::Connection<TokioIo<TcpStream>, Incoming>;

/// Why a request could not be forwarded.
#[derive(Debug)]
pub(crate) enum SendError {
    /// No connection to the endpoint could be made; the request, not sent,
    /// comes back so it can go to another endpoint.
    Connect(std::io::Error, Box<Request<Incoming>>),
    /// The connection failed while the request was sent or before the
    /// response head arrived.
    Http(hyper::Error),
    /// The connection closed after the request was handed to it, without
    /// an answer.
    Closed,
}

/// One upstream connection: the sender and the connection state machine.
pub(crate) struct Upstream {
    sender: http1::SendRequest<Incoming>,
    conn: Conn,
    /// The connection future finished: the connection is closed.
    done: bool,
    /// Came from the pool (and may have been closed by the upstream while
    /// it sat there).
    reused: bool,
}

impl Upstream {
    /// Polls the connection once in `cx`; true while it is still open.
    fn poll_conn(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.done
            && let Poll::Ready(r) = Pin::new(&mut self.conn).poll(cx)
        {
            if let Err(e) = r {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
            self.done = true;
        }
        !self.done
    }
}

/// Pending response head on a connection, polled together with the
/// connection in the request's task.
async fn send_on(
    up: &mut Upstream,
    req: Request<Incoming>,
) -> Result<Response<Incoming>, (Option<hyper::Error>, Option<Request<Incoming>>)> {
    let Upstream {
        sender, conn, done, ..
    } = up;
    let fut = async {
        if let Err(e) = sender.ready().await {
            return Err((Some(e), Some(req)));
        }
        sender.try_send_request(req).await.map_err(|mut e| {
            let message = e.take_message();
            (Some(e.into_error()), message)
        })
    };
    let mut fut = pin!(fut);
    poll_fn(|cx| {
        // Request first (it may hand the connection a message), then the
        // connection (it may complete the request), then the request again,
        // so one wake-up usually does the whole step.
        for _ in 0..2 {
            if let Poll::Ready(v) = fut.as_mut().poll(cx) {
                return Poll::Ready(v);
            }
            if !*done && let Poll::Ready(r) = Pin::new(&mut *conn).poll(cx) {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "upstream connection ended with an error");
                }
                *done = true;
            }
        }
        match fut.as_mut().poll(cx) {
            // The connection ended and will not complete the request.
            Poll::Pending if *done => Poll::Ready(Err((None, None))),
            other => other,
        }
    })
    .await
}

thread_local! {
    /// Which shard of every pool this thread uses: its worker number, 0 on
    /// threads that are not router workers.
    static SHARD: Cell<usize> = const { Cell::new(0) };
}

/// Makes the current thread use shard `worker` of every pool, so the
/// connections a worker opens are reused by that worker (whose runtime
/// drives their sockets).
pub(crate) fn set_worker_shard(worker: usize) {
    SHARD.set(worker);
}

type Shard = Mutex<HashMap<SocketAddr, VecDeque<Idle>>>;
type RawShard = Mutex<HashMap<SocketAddr, Vec<RawIdle>>>;

/// An upstream HTTP/1.1 connection of the lean path (crate::h1): the socket
/// and the bytes read from it that were not relayed yet.
pub(crate) struct RawConn {
    pub(crate) stream: TcpStream,
    pub(crate) buf: bytes::BytesMut,
    /// Came from the pool (the upstream may have closed it meanwhile).
    pub(crate) reused: bool,
}

struct RawIdle {
    conn: RawConn,
    since: Instant,
}
type H2Shard = Mutex<HashMap<SocketAddr, http2::SendRequest<Incoming>>>;

struct Idle {
    up: Box<Upstream>,
    since: Instant,
}

/// Idle connections of one color, by worker thread and endpoint. Replaced
/// on drain, which closes them.
pub(crate) struct Pool {
    shards: Box<[Shard]>,
    /// Idle connections of the lean HTTP/1.1 path, by worker and endpoint.
    raw: Box<[RawShard]>,
    /// Speak HTTP/2 (prior knowledge) to the endpoints instead of HTTP/1.1.
    h2c: bool,
    /// One multiplexed HTTP/2 connection per worker thread and endpoint.
    h2: Box<[H2Shard]>,
    max_idle: usize,
    idle_timeout: Duration,
    connect_timeout: Duration,
    reaper: AtomicBool,
}

impl Pool {
    pub(crate) fn new(config: &RouterConfig) -> Pool {
        Pool {
            shards: (0..=config.worker_threads())
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
            raw: (0..=config.worker_threads())
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
            h2c: config.upstream_protocol == UpstreamProtocol::H2c,
            h2: (0..=config.worker_threads())
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
            max_idle: config.pool_max_idle_per_endpoint,
            idle_timeout: config.pool_idle_timeout,
            connect_timeout: config.connect_timeout,
            reaper: AtomicBool::new(false),
        }
    }

    /// Idle connections kept now, over all endpoints.
    pub(crate) fn idle_count(&self) -> usize {
        let hyper: usize = self
            .shards
            .iter()
            .map(|s| lock(s).values().map(VecDeque::len).sum::<usize>())
            .sum();
        let raw: usize = self
            .raw
            .iter()
            .map(|s| lock_raw(s).values().map(Vec::len).sum::<usize>())
            .sum();
        hyper + raw
    }

    /// Closes every worker's idle connections to `addr` and forgets its
    /// HTTP/2 connections (they close once their streams end). Called when a
    /// connect to `addr` failed or a request to it got no answer within the
    /// upstream timeout: connections opened before may have lost their path
    /// too (a link or node that went away drops their packets without a
    /// reset), and a request sent on one would wait for the upstream timeout
    /// and fail, where a new connect fails fast and the request goes to
    /// another endpoint. Returns how many were closed.
    pub(crate) fn close_idle(&self, addr: SocketAddr) -> usize {
        let mut closed: Vec<Idle> = Vec::new();
        for shard in self.shards.iter() {
            closed.extend(lock(shard).remove(&addr).into_iter().flatten());
        }
        let mut raw: Vec<RawIdle> = Vec::new();
        for shard in self.raw.iter() {
            raw.extend(lock_raw(shard).remove(&addr).into_iter().flatten());
        }
        let mut n = closed.len() + raw.len();
        drop(raw);
        for shard in self.h2.iter() {
            n += usize::from(
                shard
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&addr)
                    .is_some(),
            );
        }
        // Closed outside the locks.
        drop(closed);
        n
    }

    /// The shard of the current thread.
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, VecDeque<Idle>>> {
        lock(&self.shards[SHARD.get() % self.shards.len()])
    }

    /// The most recently used idle connection to `addr` that has not timed
    /// out and is not known to be closed.
    fn checkout(&self, addr: SocketAddr) -> Option<Box<Upstream>> {
        let now = Instant::now();
        let mut idle = self.lock();
        let list = idle.get_mut(&addr)?;
        while let Some(front) = list.front() {
            if now.duration_since(front.since) < self.idle_timeout {
                break;
            }
            list.pop_front();
        }
        while let Some(Idle { mut up, .. }) = list.pop_back() {
            // Polling the idle connection reads a close (FIN or reset) the
            // upstream sent while it sat here, e.g. because it died.
            if !up.done
                && !up.sender.is_closed()
                && up.poll_conn(&mut Context::from_waker(Waker::noop()))
                && !up.sender.is_closed()
            {
                up.reused = true;
                return Some(up);
            }
        }
        None
    }

    /// Keeps `up` for the next request to `addr`, when it is still open and
    /// the endpoint has room.
    fn checkin(self: &Arc<Self>, addr: SocketAddr, mut up: Box<Upstream>) {
        // Let the connection finish the response it just delivered (and
        // notice a close the upstream announced with it).
        if !up.poll_conn(&mut Context::from_waker(Waker::noop())) || up.sender.is_closed() {
            return;
        }
        let now = Instant::now();
        {
            let mut idle = self.lock();
            let list = idle.entry(addr).or_default();
            while list
                .front()
                .is_some_and(|f| now.duration_since(f.since) >= self.idle_timeout)
            {
                list.pop_front();
            }
            if list.len() >= self.max_idle {
                return;
            }
            list.push_back(Idle { up, since: now });
        }
        self.start_reaper();
    }

    /// Closes connections idle for longer than the idle timeout, even when
    /// their endpoint sees no more requests. Runs while the pool exists.
    fn start_reaper(self: &Arc<Self>) {
        if self.reaper.swap(true, Ordering::Relaxed) {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            self.reaper.store(false, Ordering::Relaxed);
            return;
        };
        let pool: Weak<Pool> = Arc::downgrade(self);
        let every = (self.idle_timeout / 2).max(Duration::from_millis(100));
        handle.spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(pool) = pool.upgrade() else { return };
                let now = Instant::now();
                let mut expired: Vec<Idle> = Vec::new();
                for shard in pool.shards.iter() {
                    let mut idle = lock(shard);
                    for list in idle.values_mut() {
                        while list
                            .front()
                            .is_some_and(|f| now.duration_since(f.since) >= pool.idle_timeout)
                        {
                            expired.extend(list.pop_front());
                        }
                    }
                    idle.retain(|_, list| !list.is_empty());
                }
                let mut expired_raw: Vec<RawIdle> = Vec::new();
                for shard in pool.raw.iter() {
                    let mut idle = lock_raw(shard);
                    for list in idle.values_mut() {
                        let keep = list
                            .iter()
                            .position(|i| now.duration_since(i.since) < pool.idle_timeout)
                            .unwrap_or(list.len());
                        expired_raw.extend(list.drain(..keep));
                    }
                    idle.retain(|_, list| !list.is_empty());
                }
                drop(expired_raw);
                // Closed outside the locks.
                drop(expired);
            }
        });
    }

    /// The most recently used idle lean-path connection to `addr` that has
    /// not timed out and shows no close from the upstream.
    pub(crate) fn checkout_raw(&self, addr: SocketAddr) -> Option<RawConn> {
        let now = Instant::now();
        let mut idle = lock_raw(&self.raw[SHARD.get() % self.raw.len()]);
        let list = idle.get_mut(&addr)?;
        let expired = list
            .iter()
            .position(|i| now.duration_since(i.since) < self.idle_timeout)
            .unwrap_or(list.len());
        list.drain(..expired);
        while let Some(RawIdle { mut conn, .. }) = list.pop() {
            // A FIN or reset the upstream sent while the connection sat
            // here reads as end of stream or an error; stray bytes make the
            // connection unusable too. Only "nothing to read" keeps it.
            let mut probe = [0u8; 1];
            if let Err(e) = conn.stream.try_read(&mut probe)
                && e.kind() == std::io::ErrorKind::WouldBlock
            {
                conn.reused = true;
                return Some(conn);
            }
        }
        None
    }

    /// Keeps a lean-path connection whose last response was read to its end
    /// for the next request to `addr`, when the endpoint has room.
    pub(crate) fn checkin_raw(self: &Arc<Self>, addr: SocketAddr, conn: RawConn) {
        if !conn.buf.is_empty() {
            return;
        }
        let now = Instant::now();
        {
            let mut idle = lock_raw(&self.raw[SHARD.get() % self.raw.len()]);
            let list = idle.entry(addr).or_default();
            if list.len() >= self.max_idle {
                return;
            }
            list.push(RawIdle { conn, since: now });
        }
        self.start_reaper();
    }

    /// A new lean-path connection to `addr`, within the connect timeout.
    pub(crate) async fn connect_raw(&self, addr: SocketAddr) -> std::io::Result<RawConn> {
        let stream = self.tcp(addr).await?.into_inner();
        Ok(RawConn {
            stream,
            buf: bytes::BytesMut::new(),
            reused: false,
        })
    }

    async fn tcp(&self, addr: SocketAddr) -> std::io::Result<TokioIo<TcpStream>> {
        let stream =
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!(
                            "no connection within the connect timeout of {}",
                            crate::format_duration(self.connect_timeout)
                        ),
                    ));
                }
            };
        let _ = stream.set_nodelay(true);
        Ok(TokioIo::new(stream))
    }

    async fn connect(&self, io: TokioIo<TcpStream>) -> Result<Box<Upstream>, SendError> {
        let (sender, conn) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(SendError::Http)?;
        Ok(Box::new(Upstream {
            sender,
            conn,
            done: false,
            reused: false,
        }))
    }

    /// Sends an upgrade request on a connection of its own, driven by a task
    /// of its own that hands the connection over on `101`. Such connections
    /// are never pooled.
    pub(crate) async fn send_upgrade(
        &self,
        addr: SocketAddr,
        req: Request<Incoming>,
    ) -> Result<Response<Incoming>, SendError> {
        let io = match self.tcp(addr).await {
            Ok(io) => io,
            Err(e) => return Err(SendError::Connect(e, Box::new(req))),
        };
        let (mut sender, conn) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(SendError::Http)?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection of an upgrade ended with an error");
            }
        });
        sender.send_request(req).await.map_err(SendError::Http)
    }

    /// Sends `req` to `addr` on a pooled connection (or a new one) and waits
    /// for the response head. A request that a pooled connection refused
    /// before writing it is sent again on another connection.
    pub(crate) async fn send(
        self: &Arc<Self>,
        addr: SocketAddr,
        req: Request<Incoming>,
    ) -> Result<(Response<Incoming>, Option<Pooled>), SendError> {
        if self.h2c {
            return self.send_h2(addr, req).await.map(|r| (r, None));
        }
        self.send_h1(addr, req).await.map(|(r, p)| (r, Some(p)))
    }

    async fn send_h1(
        self: &Arc<Self>,
        addr: SocketAddr,
        mut req: Request<Incoming>,
    ) -> Result<(Response<Incoming>, Pooled), SendError> {
        loop {
            let mut up = match self.checkout(addr) {
                Some(up) => up,
                None => match self.tcp(addr).await {
                    Ok(io) => self.connect(io).await?,
                    Err(e) => return Err(SendError::Connect(e, Box::new(req))),
                },
            };
            match send_on(&mut up, req).await {
                Ok(resp) => {
                    let pooled = Pooled {
                        up: Some(up),
                        pool: self.clone(),
                        addr,
                    };
                    return Ok((resp, pooled));
                }
                Err((e, Some(unsent))) if up.reused => {
                    tracing::debug!(error = ?e, endpoint = %addr, "pooled connection was closed; sending on another");
                    req = unsent;
                }
                Err((Some(e), _)) => return Err(SendError::Http(e)),
                Err((None, _)) => return Err(SendError::Closed),
            }
        }
    }
}

impl Pool {
    /// Sends `req` on this worker's HTTP/2 connection to `addr`, opening
    /// one when there is none or it closed. The connection is driven by a
    /// task of its own on this worker and closes once the pool holding its
    /// sender is gone (drain) and its streams are done.
    async fn send_h2(
        &self,
        addr: SocketAddr,
        mut req: Request<Incoming>,
    ) -> Result<Response<Incoming>, SendError> {
        let shard = &self.h2[SHARD.get() % self.h2.len()];
        h2_request(&mut req, addr);
        // Twice at most: a cached connection that turned out closed is
        // replaced once; the request was not sent on it.
        for _ in 0..2 {
            let cached = shard
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&addr)
                .filter(|s| !s.is_closed())
                .cloned();
            let mut sender = match cached {
                Some(s) => s,
                None => {
                    let io = match self.tcp(addr).await {
                        Ok(io) => io,
                        Err(e) => return Err(SendError::Connect(e, Box::new(req))),
                    };
                    let (sender, conn) = http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .timer(hyper_util::rt::TokioTimer::new())
                        .keep_alive_interval(Duration::from_secs(30))
                        .handshake(io)
                        .await
                        .map_err(SendError::Http)?;
                    tokio::spawn(async move {
                        if let Err(e) = conn.await {
                            tracing::debug!(error = %e, endpoint = %addr, "upstream HTTP/2 connection ended with an error");
                        }
                    });
                    shard
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(addr, sender.clone());
                    sender
                }
            };
            if sender.ready().await.is_err() {
                shard
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&addr);
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok(resp),
                Err(mut e) => match e.take_message() {
                    Some(unsent) => {
                        shard
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(&addr);
                        req = unsent;
                    }
                    None => return Err(SendError::Http(e.into_error())),
                },
            }
        }
        Err(SendError::Closed)
    }
}

/// HTTP/2 requests carry the authority in the URI (`:authority`): the
/// client's `Host`, else the endpoint.
fn h2_request(req: &mut Request<Incoming>, addr: SocketAddr) {
    let authority = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.parse::<http::uri::Authority>().ok())
        .unwrap_or_else(|| {
            addr.to_string()
                .parse()
                .expect("a socket address is an authority")
        });
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    parts.scheme = Some(http::uri::Scheme::HTTP);
    parts.authority = Some(authority);
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    if let Ok(uri) = http::Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
    *req.version_mut() = http::Version::HTTP_2;
}

fn lock_raw(shard: &RawShard) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Vec<RawIdle>>> {
    shard.lock().unwrap_or_else(|e| e.into_inner())
}

fn lock(shard: &Shard) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, VecDeque<Idle>>> {
    shard.lock().unwrap_or_else(|e| e.into_inner())
}

/// A connection carrying a response body; back to its pool when the body
/// was read to the end, closed otherwise.
pub(crate) struct Pooled {
    up: Option<Box<Upstream>>,
    pool: Arc<Pool>,
    addr: SocketAddr,
}

impl Pooled {
    /// Drives the connection so the response body makes progress.
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) {
        if let Some(up) = &mut self.up {
            up.poll_conn(cx);
        }
    }

    /// The body was read to the end: the connection may serve another
    /// request.
    pub(crate) fn release(&mut self) {
        if let Some(up) = self.up.take() {
            self.pool.checkin(self.addr, up);
        }
    }
}
