#!/usr/bin/env bash
# The main job: install and build what is missing, start the bundled test
# server on loopback, and run the demo scripts against it (no network needed).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
. scripts/server.sh
start_test_server build/tests/server/lretry-test-server
echo "demo: test server at $LRETRY_TEST_URL"
echo
build/lretry scripts/demo.lua "$LRETRY_TEST_URL"
echo
echo "Probe (lretry probe): endpoints checked with retries"
build/lretry probe "$LRETRY_TEST_URL/hello" \
  "$LRETRY_TEST_URL/fail?n=2&status=502&key=probe-$$-$RANDOM" \
  "$LRETRY_TEST_URL/close?n=1&key=probe-close-$$-$RANDOM"
echo
echo "Custom backoff (scripts/custom_backoff.lua): strategy and check in Lua"
build/lretry scripts/custom_backoff.lua "$LRETRY_TEST_URL"
echo
echo "Load check (scripts/load_check.lua): 2 s of a mixed workload with retries,"
echo "a check and thresholds, against a route that drops and fails requests"
build/lretry scripts/load_check.lua "$LRETRY_TEST_URL" 2
echo
echo "From the command line: lretry load URL -c 16 -n 5000, 10% of replies a 503"
build/lretry load "$LRETRY_TEST_URL/flaky?fail=10" -c 16 -n 5000
