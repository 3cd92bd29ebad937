#!/usr/bin/env python3
"""A burst of connects against a freshly started `teal router`.

Starts `teal router` (no route table: it answers 503, which is enough to
see that a connection was accepted and served), then opens N connections
at once on loopback, sends one request on each and waits for every
response. Prints the wall time from the first connect to the last
response, how many connections saw no response within 60 s, and the
kernel's TcpExtListenOverflows / ListenDrops delta (/proc/net/netstat).
Those counters cover every listener of the network namespace: run it in a
namespace of its own, e.g.

    unshare -n sh -c 'ip link set lo up; bench/accept_burst.py target/debug/teal 5000 3'

Usage: bench/accept_burst.py TEAL_BINARY [N] [ROUNDS]
Figures: docs/benchmarks.md, Accept burst.
"""

import os
import resource
import selectors
import socket
import subprocess
import sys
import tempfile
import time


def netstat():
    with open("/proc/net/netstat") as f:
        lines = f.read().splitlines()
    out = {}
    for head, vals in zip(lines[0::2], lines[1::2]):
        keys = head.split()
        nums = vals.split()
        if keys[0] == "TcpExt:":
            out.update(zip(keys[1:], map(int, nums[1:])))
    return out


def burst(teal, n):
    tmp = tempfile.mkdtemp()
    token = os.path.join(tmp, "token")
    with open(token, "w") as f:
        f.write("bench-token\n")
    proc = subprocess.Popen(
        [teal, "router", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0",
         "--admin-token-file", token],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()
        proxy = next(w for w in line.split() if w.startswith("proxy="))[6:]
        host, port = proxy.rsplit(":", 1)
        addr = (host, int(port))
        before = netstat()
        sel = selectors.DefaultSelector()
        req = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
        start = time.monotonic()
        socks = []
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            s.connect_ex(addr)
            sel.register(s, selectors.EVENT_WRITE, "connect")
            socks.append(s)
        pending = n
        deadline = start + 60
        last = start
        while pending and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=1):
                s = key.fileobj
                if key.data == "connect":
                    if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                        sel.unregister(s)
                        pending -= 1
                        continue
                    s.send(req)
                    sel.modify(s, selectors.EVENT_READ, "read")
                else:
                    try:
                        data = s.recv(4096)
                    except OSError:
                        data = b""
                    sel.unregister(s)
                    pending -= 1
                    if data.startswith(b"HTTP/1.1"):
                        last = time.monotonic()
        after = netstat()
        for s in socks:
            s.close()
        return (last - start, pending,
                after["ListenOverflows"] - before["ListenOverflows"],
                after["ListenDrops"] - before["ListenDrops"])
    finally:
        proc.terminate()
        proc.wait()


def main():
    teal = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 5000
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, n + 100)), hard))
    for r in range(rounds):
        took, unanswered, overflows, drops = burst(teal, n)
        print(f"round {r + 1}: {n} connects served in {took:.2f} s, "
              f"{unanswered} unanswered, ListenOverflows +{overflows}, ListenDrops +{drops}",
              flush=True)
        time.sleep(2)


if __name__ == "__main__":
    main()
