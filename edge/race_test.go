//go:build race

package edge_test

// raceEnabled: the race detector is on. It slows QUIC handshakes and
// keep-alives several times over (the scale tests open fewer links under
// it) and changes allocation counts (sync.Pool drops items at random).
const raceEnabled = true
