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
