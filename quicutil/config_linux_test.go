package quicutil_test

import (
	"fmt"
	"net"
	"strings"
	"syscall"
	"testing"

	"github.com/pico-edge/pico/quicutil"
)

// sockBufs returns the buffer sizes the kernel reports for c.
func sockBufs(t testing.TB, c *net.UDPConn) (rcv, snd int) {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var rerr, serr error
	if err := rc.Control(func(fd uintptr) {
		rcv, rerr = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF)
		snd, serr = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_SNDBUF)
	}); err != nil {
		t.Fatal(err)
	}
	if rerr != nil || serr != nil {
		t.Fatalf("getsockopt: %v, %v", rerr, serr)
	}
	return rcv, snd
}

// TestUDPBufferAdvice checks the advice against the sizes the kernel
// reports, whatever this machine's sysctls are.
func TestUDPBufferAdvice(t *testing.T) {
	tests := map[string]func(c *net.UDPConn){
		"small": func(c *net.UDPConn) {
			c.SetReadBuffer(4 << 10)
			c.SetWriteBuffer(4 << 10)
		},
		"small receive only": func(c *net.UDPConn) {
			c.SetReadBuffer(4 << 10)
			setLarge(c, syscall.SO_SNDBUF, syscall.SO_SNDBUFFORCE)
		},
		"small send only": func(c *net.UDPConn) {
			setLarge(c, syscall.SO_RCVBUF, syscall.SO_RCVBUFFORCE)
			c.SetWriteBuffer(4 << 10)
		},
		"as large as allowed": func(c *net.UDPConn) {
			// What quic-go does: the forced size when privileged, else
			// as much as net.core.[rw]mem_max allows.
			setLarge(c, syscall.SO_RCVBUF, syscall.SO_RCVBUFFORCE)
			setLarge(c, syscall.SO_SNDBUF, syscall.SO_SNDBUFFORCE)
		},
		"untouched": func(*net.UDPConn) {},
	}
	sawEmpty := false
	for name, setup := range tests {
		t.Run(name, func(t *testing.T) {
			c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			setup(c)
			rcv, snd := sockBufs(t, c)
			advice := quicutil.UDPBufferAdvice(c)
			large := rcv >= quicutil.WantUDPBuffer && snd >= quicutil.WantUDPBuffer
			t.Logf("SO_RCVBUF %d, SO_SNDBUF %d: %q", rcv, snd, advice)
			switch {
			case large && advice != "":
				t.Fatalf("buffers of %d and %d bytes (want %d): got advice %q, want none", rcv, snd, quicutil.WantUDPBuffer, advice)
			case large:
				sawEmpty = true
			case !strings.Contains(advice, "sysctl"):
				t.Fatalf("buffers of %d and %d bytes (want %d): got advice %q, want it to mention sysctl", rcv, snd, quicutil.WantUDPBuffer, advice)
			case !strings.Contains(advice, fmt.Sprintf("receive %d KiB, send %d KiB", rcv>>10, snd>>10)):
				t.Fatalf("advice %q does not report the sizes %d and %d KiB", advice, rcv>>10, snd>>10)
			}
		})
	}
	if !sawEmpty {
		t.Log("this machine cannot give a socket the buffers QUIC wants (no CAP_NET_ADMIN and small net.core.[rw]mem_max); the no-advice case was checked only by consistency")
	}
}

// setLarge asks for WantUDPBuffer with the privileged option, falling back
// to the plain one (capped by sysctl).
func setLarge(c *net.UDPConn, opt, force int) {
	rc, err := c.SyscallConn()
	if err != nil {
		return
	}
	rc.Control(func(fd uintptr) {
		if syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, force, quicutil.WantUDPBuffer) != nil {
			syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, opt, quicutil.WantUDPBuffer)
		}
	})
}
