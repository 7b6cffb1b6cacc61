"""A provision imports what its sites need, against a real Pebble: an http-01 site's order
loads neither `acme`/`josepy` (only External Account Binding uses them) nor the dns-01 code;
a registration with EAB does load them, and signs with them. Neither loads the standard
library's HTTP client or server (mamoru's transport and responder are its own), the install
code of a site without a web server, the check or fleet code, idna for ASCII names, or
shutil and secrets (docs/PERFORMANCE.md: what a process per certificate pays)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from mamoru.challenges.dns.base import CHALLENGE_TYPE
from mamoru.issuance import DNS01
from tests.helpers import write_config
from tests.servers.pebble import Pebble
from tests.servers.webroot_http import WebrootServer

pytestmark = pytest.mark.e2e

WATCH = ("acme", "josepy", "mamoru.challenges.dns", "dns", "http.client", "http.server",
         "socketserver", "email.parser", "mamoru.install.nginx", "mamoru.install.apache",
         "mamoru.install.verify", "mamoru.check", "mamoru.fleet", "idna", "secrets", "shutil")

PROBE = """
import json, sys
from mamoru.cli import main
watch = json.loads(sys.argv[2])
sys.argv = ["mamoru", *json.loads(sys.argv[1])]
code = main()
loaded = sorted({w for w in watch for m in sys.modules if m == w or m.startswith(w + ".")})
print(json.dumps({"code": code, "loaded": loaded}), file=sys.stderr)
"""


def provision_loading(config: Path) -> dict[str, object]:
    result = subprocess.run([sys.executable, "-c", PROBE,
                             json.dumps(["provision", "--json", "-c", str(config)]),
                             json.dumps(WATCH)], capture_output=True, text=True, timeout=120)
    answer: dict[str, object] = json.loads(result.stderr.strip().splitlines()[-1])
    return answer


def test_dns01_name_is_the_dns_modules() -> None:
    assert DNS01 == CHALLENGE_TYPE


def test_http01_provision_loads_no_josepy_acme_or_dns_code(tmp_path: Path,
                                                           pebble: Pebble) -> None:
    webroot = tmp_path / "webroot"
    webroot.mkdir()
    config = write_config(tmp_path, pebble.directory_url, pebble.ca_bundle, {
        "clinic": {"domains": ["clinic.example"], "challenge": {"webroot": str(webroot)}}})
    with WebrootServer(webroot, pebble.http_port):
        answer = provision_loading(config)
    assert answer == {"code": 0, "loaded": []}


def test_registration_with_eab_loads_acme_and_josepy(
        tmp_path: Path, pebble_factory: Callable[..., Pebble]) -> None:
    hmac_key = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W"
    pebble = pebble_factory(eab_keys={"kid-1": hmac_key})
    webroot = tmp_path / "webroot"
    webroot.mkdir()
    config = write_config(tmp_path, pebble.directory_url, pebble.ca_bundle, {
        "clinic": {"domains": ["clinic.example"], "challenge": {"webroot": str(webroot)}}},
        acme={"eab": {"kid": "kid-1", "hmac_key": hmac_key}})
    with WebrootServer(webroot, pebble.http_port):
        answer = provision_loading(config)
    assert answer == {"code": 0, "loaded": ["acme", "josepy"]}
