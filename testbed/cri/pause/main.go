// Command pause is the sandbox ("infra") container of netlet's runtime tests: it holds the pod's
// namespaces and exits on SIGTERM or SIGINT. Built locally (CGO_ENABLED=0, static) because no
// registry is reachable from the test machines.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGTERM, syscall.SIGINT)
	<-c
}
