package main

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pico-edge/pico/edge/edgetest"
)

// When 127.0.0.1:4040 is taken, the admin server takes another loopback
// port; another address that is taken is an error.
func TestListenAdminTaken(t *testing.T) {
	if ln, err := net.Listen("tcp", defaultAdminAddr); err == nil {
		defer ln.Close() // ours; else someone else's: taken either way
	}
	ln, err := (&Globals{AdminAddr: defaultAdminAddr}).listenAdmin()
	if err != nil {
		t.Fatalf("listenAdmin with %s taken: %v", defaultAdminAddr, err)
	}
	defer ln.Close()
	if got := ln.Addr().String(); got == defaultAdminAddr || !strings.HasPrefix(got, "127.0.0.1:") {
		t.Fatalf("listening on %s, want another loopback port", got)
	}
	if _, err := (&Globals{AdminAddr: ln.Addr().String()}).listenAdmin(); err == nil {
		t.Fatalf("listenAdmin on the taken %s succeeded", ln.Addr())
	}
}

func TestInspectFlags(t *testing.T) {
	for in, want := range map[string]int64{"65536": 65536, "64KiB": 64 << 10, "64MiB": 64 << 20, "1GiB": 1 << 30, "0": 0, "12B": 12} {
		var b byteSize
		if err := b.UnmarshalText([]byte(in)); err != nil || int64(b) != want {
			t.Errorf("%q: %d, %v; want %d", in, b, err, want)
		}
	}
	for _, in := range []string{"", "-1", "64MB", "x", "99999999999GiB"} {
		var b byteSize
		if err := b.UnmarshalText([]byte(in)); err == nil {
			t.Errorf("%q parsed as %d, want an error", in, b)
		}
	}
	short := filepath.Join(t.TempDir(), "token")
	os.WriteFile(short, []byte("short\n"), 0o600)
	f := &InspectFlags{Inspect: true, InspectExchanges: 500, InspectMemory: 64 << 20, InspectBody: 64 << 10, InspectTokenFile: short}
	if _, err := f.newInspector(edgetest.Logger(t)); err == nil || !strings.Contains(err.Error(), "the token has 5 characters") {
		t.Errorf("a short token: %v", err)
	}
	f.InspectTokenFile, f.InspectBody = "", 32<<20
	if _, err := f.newInspector(edgetest.Logger(t)); err == nil || !strings.Contains(err.Error(), "over a quarter") {
		t.Errorf("bodies over a quarter of the memory: %v", err)
	}
	f.Inspect = false
	if ir, err := f.newInspector(edgetest.Logger(t)); err != nil || ir.in != nil {
		t.Errorf("--no-inspect: %+v, %v", ir, err)
	}
}
