//! Network namespaces for tests that send real traffic to made-up addresses.
//!
//! kwok hands out pod addresses that exist nowhere. A test that wants real processes to
//! answer on them creates a [`NetNs`] (`ip netns add` from iproute2, which needs root or
//! `CAP_SYS_ADMIN`), adds the addresses to its loopback device and runs the processes inside
//! it ([`NetNs::command`]). Nothing outside the namespace sees those addresses, and the host
//! sees nothing of them either. The namespace is deleted when the value is dropped.
//!
//! Two namespaces can be joined by a veth pair ([`NetNs::veth`]), one address at each end,
//! so traffic between them crosses a real link that a test can take down and bring back
//! ([`NetNs::set_link`]): with the link down, packets are dropped without any answer, as
//! when a node's network goes away.
//!
//! The test process itself stays in the host namespace. Sockets it needs inside (a client
//! connection, a listener) are created by a short-lived thread that enters the namespace
//! ([`NetNs::connect`], [`NetNs::bind`]); a socket keeps the namespace it was created in, so
//! the caller can use it from any thread or async runtime afterwards.
//!
//! A namespace has its own `127.0.0.1`: processes inside cannot reach a server on the host's
//! loopback (the test apiserver). [`NetNs::forward_from_host`] listens inside and relays each
//! connection to a host address, so an unchanged kubeconfig works inside.

use std::ffi::OsStr;
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::Error;

/// One end of a veth pair: the namespace it is in, the device's name there and the address
/// (with its prefix length) given to the device.
#[derive(Clone, Copy)]
pub struct VethEnd<'a> {
    pub ns: &'a NetNs,
    pub device: &'a str,
    pub addr: IpAddr,
    pub prefix_len: u8,
}

/// A network namespace this process created; deleted on drop.
pub struct NetNs {
    name: String,
    forwarders: Vec<Forwarder>,
}

struct Forwarder {
    listen: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

fn ns_error(name: &str, message: impl Into<String>) -> Error {
    Error::NetNs {
        name: name.to_string(),
        message: message.into(),
    }
}

/// Runs `ip ARGS…`; the error says what failed, with `ip`'s standard error.
fn run_ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `ip` (install iproute2, scripts/setup-deps does): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Like [`run_ip`], naming the namespace in the error.
fn ip(name: &str, args: &[&str]) -> Result<(), Error> {
    run_ip(args).map_err(|m| ns_error(name, m))
}

impl NetNs {
    /// Creates a namespace named `teal-<prefix>-<pid>-<n>` with `lo` up.
    ///
    /// Fails (it never skips) when namespaces cannot be created here, saying why: tests that
    /// need one must run as root or with `CAP_SYS_ADMIN` and `CAP_NET_ADMIN`.
    pub fn create(prefix: &str) -> Result<NetNs, Error> {
        static N: AtomicU32 = AtomicU32::new(0);
        remove_stale();
        let name = format!(
            "teal-{prefix}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        run_ip(&["netns", "add", &name]).map_err(|e| {
            ns_error(
                &name,
                format!(
                    "cannot create it ({e}); this test needs a network namespace of its own, \
                     which takes root or CAP_SYS_ADMIN and CAP_NET_ADMIN"
                ),
            )
        })?;
        let ns = NetNs {
            name,
            forwarders: Vec::new(),
        };
        ip(&ns.name, &["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name (as `ip netns list` shows it).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Adds `addr` (as a /32 or /128) to the namespace's loopback device, so processes inside
    /// can listen on it and reach it.
    pub fn add_address(&self, addr: IpAddr) -> Result<(), Error> {
        let prefix = if addr.is_ipv4() { 32 } else { 128 };
        ip(
            &self.name,
            &[
                "-n",
                &self.name,
                "addr",
                "add",
                &format!("{addr}/{prefix}"),
                "dev",
                "lo",
            ],
        )
    }

    /// Joins two namespaces with a veth pair: creates device `a.device` in `a.ns` and its peer
    /// `b.device` in `b.ns` (directly there, never in the host's namespace), gives each end its
    /// address and sets both up. The pair goes when either namespace is deleted.
    pub fn veth(a: VethEnd<'_>, b: VethEnd<'_>) -> Result<(), Error> {
        ip(
            &a.ns.name,
            &[
                "-n", &a.ns.name, "link", "add", a.device, "type", "veth", "peer", "name",
                b.device, "netns", &b.ns.name,
            ],
        )?;
        for end in [a, b] {
            let cidr = format!("{}/{}", end.addr, end.prefix_len);
            let mut args = vec!["-n", &end.ns.name, "addr", "add", &cidr, "dev", end.device];
            if end.addr.is_ipv6() {
                // Usable at once, without duplicate address detection.
                args.push("nodad");
            }
            ip(&end.ns.name, &args)?;
            end.ns.set_link(end.device, true)?;
        }
        Ok(())
    }

    /// Sets network device `device` of the namespace up or down (`ip link set DEV up|down`).
    /// Down, the device and (for a veth) its peer carry nothing: what is sent over it is
    /// dropped silently.
    pub fn set_link(&self, device: &str, up: bool) -> Result<(), Error> {
        let state = if up { "up" } else { "down" };
        ip(
            &self.name,
            &["-n", &self.name, "link", "set", "dev", device, state],
        )
    }

    /// A command running `program` inside the namespace (`ip netns exec`, which execs it: the
    /// child's pid is the program's own).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs `f` on a thread that has entered the namespace.
    fn inside<T: Send + 'static>(
        &self,
        what: &str,
        f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
    ) -> Result<T, Error> {
        let path = format!("/run/netns/{}", self.name);
        let thread = std::thread::spawn(move || -> Result<T, String> {
            let file = std::fs::File::open(&path).map_err(|e| format!("open {path}: {e}"))?;
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| format!("setns {path}: {e}"))?;
            f().map_err(|e| e.to_string())
        });
        thread
            .join()
            .map_err(|_| ns_error(&self.name, format!("{what}: the thread panicked")))?
            .map_err(|e| ns_error(&self.name, format!("{what}: {e}")))
    }

    /// A TCP connection to `addr`, made inside the namespace.
    pub fn connect(&self, addr: SocketAddr) -> Result<TcpStream, Error> {
        self.inside(&format!("connect to {addr}"), move || {
            TcpStream::connect(addr)
        })
    }

    /// Like [`NetNs::connect`], giving up after `timeout` (when nothing answers at all).
    pub fn connect_timeout(&self, addr: SocketAddr, timeout: Duration) -> Result<TcpStream, Error> {
        self.inside(&format!("connect to {addr}"), move || {
            TcpStream::connect_timeout(&addr, timeout)
        })
    }

    /// A TCP listener on `addr`, bound inside the namespace.
    pub fn bind(&self, addr: SocketAddr) -> Result<TcpListener, Error> {
        self.inside(&format!("listen on {addr}"), move || {
            TcpListener::bind(addr)
        })
    }

    /// Listens on `inside` within the namespace and relays every connection to `host`, an
    /// address of the host's namespace (bytes are copied both ways until each side closes).
    /// Runs until the namespace is dropped.
    pub fn forward_from_host(&mut self, inside: SocketAddr, host: SocketAddr) -> Result<(), Error> {
        let listener = self.bind(inside)?;
        let listen = listener
            .local_addr()
            .map_err(|e| ns_error(&self.name, format!("forwarder on {inside}: {e}")))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(inner) = conn else { continue };
                // This thread never entered the namespace: the connection to `host` is made
                // on the host's side.
                let Ok(outer) = TcpStream::connect(host) else {
                    let _ = inner.shutdown(Shutdown::Both);
                    continue;
                };
                relay(inner, outer);
            }
        });
        self.forwarders.push(Forwarder {
            listen,
            stop,
            thread: Some(thread),
        });
        Ok(())
    }
}

/// Deletes namespaces this module made for test processes that no longer run (killed before
/// they could drop them): names `teal-<prefix>-<pid>-<n>` whose pid has no `/proc` entry.
fn remove_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let mut parts = name.rsplit('-');
        let (Some(n), Some(pid)) = (parts.next(), parts.next()) else {
            continue;
        };
        let ours = name.starts_with("teal-")
            && n.parse::<u32>().is_ok()
            && pid.parse::<u32>().is_ok_and(|p| p != std::process::id());
        if ours
            && !std::path::Path::new("/proc").join(pid).exists()
            && let Err(e) = run_ip(&["netns", "delete", name])
        {
            tracing::warn!("stale network namespace {name}: {e}");
        }
    }
}

/// Copies bytes between `a` and `b` in both directions on two threads; each direction ends
/// with a write shutdown when its source closes.
fn relay(a: TcpStream, b: TcpStream) {
    let _ = a.set_nodelay(true);
    let _ = b.set_nodelay(true);
    let (Ok(a2), Ok(b2)) = (a.try_clone(), b.try_clone()) else {
        return;
    };
    let pipe = |mut from: TcpStream, mut to: TcpStream| {
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut from, &mut to);
            let _ = to.shutdown(Shutdown::Write);
        });
    };
    pipe(a, b2);
    pipe(b, a2);
}

impl Drop for NetNs {
    fn drop(&mut self) {
        for mut f in std::mem::take(&mut self.forwarders) {
            f.stop.store(true, Ordering::SeqCst);
            // Wake the accept loop so it sees the flag.
            let _ = self.connect(f.listen);
            if let Some(t) = f.thread.take() {
                let _ = t.join();
            }
        }
        if let Err(e) = ip(&self.name, &["netns", "delete", &self.name]) {
            tracing::warn!("{e}");
        }
    }
}
