package quicutil_test

import (
	"testing"

	"github.com/pico-edge/pico/quicutil"
)

func BenchmarkPeerClosed(b *testing.B) {
	_, server := tcpPair(b)
	look := quicutil.NewPeeker(server)
	b.ReportAllocs()
	for b.Loop() {
		if look() {
			b.Fatal("closed")
		}
	}
}
