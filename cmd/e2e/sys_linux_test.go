package e2e

import (
	"os/exec"
	"strconv"
	"syscall"
	"testing"
)

// dieWithTest makes the kernel SIGKILL cmd when the test process dies
// without running its cleanups (a -timeout panic, a kill): no edge or agent
// outlives the test binary.
func dieWithTest(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}

// closedPort returns a port on 127.0.0.1 that refuses connections for the
// rest of the test: a TCP socket is bound to it but does not listen, so no
// other listener (of this test or another process) can take the port.
func closedPort(t testing.TB) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("socket: %v", err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatalf("bind: %v", err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatalf("getsockname: %v", err)
	}
	return strconv.Itoa(sa.(*syscall.SockaddrInet4).Port)
}
