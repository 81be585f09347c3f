# Pico tasks. `just` lists them; CI (.ci/run) runs the same commands directly.

default:
    @just --list

# Build pico-edge, pico-agent and pico-bench into ./bin
build:
    go build -o bin/ ./cmd/...

# Static release binaries of pico-edge and pico-agent for linux, darwin and
# windows on amd64 and arm64, with SHA256SUMS, in dist/ (.ci/release;
# PICO_TARGETS="linux/amd64" just release for fewer)
release:
    bash .ci/release

# Run a development edge node on the default ports
run:
    go run ./cmd/pico-edge

# A 3-node cluster on this machine sharing one development CA (ports
# 8000-8003, 8100-8103, 8200-8203; data in .pico-cluster/; see
# deploy/local-cluster.sh); Ctrl-C stops all three
cluster:
    bash deploy/local-cluster.sh

# The full test suite of every module (.ci/modules), as CI runs it
test:
    bash .ci/test

# Unit tests only (skips end-to-end tests and the benchmark smoke test)
test-short:
    bash .ci/test -short

# End-to-end tests with the real binaries, curl, redis and WebSockets
e2e:
    go test -race -count=1 ./cmd/e2e

# gofmt, go vet and staticcheck, in every module (.ci/modules)
lint:
    test -z "$(gofmt -l .)" || (gofmt -l . && exit 1)
    for dir in $(bash .ci/modules); do go -C "$dir" vet ./... || exit 1; done
    for dir in $(bash .ci/modules); do go -C "$dir" run honnef.co/go/tools/cmd/staticcheck@latest ./... || exit 1; done

# Fuzz every network parser, 60s each (FUZZTIME=10s just fuzz for less);
# new corpus entries land in */testdata/fuzz
fuzz:
    bash .ci/fuzz

# Load run with wrk and quic-go baselines (pico-bench); results in bench-results/
bench *ARGS:
    go run ./cmd/pico-bench {{ARGS}}

# Go benchmarks of the tunnel path against the direct path
gobench:
    go test -run='^$' -bench=. -benchmem ./edge ./routing
