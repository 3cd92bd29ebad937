//! What the router fuzz targets share: a runtime fit for a fuzz process and
//! a router serving on loopback.

use std::net::SocketAddr;

use teal_router::{RouteTable, Router, RouterConfig};

/// A two-thread runtime. libFuzzer's own `main` leaves SIGPIPE at its
/// default (a Rust `main` ignores it), so a write to a socket its peer
/// closed would kill the process instead of failing with EPIPE: a tokio
/// signal listener takes it, and stays installed for the process's life.
pub fn runtime() -> tokio::runtime::Runtime {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let pipe = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::pipe())
            .expect("SIGPIPE handler");
        drop(pipe);
    });
    rt
}

/// A router serving `table` on a loopback port of its own.
pub async fn serve(config: RouterConfig, table: RouteTable) -> SocketAddr {
    let router = Router::new(config, table).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { router.serve(listener, std::future::pending()).await });
    addr
}
