package quicutil

import "time"

// SetIdleTimeout sets how long an upgraded connection may be silent (see
// MuxIdleTimeout); call it before the first Add.
func (m *Mux) SetIdleTimeout(d time.Duration) { m.idle = d }
