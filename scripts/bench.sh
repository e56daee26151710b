#!/usr/bin/env bash
# Throughput of the retry client beside wrk, measured in one run against
# nginx on loopback (`return 200`, keep-alive).
#   scripts/bench.sh [TOTAL] [CONCURRENCY]     defaults: 100000 64
# Runs wrk -t1, the C ceiling (tests/bench/ceiling.c: libcurl on libuv
# through src/loop.c, no Lua), `lretry load URL -c CONCURRENCY -n TOTAL`
# (with a Lua check per response) and a hand-written RetryClient loop
# (CONCURRENCY tasks, TOTAL GETs) in turn, three rounds, and prints the
# median req/s of each, the ratios to wrk and to the ceiling, peak RSS, and
# how many connections nginx accepted during each lretry run (stub_status):
# a steady load should open as many as its concurrency.
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

wrk -t1 -c"$conc" -d3s "$url" >/dev/null  # warm-up

# stub_status: "server accepts handled requests" then the three numbers.
accepted() {
  curl -s "http://127.0.0.1:$port/nginx_status" | awk 'NR == 3 {print $1}'
}
median() { sort -g | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }

# Each contender runs once per round, in turn, for $rounds rounds: machines
# like this drift by 15%, so only figures from the same rounds compare.
rounds=3
for round in $(seq "$rounds"); do
  wrk -t1 -c"$conc" -d10s "$url" | awk '/Requests\/sec/ {print $2}' >>"$dir/wrk"

  # The C ceiling: libcurl on libuv through src/loop.c, no Lua.
  build/tests/bench/lretry-ceiling "$url" "$total" "$conc" \
    | awk '{print $(NF-1)}' >>"$dir/ceiling"

  # lretry load: the load-check command, a Lua check (--expect) per
  # response. The status request itself is one connection more.
  before=$(accepted)
  /usr/bin/time -v -o "$dir/time.load" build/lretry load "$url" -c "$conc" \
    -n "$total" --expect 200 --quiet >"$dir/load.out"
  echo $(($(accepted) - before - 1)) >>"$dir/load.conns"
  grep -q "100.00%   $total passed" "$dir/load.out" \
    || { echo "bench: lretry load did not get $total 200s" >&2; cat "$dir/load.out" >&2; exit 1; }
  awk '$1 == "requests" {sub("/s", "", $3); print $3}' "$dir/load.out" >>"$dir/load"
  awk -F': ' '/Maximum resident set size/ {print $2}' "$dir/time.load" >>"$dir/load.rss"

  # The retry client in a hand-written loop (scripts/bench_client.lua).
  before=$(accepted)
  /usr/bin/time -v -o "$dir/time.loop" build/lretry scripts/bench_client.lua \
    "$url" "$total" "$conc" >"$dir/loop.out"
  echo $(($(accepted) - before - 1)) >>"$dir/loop.conns"
  awk '{print $(NF-1)}' "$dir/loop.out" >>"$dir/loop"
  awk -F': ' '/Maximum resident set size/ {print $2}' "$dir/time.loop" >>"$dir/loop.rss"
  echo "round $round: wrk $(tail -n1 "$dir/wrk"), C ceiling $(tail -n1 "$dir/ceiling")," \
    "lretry load $(tail -n1 "$dir/load"), RetryClient loop $(tail -n1 "$dir/loop") req/s"
done

wrk_rps=$(median <"$dir/wrk")
ceiling_rps=$(median <"$dir/ceiling")
load_rps=$(median <"$dir/load")
loop_rps=$(median <"$dir/loop")
echo
echo "medians of $rounds rounds, $total requests at $conc connections:"
printf '  %-34s %10.0f req/s\n' "wrk -t1 -c$conc" "$wrk_rps"
printf '  %-34s %10.0f req/s  %.2f x wrk\n' "C ceiling (lretry-ceiling)" \
  "$ceiling_rps" "$(awk -v a="$ceiling_rps" -v b="$wrk_rps" 'BEGIN {print a / b}')"
printf '  %-34s %10.0f req/s  %.2f x wrk  peak RSS %d MiB  connections %s\n' \
  "lretry load -c$conc -n$total" "$load_rps" \
  "$(awk -v a="$load_rps" -v b="$wrk_rps" 'BEGIN {print a / b}')" \
  "$(($(median <"$dir/load.rss") / 1024))" "$(median <"$dir/load.conns")"
printf '  %-34s %10.0f req/s  %.2f x wrk  peak RSS %d MiB  connections %s\n' \
  "RetryClient loop (bench_client.lua)" "$loop_rps" \
  "$(awk -v a="$loop_rps" -v b="$wrk_rps" 'BEGIN {print a / b}')" \
  "$(($(median <"$dir/loop.rss") / 1024))" "$(median <"$dir/loop.conns")"
awk -v a="$load_rps" -v b="$ceiling_rps" -v c="$loop_rps" 'BEGIN {
  printf "  lretry load / C ceiling: %.2f   RetryClient loop / C ceiling: %.2f\n", a / b, c / b }'
