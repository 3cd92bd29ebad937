"""Measurements for bench/mixing (run through that script)."""

import argparse
import http.client
import json
import statistics
import subprocess
import sys
import threading
import time

CONNECTIONS = 32
PORT = 8080


def kubectl(*args, data=None):
    r = subprocess.run(["kubectl", *args], input=data, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)}: {r.stderr.strip()}")
    return r.stdout


def apply(ns, obj):
    kubectl("apply", "-n", ns, "-f", "-", data=json.dumps(obj))


def app(name, image, version, labels):
    """The sample app: 3 replicas reporting `version`, Ready on /healthz."""
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "terminationGracePeriodSeconds": 15,
                    "containers": [{
                        "name": "app", "image": image, "imagePullPolicy": "IfNotPresent",
                        "args": ["sample-app", "--color", "blue", "--version", version,
                                 "--listen", "0.0.0.0", "--port", str(PORT)],
                        "ports": [{"name": "http", "containerPort": PORT}],
                        "readinessProbe": {"httpGet": {"path": "/healthz", "port": PORT},
                                           "periodSeconds": 1},
                    }],
                },
            },
        },
    }


def bluegreen(method):
    spec = {"workloadRef": {"kind": "Deployment", "name": "shop"}}
    if method == "service-0s":
        spec["scaleDownDelay"] = "0s"
    if method == "teal":
        spec["router"] = {"type": "teal", "teal": {"replicas": 2}}
    return {"apiVersion": "teal.dev/v1alpha1", "kind": "BlueGreen",
            "metadata": {"name": "shop"}, "spec": spec}


def status(ns):
    return json.loads(kubectl("get", "bluegreen", "shop", "-n", ns, "-o", "json")).get("status", {})


def wait(what, check, timeout=300, every=0.2):
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
        except RuntimeError:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(every)


def get_version(ip):
    conn = http.client.HTTPConnection(ip, PORT, timeout=3)
    try:
        conn.request("GET", "/", headers={"Connection": "close"})
        r = conn.getresponse()
        return json.loads(r.read()).get("version") if r.status == 200 else None
    except (OSError, http.client.HTTPException, ValueError):
        return None
    finally:
        conn.close()


class Client(threading.Thread):
    """One keep-alive connection sending GET / every 1/rate s; records
    (send time, "v1" | "v2" | error). A failed request closes the connection;
    the next one opens a new connection (as a pooled client does)."""

    def __init__(self, ip, rate, stop, log):
        super().__init__(daemon=True)
        self.ip, self.interval, self.stop, self.log = ip, 1.0 / rate, stop, log
        self.connections = 0

    def run(self):
        conn = None
        next_at = time.monotonic()
        while not self.stop.is_set():
            if conn is None:
                conn = http.client.HTTPConnection(self.ip, PORT, timeout=5)
                self.connections += 1
            t = time.monotonic()
            try:
                conn.request("GET", "/")
                r = conn.getresponse()
                body = r.read()
                outcome = json.loads(body)["version"] if r.status == 200 else f"HTTP {r.status}"
                if r.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException, ValueError) as e:
                outcome = f"error {type(e).__name__}"
                conn.close()
                conn = None
            self.log.append((t, outcome))
            # A steady rate, without a burst to catch up after a stalled request.
            next_at = max(next_at + self.interval, time.monotonic())
            time.sleep(max(0.0, next_at - time.monotonic()))
        if conn is not None:
            conn.close()


def one_run(method, run, image, window, rate):
    ns = f"mix-{method}-{run}"
    kubectl("create", "namespace", ns)
    try:
        return measure(method, ns, image, window, rate)
    finally:
        kubectl("delete", "namespace", ns, "--wait=false")


def measure(method, ns, image, window, rate):
    if method == "hand":
        apply(ns, app("shop-blue", image, "v1", {"app": "shop", "slot": "blue"}))
        apply(ns, {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "shop"},
                   "spec": {"selector": {"app": "shop", "slot": "blue"},
                            "ports": [{"name": "http", "port": PORT, "targetPort": PORT}]}})
        kubectl("rollout", "status", "-n", ns, "deployment/shop-blue", "--timeout=300s")
    else:
        apply(ns, app("shop", image, "v1", {"app": "shop"}))
        apply(ns, bluegreen(method))
        wait("the BlueGreen Healthy", lambda: status(ns).get("phase") == "Healthy")
    ip = wait("the Service", lambda: kubectl(
        "get", "service", "shop", "-n", ns, "-o", "jsonpath={.spec.clusterIP}").strip())
    wait("v1 through the ClusterIP", lambda: get_version(ip) == "v1", every=0.5)

    stop = threading.Event()
    logs = [[] for _ in range(CONNECTIONS)]
    clients = [Client(ip, rate, stop, log) for log in logs]
    for c in clients:
        c.start()
    time.sleep(5)

    change = time.monotonic()
    if method == "hand":
        apply(ns, app("shop-green", image, "v2", {"app": "shop", "slot": "green"}))
        kubectl("rollout", "status", "-n", ns, "deployment/shop-green", "--timeout=300s")
        kubectl("patch", "service", "shop", "-n", ns, "--type=merge",
                "-p", json.dumps({"spec": {"selector": {"app": "shop", "slot": "green"}}}))
        switch = time.monotonic()
    else:
        before = status(ns).get("activeColor")
        apply(ns, app("shop", image, "v2", {"app": "shop"}))
        # The switch as the BlueGreen reports it (for router type teal: every router
        # replica acknowledged the new route table).
        wait("the switch", lambda: status(ns).get("activeColor") not in (None, before),
             timeout=300, every=0.05)
        switch = time.monotonic()
    time.sleep(window)
    stop.set()
    for c in clients:
        c.join()

    events = sorted(e for log in logs for e in log)
    v1_after = [t for t, o in events if o == "v1" and t > switch]
    after = [o for t, o in events if t > switch]
    first_v2 = next((t for t, o in events if o == "v2"), None)
    last_v1 = max((t for t, o in events if o == "v1"), default=None)
    failed = [(t, o) for t, o in events if o not in ("v1", "v2")]
    still_mixing = bool(v1_after) and last_v1 > switch + window - 2
    return {
        "method": method,
        "requests": len(events),
        "connections_opened": sum(c.connections for c in clients),
        "change_to_switch": switch - change,
        "v1_after_switch": len(v1_after),
        "v1_share_after_switch": 100.0 * len(v1_after) / max(1, len(after)),
        "last_v1_after_switch": (last_v1 - switch) if v1_after else 0.0,
        # None: v2 never answered in the window.
        "mixing": None if first_v2 is None else max(0.0, (last_v1 or 0.0) - first_v2),
        "failed": len(failed),
        "failures": sorted({o for _, o in failed}),
        "change_to_all_v2": (max(last_v1, switch) - change) if last_v1 else switch - change,
        "still_mixing": still_mixing,
        "timeline": timeline(events, change, switch),
    }


def timeline(events, change, switch):
    """Per second from 5 s before the change: (second, v1, v2, failed, marks)."""
    start = change - 5
    rows = {}
    for t, o in events:
        if t < start:
            continue
        s = int(t - start)
        row = rows.setdefault(s, [0, 0, 0])
        row[0 if o == "v1" else 1 if o == "v2" else 2] += 1
    out = []
    for s in range(0, max(rows, default=0) + 1):
        v1, v2, bad = rows.get(s, [0, 0, 0])
        at = start + s
        marks = []
        if at <= change < at + 1:
            marks.append("change")
        if at <= switch < at + 1:
            marks.append("switch")
        out.append((s - 5, v1, v2, bad, marks))
    return out


def med(values):
    return statistics.median(values) if values else 0


def spread(values, fmt):
    if not values:
        return "-"
    return f"{fmt(med(values))} ({fmt(min(values))}-{fmt(max(values))})"


def mixing_text(rs, secs):
    both = [r["mixing"] for r in rs if r["mixing"] is not None]
    never = len(rs) - len(both)
    if not both:
        return "v2 never answered"
    note = f" (v2 never answered in {never} of {len(rs)})" if never else ""
    return spread(both, secs) + note


def report(results, runs, window, rate):
    label = {
        "hand": "hand-made (green Deployment, selector patch)",
        "service": "BlueGreen, router service (scaleDownDelay 30s)",
        "service-0s": "BlueGreen, router service, scaleDownDelay 0s",
        "teal": "BlueGreen, router teal",
    }
    print(f"\n{CONNECTIONS} keep-alive connections through the ClusterIP, {rate} req/s each; "
          f"{runs} runs per method, {window} s observed after each switch; "
          "median (min-max)\n")
    print("| method | v1 answers after the switch | last v1 answer after the switch | "
          "both versions answering | failed requests | change → switch | "
          "change → all traffic on v2 |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    secs = lambda v: f"{v:.1f} s"  # noqa: E731
    count = lambda v: f"{v:g}"  # noqa: E731
    pct = lambda v: f"{v:.0f}%"  # noqa: E731
    for method, rs in results.items():
        mixing_note = ""
        if any(r["still_mixing"] for r in rs):
            mixing_note = f" (v1 still answering at the end in {sum(r['still_mixing'] for r in rs)} of {len(rs)})"
        all_v2 = [r["change_to_all_v2"] for r in rs]
        all_v2_text = spread(all_v2, secs)
        if all(r["still_mixing"] for r in rs):
            all_v2_text = f"never within the {window} s observed"
        print(f"| {label.get(method, method)} "
              f"| {spread([r['v1_after_switch'] for r in rs], count)}, "
              f"{spread([r['v1_share_after_switch'] for r in rs], pct)} of all "
              f"| {spread([r['last_v1_after_switch'] for r in rs], secs)}{mixing_note} "
              f"| {mixing_text(rs, secs)} "
              f"| {spread([r['failed'] for r in rs], count)} "
              f"| {spread([r['change_to_switch'] for r in rs], secs)} "
              f"| {all_v2_text} |")
    failures = sorted({f for rs in results.values() for r in rs for f in r["failures"]})
    if failures:
        print(f"\nfailures seen: {', '.join(failures)}")
    for method, rs in results.items():
        # The run with the median count of v1 answers after the switch.
        r = sorted(rs, key=lambda r: r["v1_after_switch"])[len(rs) // 2]
        print(f"\n{label.get(method, method)}: one row per second from the change "
              "(1: served by v1, 2: by v2, x: failed)")
        top = max((v1 + v2 + bad for _, v1, v2, bad, _ in r["timeline"]), default=1) or 1
        for s, v1, v2, bad, marks in r["timeline"]:
            width = 50 / top
            bar = "1" * round(v1 * width) + "2" * round(v2 * width) + "x" * (1 if bad else 0)
            print(f"{s:>4}s {bar:<52} v1 {v1:>4} v2 {v2:>4} failed {bad:>3} {' '.join(marks)}")
    sys.stdout.flush()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--image", required=True)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--methods", default="hand service service-0s teal")
    p.add_argument("--window", type=float, default=45)
    p.add_argument("--rate", type=float, default=10)
    p.add_argument("--json", help="also write every run's figures here")
    a = p.parse_args()
    results = {}
    for run in range(a.runs):
        for method in a.methods.split():
            r = one_run(method, run, a.image, a.window, a.rate)
            print(f"{method} run {run + 1}: {r['v1_after_switch']} v1 answers after the switch "
                  f"(last {r['last_v1_after_switch']:.1f} s after it), {r['failed']} failed "
                  f"{r['failures']}, change → switch {r['change_to_switch']:.1f} s, "
                  f"{r['requests']} requests on {r['connections_opened']} connections",
                  file=sys.stderr, flush=True)
            results.setdefault(method, []).append(r)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f)
    report(results, a.runs, a.window, a.rate)


if __name__ == "__main__":
    main()
