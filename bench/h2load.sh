#!/bin/bash
# The HTTP/2 step of the benchmark (issue #13, docs/performance.md):
# h2load -c 50 -m 10 over TLS against nginx-tls (listen ... ssl http2),
# caddy-tls (GOMAXPROCS=1), revproxy-tls and, when BASE names a checkout
# of an older revproxy, revproxy-tls-base; each proxy pinned to core 1,
# h2load and the upstream nginx to core 0; 3 rounds interleaved.
#   bench/h2load.sh                 # this checkout only
#   BASE=/tmp/ab-base bench/h2load.sh
set -u
HERE=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${SHARED:-$HERE/../shared/bench}
R=$(mktemp -d /tmp/revproxy-h2load.XXXXXX); mkdir -p $R/tmp
BASE=${BASE:-}
cd "$HERE"
.venv/bin/python - "$R" <<'PY'
import sys, trustme
ca = trustme.CA(); c = ca.issue_cert("localhost", "127.0.0.1")
c.private_key_pem.write_to_path(sys.argv[1] + "/key.pem")
c.cert_chain_pems[0].write_to_path(sys.argv[1] + "/cert.pem")
PY
cat > $R/upstream.conf <<UP
worker_processes 1;
daemon off;
pid $R/upstream.pid;
error_log $R/upstream.err;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:18180;
    location /small { return 200 "\$request_id\$request_id\$request_id\$request_id\$request_id\$request_id\$request_id\$request_id\$request_id\$request_id\$request_id\$request_id\$request_id\$request_id\$request_id\$request_id\$request_id\$request_id\$request_id\$request_id\$request_id\$request_id\$request_id\$request_id\$request_id\$request_id\$request_id\$request_id\$request_id\$request_id\$request_id\$request_id"; }
  }
}
UP
sub() { sed -e "s#@PORT@#$2#g; s#@RUN@#$R#g; s#@NAME@#$3#g; s#@TLS@#ssl http2#g; s#@EXTRA@##g; s#@UPSTREAM_HOST@#127.0.0.1#g; s#@UPSTREAM_PORT@#18180#g; s#@UPSTREAM_URL@#http://127.0.0.1:18180#g; s#@CERT@#$R/cert.pem#g; s#@KEY@#$R/key.pem#g; s#@HTTP2@#true#g; s#@SITE@#https://127.0.0.1:$2#g; s#@TLS_DIRECTIVE@#tls $R/cert.pem $R/key.pem#g" $1 > $R/$3.conf; }
sub $SHARED/conf/nginx-proxy.conf 18311 nginx-tls
sub $SHARED/conf/Caddyfile 18313 caddy-tls
sub bench/revproxy-tls.toml.in 18321 revproxy-tls
sub bench/revproxy-tls.toml.in 18322 revproxy-tls-base
taskset -c 0 nginx -c $R/upstream.conf -p $R > /dev/null 2>&1 &
sleep 0.5
taskset -c 1 nginx -c $R/nginx-tls.conf -p $R -e $R/nginx-tls.err > /dev/null 2>&1 &
GOMAXPROCS=1 XDG_DATA_HOME=$R/x HOME=$R taskset -c 1 caddy run --adapter caddyfile --config $R/caddy-tls.conf > $R/caddy.log 2>&1 &
PYTHONPATH=$HERE taskset -c 1 .venv/bin/twistd -n --pidfile= revproxy --config $R/revproxy-tls.conf > $R/rp.log 2>&1 &
TARGETS="nginx-tls:18311 caddy-tls:18313 revproxy-tls:18321"
if [ -n "$BASE" ]; then
  PYTHONPATH=$BASE taskset -c 1 .venv/bin/twistd -n --pidfile= revproxy --config $R/revproxy-tls-base.conf > $R/rpbase.log 2>&1 &
  TARGETS="$TARGETS revproxy-tls-base:18322"
fi
sleep 5
for rep in 1 2 3; do
  for t in $TARGETS; do
    name=${t%%:*}; port=${t##*:}
    out=$(taskset -c 0 h2load -c 50 -m 10 -t 1 -D 10 https://127.0.0.1:$port/small 2>&1)
    rps=$(echo "$out" | awk '/^finished in/{print $4}')
    ok=$(echo "$out" | awk '/^requests:/{print $8, $10}')
    proto=$(echo "$out" | awk '/Application protocol/{print $3}')
    echo "rep$rep $name $rps req/s  (succeeded/failed: $ok, $proto)"
  done
done
pkill -f "$R/"; sleep 1; rm -rf "$R"
