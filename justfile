# Pico tasks. `just` lists them; CI (.ci/run) runs the same commands directly.

default:
    @just --list

# Build pico-edge, pico-agent and pico-bench into ./bin
build:
    go build -o bin/ ./cmd/...

# Run a development edge node on the default ports
run:
    go run ./cmd/pico-edge

# The full test suite, as CI runs it
test:
    go test -race -shuffle=on ./...

# Unit tests only (skips end-to-end tests and the benchmark smoke test)
test-short:
    go test -short ./...

# End-to-end tests with the real binaries, curl, redis and WebSockets
e2e:
    go test -race -count=1 ./cmd/e2e

# gofmt, go vet and staticcheck
lint:
    test -z "$(gofmt -l .)" || (gofmt -l . && exit 1)
    go vet ./...
    go run honnef.co/go/tools/cmd/staticcheck@latest ./...

# Fuzz every network parser for 60s each (new corpus entries land in */testdata/fuzz)
fuzz:
    go test -run='^$' -fuzz=FuzzParseStreamHeader -fuzztime=60s ./quicutil
    go test -run='^$' -fuzz=FuzzParseMessage -fuzztime=60s ./quicutil
    go test -run='^$' -fuzz=FuzzReadAnswer -fuzztime=60s ./quicutil
    go test -run='^$' -fuzz=FuzzGuard -fuzztime=60s ./edge

# Load run with wrk and quic-go baselines (pico-bench); results in bench-results/
bench *ARGS:
    go run ./cmd/pico-bench {{ARGS}}

# Go benchmarks of the tunnel path against the direct path
gobench:
    go test -run='^$' -bench=. -benchmem ./edge ./routing
