//go:build !race

package inspect_test

const raceScale = 1
