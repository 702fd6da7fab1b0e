#!/usr/bin/env bash
# Run the shared peer benchmark (../shared/bench) with revproxy as one more
# row, beside nginx and Twisted's stock ReverseProxyResource in the same run.
#   bench/run.sh              # the full method: 3 reps x 10 s, c = 10, 50, 200
#   bench/run.sh --quick      # 1 rep x 3 s, c = 50, for a quick look
#   bench/run.sh --tls        # the same over TLS: revproxy-tls beside nginx-tls,
#                             # twisted-tls, twisted-ka-tls (keep-alive /small,
#                             # /big, POST), then bench/handshakes.py (new TLS
#                             # connections per second) against nginx-tls,
#                             # twisted-tls and revproxy-tls.  BENCH_TLS=1 = --tls.
#   bench/run.sh --tls --quick
# Results land in bench/results/<timestamp>/ (git-ignored).
# Other knobs: BENCH_TARGETS (peer rows), BENCH_HTTP2=false (revproxy-tls
# without ALPN h2), BENCH_HANDSHAKES=0 (skip the handshake step),
# BENCH_HS_TARGETS (rows of the handshake step).  See bench/README.md.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
shared=${BENCH_SHARED:-$top/../shared/bench}
export BENCH_VENV=${BENCH_VENV:-$HOME/.cache/revproxy-bench-venv}
export BENCH_OUT=${BENCH_OUT:-$top/bench/results/$(date -u +%Y%m%dT%H%M%SZ)}

tls=${BENCH_TLS:-0}
args=()
for a in "$@"; do
    if [[ $a == --tls ]]; then tls=1; else args+=("$a"); fi
done

revproxy_cmd="env PYTHONPATH=$top $top/.venv/bin/twistd -n --pidfile= revproxy --config {config}"
row_http="name=revproxy port=18120 scheme=http conc=10,50,200 post=true config=$top/bench/revproxy.toml.in cmd='$revproxy_cmd'"

if [[ $tls != 1 ]]; then
    targets=${BENCH_TARGETS:-nginx,twisted,twisted-ka},revproxy
    exec "$shared/run_peers.sh" --targets "$targets" --out "$BENCH_OUT" --add "$row_http" "${args[@]}"
fi

# ---- TLS: client -> proxy over HTTPS (the harness's one RSA 2048 test
# certificate, the same files for every row), proxy -> upstream plain HTTP.
row_tls="name=revproxy-tls port=18121 scheme=https conc=10,50,200 post=true config=$top/bench/revproxy-tls.toml.in var.HTTP2=${BENCH_HTTP2:-true} cmd='$revproxy_cmd'"
mkdir -p "$BENCH_OUT"
# The shared targets.toml has no POST case on its https rows: a copy with
# post = true on them, so revproxy-tls's POST figure has an nginx-tls one beside it.
python3 "$top/bench/tls_targets.py" "$shared/targets.toml" "$BENCH_OUT/targets-tls.toml"
targets=${BENCH_TARGETS:-nginx-tls,twisted-tls,twisted-ka-tls},revproxy-tls
"$shared/run_peers.sh" --targets-file "$BENCH_OUT/targets-tls.toml" --targets "$targets" --out "$BENCH_OUT" \
    --add "$row_http" --add "$row_tls" "${args[@]}"

# Keep revproxy's own output (errors under load show up there) and the certificate.
hrun=/tmp/revproxy-bench
for ((i = 0; i + 1 < ${#args[@]}; i++)); do
    if [[ ${args[i]} == --run-dir ]]; then hrun=${args[i + 1]}; fi
done
for f in logs/revproxy-tls.out logs/revproxy.out; do
    if [[ -f $hrun/$f ]]; then cp "$hrun/$f" "$BENCH_OUT/$(basename "$f" .out).log"; fi
done
cp "$hrun/cert.pem" "$BENCH_OUT/tls-cert.pem"
cp "$hrun/key.pem" "$BENCH_OUT/tls-key.pem"

if [[ ${BENCH_HANDSHAKES:-1} == 1 ]]; then
    # New TLS connections: full handshakes/s (openssl s_time -new) and one
    # request per connection (wrk -H 'Connection: close'), same certificate.
    python3 "$top/bench/handshakes.py" --targets "${BENCH_HS_TARGETS:-nginx-tls,twisted-tls}" \
        --add "$row_tls" --cert "$BENCH_OUT/tls-cert.pem" --key "$BENCH_OUT/tls-key.pem" \
        --out "$BENCH_OUT" "${args[@]}"
fi
