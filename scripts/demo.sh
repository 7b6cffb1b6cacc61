#!/usr/bin/env bash
# The local demo on a fresh Debian 12 machine (as root): installs Pebble, nginx and mamoru,
# then provisions a demo clinic site against Pebble on loopback and shows the served
# certificate. Nothing leaves 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python scripts/demo.py "$@"
