#!/usr/bin/env bash
# Install what lretry needs from Debian (only what is missing) and build it.
#   scripts/setup.sh            build/       (normal build)
#   scripts/setup.sh --asan     build-asan/  as well (ASan + UBSan)
#   scripts/setup.sh --bench    also nginx (with its echo module), wrk, GNU time, curl and valgrind for scripts/bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(cmake gcc make pkg-config lua5.4 liblua5.4-dev libcurl4-openssl-dev
  libuv1-dev libmicrohttpd-dev lua-busted lua-cjson openssl)
asan=no
for opt in "$@"; do
  case $opt in
    --asan) asan=yes ;;
    --bench) packages+=(nginx-light libnginx-mod-http-echo wrk time curl valgrind) ;;
    *) echo "setup: unknown option $opt" >&2; exit 2 ;;
  esac
done
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
    || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  if [ "$(id -u)" -ne 0 ]; then sudo=sudo; else sudo=; fi
  $sudo apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${missing[@]}" >/dev/null
fi

build() {
  local dir=$1; shift
  cmake -S . -B "$dir" "$@" >/dev/null
  cmake --build "$dir" -j"$(nproc)" >/dev/null
}
build build -DCMAKE_BUILD_TYPE=RelWithDebInfo
if [ "$asan" = yes ]; then
  build build-asan -DCMAKE_BUILD_TYPE=Debug -DLRETRY_SANITIZE=ON
fi
