#!/usr/bin/env bash
# Run every test suite and end with one line: "N passed, M failed".
# Installs and builds what is missing (scripts/setup.sh --asan), starts the
# bundled server, then runs: the C loop and histogram tests, the busted
# specs, and all of them again with AddressSanitizer + UBSan (leak checking
# on).
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD
start=$(date +%s)

scripts/setup.sh --asan || { echo "0 passed, 1 failed"; exit 1; }
. scripts/server.sh
start_test_server build/tests/server/lretry-test-server \
  || { echo "0 passed, 1 failed"; exit 1; }
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

total_pass=0
total_fail=0
logdir=$(mktemp -d)

# count SUITE PASSED FAILED
count() {
  printf '%-22s %4d passed, %d failed\n' "$1" "$2" "$3"
  total_pass=$((total_pass + $2))
  total_fail=$((total_fail + $3))
}

# A C runner prints "N passed, M failed" as its last line.
run_c() {
  local name=$1 log=$logdir/$1.log line
  shift
  timeout 600 "$@" >"$log" 2>&1
  local rc=$?
  line=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$log" | tail -n1)
  if [ -z "$line" ]; then
    cat "$log"; count "$name" 0 1; return
  fi
  set -- $line
  local failed=$3
  if [ $rc -ne 0 ] && [ "$failed" -eq 0 ]; then failed=1; fi
  [ "$failed" -ne 0 ] && grep -v '^ok ' "$log"
  count "$name" "$1" "$failed"
}

# busted in TAP: one "ok"/"not ok" line per test. A sanitizer report or a
# crash makes the run fail even when every test line says ok.
run_busted() {
  local name=$1 log=$logdir/$1.log
  shift
  timeout 900 "$@" -o TAP >"$log" 2>&1
  local rc=$?
  local pass fail
  pass=$(grep -c '^ok ' "$log")
  fail=$(grep -c '^not ok ' "$log")
  if [ $rc -ne 0 ] && [ "$fail" -eq 0 ]; then fail=1; fi
  if grep -qE 'ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:' "$log"; then
    fail=$((fail + 1))
  fi
  [ "$fail" -ne 0 ] && grep -v '^ok ' "$log" | head -200
  count "$name" "$pass" "$fail"
}

asan_lib=$(gcc -print-file-name=libasan.so)
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
# Leaks are checked in our own code only: lua5.4 and busted are stock.
export LSAN_OPTIONS=suppressions=$root/tests/lsan.supp:print_suppressions=0

run_c "c loop" build/tests/c/test_loop
run_c "c histogram" build/tests/c/test_histogram
run_c "c clock" build/tests/c/test_clock
run_busted "spec" env LRETRY_BIN="$root/build/lretry" \
  lua5.4 /usr/bin/busted
run_c "c loop (asan)" env ASAN_OPTIONS=detect_leaks=1 \
  build-asan/tests/c/test_loop
run_c "c histogram (asan)" env ASAN_OPTIONS=detect_leaks=1 \
  build-asan/tests/c/test_histogram
run_c "c clock (asan)" env ASAN_OPTIONS=detect_leaks=1 \
  build-asan/tests/c/test_clock
run_busted "spec (asan)" env LRETRY_BIN="$root/build-asan/lretry" \
  LD_PRELOAD="$asan_lib" ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 \
  lua5.4 /usr/bin/busted --cpath="build-asan/?.so"

rm -rf "$logdir"
echo "test time: $(( $(date +%s) - start )) s"
echo "$total_pass passed, $total_fail failed"
[ "$total_fail" -eq 0 ]
