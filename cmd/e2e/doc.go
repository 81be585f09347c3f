// Package e2e holds Pico's end-to-end tests. They build pico-edge and
// pico-agent once (TestMain), run them as real processes on 127.0.0.1 and
// drive them with real clients: net/http, curl, a WebSocket client,
// redis-cli through a TCP tunnel, and quic-go for malformed streams.
//
// Run them with
//
//	go test -race -count=1 ./cmd/e2e
//
// They are skipped under -short. The package has no code outside tests.
package e2e
