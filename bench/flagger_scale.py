"""Measurements for bench/flagger-scale (run through that script): the same
figures as bench/controller_scale.py where Flagger has them, for the Flagger
controller and blue/green Canaries with the kubernetes provider. The helpers
are controller_scale's."""

import json
import time
import urllib.request

from controller_scale import (NS, Watch, adopt_all, apiserver_requests, arguments, change_images, deployment,
                              idle_and_release, in_phase, kubectl, ms, per_reconcile, wait_until)

HEALTHY = ("Initialized", "Succeeded")


def builder(interval):
    def objects(start, end):
        """A Deployment with controller_scale's pod template (one replica,
        image app:1; labelled app=<name> so the release's watch sees it) and
        its Canary: blue/green (`iterations`) with the kubernetes provider,
        no metrics, no webhooks."""
        docs = []
        for i in range(start, end):
            name = f"app-{i:05d}"
            dep = deployment(name)
            dep["metadata"]["labels"] = {"app": name}
            docs.append(dep)
            docs.append({
                "apiVersion": "flagger.app/v1beta1", "kind": "Canary",
                "metadata": {"name": name, "namespace": NS, "labels": {"app": name}},
                "spec": {
                    "provider": "kubernetes",
                    "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                    "progressDeadlineSeconds": 600,
                    "service": {"port": 80, "targetPort": "http"},
                    # One iteration, one failed check to roll back, no
                    # metrics: the least analysis a blue/green accepts.
                    "analysis": {"interval": interval, "iterations": 1, "threshold": 1},
                },
            })
        return docs
    return objects


def canaries():
    out = kubectl("get", "canaries.flagger.app", "-n", NS, "-o", "json")
    return {c["metadata"]["name"]: c.get("status", {}) for c in json.loads(out)["items"]}


class Controller:
    """Flagger counts neither its reconciles nor the requests it sends (its
    /metrics has the canary analysis gauges and the Go runtime's): only the
    apiserver's total over all clients. The endpoint is read all the same,
    so the controller is known to be up at each sample."""

    def __init__(self, url):
        self.url = url

    def sample(self):
        urllib.request.urlopen(self.url, timeout=10).read()
        return 0.0, {}, apiserver_requests()


def totals(p):
    """per_reconcile's figures that stand without a reconcile count."""
    return {"apiserver_requests": p["apiserver_requests"]}


def ready(f):
    """A `deps` watch line: every replica updated and ready, none left over
    from the previous template, the latest generation observed."""
    v = [x[1:] for x in f[2:8]]
    return len(f) >= 8 and v[0] not in ("", "0") and v[0] == v[4] == v[5] == v[3] and v[1] == v[2]


def release(names, ctl, extra):
    """Changes the image of each Deployment; per app: change -> canary (the
    Deployment itself) ready with it, change -> primary written with it (the
    promotion), canary ready -> primary ready with it and change -> primary
    ready (the cutover: the apex Service selects
    the primary's pods), change -> Canary Succeeded."""
    deps = Watch("deploy", "{.metadata.name} {.spec.template.spec.containers[0].image} s{.spec.replicas} "
                 "g{.metadata.generation} o{.status.observedGeneration} t{.status.replicas} "
                 "u{.status.updatedReplicas} r{.status.readyReplicas}", selector="app")
    phases = Watch("canaries.flagger.app", "{.metadata.name} {.status.phase}", selector="app")
    s0, t0, image = change_images(names, ctl)

    def released():
        st = canaries()
        return sum(1 for n in names if st[n].get("phase") == "Succeeded"), len(names)
    wait_until("the sample released", released, 900, 3)
    s1 = ctl.sample()
    time.sleep(1)
    deps.stop()
    phases.stop()
    written, cutover, change_to_cutover = [], [], []
    canary_ready, succeeded = [], []
    for n in names:
        def events(name):
            return [(t, f) for t, f in deps.events if len(f) > 1 and f[0] == name and f[1] == image and t >= t0[n]]
        can = [t for t, f in events(n) if ready(f)]
        prim = events(f"{n}-primary")
        prim_ready = [t for t, f in prim if ready(f)]
        done = [t for t, f in phases.events if f == [n, "Succeeded"] and t >= t0[n]]
        if can:
            canary_ready.append(can[0] - t0[n])
        if prim:
            written.append(prim[0][0] - t0[n])
        if can and prim_ready:
            cutover.append(max(0.0, prim_ready[0] - can[0]))
        if prim_ready:
            change_to_cutover.append(prim_ready[0] - t0[n])
        if done:
            succeeded.append(done[0] - t0[n])
    extra["canary_ready"] = canary_ready
    extra["succeeded"] = succeeded
    return written, cutover, change_to_cutover, per_reconcile(s0, s1)


def main():
    ap = arguments()
    ap.add_argument("--count", type=int, default=300)
    ap.add_argument("--interval", default="10s", help="the Canaries' analysis interval")
    a = ap.parse_args()
    ctl = Controller(a.metrics)
    kubectl("create", "namespace", NS)
    n = a.count
    adopt_s, adopt = adopt_all(a, ctl, f"{n} Canaries Initialized", 0, n, builder(a.interval), 100,
                               in_phase(canaries, n, HEALTHY), totals)
    # Idle, as controller_scale: every Canary Initialized, nothing changes;
    # Flagger still runs each Canary's analysis tick every interval.
    extra = {}
    written, measured = idle_and_release(a, ctl, n, lambda names, c: release(names, c, extra))
    measured["idle_60s"] = totals(measured["idle_60s"])
    measured["release"] = totals(measured["release"])
    measured["idle_controller_requests_per_s"] = None  # not counted by Flagger
    row = {
        "canaries": n, "interval": a.interval, "healthy_seconds": round(adopt_s, 1), "adopt": adopt,
        "change_to_canary_ready_p50_ms": ms(extra["canary_ready"], 50),
        "change_to_canary_ready_p99_ms": ms(extra["canary_ready"], 99),
        "change_to_promotion_p50_ms": ms(written, 50), "change_to_promotion_p99_ms": ms(written, 99),
        **measured,
        "change_to_succeeded_p50_ms": ms(extra["succeeded"], 50),
        "change_to_succeeded_p99_ms": ms(extra["succeeded"], 99),
    }
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
