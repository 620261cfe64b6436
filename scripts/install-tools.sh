#!/usr/bin/env bash
# The system tools the test suite talks to for real: Prometheus (server + promtool), dnsmasq
# (a DNS server for discovery tests), redis-server (the cache's shared store and shared rate
# limits) and docker-compose (to validate compose files).
# Says what it installs before installing it (apt-get, as root). Where it cannot install them
# the tests that need them skip and say so; in CI (TAILGATE_REQUIRE_TOOLS=1) that is a failure.
set -euo pipefail

need=()
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
command -v dnsmasq >/dev/null 2>&1 || need+=(dnsmasq)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
[ ${#need[@]} -eq 0 ] && exit 0
mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)

cannot() {
  echo "==> system tools: cannot install ${need[*]} here ($1)." >&2
  if [ "${TAILGATE_REQUIRE_TOOLS:-}" = 1 ]; then
    echo "    TAILGATE_REQUIRE_TOOLS=1: a missing tool is a failure" >&2
    exit 1
  fi
  echo "    The tests that need them will skip. To run them: sudo apt-get install -y ${need[*]}" >&2
  exit 0
}
[ "$(id -u)" -eq 0 ] || cannot "not root"
command -v apt-get >/dev/null 2>&1 || cannot "no apt-get"

echo "==> system tools: installing ${need[*]} with apt-get (the integration tests run them)"
export DEBIAN_FRONTEND=noninteractive
apt_install() {
  apt-get install -y -q --no-install-recommends "${need[@]}" </dev/null >/dev/null
}
if ! apt_install; then
  apt-get update -q </dev/null >/dev/null || cannot "apt-get update failed"
  apt_install || cannot "apt-get install failed"
fi
# The Debian packages start services on install where an init system runs; tests start their own.
for svc in prometheus dnsmasq redis-server; do
  (command -v systemctl >/dev/null 2>&1 && systemctl stop "$svc" >/dev/null 2>&1) || true
done
echo "    installed: ${need[*]}"
