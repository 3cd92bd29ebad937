# Pinned versions of the control-plane components built by scripts/control-plane.
# Sourced by the scripts; the cache key of each component is "<name>-<version>".
# Changing a version here requires updating the matching wrapper module in scripts/cp/
# (docs/dev-cluster.md, "Building"); scripts/control-plane build checks that they agree.
KUBERNETES_VERSION=v1.37.2
# The k8s.io/* staging modules of a Kubernetes release are tagged v0.<minor>.<patch>.
KUBERNETES_STAGING_VERSION=v0.37.2
ETCD_VERSION=v3.6.16
KWOK_VERSION=v0.8.0
HELM_VERSION=v3.22.0
# The real node's cluster DNS (scripts/cp/coredns); its kubelet and kube-proxy come from
# KUBERNETES_VERSION, its pause program from scripts/cp/pause (cache key: a hash of its source).
COREDNS_VERSION=v1.15.0
# Upstream CRDs installed by the router tests (scripts/upstream-crds), read from the
# published Go modules: Istio's networking CRDs ship in istio.io/api under kubernetes/,
# Gateway API's standard channel in sigs.k8s.io/gateway-api under config/crd/standard/.
ISTIO_API_VERSION=v1.31.4
GATEWAY_API_VERSION=v1.6.3
