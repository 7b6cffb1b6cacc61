"""The local demo: a real ACME CA (Pebble) and a real nginx on loopback, one clinic site
provisioned by `mamoru provision`, then the certificate nginx now serves, shown by a TLS
handshake like a browser's.

Run it with `sudo bash scripts/demo.sh` (installs what it needs). Everything binds 127.0.0.1
on free ports and lives in a temporary directory; the servers stop when the demo ends.
Pass --keep to leave the directory (config, state, live/, nginx config) for a look around.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml
from cryptography import x509

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.servers.nginx import Nginx  # noqa: E402 - the repo's own loopback launchers
from tests.servers.pebble import Pebble  # noqa: E402
from tests.servers.ports import free_port  # noqa: E402

NAMES = ["clinic.example", "www.clinic.example"]


def served_certificate(port: int, name: str, ca_file: str) -> x509.Certificate:
    context = ssl.create_default_context(cafile=ca_file)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname=name) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the demo directory")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mamoru-demo-"))
    os.chmod(work, 0o755)
    https_port, http_port = free_port(), free_port()
    webroot, docroot = work / "acme-webroot", work / "www"
    webroot.mkdir()
    docroot.mkdir()
    (docroot / "index.html").write_text("<!doctype html><title>Clinic</title><p>Welcome</p>\n")
    try:
        with Pebble(work / "pebble", http_port=http_port) as pebble:
            nginx = Nginx(work / "nginx")
            root_file = work / "pebble-root.pem"
            root_file.write_text(pebble.root_pem())
            config = {
                "acme": {"directory": pebble.directory_url, "ca_bundle": pebble.ca_bundle,
                         "contact": "admin@clinic.example"},
                "paths": {"state": str(work / "state"), "live": str(work / "live"),
                          "event_log": str(work / "events.jsonl")},
                "check": {"ca_bundle": str(root_file)},
                "sites": {"clinic": {
                    "domains": NAMES,
                    "challenge": {"webroot": str(webroot)},
                    "server": {"type": "nginx", "mode": "site", "conf_dir": str(nginx.conf_dir),
                               "listen": {"https": f"127.0.0.1:{https_port}",
                                          "http": f"127.0.0.1:{http_port}"},
                               "root": str(docroot), "test": nginx.test_argv,
                               "reload": nginx.reload_argv, "hsts": 31536000},
                }},
            }
            config_path = work / "config.yaml"
            config_path.write_text(yaml.safe_dump(config, sort_keys=False))
            config_path.chmod(0o600)
            print(f"demo directory: {work}")
            print(f"Pebble (a test ACME CA) at {pebble.directory_url}")
            # Until mamoru's own config exists, plain HTTP must already answer the CA's
            # challenge from the webroot (as a clinic's existing server does).
            nginx.write_conf("000-default", f"server {{\n    listen 127.0.0.1:{http_port} "
                             f"default_server;\n    location /.well-known/acme-challenge/ "
                             f"{{ root {webroot}; }}\n    location / {{ return 404; }}\n}}\n")
            nginx.start()
            print(f"nginx serving http on 127.0.0.1:{http_port}; mamoru adds https on "
                  f"127.0.0.1:{https_port}\n")
            print(f"$ mamoru provision -c {config_path}")
            result = subprocess.run([sys.executable, "-m", "mamoru.cli", "provision",
                                     "-c", str(config_path)], check=False)
            if result.returncode != 0:
                print(f"\nprovision failed (exit {result.returncode}); see above", file=sys.stderr)
                return result.returncode
            print("\nWhat a browser now gets from nginx:")
            live = work / "live" / "clinic"
            for name in NAMES:
                cert = served_certificate(https_port, name, str(root_file))
                san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
                print(f"  https://{name}/ (127.0.0.1:{https_port})")
                print(f"    names:   {', '.join(san.value.get_values_for_type(x509.DNSName))}")
                print(f"    issuer:  {cert.issuer.rfc4514_string()}")
                print(f"    expires: {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
                print(f"    serial:  {cert.serial_number:x}")
            print("  files:")
            for file in ("fullchain.pem", "privkey.pem"):
                path = live / file
                print(f"    {path} -> {os.path.realpath(path)} "
                      f"(mode {oct(os.stat(path).st_mode & 0o777)})")
            print(f"\n$ mamoru check clinic -c {config_path}")
            subprocess.run([sys.executable, "-m", "mamoru.cli", "check", "clinic",
                            "-c", str(config_path), "--connect", f"127.0.0.1:{https_port}",
                            "--http-connect", f"127.0.0.1:{http_port}"], check=False)
            nginx.stop()
        return 0
    finally:
        if args.keep:
            print(f"\nkept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
