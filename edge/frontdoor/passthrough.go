package frontdoor

import (
	"errors"
	"net"
	"time"
)

// acceptPassthrough reads each connection's ClientHello and hands it to
// Config.Passthrough, or answers it with an alert. It returns when the
// listener closes, once every connection it took has ended.
func (d *Door) acceptPassthrough(ln net.Listener) {
	defer d.pt.Wait()
	delay := time.Duration(0)
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// EMFILE and the like: wait and go on, as net/http does.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			d.cfg.Log.Warn("TLS passthrough door: accept failed; retrying", "err", err, "retry_in", delay.String())
			time.Sleep(delay)
			continue
		}
		delay = 0
		d.fresh.add(1) // until its hello is read: Shutdown gives it a moment
		d.pt.Go(func() { d.servePassthrough(c) })
	}
}

func (d *Door) servePassthrough(c net.Conn) {
	sni, raw, err := ReadClientHello(c, time.Time{})
	d.fresh.add(-1)
	reason, alert := "", uint8(0)
	var he *HelloError
	switch {
	case errors.As(err, &he):
		reason, alert = "malformed", he.Alert
	case err != nil:
		reason = "incomplete" // timed out or closed: nobody to tell
	case sni == "":
		reason, alert = "no_sni", AlertUnrecognizedName
		err = errors.New("no server_name (SNI) in the ClientHello: the passthrough port routes by it; connect with the endpoint's host name")
	}
	if reason != "" {
		if alert != 0 {
			WriteAlert(c, alert)
		}
		if d.cfg.PassthroughRefused != nil {
			d.cfg.PassthroughRefused(c, reason, alert, err)
		}
		c.Close()
		return
	}
	d.cfg.Passthrough(passConn{c}, sni, raw)
}

// passConn is a passthrough connection that can half-close: the limit
// listener's connection hides its TCP connection's CloseWrite.
type passConn struct{ net.Conn }

func (c passConn) CloseWrite() error {
	var inner net.Conn = c.Conn
	for {
		if cw, ok := inner.(interface{ CloseWrite() error }); ok {
			return cw.CloseWrite()
		}
		u, ok := inner.(interface{ Unwrap() net.Conn })
		if !ok {
			return nil
		}
		inner = u.Unwrap()
	}
}
