package main

import (
	"bufio"
	"fmt"
	"strconv"
	"strings"
)

// WrkResult is what one wrk run reported. Latencies are in microseconds,
// transfer in bytes per second (wrk's units are binary: 1 MB = 1 MiB).
type WrkResult struct {
	Requests       int64   `json:"requests"`
	Seconds        float64 `json:"seconds"`
	RequestsPerSec float64 `json:"requests_per_sec"`
	TransferBPS    float64 `json:"transfer_bytes_per_sec"`
	LatencyAvgUs   float64 `json:"latency_avg_us"`
	LatencyMaxUs   float64 `json:"latency_max_us"`
	P50Us          float64 `json:"p50_us"`
	P75Us          float64 `json:"p75_us"`
	P90Us          float64 `json:"p90_us"`
	P99Us          float64 `json:"p99_us"`
	P999Us         float64 `json:"p999_us,omitempty"` // from the harness's wrk script
	Non2xx         int64   `json:"non_2xx_3xx"`
	ErrConnect     int64   `json:"socket_errors_connect"`
	ErrRead        int64   `json:"socket_errors_read"`
	ErrWrite       int64   `json:"socket_errors_write"`
	ErrTimeout     int64   `json:"socket_errors_timeout"`
}

// Errors is the number of failed requests wrk counted.
func (r WrkResult) Errors() int64 {
	return r.Non2xx + r.ErrConnect + r.ErrRead + r.ErrWrite + r.ErrTimeout
}

// parseWrk parses wrk 4.x output, run with --latency.
//
//	Running 5s test @ http://127.0.0.1:40000/small
//	  2 threads and 16 connections
//	  Thread Stats   Avg      Stdev     Max   +/- Stdev
//	    Latency   152.20us  110.41us   8.07ms   95.37%
//	    Req/Sec    52.53k     3.18k   58.44k    71.00%
//	  Latency Distribution
//	     50%  134.00us
//	     75%  160.00us
//	     90%  203.00us
//	     99%  549.00us
//	  522840 requests in 5.00s, 62.33MB read
//	  Non-2xx or 3xx responses: 3
//	  Socket errors: connect 0, read 1, write 0, timeout 0
//	Requests/sec: 104554.24
//	Transfer/sec:     12.46MB
func parseWrk(out string) (WrkResult, error) {
	var r WrkResult
	var haveRPS, haveTransfer, haveP50, haveP99, haveCount bool
	inDist := false
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		switch {
		case line == "Latency Distribution":
			inDist = true
			continue
		case inDist && len(f) == 2 && strings.HasSuffix(f[0], "%"):
			v, err := parseDuration(f[1])
			if err != nil {
				return r, fmt.Errorf("wrk latency %q: %w", line, err)
			}
			switch f[0] {
			case "50%":
				r.P50Us, haveP50 = v, true
			case "75%":
				r.P75Us = v
			case "90%":
				r.P90Us = v
			case "99%":
				r.P99Us, haveP99 = v, true
			}
			continue
		}
		inDist = false
		switch {
		case f[0] == "p99.9_us:" && len(f) == 2:
			r.P999Us, _ = strconv.ParseFloat(f[1], 64)
		case f[0] == "Latency" && len(f) >= 4:
			r.LatencyAvgUs, _ = parseDuration(f[1])
			r.LatencyMaxUs, _ = parseDuration(f[3])
		case len(f) >= 5 && f[1] == "requests" && f[2] == "in":
			n, err := strconv.ParseInt(f[0], 10, 64)
			if err != nil {
				return r, fmt.Errorf("wrk request count %q: %w", line, err)
			}
			d, err := parseDuration(strings.TrimSuffix(f[3], ","))
			if err != nil {
				return r, fmt.Errorf("wrk run time %q: %w", line, err)
			}
			r.Requests, r.Seconds, haveCount = n, d/1e6, true
		case strings.HasPrefix(line, "Non-2xx or 3xx responses:"):
			r.Non2xx, _ = strconv.ParseInt(f[len(f)-1], 10, 64)
		case strings.HasPrefix(line, "Socket errors:"):
			// Socket errors: connect 0, read 1, write 0, timeout 0
			for i := 2; i+1 < len(f); i += 2 {
				n, _ := strconv.ParseInt(strings.TrimSuffix(f[i+1], ","), 10, 64)
				switch f[i] {
				case "connect":
					r.ErrConnect = n
				case "read":
					r.ErrRead = n
				case "write":
					r.ErrWrite = n
				case "timeout":
					r.ErrTimeout = n
				}
			}
		case f[0] == "Requests/sec:" && len(f) == 2:
			v, err := strconv.ParseFloat(f[1], 64)
			if err != nil {
				return r, fmt.Errorf("wrk Requests/sec %q: %w", line, err)
			}
			r.RequestsPerSec, haveRPS = v, true
		case f[0] == "Transfer/sec:" && len(f) == 2:
			v, err := parseBytes(f[1])
			if err != nil {
				return r, fmt.Errorf("wrk Transfer/sec %q: %w", line, err)
			}
			r.TransferBPS, haveTransfer = v, true
		}
	}
	var missing []string
	for name, ok := range map[string]bool{"Requests/sec": haveRPS, "Transfer/sec": haveTransfer,
		"50% latency": haveP50, "99% latency": haveP99, "request count": haveCount} {
		if !ok {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		return r, fmt.Errorf("wrk output lacks %s", strings.Join(missing, ", "))
	}
	return r, nil
}

// parseDuration parses wrk's time format (123.45us, 1.20ms, 2.00s, 1.00m,
// 1.00h) into microseconds.
func parseDuration(s string) (float64, error) {
	units := []struct {
		suffix string
		us     float64
	}{{"us", 1}, {"ms", 1e3}, {"s", 1e6}, {"m", 60e6}, {"h", 3600e6}}
	for _, u := range units {
		if strings.HasSuffix(s, u.suffix) {
			v, err := strconv.ParseFloat(strings.TrimSuffix(s, u.suffix), 64)
			if err != nil {
				return 0, err
			}
			return v * u.us, nil
		}
	}
	return 0, fmt.Errorf("unknown time unit in %q", s)
}

// parseBytes parses wrk's binary byte format (512.00B, 12.46MB, 1.02GB).
func parseBytes(s string) (float64, error) {
	units := []struct {
		suffix string
		mult   float64
	}{{"KB", 1 << 10}, {"MB", 1 << 20}, {"GB", 1 << 30}, {"TB", 1 << 40}, {"PB", 1 << 50}, {"B", 1}}
	for _, u := range units {
		if strings.HasSuffix(s, u.suffix) {
			v, err := strconv.ParseFloat(strings.TrimSuffix(s, u.suffix), 64)
			if err != nil {
				return 0, err
			}
			return v * u.mult, nil
		}
	}
	return 0, fmt.Errorf("unknown byte unit in %q", s)
}
