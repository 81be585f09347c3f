package quicutil

import (
	"fmt"
	"net"
	"runtime"
	"time"

	"github.com/quic-go/quic-go"
)

// Link timing of agent connections (docs/limits.md: fail fast, like cloudflared).
const (
	AgentKeepAlive    = 1 * time.Second
	AgentIdleTimeout  = 5 * time.Second
	HandshakeTimeout  = 5 * time.Second
	MaxStreamsToAgent = 1000 // streams the edge may have open to one agent connection
	MaxStreamsToEdge  = 1000 // streams an agent may have open to the edge (control + Dial)
)

// Flow-control windows of agent and relay links. A stream whose reader
// stalls (a client that stops reading a download) pins, of its link's
// connection window, what it was sent and has not read: up to its stream
// window. quic-go grants the sender more connection credit only once the
// application has read a quarter of the connection window since the last
// grant (WindowUpdateThreshold), so once stalled streams pin more than
// three quarters of it the other streams of the link stop too (QUIC.md
// 1.1 states the rule without that quarter). The connection window is
// therefore, from the first byte, 4/3 of StalledStreams+2 stream windows:
// StalledStreams stalled streams leave two windows for the others.
//
// The stream window does not auto-tune (initial = max): the connection
// window is sized for every stream at its largest window anyway, and a
// fixed window makes that worst case the only case, which the tests then
// exercise. Credit costs no memory until data arrives, but the connection
// window is also the most a link can make its receiver buffer, so the
// stream window is small: one stream moves at most streamWindow per round
// trip (168 Mbit/s at 100 ms, 670 Mbit/s at 25 ms); a link carries many
// streams.
const (
	StalledStreams = 64
	streamWindow   = 2 << 20
	connWindow     = (StalledStreams + 2) * streamWindow * 4 / 3 // 176 MiB
)

// LinkConfig is the quic.Config shared by both ends of an agent link.
// maxIncoming bounds the streams the peer may open.
func LinkConfig(maxIncoming int64) *quic.Config {
	return &quic.Config{
		HandshakeIdleTimeout:           HandshakeTimeout,
		MaxIdleTimeout:                 AgentIdleTimeout,
		KeepAlivePeriod:                AgentKeepAlive,
		MaxIncomingStreams:             maxIncoming,
		MaxIncomingUniStreams:          -1,
		InitialStreamReceiveWindow:     streamWindow,
		MaxStreamReceiveWindow:         streamWindow,
		InitialConnectionReceiveWindow: connWindow,
		MaxConnectionReceiveWindow:     connWindow,
		Allow0RTT:                      false,
	}
}

// Timing of node-to-node relay connections: a peer that stops answering is
// noticed within about PeerDeadAfter, so relayed requests move to another
// owner quickly (docs/limits.md: relay-open timeout 1 s). A handshake gets the
// QUIC handshake timeout of any other connection: nodes dial each other
// when they meet, not while a request waits, and a loaded host may take
// more than a second to complete one.
const (
	PeerKeepAlive        = 300 * time.Millisecond
	PeerDeadAfter        = 1500 * time.Millisecond
	PeerHandshakeTimeout = HandshakeTimeout
)

// PeerConfig is the quic.Config a node dials another node with. The
// dialler opens every stream; the accepting node opens none.
func PeerConfig() *quic.Config {
	c := LinkConfig(1)
	c.KeepAlivePeriod = PeerKeepAlive
	c.HandshakeIdleTimeout = PeerHandshakeTimeout
	return c
}

// EdgeConfig is the quic.Config of the edge's agent listener.
func EdgeConfig() *quic.Config { return LinkConfig(MaxStreamsToEdge) }

// AgentConfig is the quic.Config an agent dials with.
func AgentConfig() *quic.Config { return LinkConfig(MaxStreamsToAgent) }

// WantUDPBuffer is the socket buffer size quic-go asks for.
const WantUDPBuffer = 7 << 20

// UDPBufferAdvice reports, for a socket that quic-go has already tuned, a
// warning with the commands to run when its buffers are smaller than
// quic-go wants, or "" when they are large enough or their sizes cannot be
// read (sockBuffers: SO_RCVBUF and SO_SNDBUF on Unix and Windows). Linux
// reports twice the size it granted.
func UDPBufferAdvice(c *net.UDPConn) string {
	rc, err := c.SyscallConn()
	if err != nil {
		return ""
	}
	rcv, snd, err := sockBuffers(rc)
	if err != nil || (rcv >= WantUDPBuffer && snd >= WantUDPBuffer) {
		return ""
	}
	return fmt.Sprintf("UDP socket buffers are small (receive %d KiB, send %d KiB; QUIC wants %d KiB): "+
		"throughput will suffer under load; %s",
		rcv>>10, snd>>10, WantUDPBuffer>>10, raiseBuffers())
}

// raiseBuffers says how to let sockets have larger buffers on this system.
func raiseBuffers() string {
	switch runtime.GOOS {
	case "linux", "android":
		return "raise them with 'sysctl -w net.core.rmem_max=7500000 net.core.wmem_max=7500000'"
	case "darwin", "ios", "freebsd", "netbsd", "openbsd", "dragonfly":
		return "raise the limit with 'sysctl -w kern.ipc.maxsockbuf=8441037'"
	}
	return "raise the system's limit on UDP socket buffers"
}
