package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"github.com/pico-edge/pico/certs"
)

// LoadResult is one HTTPS load run of scenario E, from h2load or from the
// h3load subcommand. Latencies are in microseconds, over the requests that
// completed within the run.
type LoadResult struct {
	Client         string  `json:"client"` // "h2load" or "pico-bench h3load"
	Proto          string  `json:"proto"`  // "h2" or "h3"
	Conns          int     `json:"conns"`
	Streams        int     `json:"streams_per_conn"`
	Requests       int64   `json:"requests"` // completed with the expected status and body
	Errors         int64   `json:"errors"`   // failed, wrong status or wrong body
	Seconds        float64 `json:"seconds"`
	RequestsPerSec float64 `json:"requests_per_sec"`
	MeanUs         float64 `json:"latency_mean_us"`
	P50Us          float64 `json:"p50_us"`
	P90Us          float64 `json:"p90_us"`
	P99Us          float64 `json:"p99_us"`
	P999Us         float64 `json:"p999_us"`
	MaxUs          float64 `json:"latency_max_us"`
	FirstError     string  `json:"first_error,omitempty"`
}

// setLatencies fills the latency figures from a sample (microseconds),
// which it sorts.
func (r *LoadResult) setLatencies(us []float64) {
	if len(us) == 0 {
		return
	}
	slices.Sort(us)
	q := func(p float64) float64 { // nearest rank
		i := int(math.Ceil(p*float64(len(us)))) - 1
		return us[min(max(i, 0), len(us)-1)]
	}
	sum := 0.0
	for _, v := range us {
		sum += v
	}
	r.MeanUs = sum / float64(len(us))
	r.P50Us, r.P90Us, r.P99Us, r.P999Us = q(0.50), q(0.90), q(0.99), q(0.999)
	r.MaxUs = us[len(us)-1]
}

// runH3Load is the scenario E load client: --conns connections (an
// http3.Transport each, or for --proto h2 an http.Transport limited to one
// HTTP/2 connection), --streams requests in flight on each, for --duration.
// It prints one LoadResult as JSON.
func runH3Load(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("h3load", flag.ContinueOnError)
	target := fs.String("url", "", "https URL to GET")
	proto := fs.String("proto", "h3", "h3 (quic-go http3) or h2 (net/http, HTTP/2 only)")
	caFile := fs.String("ca", "", "CA certificate (PEM) the server's certificate is checked against")
	conns := fs.Int("conns", 16, "connections")
	streams := fs.Int("streams", 10, "requests in flight per connection")
	duration := fs.Duration("duration", 10*time.Second, "measure for this long, after the connections are up")
	header := fs.String("header", "", `extra request header, "Name: value"`)
	expect := fs.Int("expect-bytes", -1, "expected response body length (-1: any)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	u, err := url.Parse(*target)
	if err != nil || u.Scheme != "https" || *caFile == "" || *conns < 1 || *streams < 1 || *duration <= 0 {
		return errors.New("want an https --url, --ca, and positive --conns, --streams and --duration")
	}
	pool, err := certs.LoadPool(*caFile)
	if err != nil {
		return err
	}
	os.Setenv("QUIC_GO_DISABLE_RECEIVE_BUFFER_WARNING", "true")
	ctx, cancel := context.WithTimeout(ctx, *duration+2*time.Minute)
	defer cancel()

	var rts []http.RoundTripper
	defer func() {
		for _, rt := range rts {
			switch t := rt.(type) {
			case *http3.Transport:
				t.Close()
			case *http.Transport:
				t.CloseIdleConnections()
			}
		}
	}()
	for range *conns {
		switch *proto {
		case "h3":
			rts = append(rts, &http3.Transport{
				TLSClientConfig: &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: pool},
				QUICConfig:      &quic.Config{MaxIdleTimeout: 30 * time.Second},
			})
		case "h2":
			p := new(http.Protocols)
			p.SetHTTP2(true)
			rts = append(rts, &http.Transport{
				TLSClientConfig: &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: pool},
				Protocols:       p, MaxConnsPerHost: 1, MaxIdleConnsPerHost: 1,
				HTTP2: &http.HTTP2Config{StrictMaxConcurrentRequests: true},
			})
		default:
			return fmt.Errorf("--proto %q: want h3 or h2", *proto)
		}
	}
	newReq := func(ctx context.Context) *http.Request {
		req, _ := http.NewRequestWithContext(ctx, "GET", u.String(), nil)
		if k, v, ok := strings.Cut(*header, ":"); ok {
			req.Header.Set(strings.TrimSpace(k), strings.TrimSpace(v))
		}
		return req
	}
	buf := make([]byte, 64<<10)
	do := func(rt http.RoundTripper, req *http.Request, buf []byte) error {
		resp, err := rt.RoundTrip(req)
		if err != nil {
			return err
		}
		n, err := io.CopyBuffer(io.Discard, resp.Body, buf)
		resp.Body.Close()
		if err != nil {
			return err
		}
		want := "HTTP/3.0"
		if *proto == "h2" {
			want = "HTTP/2.0"
		}
		if resp.StatusCode != 200 || (*expect >= 0 && n != int64(*expect)) || resp.Proto != want {
			return fmt.Errorf("%s %s, %d-byte body", resp.Proto, resp.Status, n)
		}
		return nil
	}
	// Connect every client first: the handshakes are not measured.
	for i, rt := range rts {
		if err := do(rt, newReq(ctx), buf); err != nil {
			return fmt.Errorf("connection %d: first request: %w", i, err)
		}
	}

	type worker struct {
		lat    []float64
		errs   int64
		first  error
		buf    []byte
		client http.RoundTripper
	}
	workers := make([]*worker, 0, *conns**streams)
	for _, rt := range rts {
		for range *streams {
			workers = append(workers, &worker{client: rt, buf: make([]byte, 16<<10), lat: make([]float64, 0, 1<<14)})
		}
	}
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	start := time.Now()
	deadline := start.Add(*duration)
	timer := time.AfterFunc(*duration, stop)
	defer timer.Stop()
	var wg sync.WaitGroup
	for _, w := range workers {
		wg.Go(func() {
			req := newReq(runCtx)
			for {
				t0 := time.Now()
				if !t0.Before(deadline) {
					return
				}
				err := do(w.client, req, w.buf)
				t1 := time.Now()
				if t1.After(deadline) {
					return // unfinished at the end of the run: not counted
				}
				if err != nil {
					w.errs++
					if w.first == nil {
						w.first = err
					}
					continue
				}
				w.lat = append(w.lat, float64(t1.Sub(t0).Nanoseconds())/1e3)
			}
		})
	}
	wg.Wait()
	secs := duration.Seconds()
	res := LoadResult{Client: "pico-bench h3load", Proto: *proto, Conns: *conns, Streams: *streams, Seconds: secs}
	if *proto == "h2" {
		res.Client = "pico-bench h3load --proto h2"
	}
	var all []float64
	for _, w := range workers {
		all = append(all, w.lat...)
		res.Errors += w.errs
		if w.first != nil && res.FirstError == "" {
			res.FirstError = w.first.Error()
		}
	}
	res.Requests = int64(len(all))
	res.RequestsPerSec = float64(res.Requests) / secs
	res.setLatencies(all)
	printJSON(res)
	return nil
}

// parseH2load parses h2load's summary (nghttp2 1.5x) and, when logFile is
// given, takes the latency percentiles from its per-request log.
//
//	finished in 1.00s, 28878.00 req/s, 959.30KB/s
//	requests: 28878 total, 28886 started, 28878 done, 28878 succeeded, 0 failed, 0 errored, 0 timeout
//	status codes: 28878 2xx, 0 3xx, 0 4xx, 0 5xx
//	traffic: 959.30KB (982324) total, 113.03KB (115740) headers (space savings 95.05%), 338.41KB (346536) data
//	                     min         max         mean         sd        +/- sd
//	time for request:       32us      7.82ms       252us       344us    95.90%
//
// Requests counts 2xx responses only; Errors is h2load's "failed" (errors,
// timeouts, 4xx and 5xx) plus 3xx responses. The per-request log has
// tab-separated start time (µs since the epoch), status (-1: failed) and
// microseconds to the end of the response.
func parseH2load(out string, log io.Reader) (LoadResult, error) {
	r := LoadResult{Client: "h2load", Proto: "h2"}
	var haveFinished, haveRequests bool
	var total int64
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		f := strings.Fields(strings.ReplaceAll(line, ",", " "))
		switch {
		case strings.HasPrefix(line, "finished in ") && len(f) >= 3:
			d, err := time.ParseDuration(f[2])
			if err != nil {
				return r, fmt.Errorf("h2load %q: %w", line, err)
			}
			if d <= 0 {
				return r, fmt.Errorf("h2load %q: no duration", line)
			}
			r.Seconds, haveFinished = d.Seconds(), true
		case strings.HasPrefix(line, "requests: "):
			// requests: N total, N started, N done, N succeeded, N failed, N errored, N timeout
			for i := 1; i+1 < len(f); i += 2 {
				n, err := strconv.ParseInt(f[i], 10, 64)
				if err != nil {
					return r, fmt.Errorf("h2load %q: %w", line, err)
				}
				switch f[i+1] {
				case "total":
					total = n
				case "failed": // errored, timed out, and 4xx and 5xx responses
					r.Errors += n
				}
			}
		case strings.HasPrefix(line, "status codes: "):
			// h2load counts 3xx responses as succeeded; here they are errors.
			for i := 2; i+1 < len(f); i += 2 {
				n, err := strconv.ParseInt(f[i], 10, 64)
				if err != nil {
					return r, fmt.Errorf("h2load %q: %w", line, err)
				}
				switch f[i+1] {
				case "2xx":
					r.Requests, haveRequests = n, true
				case "3xx":
					r.Errors += n
				}
			}
		case strings.HasPrefix(line, "time for request:") && len(f) >= 6:
			r.MaxUs, _ = parseDuration(f[4])
			r.MeanUs, _ = parseDuration(f[5])
		}
	}
	if !haveFinished || !haveRequests || total == 0 {
		return r, errors.New("h2load output lacks its summary (finished in, requests, status codes)")
	}
	// h2load's req/s counts failed requests too; h3load's does not.
	r.RequestsPerSec = float64(r.Requests) / r.Seconds
	if log == nil {
		return r, nil
	}
	var us []float64
	ls := bufio.NewScanner(log)
	for ls.Scan() {
		f := strings.Split(ls.Text(), "\t")
		if len(f) < 3 || f[1] != "200" {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(f[2]), 64)
		if err == nil {
			us = append(us, v)
		}
	}
	if err := ls.Err(); err != nil {
		return r, fmt.Errorf("h2load log: %w", err)
	}
	if len(us) == 0 {
		return r, errors.New("h2load log file has no successful requests")
	}
	mean, maxUs := r.MeanUs, r.MaxUs
	r.setLatencies(us)
	if mean > 0 { // h2load's own figures cover the same requests
		r.MeanUs, r.MaxUs = mean, max(maxUs, r.MaxUs)
	}
	return r, nil
}
