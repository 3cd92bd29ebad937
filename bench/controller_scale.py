"""Measurements for bench/controller-scale (run through that script)."""

import argparse
import json
import os
import statistics
import subprocess
import threading
import time
import urllib.request

NS = "scale"


def kubectl(*args, data=None):
    r = subprocess.run(["kubectl", *args], input=data, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)}: {r.stderr.strip()}")
    return r.stdout


def objects(start, end):
    docs = []
    for i in range(start, end):
        name = f"app-{i:05d}"
        docs.append({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": NS},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {"containers": [{"name": "app", "image": "app:1",
                                             "ports": [{"name": "http", "containerPort": 8080}]}]},
                },
            },
        })
        docs.append({
            "apiVersion": "teal.dev/v1alpha1", "kind": "BlueGreen",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"workloadRef": {"kind": "Deployment", "name": name}, "replicas": 1,
                     "scaleDownDelay": "5s"},
        })
    return docs


def create(start, end):
    chunk = 200
    for s in range(start, end, chunk):
        items = objects(s, min(end, s + chunk))
        kubectl("apply", "--server-side", "-f", "-", data=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))


def bluegreens():
    out = kubectl("get", "bg", "-n", NS, "-o", "json")
    return {b["metadata"]["name"]: b.get("status", {}) for b in json.loads(out)["items"]}


def wait_until(what, ok, timeout):
    deadline = time.time() + timeout
    while True:
        done, total = ok()
        if done >= total:
            return
        if time.time() > deadline:
            raise RuntimeError(f"{what}: {done}/{total} after {timeout}s")
        time.sleep(2)


def proc(pid):
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return rss / 1024.0, cpu


def apiserver_requests():
    """apiserver_request_total summed over everything but WATCH, by verb."""
    text = kubectl("get", "--raw", "/metrics")
    by_verb = {}
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels, value = line.rsplit(" ", 1)
        verb = labels.split('verb="', 1)[1].split('"', 1)[0]
        by_verb[verb] = by_verb.get(verb, 0) + float(value)
    return by_verb


def reconciles(url):
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith("teal_controller_reconciles_total "):
            return float(line.split()[1])
    return 0.0


class Watch:
    """A kubectl watch printing one line per event, stamped on arrival."""

    def __init__(self, kind, template):
        self.events = []
        self.p = subprocess.Popen(
            ["kubectl", "get", kind, "-n", NS, "-l", "teal.dev/bluegreen", "-w", "-o", f"jsonpath={template}\n"],
            stdout=subprocess.PIPE, text=True)
        threading.Thread(target=self.read, daemon=True).start()

    def read(self):
        for line in self.p.stdout:
            self.events.append((time.time(), line.split()))

    def stop(self):
        self.p.terminate()


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def release(names, url):
    deps = Watch("deploy", "{.metadata.name} {.metadata.annotations.teal\\.dev/revision} {.spec.replicas} {.status.readyReplicas}")
    svcs = Watch("svc", "{.metadata.name} {.spec.selector.teal\\.dev/color}")
    time.sleep(3)  # both watches listed what exists
    before = bluegreens()
    r0, a0 = reconciles(url), apiserver_requests()
    t0 = {}
    for n in names:
        t0[n] = time.time()
        kubectl("set", "image", "-n", NS, f"deploy/{n}", "app=app:2")
    def released():
        st = bluegreens()
        return sum(1 for n in names if st[n].get("activeRevision") not in (None, before[n].get("activeRevision"))
                   and st[n].get("phase") == "Healthy"), len(names)
    wait_until("the sample released", released, 600)
    r1, a1 = reconciles(url), apiserver_requests()
    time.sleep(1)
    deps.stop()
    svcs.stop()
    after = bluegreens()
    written, cutover = [], []
    for n in names:
        new_rev = after[n]["activeRevision"]
        color = after[n]["activeColor"]
        dep = f"{n}-{color}"
        ev = [(t, f) for t, f in deps.events if f and f[0] == dep and len(f) > 1 and f[1] == new_rev and t >= t0[n]]
        if not ev:
            continue
        written.append(ev[0][0] - t0[n])
        ready = [t for t, f in ev if len(f) >= 4 and f[3] == f[2] and f[2] != "0"]
        switched = [t for t, f in svcs.events if f and f[0] == n and len(f) > 1 and f[1] == color and t >= t0[n]]
        if ready and switched:
            cutover.append(max(0.0, switched[0] - ready[0]))
    reqs = sum(a1.values()) - sum(a0.values())
    rec = r1 - r0
    return written, cutover, reqs, rec, {k: a1[k] - a0.get(k, 0) for k in a1 if a1[k] - a0.get(k, 0) > 0}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--controller-pid", type=int, required=True)
    ap.add_argument("--metrics", required=True)
    ap.add_argument("--counts", default="1000")
    ap.add_argument("--sample", type=int, default=50)
    a = ap.parse_args()
    kubectl("create", "namespace", NS)
    have = 0
    rows = []
    for n in [int(x) for x in a.counts.split()]:
        started = time.time()
        r0, q0 = reconciles(a.metrics), sum(apiserver_requests().values())
        create(have, n)
        have = n

        def adopted():
            st = bluegreens()
            return sum(1 for s in st.values() if s.get("phase") == "Healthy"), n
        wait_until(f"{n} BlueGreens adopted", adopted, 3600)
        adopt_s = time.time() - started
        r1, q1 = reconciles(a.metrics), sum(apiserver_requests().values())
        time.sleep(10)
        rss, cpu = proc(a.controller_pid)
        time.sleep(30)
        rss2, cpu2 = proc(a.controller_pid)
        idle_cpu = (cpu2 - cpu) / 30 * 100
        step = max(1, n // a.sample)
        names = [f"app-{i:05d}" for i in range(0, n, step)][: a.sample]
        written, cutover, reqs, rec, verbs = release(names, a.metrics)
        _, cpu_total = proc(a.controller_pid)
        row = {
            "bluegreens": n, "adopt_seconds": round(adopt_s, 1),
            "adopt_requests_per_reconcile": round((q1 - q0) / max(1.0, r1 - r0), 2),
            "rss_mib": round(max(rss, rss2), 1), "idle_cpu_percent": round(idle_cpu, 2),
            "cpu_seconds_total": round(cpu_total, 1),
            "released": len(names), "measured": len(written),
            "change_to_idle_written_p50_ms": round(pct(written, 50) * 1000) if written else None,
            "change_to_idle_written_p99_ms": round(pct(written, 99) * 1000) if written else None,
            "ready_to_cutover_p50_ms": round(pct(cutover, 50) * 1000) if cutover else None,
            "ready_to_cutover_p99_ms": round(pct(cutover, 99) * 1000) if cutover else None,
            "release_requests_per_reconcile": round(reqs / max(1.0, rec), 2),
            "release_requests_by_verb": {k: int(v) for k, v in sorted(verbs.items())},
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("| BlueGreens | adopt all (s) | RSS (MiB) | idle CPU (%) | API requests / reconcile (adopt; release) | change → idle written p50 / p99 (ms) | ready → cutover p50 / p99 (ms) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['bluegreens']} | {r['adopt_seconds']} | {r['rss_mib']} | {r['idle_cpu_percent']} | "
              f"{r['adopt_requests_per_reconcile']}; {r['release_requests_per_reconcile']} | "
              f"{r['change_to_idle_written_p50_ms']} / {r['change_to_idle_written_p99_ms']} | "
              f"{r['ready_to_cutover_p50_ms']} / {r['ready_to_cutover_p99_ms']} |")


if __name__ == "__main__":
    main()
