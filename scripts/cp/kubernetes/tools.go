//go:build tools

// Package tools pins the Kubernetes commands built by scripts/control-plane:
// the control plane, kubectl, and the real node's kubelet and kube-proxy. The wrapper module exists only because
// k8s.io/kubernetes refers to its staging modules through replace directives,
// which `go install pkg@version` refuses; this module's go.mod repeats them
// as replacements with the published v0.x.y staging versions.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
