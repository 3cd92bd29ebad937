//! Network namespaces made by the test tooling: addresses added inside are reachable inside
//! (from the test's own sockets and from commands run there), not on the host, the host
//! forwarder reaches a host loopback server, and the namespace is gone after drop; a veth pair
//! joins two namespaces and carries nothing while one end is down.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::process::Command;
use std::time::{Duration, Instant};

use teal_testenv::netns::{NetNs, VethEnd};

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

/// `ip -o link show dev DEV` inside `ns`.
fn link_line(ns: &NetNs, device: &str) -> String {
    let out = ns
        .command("ip")
        .args(["-o", "link", "show", "dev", device])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_veth_pair_joins_two_namespaces_and_carries_nothing_while_down() {
    let a = NetNs::create("vetha").unwrap();
    let b = NetNs::create("vethb").unwrap();
    let (ip_a, ip_b): (IpAddr, IpAddr) =
        ("10.251.3.1".parse().unwrap(), "10.251.3.2".parse().unwrap());
    NetNs::veth(
        VethEnd {
            ns: &a,
            device: "tl-va",
            addr: ip_a,
            prefix_len: 24,
        },
        VethEnd {
            ns: &b,
            device: "tl-vb",
            addr: ip_b,
            prefix_len: 24,
        },
    )
    .unwrap();
    // The devices are in the namespaces, not on the host.
    let host = Command::new("ip").args(["-o", "link"]).output().unwrap();
    let host = String::from_utf8_lossy(&host.stdout);
    assert!(!host.contains("tl-va") && !host.contains("tl-vb"), "{host}");

    // A listener in B is reached from A across the link, from A's address.
    let listener = b.bind(SocketAddr::new(ip_b, 0)).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut client = a.connect(addr).unwrap();
    assert_eq!(client.local_addr().unwrap().ip(), ip_a);
    assert_eq!(round_trip(&listener, &mut client), "pong:ping");

    // B's end down: the device says so and a connect from A gets no answer.
    b.set_link("tl-vb", false).unwrap();
    let line = link_line(&b, "tl-vb");
    assert!(line.contains("state DOWN"), "{line}");
    let line = link_line(&a, "tl-va");
    assert!(
        line.contains("NO-CARRIER"),
        "A's end has lost its peer: {line}"
    );
    let err = a
        .connect_timeout(addr, Duration::from_millis(500))
        .unwrap_err()
        .to_string();
    assert!(err.contains(&addr.to_string()), "{err}");

    // Up again: connections work again (once the neighbour is resolved).
    b.set_link("tl-vb", true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut client = loop {
        match a.connect_timeout(addr, Duration::from_secs(2)) {
            Ok(c) => break c,
            Err(e) if Instant::now() < deadline => {
                eprintln!("not yet: {e}");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("the link came up, still: {e}"),
        }
    };
    assert_eq!(round_trip(&listener, &mut client), "pong:ping");

    // A device that does not exist: the error names the namespace and the command.
    let err = a.set_link("tl-none", false).unwrap_err().to_string();
    assert!(err.contains(a.name()) && err.contains("tl-none"), "{err}");
    // So does a pair whose device name is taken.
    let err = NetNs::veth(
        VethEnd {
            ns: &a,
            device: "tl-va",
            addr: "10.251.4.1".parse().unwrap(),
            prefix_len: 24,
        },
        VethEnd {
            ns: &b,
            device: "tl-vc",
            addr: "10.251.4.2".parse().unwrap(),
            prefix_len: 24,
        },
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains(a.name()) && err.contains("link add"), "{err}");
}
