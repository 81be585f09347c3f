//go:build !unix

package quicutil

import "net"

// Without a socket to look at, an upstream's close is noticed when its EOF
// is read.
type peeker struct{}

func newPeeker(net.Conn) *peeker { return nil }
func (*peeker) peerClosed() bool { return false }
func peerClosed(c net.Conn) bool { return false }
