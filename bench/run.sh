#!/usr/bin/env bash
# Run the shared peer benchmark (../shared/bench) with revproxy as one more
# row, beside nginx and Twisted's stock ReverseProxyResource in the same run.
#   bench/run.sh              # the full method: 3 reps x 10 s, c = 10, 50, 200
#   bench/run.sh --quick      # 1 rep x 3 s, c = 50, for a quick look
# Results land in bench/results/<timestamp>/ (git-ignored).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
shared=${BENCH_SHARED:-$top/../shared/bench}
export BENCH_VENV=${BENCH_VENV:-$HOME/.cache/revproxy-bench-venv}
export BENCH_OUT=${BENCH_OUT:-$top/bench/results/$(date -u +%Y%m%dT%H%M%SZ)}
targets=${BENCH_TARGETS:-nginx,twisted,twisted-ka},revproxy
exec "$shared/run_peers.sh" --targets "$targets" --out "$BENCH_OUT" \
    --add "name=revproxy port=18120 scheme=http conc=10,50,200 post=true config=$top/bench/revproxy.toml.in cmd='env PYTHONPATH=$top $top/.venv/bin/twistd -n --pidfile= revproxy --config {config}'" \
    "$@"
