//go:build race

package inspect_test

// raceScale divides the load of the heavier tests under the race
// detector, which slows them about ten times.
const raceScale = 4
