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
	for range 20 {
		taken, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		port := strconv.Itoa(taken.LocalAddr().(*net.UDPAddr).Port)
		tcp, udp, err := listenTCPAndUDP("127.0.0.1:" + port)
		taken.Close()
		if err == nil {
			tcp.Close()
			udp.Close()
			t.Fatalf("UDP port %s taken: listened anyway", port)
		}
		if strings.HasPrefix(err.Error(), "listen tcp") {
			continue // another process holds the TCP port of that number: try another
		}
		if !strings.Contains(err.Error(), "HTTP/3 on UDP") {
			t.Fatalf("UDP port %s taken: err = %v, want an HTTP/3 on UDP error", port, err)
		}
		return
	}
	t.Fatal("no UDP port whose TCP twin was free in 20 tries")
}
