package quicutil_test

import (
	"testing"

	"github.com/pico-edge/pico/quicutil"
)

func TestLinkConfig(t *testing.T) {
	c := quicutil.LinkConfig(123)
	if c.MaxIncomingStreams != 123 {
		t.Errorf("MaxIncomingStreams = %d, want 123", c.MaxIncomingStreams)
	}
	if c.MaxIncomingUniStreams != -1 {
		t.Errorf("MaxIncomingUniStreams = %d, want -1 (none)", c.MaxIncomingUniStreams)
	}
	if c.Allow0RTT {
		t.Error("Allow0RTT = true, want false: registration is not idempotent")
	}
	if c.KeepAlivePeriod <= 0 || c.KeepAlivePeriod >= c.MaxIdleTimeout {
		t.Errorf("KeepAlivePeriod = %v with MaxIdleTimeout %v, want 0 < keep-alive < idle timeout", c.KeepAlivePeriod, c.MaxIdleTimeout)
	}
	// Stalled streams at their largest window, plus two windows for the
	// others, must fit in three quarters of the initial connection window:
	// quic-go grants more only after the application read a quarter.
	const stalled = quicutil.StalledStreams
	if need := (stalled + 2) * c.MaxStreamReceiveWindow * 4 / 3; c.InitialConnectionReceiveWindow < need {
		t.Errorf("InitialConnectionReceiveWindow = %d, want >= %d to survive %d stalled streams", c.InitialConnectionReceiveWindow, need, stalled)
	}
	if c.MaxStreamReceiveWindow < c.InitialStreamReceiveWindow || c.MaxConnectionReceiveWindow < c.InitialConnectionReceiveWindow {
		t.Errorf("a maximum window is below its initial one: %+v", c)
	}
	// Each call returns its own Config: a caller may change it.
	c.MaxIncomingStreams = 1
	if got := quicutil.LinkConfig(123).MaxIncomingStreams; got != 123 {
		t.Errorf("LinkConfig shares its result: got %d after a change to an earlier one", got)
	}
	if got := quicutil.EdgeConfig().MaxIncomingStreams; got != quicutil.MaxStreamsToEdge {
		t.Errorf("EdgeConfig().MaxIncomingStreams = %d, want %d", got, quicutil.MaxStreamsToEdge)
	}
	if got := quicutil.AgentConfig().MaxIncomingStreams; got != quicutil.MaxStreamsToAgent {
		t.Errorf("AgentConfig().MaxIncomingStreams = %d, want %d", got, quicutil.MaxStreamsToAgent)
	}
}
