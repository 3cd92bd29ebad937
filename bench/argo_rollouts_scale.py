"""Measurements for bench/argo-rollouts-scale (run through that script): the
same figures as bench/controller_scale.py, for the Argo Rollouts controller
and blue-green Rollouts. The helpers are controller_scale's."""

import json
import time
import urllib.request

from controller_scale import (NS, Watch, adopt_all, apiserver_requests, arguments, by_verb, deployment,
                              idle_and_release, in_phase, kubectl, ms, next_image, per_reconcile,
                              wait_until)


def objects(start, end):
    """A Rollout with the pod template of controller_scale's Deployments (one
    replica, image app:1), blue-green between two Services."""
    docs = []
    for i in range(start, end):
        name = f"app-{i:05d}"
        for role in ("active", "preview"):
            docs.append({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": f"{name}-{role}", "namespace": NS, "labels": {"app": name}},
                "spec": {"selector": {"app": name},
                         "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
            })
        spec = deployment(name)["spec"]
        # scaleDownDelaySeconds as the BlueGreens' scaleDownDelay (5s).
        spec["strategy"] = {"blueGreen": {"activeService": f"{name}-active", "previewService": f"{name}-preview",
                                          "autoPromotionEnabled": True, "scaleDownDelaySeconds": 5}}
        docs.append({"apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout",
                     "metadata": {"name": name, "namespace": NS}, "spec": spec})
    return docs


def rollouts():
    out = kubectl("get", "rollouts.argoproj.io", "-n", NS, "-o", "json")
    return {r["metadata"]["name"]: r.get("status", {}) for r in json.loads(out)["items"]}


class Controller:
    """Argo Rollouts' own counters: Rollout reconciles (the count of the
    rollout_reconcile histogram) and the requests its clients sent
    (controller_clientset_k8s_request_total)."""

    def __init__(self, url):
        self.url = url

    def sample(self):
        text = urllib.request.urlopen(self.url, timeout=10).read().decode()
        rec = sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines() if l.startswith("rollout_reconcile_count"))
        return rec, by_verb(text, "controller_clientset_k8s_request_total"), apiserver_requests()


def release(names, ctl):
    """Changes the image of each Rollout; per Rollout: change -> new
    ReplicaSet created, new ReplicaSet ready -> active Service switched to it,
    and change -> active Service switched (the cutover)."""
    rss = Watch("rs", "{.metadata.name} {.metadata.labels.rollouts-pod-template-hash} {.spec.replicas} "
                "{.status.readyReplicas}", selector="rollouts-pod-template-hash")
    svcs = Watch("svc", "{.metadata.name} {.spec.selector.rollouts-pod-template-hash}", selector="app")
    time.sleep(3)  # both watches listed what exists
    before = rollouts()
    s0 = ctl.sample()
    t0 = {}
    patch = json.dumps([{"op": "replace", "path": "/spec/template/spec/containers/0/image", "value": next_image()}])
    for n in names:
        t0[n] = time.time()
        kubectl("patch", "rollouts.argoproj.io", "-n", NS, n, "--type", "json", "-p", patch)

    def released():
        st = rollouts()
        return sum(1 for n in names if st[n].get("stableRS") not in (None, before[n].get("stableRS"))
                   and st[n].get("phase") == "Healthy"), len(names)
    wait_until("the sample released", released, 600, 3)
    s1 = ctl.sample()
    time.sleep(1)
    rss.stop()
    svcs.stop()
    after = rollouts()
    written, cutover, change_to_cutover = [], [], []
    for n in names:
        new_hash = after[n]["stableRS"]
        rs = f"{n}-{new_hash}"
        ev = [(t, f) for t, f in rss.events if f and f[0] == rs and t >= t0[n]]
        if not ev:
            continue
        written.append(ev[0][0] - t0[n])
        ready = [t for t, f in ev if len(f) >= 4 and f[3] == f[2] and f[2] != "0"]
        switched = [t for t, f in svcs.events if f and f[0] == f"{n}-active" and len(f) > 1 and f[1] == new_hash
                    and t >= t0[n]]
        if ready and switched:
            cutover.append(max(0.0, switched[0] - ready[0]))
        if switched:
            change_to_cutover.append(switched[0] - t0[n])
    return written, cutover, change_to_cutover, per_reconcile(s0, s1)


def main():
    ap = arguments()
    ap.add_argument("--count", type=int, default=300)
    a = ap.parse_args()
    ctl = Controller(a.metrics)
    kubectl("create", "namespace", NS)
    n = a.count
    adopt_s, adopt = adopt_all(a, ctl, f"{n} Rollouts Healthy", 0, n, objects, 100, in_phase(rollouts, n))
    # Idle, as controller_scale: every Rollout Healthy, nothing changes.
    written, measured = idle_and_release(a, ctl, n, release)
    row = {
        "rollouts": n, "healthy_seconds": round(adopt_s, 1), "adopt": adopt,
        "change_to_new_rs_p50_ms": ms(written, 50), "change_to_new_rs_p99_ms": ms(written, 99),
        **measured,
    }
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
