//! teal-router: the data plane.
//!
//! A reverse proxy that picks the color of every request on its own (a
//! keep-alive connection is never pinned to a color), installs route tables
//! atomically with a generation number, tracks in-flight requests per color
//! so a color can be drained, and counts per-color statistics.
#![forbid(unsafe_code)]

mod admin;
mod body;
mod config;
mod counters;
mod duration;
mod h1;
mod headers;
mod health;
mod metrics;
mod probe;
mod proxy;
mod serve;
mod table;
mod tls;
mod upstream;
mod websocket;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, oneshot};

pub use admin::AdminListener;
pub use config::{RouterConfig, UpgradePolicy, UpstreamProtocol};
pub use duration::{format_duration, parse_duration};
pub use table::{CookieMatch, HeaderMatch, PreviewRoute, RouteTable, TableError};
pub use teal_core::{Color, ColorStats};
pub use teal_serve::listen::{
    AcceptBackoff, DEFAULT_BACKLOG, MAX_ACCEPT_BACKOFF, OpenFiles, RESERVED_FILES,
    connections_for_open_files, is_resource_error, listen, listen_backlog, raise_open_file_limit,
    size_max_connections,
};
pub use tls::{Tls, TlsError};

/// Property checks of the HTTP/1.1 head parsers and body framing, run on
/// arbitrary input by the fuzz targets.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::h1::props::{chunked, chunked_encoding, request_head, response_head};
}

use counters::Counters;
use proxy::{Compiled, Endpoint};
use upstream::Pool;

/// What [`Router::drain`] observed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainReport {
    /// True when the color had nothing in flight (requests and upgraded
    /// connections) before the timeout.
    pub completed: bool,
    /// Requests and upgraded connections still open when drain returned.
    pub remaining: u64,
    /// How long drain waited.
    #[serde(with = "duration::serde_secs")]
    pub waited: Duration,
    /// Upgraded (e.g. WebSocket) connections closed at the timeout.
    pub upgrades_closed: u64,
}

/// The router. Cheap to clone: every clone shares the same state.
#[derive(Clone)]
pub struct Router {
    pub(crate) shared: Arc<Shared>,
}

pub(crate) struct Shared {
    pub(crate) config: RouterConfig,
    pub(crate) table: ArcSwapOption<Compiled>,
    /// Serialises writers so generations are strictly increasing.
    swap_lock: Mutex<()>,
    pub(crate) colors: [ColorState; 2],
    rng: AtomicU64,
    pub(crate) started: Instant,
    /// Set when the process is told to stop: the probe port then reports
    /// not ready while traffic is still served.
    stopping: std::sync::atomic::AtomicBool,
    /// When the last client connection was accepted (milliseconds since
    /// `started`, plus one; 0: none yet).
    pub(crate) last_accept: AtomicU64,
}

pub(crate) struct ColorState {
    /// Requests being proxied plus open upgraded connections.
    pub(crate) in_flight: AtomicU64,
    pub(crate) idle: Notify,
    /// Production traffic: requests routed here as the live color (and
    /// failed connection attempts of any request).
    pub(crate) stats: Counters,
    /// Preview traffic: requests the preview route sent here while this
    /// color was not the live one.
    pub(crate) preview_stats: Counters,
    /// Replaced on drain, which closes the idle connections it holds.
    pub(crate) pool: ArcSwap<Pool>,
    pub(crate) upgrades: Mutex<Upgrades>,
    pub(crate) health: health::HealthCounters,
}

impl Shared {
    /// Milliseconds since the router was made: the clock of ejections.
    pub(crate) fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }
}

#[derive(Default)]
pub(crate) struct Upgrades {
    next_id: u64,
    open: HashMap<u64, oneshot::Sender<()>>,
}

impl Upgrades {
    pub(crate) fn register(&mut self) -> (u64, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        self.next_id += 1;
        self.open.insert(self.next_id, tx);
        (self.next_id, rx)
    }

    pub(crate) fn remove(&mut self, id: u64) {
        self.open.remove(&id);
    }

    pub(crate) fn len(&self) -> usize {
        self.open.len()
    }
}

pub(crate) fn idx(color: Color) -> usize {
    match color {
        Color::Blue => 0,
        Color::Green => 1,
    }
}

impl Router {
    /// A router serving `table`.
    pub fn new(config: RouterConfig, table: RouteTable) -> Result<Router, TableError> {
        let router = Router::unconfigured(config);
        router.swap(table)?;
        Ok(router)
    }

    /// A router without a route table: it answers 503 until [`Router::swap`]
    /// installs one. The generation is 0 until then.
    pub fn unconfigured(config: RouterConfig) -> Router {
        let color = || ColorState {
            in_flight: AtomicU64::new(0),
            idle: Notify::new(),
            stats: Counters::new(),
            preview_stats: Counters::new(),
            pool: ArcSwap::from_pointee(Pool::new(&config)),
            upgrades: Mutex::new(Upgrades::default()),
            health: health::HealthCounters::default(),
        };
        let colors = [color(), color()];
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9E37_79B9_7F4A_7C15);
        Router {
            shared: Arc::new(Shared {
                config,
                table: ArcSwapOption::empty(),
                swap_lock: Mutex::new(()),
                colors,
                rng: AtomicU64::new(seed),
                stopping: std::sync::atomic::AtomicBool::new(false),
                last_accept: AtomicU64::new(0),
                started: Instant::now(),
            }),
        }
    }

    pub fn config(&self) -> &RouterConfig {
        &self.shared.config
    }

    /// Validates and installs `table` atomically; returns the new generation.
    /// When it returns, every request that starts routing afterwards uses the
    /// new table; requests already routed finish where they are.
    pub fn swap(&self, table: RouteTable) -> Result<u64, TableError> {
        table.validate()?;
        let _writer = self
            .shared
            .swap_lock
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let old = self.shared.table.load_full();
        let generation = old.as_ref().map_or(0, |c| c.generation) + 1;
        let compiled = Compiled::new(generation, table, old.as_deref());
        self.shared.table.store(Some(Arc::new(compiled)));
        Ok(generation)
    }

    /// Reports not ready on the probe port from now on (the process is
    /// stopping); traffic is served as before.
    pub fn stop_ready(&self) {
        self.shared.stopping.store(true, Ordering::Relaxed);
    }

    /// How long ago the last client connection was accepted (`None`: none
    /// yet). While a Service still sends new connections to a replica that
    /// is stopping, this stays short.
    pub fn since_last_accept(&self) -> Option<std::time::Duration> {
        let at = self.shared.last_accept.load(Ordering::Relaxed);
        (at > 0).then(|| {
            let now = self.shared.started.elapsed().as_millis() as u64;
            std::time::Duration::from_millis(now.saturating_sub(at - 1))
        })
    }

    /// Whether [`Router::stop_ready`] was called.
    pub fn is_stopping(&self) -> bool {
        self.shared.stopping.load(Ordering::Relaxed)
    }

    /// The installed route generation; 0 before the first table.
    pub fn generation(&self) -> u64 {
        self.shared
            .table
            .load()
            .as_ref()
            .map_or(0, |c| c.generation)
    }

    /// The installed generation and table; generation 0 and `None` before any.
    pub fn try_current(&self) -> (u64, Option<RouteTable>) {
        match self.shared.table.load_full() {
            Some(c) => (c.generation, Some(c.table.clone())),
            None => (0, None),
        }
    }

    /// The installed generation and table.
    ///
    /// # Panics
    /// On a router made with [`Router::unconfigured`] before its first swap;
    /// use [`Router::try_current`] there.
    pub fn current(&self) -> (u64, RouteTable) {
        match self.try_current() {
            (g, Some(t)) => (g, t),
            (_, None) => panic!("Router::current called before a route table was installed"),
        }
    }

    /// Requests to `color` being proxied now, plus its open upgraded connections.
    pub fn in_flight(&self, color: Color) -> u64 {
        self.shared.colors[idx(color)]
            .in_flight
            .load(Ordering::SeqCst)
    }

    /// Upgraded (e.g. WebSocket) connections to `color` open now.
    pub fn upgrades_open(&self, color: Color) -> u64 {
        let state = &self.shared.colors[idx(color)];
        state
            .upgrades
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len() as u64
    }

    /// Idle pooled upstream connections to `color` kept now.
    pub fn idle_upstream_connections(&self, color: Color) -> usize {
        self.shared.colors[idx(color)].pool.load().idle_count()
    }

    /// Cumulative statistics of `color`: all its responses, production and
    /// preview.
    pub fn stats(&self, color: Color) -> ColorStats {
        let state = &self.shared.colors[idx(color)];
        Counters::sum(&[&state.stats, &state.preview_stats])
    }

    /// The production part of [`Router::stats`] of `color`: requests routed
    /// there as the live color.
    pub fn production_stats(&self, color: Color) -> ColorStats {
        self.shared.colors[idx(color)].stats.snapshot()
    }

    /// The preview part of [`Router::stats`] of `color`: requests the preview
    /// route (header or cookie) sent there while it was not the live color.
    pub fn preview_stats(&self, color: Color) -> ColorStats {
        self.shared.colors[idx(color)].preview_stats.snapshot()
    }

    /// Waits until `color` has nothing in flight or `timeout` passes, then
    /// closes the idle pooled upstream connections to `color`. With
    /// [`UpgradePolicy::Close`], upgraded connections still open at the timeout
    /// are closed.
    pub async fn drain(&self, color: Color, timeout: Duration) -> DrainReport {
        let start = Instant::now();
        let deadline = tokio::time::Instant::now() + timeout;
        let state = &self.shared.colors[idx(color)];
        let completed = loop {
            let notified = state.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if state.in_flight.load(Ordering::SeqCst) == 0 {
                break true;
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(deadline) => {
                    break state.in_flight.load(Ordering::SeqCst) == 0;
                }
            }
        };
        // A fresh pool: the old one (and its idle connections) goes away
        // once the requests still holding it finish.
        state.pool.store(Arc::new(Pool::new(&self.shared.config)));
        let mut upgrades_closed = 0;
        if !completed && self.shared.config.upgrade_policy == UpgradePolicy::Close {
            let senders: Vec<_> = {
                let mut ups = state.upgrades.lock().unwrap_or_else(|e| e.into_inner());
                ups.open.drain().map(|(_, tx)| tx).collect()
            };
            for tx in senders {
                if tx.send(()).is_ok() {
                    upgrades_closed += 1;
                }
            }
            // Let the tunnels observe the signal, send WebSocket close
            // frames, and release their counts.
            let settle =
                tokio::time::Instant::now() + websocket::FINISH + Duration::from_millis(200);
            while upgrades_closed > 0
                && state.in_flight.load(Ordering::SeqCst) > 0
                && tokio::time::Instant::now() < settle
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        DrainReport {
            completed,
            remaining: state.in_flight.load(Ordering::SeqCst),
            waited: start.elapsed(),
            upgrades_closed,
        }
    }

    /// Requests sent to another endpoint of their color after a failed
    /// connect, and endpoints ejected after one, since the router started.
    pub fn retries_and_ejections(&self, color: Color) -> (u64, u64) {
        let h = &self.shared.colors[idx(color)].health;
        (
            h.retries.load(Ordering::Relaxed),
            h.ejections.load(Ordering::Relaxed),
        )
    }

    /// Endpoints of `color` in the installed table that are ejected now.
    pub fn ejected_endpoints(&self, color: Color) -> Vec<std::net::SocketAddr> {
        let now = self.shared.now_ms();
        self.shared
            .table
            .load()
            .as_ref()
            .map_or_else(Vec::new, |t| {
                t.pool(color)
                    .iter()
                    .filter(|e| e.health.is_ejected(|| now))
                    .map(|e| e.addr)
                    .collect()
            })
    }

    /// Prometheus text exposition of the per-color metrics.
    pub fn render_metrics(&self) -> String {
        metrics::render(self)
    }

    /// Power of two choices by outstanding requests, skipping an ejected
    /// endpoint unless every endpoint is ejected.
    pub(crate) fn pick<'a>(&self, endpoints: &'a [Arc<Endpoint>]) -> Option<&'a Arc<Endpoint>> {
        let chosen = self.pick_balanced(endpoints)?;
        let now = || self.shared.now_ms();
        if chosen.health.is_ejected(now) {
            return health::any_serving(endpoints, now()).or(Some(chosen));
        }
        Some(chosen)
    }

    fn pick_balanced<'a>(&self, endpoints: &'a [Arc<Endpoint>]) -> Option<&'a Arc<Endpoint>> {
        match endpoints.len() {
            0 => None,
            1 => endpoints.first(),
            n => {
                let r = self.next_random();
                let a = (r % n as u64) as usize;
                let mut b = ((r >> 32) % (n as u64 - 1)) as usize;
                if b >= a {
                    b += 1;
                }
                let (ea, eb) = (&endpoints[a], &endpoints[b]);
                if eb.outstanding.load(Ordering::Relaxed) < ea.outstanding.load(Ordering::Relaxed) {
                    Some(eb)
                } else {
                    Some(ea)
                }
            }
        }
    }

    /// splitmix64 over a shared counter: cheap, lock-free, good enough for
    /// choosing between endpoints.
    fn next_random(&self) -> u64 {
        let mut z = self
            .shared
            .rng
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::SocketAddr;

    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn two_colors(active: Color) -> RouteTable {
        RouteTable {
            active,
            preview: None,
            endpoints: BTreeMap::from([
                (Color::Blue, vec![addr(1001), addr(1002)]),
                (Color::Green, vec![addr(2001)]),
            ]),
        }
    }

    #[test]
    fn swap_bumps_generation_and_refusal_changes_nothing() {
        let router = Router::new(RouterConfig::default(), two_colors(Color::Blue)).unwrap();
        assert_eq!(router.current().0, 1);
        assert_eq!(router.swap(two_colors(Color::Green)).unwrap(), 2);
        let mut bad = two_colors(Color::Blue);
        bad.endpoints.remove(&Color::Blue);
        let err = router.swap(bad).unwrap_err();
        assert!(err.to_string().starts_with("endpoints.blue:"), "{err}");
        assert_eq!(router.current(), (2, two_colors(Color::Green)));
    }

    #[test]
    fn unconfigured_router_has_generation_zero() {
        let router = Router::unconfigured(RouterConfig::default());
        assert_eq!(router.try_current(), (0, None));
        assert!(
            router
                .render_metrics()
                .contains("teal_router_route_generation 0")
        );
    }

    #[test]
    fn power_of_two_choices_avoids_the_busier_endpoint() {
        let router = Router::new(RouterConfig::default(), two_colors(Color::Blue)).unwrap();
        let table = router.shared.table.load_full().unwrap();
        let blue = table.pool(Color::Blue);
        blue[0].outstanding.store(5, Ordering::Relaxed);
        for _ in 0..100 {
            assert_eq!(router.pick(blue).unwrap().addr, addr(1002));
        }
        blue[0].outstanding.store(0, Ordering::Relaxed);
        let picked: std::collections::HashSet<_> =
            (0..200).map(|_| router.pick(blue).unwrap().addr).collect();
        assert_eq!(picked.len(), 2, "both idle endpoints get traffic");
    }

    #[test]
    fn endpoint_counters_survive_a_swap() {
        let router = Router::new(RouterConfig::default(), two_colors(Color::Blue)).unwrap();
        let before = router.shared.table.load_full().unwrap();
        before.pool(Color::Blue)[1]
            .outstanding
            .store(3, Ordering::Relaxed);
        router.swap(two_colors(Color::Green)).unwrap();
        let after = router.shared.table.load_full().unwrap();
        assert!(Arc::ptr_eq(
            &before.pool(Color::Blue)[1],
            &after.pool(Color::Blue)[1]
        ));
    }

    #[test]
    fn preview_matches_header_or_cookie_exactly() {
        let mut table = two_colors(Color::Blue);
        table.preview = Some(PreviewRoute {
            color: Color::Green,
            header: Some(HeaderMatch {
                name: "X-Preview".into(),
                value: "yes".into(),
            }),
            cookie: Some(CookieMatch {
                name: "canary".into(),
                value: "1".into(),
            }),
        });
        let router = Router::new(RouterConfig::default(), table).unwrap();
        let compiled = router.shared.table.load_full().unwrap();
        let route = |pairs: &[(&str, &str)]| {
            let mut h = http::HeaderMap::new();
            for (k, v) in pairs {
                h.append(
                    http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                );
            }
            compiled.route(&h)
        };
        assert_eq!(route(&[("x-preview", "yes")]), Color::Green);
        assert_eq!(route(&[("x-preview", "Yes")]), Color::Blue);
        assert_eq!(route(&[("cookie", "a=b; canary=1")]), Color::Green);
        assert_eq!(
            route(&[("cookie", "canary=10"), ("cookie", "xcanary=1")]),
            Color::Blue
        );
        assert_eq!(route(&[]), Color::Blue);
    }

    #[tokio::test]
    async fn drain_of_an_idle_color_completes_at_once() {
        let router = Router::new(RouterConfig::default(), two_colors(Color::Blue)).unwrap();
        let report = router.drain(Color::Green, Duration::from_secs(5)).await;
        assert!(report.completed);
        assert_eq!(report.remaining, 0);
        assert_eq!(report.upgrades_closed, 0);
    }
}
