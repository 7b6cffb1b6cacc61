#!/usr/bin/env bash
# The whole test suite: unit, integration (real nginx -t, systemd-analyze) and end-to-end
# (real Pebble, nginx, Apache, acme2certifier on loopback), and the systemd suite (Debian 12
# booted under a real systemd with systemd-nspawn, mamoru installed from its .deb; a few
# minutes). Run as root on Debian 12:
#   sudo bash scripts/test.sh            (extra arguments go to pytest)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check src tests bench scripts
.venv/bin/mypy
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
