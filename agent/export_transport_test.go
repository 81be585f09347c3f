package agent

import (
	"context"

	"github.com/pico-edge/pico/quicutil"
)

// UDPBlocked exports udpBlocked.
var UDPBlocked = udpBlocked

// CheckEdge makes one link to the first of Config.Edges, as a slot would,
// and closes it: it returns the error a slot would log.
func (a *Agent) CheckEdge(ctx context.Context) error {
	l, err := a.connect(ctx, candidate{addr: a.cfg.Edges[0]}, a.currentToken())
	if err != nil {
		return err
	}
	l.close(quicutil.ConnCodeNormal, "")
	return nil
}
