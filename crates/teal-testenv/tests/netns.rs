//! Network namespaces made by the test tooling: addresses added inside are reachable inside
//! (from the test's own sockets and from commands run there), not on the host, the host
//! forwarder reaches a host loopback server, and the namespace is gone after drop.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::process::Command;

use teal_testenv::netns::NetNs;

fn namespaces() -> String {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(out.status.success(), "ip netns list: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One round trip: the client writes `ping`, the server answers `pong:` and what it read.
fn round_trip(listener: &TcpListener, client: &mut std::net::TcpStream) -> String {
    client.write_all(b"ping").unwrap();
    let (mut server, _) = listener.accept().unwrap();
    let mut buf = [0u8; 4];
    server.read_exact(&mut buf).unwrap();
    server.write_all(b"pong:").unwrap();
    server.write_all(&buf).unwrap();
    drop(server);
    let mut got = String::new();
    client.read_to_string(&mut got).unwrap();
    got
}

#[test]
fn an_address_added_inside_is_reachable_inside_and_the_namespace_goes_on_drop() {
    let ns = NetNs::create("selftest").unwrap();
    let name = ns.name().to_string();
    assert!(
        namespaces()
            .lines()
            .any(|l| l.split_whitespace().next() == Some(&name)),
        "{name} not in `ip netns list`: {}",
        namespaces()
    );
    let ip: IpAddr = "10.244.7.9".parse().unwrap();
    ns.add_address(ip).unwrap();

    // The test's own sockets, made inside.
    let listener = ns.bind(SocketAddr::new(ip, 0)).unwrap();
    let addr = listener.local_addr().unwrap();
    assert_eq!(addr.ip(), ip);
    let mut client = ns.connect(addr).unwrap();
    assert_eq!(round_trip(&listener, &mut client), "pong:ping");

    // A command run inside sees the address; the host does not have it.
    let out = ns
        .command("ip")
        .args(["-o", "addr", "show", "dev", "lo"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("10.244.7.9/32"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let host = Command::new("ip").args(["-o", "addr"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&host.stdout).contains("10.244.7.9/"));

    // Adding it twice is an error naming the namespace.
    let err = ns.add_address(ip).unwrap_err().to_string();
    assert!(err.contains(&name) && err.contains("addr add"), "{err}");

    drop(listener);
    drop(ns);
    assert!(
        !namespaces()
            .lines()
            .any(|l| l.split_whitespace().next() == Some(&name)),
        "{name} still listed after drop: {}",
        namespaces()
    );
    assert!(!std::path::Path::new("/run/netns").join(&name).exists());
}

#[test]
fn the_forwarder_reaches_a_host_loopback_server_from_inside() {
    let host = TcpListener::bind("127.0.0.1:0").unwrap();
    let host_addr = host.local_addr().unwrap();
    let mut ns = NetNs::create("fwd").unwrap();
    // Inside, the namespace's own loopback: nothing listens there yet.
    assert!(ns.connect(host_addr).is_err());
    ns.forward_from_host(host_addr, host_addr).unwrap();
    let mut client = ns.connect(host_addr).unwrap();
    assert_eq!(round_trip(&host, &mut client), "pong:ping");
    let name = ns.name().to_string();
    drop(ns);
    assert!(!namespaces().contains(&name));
}

#[test]
fn namespaces_of_test_processes_that_are_gone_are_removed() {
    // A process that has exited: its namespace was never dropped.
    let mut gone = Command::new("true").spawn().unwrap();
    let pid = gone.id();
    gone.wait().unwrap();
    let stale = format!("teal-stale-{pid}-0");
    let out = Command::new("ip")
        .args(["netns", "add", &stale])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    // One of a running process (this one) stays.
    let live = NetNs::create("live").unwrap();
    let ns = NetNs::create("sweep").unwrap();
    let listed = namespaces();
    assert!(!listed.contains(&stale), "{stale} still listed: {listed}");
    assert!(listed.contains(live.name()), "{listed}");
    drop((ns, live));
}
