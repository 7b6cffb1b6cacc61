#!/usr/bin/env bash
# Installs what mamoru's tests and demo need on a fresh Debian 12 machine (run as root):
# Debian's pebble (a test ACME CA), nginx, Apache, systemd-analyze and strace (the reliability
# suite traces how key files are created), PostgreSQL 15 and Chromium (the fleet tests run a
# real database and drive the fleet page in a real headless browser), then a venv in .venv
# with mamoru and its test and fleet extras. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

export DEBIAN_FRONTEND=noninteractive
if [ "$(id -u)" -ne 0 ]; then
  echo "scripts/setup.sh: run as root (it installs Debian packages): sudo bash $0" >&2
  exit 2
fi
need=()
for pkg in pebble nginx-light apache2 systemd openssl ca-certificates python3-venv strace \
    postgresql-15 chromium; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -q
  # policy-rc.d 101: the packages must not start the distribution's own nginx/Apache on
  # port 80 (nor a PostgreSQL cluster on 5432); the tests and the demo run their own
  # instances on loopback.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  apt-get install -y -q --no-install-recommends "${need[@]}"
  rm -f /usr/sbin/policy-rc.d
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/pip install -q --upgrade pip >/dev/null
.venv/bin/pip install -q -e '.[test,fleet]'
echo "setup: ok ($(.venv/bin/python --version), mamoru $(.venv/bin/python -c 'import mamoru; print(mamoru.__version__)'))"
