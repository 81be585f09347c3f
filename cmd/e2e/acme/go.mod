module github.com/pico-edge/pico/cmd/e2e/acme

go 1.26.0

// The tests are of this repository's code, never of a published version.
replace github.com/pico-edge/pico => ../../..

tool github.com/letsencrypt/pebble/v2/cmd/pebble

require (
	github.com/miekg/dns v1.1.73
	github.com/pico-edge/pico v0.0.0
	go.uber.org/goleak v1.3.0
)

require (
	github.com/VictoriaMetrics/metrics v1.45.0 // indirect
	github.com/go-jose/go-jose/v4 v4.1.8 // indirect
	github.com/letsencrypt/challtestsrv v1.4.2 // indirect
	github.com/letsencrypt/pebble/v2 v2.10.3 // indirect
	github.com/valyala/fastrand v1.1.0 // indirect
	github.com/valyala/histogram v1.2.0 // indirect
	golang.org/x/crypto v0.57.0 // indirect
	golang.org/x/net v0.60.0 // indirect
	golang.org/x/sys v0.50.0 // indirect
	golang.org/x/text v0.42.0 // indirect
)
