# Sourced by the demo and test scripts: start the bundled test server on a
# free loopback port and stop it when the calling script exits.
#   . scripts/server.sh; start_test_server build/tests/server/lretry-test-server
# sets LRETRY_TEST_URL (exported) and TEST_SERVER_PID.
start_test_server() {
  local bin=$1 portfile
  portfile=$(mktemp)
  "$bin" 0 >"$portfile" 2>/dev/null &
  TEST_SERVER_PID=$!
  trap 'kill "$TEST_SERVER_PID" 2>/dev/null || true' EXIT
  for _ in $(seq 100); do
    [ -s "$portfile" ] && break
    sleep 0.05
  done
  if [ ! -s "$portfile" ]; then
    echo "test server did not start" >&2
    return 1
  fi
  LRETRY_TEST_URL="http://127.0.0.1:$(head -n1 "$portfile")"
  export LRETRY_TEST_URL
  rm -f "$portfile"
}
