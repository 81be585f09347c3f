package edge

import (
	"time"

	"github.com/pico-edge/pico/quicutil"
)

// The edge's view of a silent agent link. With keep-alives every
// quicutil.AgentKeepAlive on both ends, a live agent sends a packet at
// least once a keep-alive and a round trip; one that sends nothing for
// longer is frozen (SIGSTOP, a stalled VM), killed without a goodbye (a
// QUIC link gets no word of that), or cut off. Waiting for the QUIC idle
// timeout (quicutil.AgentIdleTimeout, 5 s) would hold its requests in
// flight that long:
//
//   - silent for linkSuspectAfter: new streams go to the endpoint's other
//     targets while there are any (leavingNow), as for a link asked to
//     move;
//   - silent for linkDeadAfter, the agent's own bound for a silent link
//     (it then links elsewhere): the edge closes the link, so its streams
//     in flight fail at once (idempotent requests with no response head
//     yet go to another agent, downloads are cut) and its endpoints are
//     withdrawn.
//
// Both grow on a slow path (a keep-alive and a few of its
// retransmissions), as the agent's do.
const (
	linkSuspectAfter = 1500 * time.Millisecond
	linkDeadAfter    = 2500 * time.Millisecond
	linkWatchEvery   = 100 * time.Millisecond
)

// watchLinks looks at every agent link each linkWatchEvery until stop is
// closed, and marks or closes the silent ones (see linkSuspectAfter).
func (s *Server) watchLinks(stop <-chan struct{}) {
	t := time.NewTicker(linkWatchEvery)
	defer t.Stop()
	last := time.Now()
	for {
		select {
		case <-stop:
			return
		case now := <-t.C:
			// A tick this late means this process stood still (a GC
			// pause, SIGSTOP, a stalled VM): the links' silence meanwhile
			// is its own, and their packets wait in the socket. Each link
			// starts a new window instead of being closed on waking.
			stalled := now.Sub(last) > linkSuspectAfter/2
			last = now
			for _, l := range s.links.list() {
				if stalled {
					l.seenPackets, l.seenAt = l.conn.ConnectionStats().PacketsReceived, now
					continue
				}
				l.checkSilence(now)
			}
		}
	}
}

// checkSilence is watchLinks' look at one link; only that goroutine calls
// it, and only it touches seenPackets and seenAt.
func (l *link) checkSilence(now time.Time) {
	if l.conn.Context().Err() != nil {
		return
	}
	st := l.conn.ConnectionStats()
	if st.PacketsReceived != l.seenPackets || l.seenAt.IsZero() {
		l.seenPackets, l.seenAt = st.PacketsReceived, now
		if l.suspect.Swap(false) {
			l.log.Info("agent link answers again")
		}
		return
	}
	pto := st.SmoothedRTT + 4*st.MeanDeviation + 25*time.Millisecond
	quiet := now.Sub(l.seenAt)
	switch {
	case quiet >= max(linkDeadAfter, quicutil.AgentKeepAlive+4*pto):
		l.log.Warn("agent stopped answering; closing its link", "silent_for", quiet.Round(time.Millisecond).String())
		l.close(quicutil.ConnCodeTimeout, "no packet from agent for "+quiet.Round(time.Millisecond).String())
	case quiet >= max(linkSuspectAfter, quicutil.AgentKeepAlive+2*pto):
		if !l.suspect.Swap(true) {
			l.log.Info("agent link silent; other agents of its endpoints first", "silent_for", quiet.Round(time.Millisecond).String())
		}
	}
}
