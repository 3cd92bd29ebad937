// Command coredns is CoreDNS with only the plugins the real node's cluster DNS uses
// (scripts/control-plane, docs/dev-cluster.md): it answers for Services and pods in
// cluster.local from the apiserver and nothing else. There is no `forward`: names outside
// the cluster are not resolved, so no query ever leaves this machine.
package main

import (
	"log"

	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
)

func main() {
	// Execution order, as in CoreDNS's plugin.cfg.
	if err := dnsserver.SetDirectives([]string{
		"bind", "ready", "health", "errors", "log", "cache", "kubernetes",
	}); err != nil {
		log.Fatal(err)
	}
	coremain.Run()
}
