#!/usr/bin/env bash
# Builds the Debian 12 package: dist/mamoru_<version>_<arch>.deb. Install it with
#   sudo apt install ./dist/mamoru_<version>_<arch>.deb
# It holds mamoru in its own venv (/opt/mamoru/venv, on Debian's python3), /usr/bin/mamoru,
# the systemd units, and the example config; packaging/debian/ has the maintainer scripts.
# Python dependencies come from PyPI as wheels (pip), nothing else from the network.
#   MAMORU_DEB_VERSION=0.1.0+local2 bash scripts/build-deb.sh   (another version, e.g. to
#   test an upgrade)
set -euo pipefail
cd "$(dirname "$0")/.."
top=$PWD

PY=${PYTHON:-/usr/bin/python3}
version=${MAMORU_DEB_VERSION:-$("$PY" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')}
arch=$(dpkg --print-architecture)
pyver=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
next=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1] + 1}")')
prefix=/opt/mamoru/venv

stage=$(mktemp -d "${TMPDIR:-/tmp}/mamoru-deb.XXXXXX")
trap 'rm -rf "$stage"' EXIT
pkg=$stage/mamoru
mkdir -p "$pkg/DEBIAN" "$pkg/opt/mamoru" "$pkg/usr/bin" "$pkg/lib/systemd/system" \
  "$pkg/etc/mamoru" "$pkg/usr/share/doc/mamoru"

# The venv is made where it is staged and then moved to /opt/mamoru/venv: every path pip wrote
# into it (script shebangs, pyvenv.cfg, byte-code file names) is rewritten below.
"$PY" -m venv "$pkg$prefix"
"$pkg$prefix/bin/pip" install -q --disable-pip-version-check --no-warn-script-location "$top"
"$pkg$prefix/bin/pip" uninstall -q -y pip setuptools wheel >/dev/null 2>&1 || true
rm -f "$pkg$prefix"/bin/activate* "$pkg$prefix"/bin/Activate.ps1 "$pkg$prefix"/bin/pip*
grep -rlIF "$pkg$prefix" "$pkg$prefix/bin" "$pkg$prefix/pyvenv.cfg" 2>/dev/null \
  | xargs -r sed -i "s#$pkg$prefix#$prefix#g"
if grep -rqIF "$stage" "$pkg$prefix/bin" "$pkg$prefix/pyvenv.cfg"; then
  echo "build-deb.sh: the staging path is still named in the venv" >&2
  exit 1
fi
# Byte code compiled now, naming the installed paths (the sandbox keeps /opt read-only, so
# Python could never write it at run time).
find "$pkg$prefix" -name __pycache__ -type d -prune -exec rm -rf {} +
"$pkg$prefix/bin/python" -m compileall -q -j 0 -s "$pkg" -p / "$pkg$prefix/lib" >/dev/null
ln -s "$prefix/bin/mamoru" "$pkg/usr/bin/mamoru"

install -m 644 systemd/mamoru.service systemd/mamoru-renew.service systemd/mamoru-renew.timer \
  "$pkg/lib/systemd/system/"
install -m 644 config.example.yaml "$pkg/etc/mamoru/config.example.yaml"
install -m 644 README.md "$pkg/usr/share/doc/mamoru/README.md"
printf 'mamoru %s\nLicense: Apache-2.0\n' "$version" > "$pkg/usr/share/doc/mamoru/copyright"
for script in postinst prerm postrm; do
  install -m 755 "packaging/debian/$script" "$pkg/DEBIAN/$script"
done
echo /etc/mamoru/config.example.yaml > "$pkg/DEBIAN/conffiles"

size=$(du -sk --exclude=DEBIAN "$pkg" | cut -f1)
cat > "$pkg/DEBIAN/control" <<CONTROL
Package: mamoru
Version: $version
Architecture: $arch
Maintainer: mamoru maintainers <mamoru@localhost>
Installed-Size: $size
Depends: python3 (>= $pyver), python3 (<< $next), libc6 (>= 2.36), systemd
Recommends: ca-certificates, nginx | apache2
Section: net
Priority: optional
Homepage: https://github.com/mamoru/mamoru
Description: keeps a clinic's HTTPS certificates valid with nobody touching them
 An ACME client (Let's Encrypt or any RFC 8555 CA) and renewal daemon that installs
 certificates into nginx or Apache and renews them under a hardened systemd unit.
 Set it up with `mamoru init` and `mamoru provision`, then
 `systemctl enable --now mamoru`.
CONTROL

mkdir -p dist
out="dist/mamoru_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zgzip --build "$pkg" "$out" >/dev/null
echo "$out"
