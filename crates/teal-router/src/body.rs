//! The response body the router sends: an upstream body streamed through, or
//! a short body of its own. Carries the guards that keep a request counted as
//! in flight until its body has been sent (or dropped).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Sleep;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::Shared;
use crate::proxy::Endpoint;
use crate::upstream::Pooled;

/// Counts one request (or upgraded connection) to a color and endpoint.
pub(crate) struct InFlightGuard {
    shared: Arc<Shared>,
    color: usize,
    endpoint: Arc<Endpoint>,
}

impl InFlightGuard {
    pub(crate) fn new(shared: Arc<Shared>, color: usize, endpoint: Arc<Endpoint>) -> Self {
        shared.colors[color]
            .in_flight
            .fetch_add(1, Ordering::SeqCst);
        endpoint.outstanding.fetch_add(1, Ordering::Relaxed);
        InFlightGuard {
            shared,
            color,
            endpoint,
        }
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.endpoint.outstanding.fetch_sub(1, Ordering::Relaxed);
        let state = &self.shared.colors[self.color];
        if state.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            state.idle.notify_waiters();
        }
    }
}

/// Activity of one client connection, for the idle timeout, and the
/// requests whose response has been produced but not yet written out.
pub(crate) struct ConnActivity {
    pub(crate) active: AtomicUsize,
    /// Milliseconds since router start when `active` last dropped to zero.
    pub(crate) idle_since_ms: AtomicU64,
    shared: Arc<Shared>,
    /// In-flight counts of responses whose last byte is in the connection's
    /// write buffer: released once the connection has flushed it.
    unflushed: Mutex<Vec<InFlightGuard>>,
    has_unflushed: AtomicBool,
    /// The client connection is TLS.
    pub(crate) tls: bool,
}

impl ConnActivity {
    pub(crate) fn new(shared: Arc<Shared>, tls: bool) -> Arc<Self> {
        let now = shared.started.elapsed().as_millis() as u64;
        Arc::new(ConnActivity {
            active: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(now),
            shared,
            unflushed: Mutex::new(Vec::new()),
            has_unflushed: AtomicBool::new(false),
            tls,
        })
    }

    /// Keeps `flight` counted until the connection next flushes.
    fn hold_until_flushed(&self, flight: InFlightGuard) {
        self.unflushed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(flight);
        self.has_unflushed.store(true, Ordering::Release);
    }

    /// The connection flushed everything it had buffered.
    pub(crate) fn flushed(&self) {
        if self.has_unflushed.swap(false, Ordering::AcqRel) {
            let done =
                std::mem::take(&mut *self.unflushed.lock().unwrap_or_else(|e| e.into_inner()));
            drop(done);
        }
    }

    pub(crate) fn now_ms(&self) -> u64 {
        self.shared.started.elapsed().as_millis() as u64
    }
}

/// One request in progress on a client connection.
pub(crate) struct ConnGuard(Arc<ConnActivity>);

impl ConnGuard {
    pub(crate) fn new(conn: Arc<ConnActivity>) -> Self {
        conn.active.fetch_add(1, Ordering::SeqCst);
        ConnGuard(conn)
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0
                .idle_since_ms
                .store(self.0.now_ms(), Ordering::SeqCst);
        }
    }
}

#[derive(Default)]
pub(crate) struct Guards {
    pub(crate) _flight: Option<InFlightGuard>,
    pub(crate) _conn: Option<ConnGuard>,
}

impl Guards {
    /// The whole response was handed to the client connection: the request
    /// stays in flight until the connection has written it out.
    fn completed(mut self) {
        if let (Some(flight), Some(conn)) = (self._flight.take(), &self._conn) {
            conn.0.hold_until_flushed(flight);
        }
    }
}

enum Kind {
    /// An upstream body and the connection it arrives on, which this body
    /// drives and returns to its pool once the body was read to the end.
    Upstream(Incoming, Option<Pooled>, Stall),
    Full(Option<Bytes>),
}

/// Response body of the router.
pub struct ProxyBody {
    kind: Kind,
    guards: Option<Guards>,
}

/// The upstream body timeout: how long the next piece of a body may take
/// once the previous one arrived. The timer exists only while a body waits.
struct Stall {
    timeout: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    /// A frame arrived since the timer was set.
    progressed: bool,
}

impl Stall {
    /// True when the body has waited longer than the timeout.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        if self.timeout.is_zero() {
            return false;
        }
        let deadline = tokio::time::Instant::now() + self.timeout;
        let sleep = match &mut self.sleep {
            Some(s) => {
                if std::mem::take(&mut self.progressed) {
                    s.as_mut().reset(deadline);
                }
                s
            }
            None => {
                self.progressed = false;
                self.sleep
                    .insert(Box::pin(tokio::time::sleep_until(deadline)))
            }
        };
        sleep.as_mut().poll(cx).is_ready()
    }
}

/// The error a response body ends with when its upstream stalled.
#[derive(Debug, thiserror::Error)]
#[error("the upstream response body sent nothing for {0}")]
pub struct BodyStalled(String);

impl ProxyBody {
    pub(crate) fn upstream(
        body: Incoming,
        conn: Option<Pooled>,
        guards: Guards,
        timeout: Duration,
    ) -> Self {
        let stall = Stall {
            timeout,
            sleep: None,
            progressed: false,
        };
        ProxyBody {
            kind: Kind::Upstream(body, conn, stall),
            guards: Some(guards),
        }
    }

    pub(crate) fn full(bytes: impl Into<Bytes>) -> Self {
        let b = bytes.into();
        ProxyBody {
            kind: Kind::Full((!b.is_empty()).then_some(b)),
            guards: None,
        }
    }

    pub(crate) fn empty_with(guards: Guards) -> Self {
        ProxyBody {
            kind: Kind::Full(None),
            guards: Some(guards),
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let polled: Poll<Option<Result<Frame<Bytes>, Self::Error>>> = match &mut this.kind {
            Kind::Upstream(body, conn, stall) => {
                let mut polled = Pin::new(&mut *body).poll_frame(cx);
                if polled.is_pending()
                    && let Some(c) = conn
                {
                    c.poll(cx);
                    polled = Pin::new(&mut *body).poll_frame(cx);
                }
                let mut polled = polled.map_err(Self::Error::from);
                match &polled {
                    Poll::Pending if stall.expired(cx) => {
                        let waited = crate::format_duration(stall.timeout);
                        tracing::warn!(timeout = %waited, "upstream response body stalled; cutting it off");
                        polled = Poll::Ready(Some(Err(BodyStalled(waited).into())));
                    }
                    Poll::Ready(Some(Ok(_))) => stall.progressed = true,
                    _ => {}
                }
                match &polled {
                    Poll::Ready(None) => release(conn),
                    Poll::Ready(Some(Ok(_))) if body.is_end_stream() => {
                        release(conn);
                        if let Some(g) = this.guards.take() {
                            g.completed();
                        }
                    }
                    Poll::Ready(Some(Err(_))) => *conn = None,
                    _ => {}
                }
                polled
            }
            Kind::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        };
        match &polled {
            Poll::Ready(None) => {
                if let Some(g) = this.guards.take() {
                    g.completed();
                }
            }
            Poll::Ready(Some(Err(_))) => this.guards = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Upstream(body, _, _) => body.is_end_stream(),
            Kind::Full(data) => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Upstream(body, _, _) => body.size_hint(),
            Kind::Full(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
        }
    }
}

fn release(conn: &mut Option<Pooled>) {
    if let Some(mut c) = conn.take() {
        c.release();
    }
}

impl Drop for ProxyBody {
    /// A body the server stopped polling because it knew the body had
    /// ended (a known length reached, or no body at all) still returns its
    /// connection to the pool; any other unfinished body closes it.
    fn drop(&mut self) {
        let ended = match &mut self.kind {
            Kind::Upstream(body, conn, _) => {
                let ended = body.is_end_stream();
                if ended {
                    release(conn);
                }
                ended
            }
            Kind::Full(data) => data.is_none(),
        };
        if ended && let Some(g) = self.guards.take() {
            g.completed();
        }
    }
}

/// A client connection's socket that tells its [`ConnActivity`] when the
/// connection has flushed what it wrote.
pub(crate) struct FlushWatch<T> {
    io: T,
    activity: Arc<ConnActivity>,
}

impl<T> FlushWatch<T> {
    pub(crate) fn new(io: T, activity: Arc<ConnActivity>) -> Self {
        FlushWatch { io, activity }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for FlushWatch<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for FlushWatch<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let flushed = Pin::new(&mut this.io).poll_flush(cx);
        if matches!(flushed, Poll::Ready(Ok(()))) {
            this.activity.flushed();
        }
        flushed
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let shut = Pin::new(&mut this.io).poll_shutdown(cx);
        if matches!(shut, Poll::Ready(Ok(()))) {
            this.activity.flushed();
        }
        shut
    }
}
