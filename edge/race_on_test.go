//go:build race

package edge_test

// raceEnabled: the race detector is on; it changes allocation counts
// (sync.Pool drops items at random).
const raceEnabled = true
