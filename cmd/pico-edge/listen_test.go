package main

import (
	"net"
	"strconv"
	"strings"
	"testing"
)

// Port 0 gives TCP and UDP the same port; a fixed port whose UDP twin is
// taken fails, naming HTTP/3.
func TestListenTCPAndUDP(t *testing.T) {
	for range 20 {
		tcp, udp, err := listenTCPAndUDP("127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		tp, up := tcp.Addr().(*net.TCPAddr).Port, udp.LocalAddr().(*net.UDPAddr).Port
		tcp.Close()
		udp.Close()
		if tp != up {
			t.Fatalf("TCP port %d, UDP port %d", tp, up)
		}
	}
	taken, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	port := strconv.Itoa(taken.LocalAddr().(*net.UDPAddr).Port)
	if _, _, err := listenTCPAndUDP("127.0.0.1:" + port); err == nil || !strings.Contains(err.Error(), "HTTP/3 on UDP") {
		t.Fatalf("UDP port %s taken: err = %v, want an HTTP/3 on UDP error", port, err)
	}
}
