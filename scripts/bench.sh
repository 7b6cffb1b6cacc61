#!/usr/bin/env bash
# mamoru's benchmark (issue 7, docs/PERFORMANCE.md): provisioning speed and memory side by
# side with acme-tiny, certbot and lego, the idle daemon with 1,000 sites, and `status`, all
# against a Pebble it starts on loopback. Run as root on Debian 12:
#   sudo bash scripts/bench.sh               (extra arguments go to bench/run.py, e.g. --runs 9)
#   sudo bash scripts/bench.sh --peers acme-tiny --only a,bp,c      (a part of it)
# It installs what it needs first: scripts/setup.sh (Pebble, nginx, the venv), then Debian's
# acme-tiny, certbot and lego (the peers) and GNU time (peak memory). acme-tiny has no responder
# of its own: the bench serves its --acme-dir with a private nginx on Pebble's http-01 port.
# A peer that cannot be installed is skipped, and the table says so. It takes about fifteen
# minutes, most of it the peers' (b') and (c).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

export DEBIAN_FRONTEND=noninteractive
need=()
for pkg in acme-tiny certbot lego time; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -q
  # One at a time: a peer that is not available must not stop the others or the benchmark.
  for pkg in "${need[@]}"; do
    apt-get install -y -q --no-install-recommends "$pkg" \
      || echo "scripts/bench.sh: could not install $pkg; the benchmark goes on without it" >&2
  done
fi
exec .venv/bin/python bench/run.py "$@"
