//go:build race

package edge_test

// raceEnabled: the race detector slows QUIC handshakes and keep-alives
// several times over; the scale tests open fewer links under it.
const raceEnabled = true
