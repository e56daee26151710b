#!/usr/bin/env bash
# Throughput of the retry client beside wrk, measured in one run against
# nginx on loopback (`return 200`, keep-alive).
#   scripts/bench.sh [TOTAL] [CONCURRENCY]     defaults: 100000 64
# Prints req/s for wrk -t1, for `lretry load URL -c CONCURRENCY -n TOTAL`
# (with a Lua check per response) and for a hand-written RetryClient loop
# (CONCURRENCY tasks, TOTAL GETs), their ratios to wrk, peak RSS, and how
# many connections nginx accepted during each lretry run (stub_status): a
# steady load should open as many as its concurrency.
set -euo pipefail
cd "$(dirname "$0")/.."
total=${1:-100000}
conc=${2:-64}
scripts/setup.sh --bench

dir=$(mktemp -d)
nginx_pid=
trap 'kill $nginx_pid 2>/dev/null; wait $nginx_pid 2>/dev/null; rm -rf "$dir"' EXIT
# nginx on a free port below the ephemeral range (32768 up), where client
# sockets of other programs cannot be holding it; another port if taken.
start_nginx() {
  port=$((20000 + RANDOM % 12000))
  cat >"$dir/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path $dir;
  server {
    listen 127.0.0.1:$port;
    location / { return 200 "ok\n"; }
    location = /nginx_status { stub_status; }
  }
}
CONF
  nginx -c "$dir/nginx.conf" -e "$dir/error.log" 2>/dev/null &
  nginx_pid=$!
  for _ in $(seq 50); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
    kill -0 "$nginx_pid" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}
for _ in $(seq 10); do
  start_nginx && break
  kill "$nginx_pid" 2>/dev/null; wait "$nginx_pid" 2>/dev/null; nginx_pid=
done
[ -n "$nginx_pid" ] || { echo "bench: nginx did not start" >&2; exit 1; }
url="http://127.0.0.1:$port/"

wrk -t1 -c"$conc" -d5s "$url" >/dev/null  # warm-up
wrk_rps=$(wrk -t1 -c"$conc" -d10s "$url" | awk '/Requests\/sec/ {print $2}')
echo "wrk -t1 -c$conc: $wrk_rps req/s"

# stub_status: "server accepts handled requests" then the three numbers.
accepted() {
  curl -s "http://127.0.0.1:$port/nginx_status" | awk 'NR == 3 {print $1}'
}

# lretry load: the load-check command, a Lua check (--expect) per response.
accepts_before=$(accepted)
/usr/bin/time -v -o "$dir/time.load" build/lretry load "$url" -c "$conc" \
  -n "$total" --expect 200 --quiet >"$dir/load.out"
# The status request itself is one connection more.
load_accepts=$(($(accepted) - accepts_before - 1))
load_rps=$(awk '$1 == "requests" {sub("/s", "", $3); print $3}' "$dir/load.out")
load_rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$dir/time.load")
echo "lretry load -c$conc -n$total: $load_rps req/s," \
  "peak RSS $((load_rss / 1024)) MiB, connections $load_accepts"
grep -q "100.00%   $total passed" "$dir/load.out" \
  || { echo "bench: lretry load did not get $total 200s" >&2; cat "$dir/load.out" >&2; exit 1; }

# The retry client in a hand-written loop (scripts/bench_client.lua).
accepts_before=$(accepted)
/usr/bin/time -v -o "$dir/time" build/lretry scripts/bench_client.lua "$url" \
  "$total" "$conc" | tee "$dir/out"
accepts=$(($(accepted) - accepts_before - 1))
lretry_rps=$(awk '{print $(NF-1)}' "$dir/out")
rss_kb=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$dir/time")
cpu=$(awk -F': ' '/Percent of CPU/ {print $2}' "$dir/time")
echo "lretry peak RSS: $((rss_kb / 1024)) MiB, CPU $cpu"
echo "connections nginx accepted during the lretry run: $accepts" \
  "(concurrency $conc)"
awk -v a="$load_rps" -v b="$wrk_rps" \
  'BEGIN { printf "ratio lretry load / wrk -t1: %.2f\n", a / b }'
awk -v a="$lretry_rps" -v b="$wrk_rps" \
  'BEGIN { printf "ratio lretry / wrk -t1: %.2f\n", a / b }'
