#!/usr/bin/env bash
# Install everything opsbook needs on a Debian 12 machine, as root: Debian packages for the lab and tests,
# and a virtualenv (.venv) with the pinned Python dependencies. Safe to run again: it only adds what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "bootstrap: run as root (the lab needs network namespaces and systemd-nspawn)" >&2
  exit 1
fi

APT_PACKAGES=(
  systemd-container debootstrap apt-cacher-ng iproute2 nftables openssh-client sshpass
  python3-venv python3-dev ca-certificates curl pebble wrk lynis postgresql-client
  age  # the lab's backup key pair (age-keygen) and the tests that decrypt the store's copies
)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "bootstrap: apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# the distribution's apt-cacher-ng service is not used: the lab runs its own instance on the lab bridge
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  systemctl disable --now apt-cacher-ng >/dev/null 2>&1 || true
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.opsbook-deps
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "bootstrap: installing Python dependencies (pinned in pyproject.toml)"
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e ".[dev]"
  echo "$want" > "$stamp"
fi
# promtool and amtool (the fast tier's alert rule tests and config checks) from Debian's own packages, the
# versions the monitoring hosts get; unpacked into .venv/bin, not installed: installing the packages would start
# a Prometheus and an Alertmanager on this machine
if [ ! -x .venv/bin/promtool ] || [ ! -x .venv/bin/amtool ]; then
  echo "bootstrap: unpacking promtool and amtool from Debian's prometheus packages"
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download -q prometheus prometheus-alertmanager >/dev/null 2>&1) || {
    apt-get update -qq && (cd "$tmp" && apt-get download -q prometheus prometheus-alertmanager >/dev/null); }
  for deb in "$tmp"/*.deb; do dpkg-deb -x "$deb" "$tmp/root"; done
  install -m 0755 "$tmp/root/usr/bin/promtool" "$tmp/root/usr/bin/amtool" .venv/bin/
  rm -rf "$tmp"
fi
echo "bootstrap: ready (.venv/bin/opsbook)"
