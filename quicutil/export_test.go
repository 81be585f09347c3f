package quicutil

import "net"

// PeerClosed exports peerClosed for tests.
var PeerClosed = peerClosed

// NewPeeker returns a peeker's peerClosed for c.
func NewPeeker(c net.Conn) func() bool { return newPeeker(c).peerClosed }
