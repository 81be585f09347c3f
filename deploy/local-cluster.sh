#!/usr/bin/env bash
# A local cluster of pico-edge nodes on this machine, for trying out the
# cluster and HA agents: `just cluster`, or `bash deploy/local-cluster.sh`.
#
# The nodes share one development CA in pico-edge's default data directory
# (--dev-ca-dir), where pico-agent finds it for an edge on this machine, so
# an agent needs no --ca; they share one cluster secret; each has its own
# --data-dir under $PICO_CLUSTER_DIR. Ctrl-C (or SIGTERM) stops them all.
#
# Node i (from 0) listens on 127.0.0.1 at BASE+100*i (proxy), +1 (agents,
# UDP and TCP), +2 (admin), +3 (gossip) and +43 (HTTPS and HTTP/3).
#
# Environment:
#   PICO_NODES        number of nodes (default 3)
#   PICO_BASE_PORT    BASE (default 8000)
#   PICO_CLUSTER_DIR  data directories and the cluster secret (default .pico-cluster)
#   PICO_BIN          directory holding a built pico-edge (default: build it into bin/)
set -euo pipefail
nodes=${PICO_NODES:-3}
base=${PICO_BASE_PORT:-8000}
dir=${PICO_CLUSTER_DIR:-.pico-cluster}
bin=${PICO_BIN:-}
unset PICO_NODES PICO_BASE_PORT PICO_CLUSTER_DIR PICO_BIN # pico-edge reads PICO_* as flags
if [ -z "$bin" ]; then
	(cd "$(dirname "$0")/.." && go build -o bin/ ./cmd/pico-edge)
	bin="$(cd "$(dirname "$0")/.." && pwd)/bin"
fi
ca="${XDG_DATA_HOME:-$HOME/.local/share}/pico"
mkdir -p "$dir"
[ -f "$dir/cluster.key" ] || (umask 077 && head -c 32 /dev/urandom | base64 >"$dir/cluster.key")

pids=()
stop() {
	trap - EXIT INT TERM
	kill "${pids[@]}" 2>/dev/null || true
	wait
}
trap stop EXIT INT TERM
for ((i = 0; i < nodes; i++)); do
	p=$((base + 100 * i))
	join=()
	((i > 0)) && join=(--join "127.0.0.1:$((base + 3))")
	"$bin/pico-edge" --node-id "node-$i" --data-dir "$dir/node-$i" --dev-ca-dir "$ca" \
		--cluster-secret-file "$dir/cluster.key" --advertise-addr 127.0.0.1 \
		--proxy-addr "127.0.0.1:$p" --agent-addr "127.0.0.1:$((p + 1))" --admin-addr "127.0.0.1:$((p + 2))" \
		--gossip-addr "127.0.0.1:$((p + 3))" --proxy-tls-addr "127.0.0.1:$((p + 43))" "${join[@]}" &
	pids+=($!)
	echo "$!" >"$dir/node-$i.pid"
	echo "node-$i (pid $!): http://127.0.0.1:$p, https://127.0.0.1:$((p + 43)), agents 127.0.0.1:$((p + 1)), admin http://127.0.0.1:$((p + 2))" >&2
done
echo "development CA: $ca/ca.pem; try: pico-agent http foo 3000 --edge 127.0.0.1:$((base + 1))" >&2
wait
