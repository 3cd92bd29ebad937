// Command etcd is the etcd server of go.etcd.io/etcd/server/v3, built from
// the Go module so that a current release is available where the system
// package is too old for the apiserver.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
