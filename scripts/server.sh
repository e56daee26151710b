# Sourced by the demo and test scripts: start the bundled test server on
# free loopback ports and stop it when the calling script exits.
#   . scripts/server.sh; start_test_server build/tests/server/lretry-test-server
# makes a throw-away self-signed certificate for the TLS port (needs the
# openssl command), then exports
#   LRETRY_TEST_URL       http://127.0.0.1:PORT   the HTTP routes
#   LRETRY_FAULT_URL      http://127.0.0.1:PORT   the misbehaving raw port
#   LRETRY_BLACKHOLE_URL  http://127.0.0.1:PORT   connects never complete
#   LRETRY_TLS_URL        https://127.0.0.1:PORT  the HTTP routes over TLS
#   LRETRY_TLS_CA         the certificate file, to trust as a CA
# and sets TEST_SERVER_PID and TEST_SERVER_DIR (the certificate's temp dir).
start_test_server() {
  local bin=$1 ports
  if ! command -v openssl >/dev/null 2>&1; then
    echo "test server: the openssl command is missing (it makes the TLS" \
      "certificate); run scripts/setup.sh or apt-get install openssl" >&2
    return 1
  fi
  TEST_SERVER_DIR=$(mktemp -d)
  TEST_SERVER_PID=
  # Set before anything can fail, so the directory never outlives us.
  trap 'kill "$TEST_SERVER_PID" 2>/dev/null; rm -rf "$TEST_SERVER_DIR"' EXIT
  if ! openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost \
    -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" \
    -keyout "$TEST_SERVER_DIR/key.pem" -out "$TEST_SERVER_DIR/cert.pem" \
    >/dev/null 2>&1; then
    echo "test server: openssl could not make a certificate" >&2
    return 1
  fi
  ports=$TEST_SERVER_DIR/ports
  "$bin" 0 --tls-cert "$TEST_SERVER_DIR/cert.pem" \
    --tls-key "$TEST_SERVER_DIR/key.pem" >"$ports" 2>/dev/null &
  TEST_SERVER_PID=$!
  # The server prints all its lines at once; "tls" is the last.
  for _ in $(seq 200); do
    grep -q '^tls ' "$ports" && break
    kill -0 "$TEST_SERVER_PID" 2>/dev/null || break
    sleep 0.05
  done
  if ! grep -q '^tls ' "$ports"; then
    echo "test server did not start" >&2
    return 1
  fi
  LRETRY_TEST_URL="http://127.0.0.1:$(head -n1 "$ports")"
  LRETRY_FAULT_URL="http://127.0.0.1:$(sed -n 's/^fault //p' "$ports")"
  LRETRY_BLACKHOLE_URL="http://127.0.0.1:$(sed -n 's/^blackhole //p' "$ports")"
  LRETRY_TLS_URL="https://127.0.0.1:$(sed -n 's/^tls //p' "$ports")"
  LRETRY_TLS_CA=$TEST_SERVER_DIR/cert.pem
  export LRETRY_TEST_URL LRETRY_FAULT_URL LRETRY_BLACKHOLE_URL LRETRY_TLS_URL \
    LRETRY_TLS_CA
}
