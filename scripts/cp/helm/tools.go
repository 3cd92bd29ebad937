//go:build tools

// Package tools pins helm, which the install tests use to lint and render the chart
// in deploy/helm/teal.
package tools

import (
	_ "helm.sh/helm/v3/cmd/helm"
)
