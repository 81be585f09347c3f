package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"syscall"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/pico-edge/pico/quicutil"
)

// agentPortHint names the port agents dial, for hints.
const agentPortHint = "agents dial the edge's agent port (its --agent-addr, 8001 by default; over TCP the same port, or https://HOST:8443" + quicutil.AgentPath + " on its front door)"

// alertNoApplicationProtocol is the TLS alert a QUIC server sends when it
// speaks none of the ALPN protocols offered: an HTTP/3 server, say.
const alertNoApplicationProtocol = 120

// dialHint says what to do about an error of a connection attempt, or ""
// when there is nothing to add to the error itself.
func dialHint(err error) string {
	if h := certHint(err); h != "" {
		return h
	}
	var auto *autoError
	if errors.As(err, &auto) {
		// QUIC got no answer; what TCP got says more.
		if h := dialHint(auto.tcp); h != "" {
			return h
		}
	}
	var te *quic.TransportError
	var ue *quicutil.UpgradeError
	switch {
	case errors.As(err, &te) && te.Remote && te.ErrorCode == quic.TransportErrorCode(0x100+alertNoApplicationProtocol):
		return "the address speaks QUIC but is not a Pico agent port (an edge's HTTP/3 port 8443, or another QUIC server): " + agentPortHint
	case errors.As(err, &ue):
		return fmt.Sprintf("the address is an HTTP server that answered %d to the agent's upgrade: not a Pico edge's agent port (a front door, an admin port, a balancer that does not pass %s?); %s",
			ue.StatusCode, quicutil.AgentPath, agentPortHint)
	case errors.Is(err, syscall.ECONNREFUSED):
		return "nothing listens at the address (connection refused): check that pico-edge runs there; " + agentPortHint
	case noHandshake(err):
		return "nothing answered QUIC over UDP: check that pico-edge runs there, that UDP to it is allowed (where it is blocked, --transport tcp carries the link over TCP), and that " + agentPortHint
	}
	return ""
}

// noHandshake reports whether err is a QUIC attempt that heard nothing.
func noHandshake(err error) bool {
	var hs *quic.HandshakeTimeoutError
	var idle *quic.IdleTimeoutError
	return errors.As(err, &hs) || errors.As(err, &idle) || errors.Is(err, context.DeadlineExceeded)
}

// autoError is TransportAuto's failure when QUIC got no handshake and TCP
// failed too. It unwraps to the QUIC error only: what the TCP attempt met
// (an edge refusing the token over TCP, say) does not decide retries, as
// before; it serves the hint.
type autoError struct {
	quic, tcp error
}

func (e *autoError) Error() string { return fmt.Sprintf("%v (over TCP too: %v)", e.quic, e.tcp) }
func (e *autoError) Unwrap() error { return e.quic }

// udpRefused reports whether the UDP port at addr is closed: a datagram
// sent on a connected socket draws an ICMP port unreachable, which the
// next read returns as ECONNREFUSED. A port that drops datagrams (a
// firewall) or a server that ignores a one-byte datagram (QUIC does)
// answers nothing; that is not a refusal.
func udpRefused(addr *net.UDPAddr) bool {
	c, err := net.DialUDP("udp", nil, addr)
	if err != nil {
		return false
	}
	defer c.Close()
	if _, err := c.Write([]byte{0}); err != nil {
		return errors.Is(err, syscall.ECONNREFUSED)
	}
	c.SetReadDeadline(time.Now().Add(udpProbeWait))
	var b [1]byte
	_, err = c.Read(b[:])
	return errors.Is(err, syscall.ECONNREFUSED)
}

// udpProbeWait is how long udpRefused waits for the ICMP answer.
const udpProbeWait = 300 * time.Millisecond

// failLog decides when a slot logs that it cannot connect: the first
// failure and each new error at once, then the same error again after 1 s,
// 2 s, 4 s and so on up to a minute, with the count of failed rounds, so
// that an agent that cannot connect never goes silent and never floods.
type failLog struct {
	rounds int       // failed rounds since the last link
	first  time.Time // when the first of them failed
	last   string    // the error last logged
	next   time.Time // when the same error is logged again
	every  time.Duration
}

const (
	failLogFirst = time.Second
	failLogMax   = time.Minute
)

// failed records a failed round ending with msg at now, and reports
// whether to log it.
func (f *failLog) failed(msg string, now time.Time) bool {
	f.rounds++
	if f.rounds == 1 {
		f.first = now
	}
	if msg == f.last && now.Before(f.next) {
		return false
	}
	if msg != f.last {
		f.every = failLogFirst
	}
	f.last = msg
	f.next = now.Add(f.every)
	f.every = min(2*f.every, failLogMax)
	return true
}

// reset forgets the failures: the slot has a link.
func (f *failLog) reset() { *f = failLog{} }
