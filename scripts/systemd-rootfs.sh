#!/usr/bin/env bash
# Builds (once) the Debian 12 root file system the systemd suite (tests/systemd/) boots with
# systemd-nspawn, and prints its path. Cached per package list in
# /var/cache/mamoru-test/rootfs-<hash>; rebuilt only when that directory is missing.
# Run as root; needs debootstrap (scripts/setup.sh installs it).
#
# procps is not asked for (a minimal Debian has no /bin/kill, and mamoru's units must not need
# it: ExecReload= goes through systemctl), though Debian's apache2 package pulls it in.
set -euo pipefail

PACKAGES="systemd,systemd-sysv,dbus,nginx,apache2,ca-certificates,python3,openssl"
MIRROR=${MAMORU_TEST_MIRROR:-http://deb.debian.org/debian}
CACHE=${MAMORU_TEST_CACHE:-/var/cache/mamoru-test}
hash=$(printf '%s\n%s\n' "$PACKAGES" "bookworm" | sha256sum | cut -c1-12)
root="$CACHE/rootfs-$hash"

if [ -f "$root/.mamoru-rootfs-complete" ]; then
  echo "$root"
  exit 0
fi
mkdir -p "$CACHE"
tmp="$root.partial.$$"
rm -rf "$tmp"
# A failed or interrupted build never leaves a half tree under the cached name.
trap 'rm -rf "$tmp"' EXIT
debootstrap --variant=minbase --include="$PACKAGES" bookworm "$tmp" "$MIRROR" >&2
# The web servers must not start on the host's ports 80/443 at boot; the suite configures and
# starts them itself. Nothing else is changed in the tree.
chroot "$tmp" systemctl disable nginx.service apache2.service >/dev/null 2>&1 || true
chroot "$tmp" apt-get clean
touch "$tmp/.mamoru-rootfs-complete"
rm -rf "$root"
mv "$tmp" "$root"
trap - EXIT
echo "$root"
