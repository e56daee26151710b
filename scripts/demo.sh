#!/usr/bin/env bash
# The main job: install and build what is missing, start the bundled test
# server on loopback, and run the demo script against it (no network needed).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
. scripts/server.sh
start_test_server build/tests/server/lretry-test-server
echo "demo: test server at $LRETRY_TEST_URL"
build/lretry scripts/demo.lua "$LRETRY_TEST_URL"
