//go:build !linux

package e2e

import (
	"os/exec"
	"testing"
)

// dieWithTest is a no-op where the kernel offers no parent-death signal;
// cleanups still kill every process the tests start.
func dieWithTest(*exec.Cmd) {}

// closedPort returns a port on 127.0.0.1 that nothing listens on now (it
// may be taken later: only the Linux version reserves it).
func closedPort(t testing.TB) string {
	t.Helper()
	return freePort(t)
}
