package main

import (
	"fmt"
	"os"
)

// peakRoles are the Pico processes whose peak RSS each measured run
// records: VmHWM is reset (/proc/PID/clear_refs, "5") before the run and
// read after it, so the figure is the peak of that run alone.
var peakRoles = map[string]bool{"edge": true, "agent": true, "relay": true, "fwd-agent": true}

// resetPeaks sets the watched Pico processes' VmHWM back to their current
// RSS. A kernel that refuses (before Linux 4.0) leaves the lifetime peak,
// which is still an upper bound.
func resetPeaks(watch []cpuWatch) {
	for _, w := range watch {
		if peakRoles[w.role] {
			os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", w.p.pid()), []byte("5"), 0)
		}
	}
}

// readPeaks returns the watched Pico processes' VmHWM in KiB.
func readPeaks(watch []cpuWatch) map[string]int64 {
	out := map[string]int64{}
	for _, w := range watch {
		if !peakRoles[w.role] {
			continue
		}
		if _, hwm, err := procMem(w.p.pid()); err == nil {
			out[w.role] = hwm
		}
	}
	return out
}

// postBytes is the body size of scenario A's POSTs.
const postBytes = 1024

// wrkPostLua makes wrk send POSTs of postBytes; it goes before wrkLua.
var wrkPostLua = fmt.Sprintf("wrk.method = \"POST\"\nwrk.body = string.rep(\"x\", %d)\nwrk.headers[\"Content-Type\"] = \"application/octet-stream\"\n", postBytes)

// wrkLua makes wrk print the 99.9th percentile latency, which its
// --latency table lacks, in microseconds; parseWrk reads the line.
const wrkLua = `done = function(summary, latency, requests)
  io.write(string.format("p99.9_us: %d\n", latency:percentile(99.9)))
end
`
