#!/usr/bin/env bash
# Installs the system tools the test suite talks to for real: Prometheus (server + promtool),
# dnsmasq (a DNS server for discovery tests), redis-server (the cache's shared store and shared
# rate limits) and docker-compose (to validate compose files).
# Runs apt-get only for what is missing, and only as root; otherwise says what to install.
set -euo pipefail

need=()
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
command -v dnsmasq >/dev/null 2>&1 || need+=(dnsmasq)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
if [ "$(id -u)" -ne 0 ]; then
  echo "tests that need ${need[*]} will be skipped; install them with: sudo apt-get install -y ${need[*]}" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt_install() {
  apt-get install -y -q --no-install-recommends "${need[@]}" </dev/null >/dev/null
}
if ! apt_install; then
  apt-get update -q </dev/null >/dev/null
  apt_install
fi
# The Debian packages start services on install where an init system runs; tests start their own.
for svc in prometheus dnsmasq redis-server; do
  (command -v systemctl >/dev/null 2>&1 && systemctl stop "$svc" >/dev/null 2>&1) || true
done
echo "installed: ${need[*]}"
