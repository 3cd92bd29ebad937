"""Measurements for bench/controller-scale (run through that script)."""

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import datetime

NS = "scale"


def kubectl(*args, data=None):
    r = subprocess.run(["kubectl", *args], input=data, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)}: {r.stderr.strip()}")
    return r.stdout


def deployment(name):
    """The app every scale bench releases: one replica of image app:1."""
    return {
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
    }


# spec.router of every BlueGreen, by --router (router type `teal` needs
# router pods that serve, which simulated pods do not).
ROUTERS = {
    "service": None,
    "gatewayAPI": lambda name: {"type": "gatewayAPI", "gatewayAPI": {
        "parentRefs": [{"name": "public"}], "hostnames": [f"{name}.example.com"]}},
    "istio": lambda name: {"type": "istio", "istio": {"hosts": [f"{name}.example.com"]}},
}


def objects(start, end, router=None):
    """Apps `start` to `end`: a Deployment and its BlueGreen each, with
    spec.router from `router` (one of ROUTERS' values) if given."""
    docs = []
    for i in range(start, end):
        name = f"app-{i:05d}"
        docs.append(deployment(name))
        spec = {"workloadRef": {"kind": "Deployment", "name": name}, "replicas": 1, "scaleDownDelay": "5s"}
        if router:
            spec["router"] = router(name)
        docs.append({
            "apiVersion": "teal.dev/v1alpha1", "kind": "BlueGreen",
            "metadata": {"name": name, "namespace": NS},
            "spec": spec,
        })
    return docs


def create(start, end, build=objects, chunk=200):
    """Server-side applies build(start, end)'s objects, `chunk` apps at a time."""
    for s in range(start, end, chunk):
        items = build(s, min(end, s + chunk))
        kubectl("apply", "--server-side", "-f", "-", data=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))


def stamp(t):
    """Seconds since the epoch of an RFC 3339 time from the apiserver."""
    return datetime.fromisoformat(t.replace("Z", "+00:00")).timestamp()


def created_to_first_reconcile(start, end):
    """How long BlueGreens app-START to app-END waited from being created to
    their first reconcile (the `Adopted` Event it records): p50, p99 and the
    longest, in seconds (creation is stamped to the second)."""
    created = {b["metadata"]["name"]: stamp(b["metadata"]["creationTimestamp"])
               for b in json.loads(kubectl("get", "bg", "-n", NS, "-o", "json"))["items"]}
    adopted = {}
    events = json.loads(kubectl("get", "events", "-n", NS, "--field-selector", "reason=Adopted", "-o", "json"))
    for e in events["items"]:
        t = e.get("eventTime") or e.get("firstTimestamp")
        name = e["involvedObject"]["name"]
        if t and name in created:
            adopted[name] = min(adopted.get(name, float("inf")), stamp(t))
    waits = [adopted[n] - created[n] for n in (f"app-{i:05d}" for i in range(start, end)) if n in adopted]
    if not waits:
        return None
    return {"p50_s": round(pct(waits, 50), 1), "p99_s": round(pct(waits, 99), 1),
            "max_s": round(max(waits), 1), "of": len(waits)}


def bluegreens():
    out = kubectl("get", "bg", "-n", NS, "-o", "json")
    return {b["metadata"]["name"]: b.get("status", {}) for b in json.loads(out)["items"]}


def wait_until(what, ok, timeout, every, progress=None):
    """Polls ok() every `every` seconds (each poll LISTs every BlueGreen, so
    not too often); `progress` prints a line about once a minute."""
    started = time.time()
    last = started
    while True:
        done, total = ok()
        if done >= total:
            return
        now = time.time()
        if progress and now - last >= 60:
            last = now
            progress(done, total, now - started)
        if now - started > timeout:
            raise RuntimeError(f"{what}: {done}/{total} after {timeout}s")
        time.sleep(every)


def poll_every(n):
    """Seconds between two LISTs of all n apps while waiting for them (a LIST
    of 10,000 is work for the apiserver and this script too)."""
    return max(10, n // 250)


def proc(pid):
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return rss / 1024.0, cpu


def by_verb(text, metric):
    """A counter family with a `verb` label, summed by verb, WATCH left out
    (a watch is one long-running request, not work per reconcile)."""
    out = {}
    for line in text.splitlines():
        if not line.startswith(metric + "{"):
            continue
        labels, value = line.rsplit(" ", 1)
        verb = labels.split('verb="', 1)[1].split('"', 1)[0]
        if verb.upper() != "WATCH":
            out[verb] = out.get(verb, 0) + float(value)
    return out


def apiserver_requests():
    """Requests the apiserver served (every client: the controller, the
    Deployment and ReplicaSet controllers, the scheduler, kwok, this script)."""
    return by_verb(kubectl("get", "--raw", "/metrics"), "apiserver_request_total")


class Controller:
    """teal's own counters: reconciles and the requests it sent."""

    def __init__(self, url):
        self.url = url

    def sample(self):
        text = urllib.request.urlopen(self.url, timeout=10).read().decode()
        rec = next((float(l.split()[1]) for l in text.splitlines()
                    if l.startswith("teal_controller_reconciles_total ")), 0.0)
        return rec, by_verb(text, "teal_controller_api_requests_total"), apiserver_requests()


def per_reconcile(a, b):
    """Requests per reconcile between two Controller.sample()s: the
    controller's, the apiserver's, and the controller's by verb."""
    rec = max(1.0, b[0] - a[0])
    ctl = {k: v - a[1].get(k, 0) for k, v in b[1].items() if v - a[1].get(k, 0) > 0}
    api = sum(b[2].values()) - sum(a[2].values())
    return {"reconciles": int(b[0] - a[0]), "controller": round(sum(ctl.values()) / rec, 2),
            "apiserver": round(api / rec, 2), "controller_by_verb": {k: int(v) for k, v in sorted(ctl.items())},
            "controller_requests": int(sum(ctl.values())), "apiserver_requests": int(api)}


class Watch:
    """A kubectl watch printing one line per event, stamped on arrival."""

    def __init__(self, kind, template, selector="teal.dev/bluegreen"):
        self.events = []
        self.p = subprocess.Popen(
            ["kubectl", "get", kind, "-n", NS, "-l", selector, "-w", "-o", f"jsonpath={template}\n"],
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


_images = iter(range(2, 1 << 30))


def next_image():
    """The image of the next release: a new one each time, so that a later
    step's sample releases again the apps an earlier step released."""
    return f"app:{next(_images)}"


def change_images(names, ctl):
    """A release's change, once its watches are started: the controller's
    counters, then each Deployment of `names` set to a new image. Returns
    the counters, when each change was sent and the image."""
    time.sleep(3)  # the watches listed what exists
    s0 = ctl.sample()
    t0 = {}
    image = next_image()
    for n in names:
        t0[n] = time.time()
        kubectl("set", "image", "-n", NS, f"deploy/{n}", f"app={image}")
    return s0, t0, image


def release(names, ctl):
    # Only the sample's objects: a watch of every app's lists 20,000
    # Deployments at 10,000 (and reported no ready event for the sample there).
    sample = f"teal.dev/bluegreen in ({','.join(names)})"
    deps = Watch("deploy", "{.metadata.name} {.metadata.annotations.teal\\.dev/revision} {.spec.replicas} {.status.readyReplicas}",
                 selector=sample)
    svcs = Watch("svc", "{.metadata.name} {.spec.selector.teal\\.dev/color}", selector=sample)
    # A color is ready for teal as soon as its ReplicaSet of the revision is
    # available at full size (and the pods agree): under load that comes
    # well before the Deployment's own status says so.
    rss = Watch("rs", "{.metadata.name} {.metadata.labels.teal\\.dev/revision} {.spec.replicas} {.status.availableReplicas}",
                selector=sample)
    before = bluegreens()
    s0, t0, _ = change_images(names, ctl)
    def released():
        st = bluegreens()
        return sum(1 for n in names if st[n].get("activeRevision") not in (None, before[n].get("activeRevision"))
                   and st[n].get("phase") == "Healthy"), len(names)
    wait_until("the sample released", released, 600, 3)
    s1 = ctl.sample()
    time.sleep(1)
    for w in (deps, svcs, rss):
        w.stop()
    after = bluegreens()
    written, cutover, change_to_cutover = [], [], []
    for n in names:
        new_rev = after[n]["activeRevision"]
        color = after[n]["activeColor"]
        dep = f"{n}-{color}"
        ev = [(t, f) for t, f in deps.events if f and f[0] == dep and len(f) > 1 and f[1] == new_rev and t >= t0[n]]
        if not ev:
            continue
        written.append(ev[0][0] - t0[n])
        ready = [t for t, f in ev if len(f) >= 4 and f[3] == f[2] and f[2] != "0"]
        ready += [t for t, f in rss.events if len(f) >= 4 and f[0].startswith(f"{dep}-") and f[1] == new_rev
                  and f[3] == f[2] and f[2] != "0" and t >= t0[n]]
        ready.sort()
        switched = [t for t, f in svcs.events if f and f[0] == n and len(f) > 1 and f[1] == color and t >= t0[n]]
        if ready and switched:
            cutover.append(max(0.0, switched[0] - ready[0]))
        if switched:
            change_to_cutover.append(switched[0] - t0[n])
    return written, cutover, change_to_cutover, per_reconcile(s0, s1)


def ms(xs, p):
    """Percentile `p` of `xs` (seconds) in milliseconds; None when empty."""
    return round(pct(xs, p) * 1000) if xs else None


def in_phase(statuses, n, phases=("Healthy",)):
    """For wait_until: how many of the n apps statuses() lists are in one
    of `phases`."""
    def ok():
        return sum(1 for s in statuses().values() if s.get("phase") in phases), n
    return ok


def adopt_all(a, ctl, what, start, end, build, chunk, ok, summary=lambda p: p):
    """Creates apps `start` to `end` with `build` (`chunk` at a time), then
    waits until ok() counts all of them Healthy, printing a progress line
    about once a minute. Returns the seconds that took and the requests
    meanwhile (per_reconcile, through `summary`)."""
    started = time.time()
    s0 = ctl.sample()
    create(start, end, build, chunk)

    def progress(done, total, secs):
        rss, cpu = proc(a.controller_pid)
        print(json.dumps({"healthy": done, "of": total, "seconds": round(secs), "rss_mib": round(rss, 1),
                          "cpu_seconds": round(cpu, 1), "per_reconcile": summary(per_reconcile(s0, ctl.sample()))}),
              file=sys.stderr, flush=True)
    wait_until(what, ok, a.adopt_timeout, poll_every(end), progress)
    return time.time() - started, summary(per_reconcile(s0, ctl.sample()))


def idle_and_release(a, ctl, n, release):
    """What every scale bench measures once every app is Healthy: the idle
    minute (`a.settle` seconds later), then `release` of a sample of the `n`
    apps. Returns the release's "written" timings and the row's fields."""
    time.sleep(a.settle)
    rss, cpu = proc(a.controller_pid)
    i0 = ctl.sample()
    time.sleep(60)
    i1 = ctl.sample()
    rss2, cpu2 = proc(a.controller_pid)
    idle = per_reconcile(i0, i1)
    idle_cpu = (cpu2 - cpu) / 60 * 100
    step = max(1, n // a.sample)
    names = [f"app-{i:05d}" for i in range(0, n, step)][: a.sample]
    written, cutover, change_to_cutover, rel = release(names, ctl)
    _, cpu_total = proc(a.controller_pid)
    return written, {
        "idle_60s": idle,
        "rss_mib": round(max(rss, rss2), 1), "idle_cpu_percent": round(idle_cpu, 2),
        "idle_controller_requests_per_s": round(idle["controller_requests"] / 60, 2),
        "idle_apiserver_requests_per_s": round(idle["apiserver_requests"] / 60, 2),
        "cpu_seconds_total": round(cpu_total, 1),
        "released": len(names), "measured": len(written),
        "ready_to_cutover_p50_ms": ms(cutover, 50), "ready_to_cutover_p99_ms": ms(cutover, 99),
        "change_to_cutover_p50_ms": ms(change_to_cutover, 50),
        "change_to_cutover_p99_ms": ms(change_to_cutover, 99),
        "release": rel,
    }


def arguments():
    """The options of every scale bench's measurements (its script passes them)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--controller-pid", type=int, required=True)
    ap.add_argument("--metrics", required=True)
    ap.add_argument("--sample", type=int, default=50)
    ap.add_argument("--adopt-timeout", type=int, default=3600)
    ap.add_argument("--settle", type=int, default=10, help="seconds from all Healthy to the idle minute")
    return ap


def main():
    ap = arguments()
    ap.add_argument("--counts", default="1000")
    ap.add_argument("--router", choices=sorted(ROUTERS), default="service", help="spec.router.type")
    a = ap.parse_args()
    router = ROUTERS[a.router]
    ctl = Controller(a.metrics)
    kubectl("create", "namespace", NS)
    have = 0
    rows = []
    for n in [int(x) for x in a.counts.split()]:
        adopt_s, adopt = adopt_all(a, ctl, f"{n} BlueGreens adopted", have, n,
                                   lambda s, e: objects(s, e, router), 200, in_phase(bluegreens, n))
        waited = created_to_first_reconcile(have, n)
        have = n
        # Idle: every BlueGreen Healthy, nothing changes; reconciles now
        # come from the periodic resync only.
        written, measured = idle_and_release(a, ctl, n, release)
        row = {
            "bluegreens": n, "router": a.router, "adopt_seconds": round(adopt_s, 1), "adopt": adopt,
            "created_to_first_reconcile": waited,
            "change_to_idle_written_p50_ms": ms(written, 50),
            "change_to_idle_written_p99_ms": ms(written, 99),
            **measured,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("| BlueGreens | adopt all (s) | RSS (MiB) | idle CPU (%) | teal requests / reconcile (adopt; idle; release) "
          "| apiserver requests / reconcile, all clients (adopt; release) | change → idle written p50 / p99 (ms) "
          "| ready → cutover p50 / p99 (ms) | created → first reconcile p50 / p99 / longest (s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['bluegreens']} | {r['adopt_seconds']} | {r['rss_mib']} | {r['idle_cpu_percent']} | "
              f"{r['adopt']['controller']}; {r['idle_60s']['controller']} ({r['idle_60s']['reconciles']} reconciles); "
              f"{r['release']['controller']} | {r['adopt']['apiserver']}; {r['release']['apiserver']} | "
              f"{r['change_to_idle_written_p50_ms']} / {r['change_to_idle_written_p99_ms']} | "
              f"{r['ready_to_cutover_p50_ms']} / {r['ready_to_cutover_p99_ms']} | "
              + (" / ".join(str(w[k]) for k in ("p50_s", "p99_s", "max_s")) if (w := r["created_to_first_reconcile"]) else "")
              + " |")


if __name__ == "__main__":
    main()
