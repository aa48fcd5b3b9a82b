#!/usr/bin/env bash
# Runs Burrow's whole test suite. On a fresh Debian/Ubuntu machine it first
# installs the third-party programs the end-to-end tests drive (curl,
# nghttp2-client, nginx, caddy, tcpdump, iproute2, iptables, aioquic), using apt and pip when it can.
# Tests whose tool is still missing skip loudly, unless BURROW_REQUIRE_TOOLS
# is set (CI sets it), in which case they fail.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
for pair in curl:curl nghttp:nghttp2-client h2load:nghttp2-client nginx:nginx caddy:caddy tcpdump:tcpdump openssl:openssl ip:iproute2 iptables:iptables pkill:procps; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || need_apt+=("${pair#*:}")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && sudo="sudo"
  if command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" -eq 0 ] || [ -n "$sudo" ]; }; then
    echo "installing: ${need_apt[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
      $(printf '%s\n' "${need_apt[@]}" | sort -u) >/dev/null
  else
    echo "WARNING: cannot install ${need_apt[*]} (no apt-get or no root); those tests will skip"
  fi
fi
# nginx's Debian package starts a service on :80; the tests run their own.
if command -v systemctl >/dev/null 2>&1; then systemctl stop nginx >/dev/null 2>&1 || true; fi
pkill -x nginx >/dev/null 2>&1 || true
# Caddy's package starts one on :80 and :443 the same way.
if command -v systemctl >/dev/null 2>&1; then systemctl stop caddy >/dev/null 2>&1 || true; fi
pkill -x caddy >/dev/null 2>&1 || true

if ! python3 -c 'import aioquic' >/dev/null 2>&1; then
  python3 -m pip install --quiet --disable-pip-version-check 'aioquic==1.7.2' \
    || echo "WARNING: could not install aioquic; the HTTP/3 client test will skip"
fi

cargo test --workspace --all-targets "$@"
