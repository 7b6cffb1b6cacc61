#!/usr/bin/env bash
# Installs what mamoru's tests and demo need on a fresh Debian 12 machine (run as root):
# Debian's pebble (a test ACME CA), nginx, Apache, systemd-analyze and strace (the reliability
# suite traces how key files are created), BIND 9 and Knot DNS with their tools (the dns-01
# tests run real primaries; the hook test calls nsupdate), certbot (a real certbot state to
# import), systemd-container and debootstrap (the systemd suite), chromium and libnss3-tools'
# certutil (the real-browser suite, tests/browser, and `mamoru check --browser`), PostgreSQL 15
# (the fleet tests run a real database), then a venv in .venv with mamoru and its test and fleet
# extras. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

export DEBIAN_FRONTEND=noninteractive
if [ "$(id -u)" -ne 0 ]; then
  echo "scripts/setup.sh: run as root (it installs Debian packages): sudo bash $0" >&2
  exit 2
fi
need=()
# bind9/knot: the dns-01 tests' real DNS servers; certbot + its nginx plugin: the
# import-certbot tests make a real certbot state with them; systemd-container + debootstrap:
# the systemd suite (tests/systemd/) boots Debian 12 under a real systemd (scripts/build-deb.sh
# needs only dpkg-deb, part of dpkg); chromium + certutil: the real-browser suite and the
# fleet page; postgresql-15: the fleet's database.
for pkg in pebble nginx-light apache2 systemd openssl ca-certificates python3-venv strace \
           bind9 bind9-utils bind9-dnsutils knot knot-dnsutils certbot python3-certbot-nginx \
           systemd-container debootstrap chromium libnss3-tools postgresql-15; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -q
  # policy-rc.d 101: the packages must not start the distribution's own nginx/Apache on
  # port 80 (nor named/knotd on port 53, nor a PostgreSQL cluster on 5432); the tests and the
  # demo run their own instances on loopback.
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
# The systemd suite's Debian 12 root file system: built once (about a minute), then cached in
# /var/cache/mamoru-test (the suite builds it too when it is missing).
bash scripts/systemd-rootfs.sh >/dev/null
# The editable tree reads its catalogs from src/: compile them there too (a wheel or
# `pip install .` compiles them into the package, setup.py).
.venv/bin/pybabel compile -D mamoru -d src/mamoru/locale
echo "setup: ok ($(.venv/bin/python --version), mamoru $(.venv/bin/python -c 'import mamoru; print(mamoru.__version__)'))"
