//! The response body the router sends: an upstream body streamed through, or
//! a short body of its own. Carries the guards that keep a request counted as
//! in flight until its body has been sent (or dropped).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::Shared;
use crate::proxy::Endpoint;

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

/// Activity of one client connection, for the idle timeout.
pub(crate) struct ConnActivity {
    pub(crate) active: AtomicUsize,
    /// Milliseconds since router start when `active` last dropped to zero.
    pub(crate) idle_since_ms: AtomicU64,
    shared: Arc<Shared>,
}

impl ConnActivity {
    pub(crate) fn new(shared: Arc<Shared>) -> Arc<Self> {
        let now = shared.started.elapsed().as_millis() as u64;
        Arc::new(ConnActivity {
            active: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(now),
            shared,
        })
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

enum Kind {
    Upstream(Incoming),
    Full(Option<Bytes>),
}

/// Response body of the router.
pub struct ProxyBody {
    kind: Kind,
    guards: Option<Guards>,
}

impl ProxyBody {
    pub(crate) fn upstream(body: Incoming, guards: Guards) -> Self {
        ProxyBody {
            kind: Kind::Upstream(body),
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
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = match &mut this.kind {
            Kind::Upstream(body) => Pin::new(body).poll_frame(cx),
            Kind::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        };
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            this.guards = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Upstream(body) => body.is_end_stream(),
            Kind::Full(data) => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Upstream(body) => body.size_hint(),
            Kind::Full(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
        }
    }
}
