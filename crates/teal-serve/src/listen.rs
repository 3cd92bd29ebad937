//! What a long-running server needs from the system before it serves
//! clients: a deep accept backlog, an open-file limit raised as far as the
//! process may, a connection cap that fits that limit, and an accept loop
//! that backs off when the process is out of descriptors.
//!
//! Shared by `teal router`, the controller's metrics port, the sample app
//! and local mode.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use nix::sys::resource::{RLIM_INFINITY, Resource, getrlimit, setrlimit};
use tokio::net::{TcpListener, TcpSocket};

/// Backlog used when `/proc/sys/net/core/somaxconn` cannot be read (the
/// Linux default since 5.4).
pub const DEFAULT_BACKLOG: u32 = 4096;

/// Descriptors kept out of the connection budget: listeners, the admin API,
/// the runtime's own (epoll, eventfd, per worker thread), logs, the
/// Kubernetes client, health checks.
pub const RESERVED_FILES: u64 = 128;

/// Longest pause between two accepts that failed for lack of resources.
pub const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// The accept backlog [`listen`] asks for: the system's maximum
/// (`net.core.somaxconn`; the kernel caps any larger request to it), or
/// [`DEFAULT_BACKLOG`] when it cannot be read.
pub fn listen_backlog() -> u32 {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .filter(|n| *n > 0)
        .unwrap_or(DEFAULT_BACKLOG)
}

/// Listens on `addr` (port 0 picks a free port) with the deepest backlog the
/// system allows ([`listen_backlog`]), with `SO_REUSEADDR` like
/// `TcpListener::bind`. `TcpListener::bind` asks for 128, which a burst of
/// connects to a process that has not accepted yet overflows: the kernel
/// drops the SYNs and clients wait a second or more to retry.
///
/// Must be called within a tokio runtime.
pub fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(listen_backlog())
}

/// The open-file limit of this process, after [`raise_open_file_limit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenFiles {
    /// The soft limit found at start.
    pub before: u64,
    /// The soft limit now in force.
    pub soft: u64,
    /// The hard limit (the most an unprivileged process may raise to).
    pub hard: u64,
}

/// Raises the soft open-file limit (`RLIMIT_NOFILE`) to the hard limit, as
/// Go's runtime and nginx's `worker_rlimit_nofile` do: the usual soft limit
/// of 1,024 is far too few for a proxy, which needs two descriptors per
/// proxied connection. An unlimited hard limit is capped at
/// `/proc/sys/fs/nr_open`, the most the kernel allows. When the limit
/// cannot be raised, the limit in force is returned with the error logged.
pub fn raise_open_file_limit() -> io::Result<OpenFiles> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(io::Error::from)?;
    let mut target = hard;
    if hard == RLIM_INFINITY {
        target = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1 << 20);
    }
    if soft == RLIM_INFINITY || soft >= target {
        return Ok(OpenFiles {
            before: soft,
            soft,
            hard,
        });
    }
    match setrlimit(Resource::RLIMIT_NOFILE, target, hard) {
        Ok(()) => Ok(OpenFiles {
            before: soft,
            soft: target,
            hard,
        }),
        Err(e) => {
            tracing::warn!(error = %e, soft, hard, "cannot raise the open-file limit");
            Ok(OpenFiles {
                before: soft,
                soft,
                hard,
            })
        }
    }
}

/// Client connections that fit in `open_files` descriptors: each proxied
/// connection holds a client and an upstream descriptor, and
/// [`RESERVED_FILES`] are kept for everything else. At least 1.
pub fn connections_for_open_files(open_files: u64) -> usize {
    let budget = open_files.saturating_sub(RESERVED_FILES) / 2;
    usize::try_from(budget).unwrap_or(usize::MAX).max(1)
}

/// Raises the open-file limit ([`raise_open_file_limit`]) and returns the
/// connection cap to serve with: `requested`, or fewer when the limit does
/// not allow that many ([`connections_for_open_files`]). Says both in the
/// log. What a long-running command calls before it serves.
pub fn size_max_connections(requested: usize) -> usize {
    let files = match raise_open_file_limit() {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the open-file limit; serving with --max-connections as given");
            return requested;
        }
    };
    let allowed = connections_for_open_files(files.soft);
    let max = requested.min(allowed);
    if max < requested {
        tracing::warn!(
            open_files = files.soft,
            raised_from = files.before,
            hard_limit = files.hard,
            requested,
            max_connections = max,
            "the open-file limit allows fewer connections than --max-connections; raise the hard limit (ulimit -Hn, LimitNOFILE=) to serve more"
        );
    } else {
        tracing::info!(
            open_files = files.soft,
            raised_from = files.before,
            max_connections = max,
            "open-file limit"
        );
    }
    max
}

/// Whether a failed accept means the process or system is out of a
/// resource (descriptors, memory): the next accept would fail the same way
/// until something is released, so the loop must wait.
pub fn is_resource_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(nix::libc::EMFILE | nix::libc::ENFILE | nix::libc::ENOBUFS | nix::libc::ENOMEM)
    )
}

/// Paces an accept loop through failed accepts: out of descriptors (or
/// memory), it waits before the next try, doubling from 5 ms up to
/// [`MAX_ACCEPT_BACKOFF`]; other failures (a connection reset before it was
/// accepted) are retried at once. Failures are logged at most once a second,
/// with how many there were.
#[derive(Debug)]
pub struct AcceptBackoff {
    what: &'static str,
    delay: Duration,
    unlogged: u64,
    last_log: Option<Instant>,
}

impl AcceptBackoff {
    /// `what` names the listener in the log ("accept failed" on `what`).
    pub fn new(what: &'static str) -> Self {
        AcceptBackoff {
            what,
            delay: Duration::ZERO,
            unlogged: 0,
            last_log: None,
        }
    }

    /// An accept succeeded: the next failure starts over at the shortest wait.
    pub fn accepted(&mut self) {
        self.delay = Duration::ZERO;
    }

    /// An accept failed: logs it (rate-limited) and returns how long to
    /// wait before accepting again.
    pub fn failed(&mut self, e: &io::Error) -> Duration {
        self.unlogged += 1;
        let now = Instant::now();
        if self
            .last_log
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            tracing::warn!(
                listener = self.what,
                error = %e,
                failures = self.unlogged,
                "accept failed ({} since the last report)",
                self.unlogged
            );
            self.unlogged = 0;
            self.last_log = Some(now);
        }
        if !is_resource_error(e) {
            return Duration::ZERO;
        }
        self.delay = if self.delay.is_zero() {
            Duration::from_millis(5)
        } else {
            (self.delay * 2).min(MAX_ACCEPT_BACKOFF)
        };
        self.delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_fit_two_descriptors_each_with_a_reserve() {
        assert_eq!(connections_for_open_files(1024), 448);
        assert_eq!(connections_for_open_files(4096), 1984);
        assert_eq!(connections_for_open_files(10), 1);
    }

    #[test]
    fn backoff_doubles_to_a_cap_on_emfile_and_starts_over_after_an_accept() {
        let mut b = AcceptBackoff::new("test");
        let emfile = io::Error::from_raw_os_error(nix::libc::EMFILE);
        let waits: Vec<_> = (0..10).map(|_| b.failed(&emfile)).collect();
        assert_eq!(waits[0], Duration::from_millis(5));
        assert_eq!(waits[1], Duration::from_millis(10));
        assert_eq!(waits[9], MAX_ACCEPT_BACKOFF);
        assert!(waits.windows(2).all(|w| w[0] <= w[1]), "{waits:?}");
        b.accepted();
        assert_eq!(b.failed(&emfile), Duration::from_millis(5));
        let reset = io::Error::from_raw_os_error(nix::libc::ECONNABORTED);
        assert_eq!(b.failed(&reset), Duration::ZERO);
    }
}
