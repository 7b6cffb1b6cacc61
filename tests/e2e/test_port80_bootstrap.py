"""The first certificate on a REAL nginx or Apache that has no port-80 server at all (a fresh
server, or one whose distribution default site was removed), from the REAL Pebble.

Before the first order mamoru writes its own temporary plain-HTTP server for the site's names
(install/bootstrap.py), tests and reloads, validates, then writes the full site. These tests
fail without that step: nothing would answer the CA on the http-01 port ("connection
refused"). When the order fails, the server's config is left exactly as mamoru found it."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_install_servers import NAMES, Clinic, serves
from tests.helpers import provision_json, run_mamoru
from tests.servers.apache import Apache, make_traversable
from tests.servers.nginx import Nginx
from tests.servers.pebble import Pebble
from tests.servers.ports import free_port

pytestmark = pytest.mark.e2e


def _bare_clinic(kind: str, tmp_path: Path, pebble: Pebble, http: int,
                 nginx_factory: Callable[..., Nginx],
                 apache_factory: Callable[..., Apache]) -> Clinic:
    https = free_port()
    webroot = tmp_path / "acme-webroot"
    webroot.mkdir()
    root_file = tmp_path / "pebble-root.pem"
    root_file.write_text(pebble.root_pem())
    if kind == "nginx":
        server: Nginx | Apache = nginx_factory()
        docroot = tmp_path / "www"
        docroot.mkdir()
        server.start()  # no server block at all: nothing listens
    else:
        # Apache must listen somewhere to start: an unrelated port, nothing on the http port.
        server = apache_factory(listen=[free_port()])
        docroot = server.docroot
        make_traversable(webroot, readable=True)
        server.start()
    (docroot / "index.html").write_text("<!doctype html><title>Clinic</title><p>Welcome</p>\n")
    (docroot / "index.html").chmod(0o644)
    return Clinic(kind, server, pebble, tmp_path, https, http, webroot, docroot, root_file)


@pytest.fixture(params=["nginx", "apache"])
def bare(request: pytest.FixtureRequest, tmp_path: Path,
         pebble_factory: Callable[..., Pebble], nginx_factory: Callable[..., Nginx],
         apache_factory: Callable[..., Apache]) -> Iterator[Clinic]:
    http = free_port()
    pebble = pebble_factory(http_port=http)  # the CA fetches http-01 from the web server
    yield _bare_clinic(request.param, tmp_path, pebble, http, nginx_factory, apache_factory)


def http_get(port: int, name: str, path: str) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path, headers={"Host": name})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def refused(port: int, settle: float = 5.0) -> bool:
    """Nothing listens on `port` (within `settle` seconds: a reload lets the old workers
    finish, and they hold the listening socket until then)."""
    deadline = time.monotonic() + settle
    while True:
        try:
            http_get(port, NAMES[0], "/")
        except ConnectionRefusedError:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def events(clinic: Clinic) -> list[dict[str, Any]]:
    log = clinic.tmp / "log" / "events.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def conf_files(clinic: Clinic) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(clinic.server.conf_dir.iterdir())}


def test_the_first_certificate_on_a_server_with_no_port80_server(bare: Clinic) -> None:
    assert refused(bare.http, 0), "the test needs a server with nothing on the http port"
    summary = provision_json("-c", str(bare.config()))
    site = summary["sites"][0]
    assert summary["ok"] and site["status"] == "issued", summary

    # Every name serves the new certificate over TLS.
    assert serves(bare, site["serial"])
    # The full site replaced the temporary server: http:// redirects to https://, and the
    # challenge path is still answered from the webroot (for every renewal to come).
    text = bare.generated().read_text()
    assert "temporary" not in text and ("ssl_certificate" in text or "SSLEngine" in text)
    for name in NAMES:
        status, headers, _ = http_get(bare.http, name, "/page?x=1")
        assert status == 301 and headers["Location"] == f"https://{name}:{bare.https}/page?x=1"
    challenge = bare.webroot / ".well-known" / "acme-challenge"
    (challenge / "renewal-probe-token-0123456789").write_text("probe-answer")
    (challenge / "renewal-probe-token-0123456789").chmod(0o644)
    status, _, body = http_get(bare.http, NAMES[1], "/.well-known/acme-challenge/"
                               "renewal-probe-token-0123456789")
    assert (status, body) == (200, b"probe-answer")

    kinds = [e["kind"] for e in events(bare) if e.get("site") == "clinic"]
    assert "port80-up" in kinds and "port80-down" not in kinds, kinds
    assert kinds.index("port80-up") < kinds.index("order") < kinds.index("installed")
    up = next(e for e in events(bare) if e["kind"] == "port80-up")
    assert up["served"] is True, up  # mamoru saw its probe file served before ordering
    # No probe file is left in the webroot.
    assert not [p for p in challenge.iterdir() if p.name.startswith("mamoru-probe-")]


def test_a_failed_validation_takes_the_temporary_server_back(
        tmp_path: Path, pebble_factory: Callable[..., Pebble],
        nginx_factory: Callable[..., Nginx], apache_factory: Callable[..., Apache],
        request: pytest.FixtureRequest) -> None:
    for kind in ("nginx", "apache"):
        where = tmp_path / kind
        where.mkdir()
        # The CA validates on another port than the server's plain-HTTP one: validation fails
        # although mamoru's temporary server is up and answering.
        pebble = pebble_factory(http_port=free_port())
        clinic = _bare_clinic(kind, where, pebble, free_port(), nginx_factory, apache_factory)
        before = conf_files(clinic)
        result = run_mamoru("provision", "-c", str(clinic.config()), check=1)
        assert "clinic" in result.stderr

        assert conf_files(clinic) == before, kind  # every file as before: mamoru's is gone
        assert refused(clinic.http), kind  # the server was reloaded without it
        assert not (clinic.tmp / "live" / "clinic").exists()
        kinds = [e["kind"] for e in events(clinic) if e.get("site") == "clinic"]
        assert "port80-up" in kinds and "port80-down" in kinds, kinds
        assert kinds.index("port80-up") < kinds.index("port80-down")
        down = next(e for e in events(clinic) if e["kind"] == "port80-down")
        assert down["reloaded"] is True and not down.get("problems"), down
        # The server still runs and still passes its own config test.
        assert clinic.server.config_test().returncode == 0, kind
        clinic.server.stop()


def test_the_full_site_stays_after_a_renewal(bare: Clinic) -> None:
    """A renewal does not bootstrap again (the site's own plain-HTTP server is there)."""
    config = bare.config()
    first = provision_json("-c", str(config))["sites"][0]
    second = provision_json("-c", str(config), "--force")["sites"][0]
    assert second["status"] == "renewed" and second["serial"] != first["serial"]
    assert serves(bare, second["serial"])
    ups = [e for e in events(bare) if e["kind"] == "port80-up"]
    assert len(ups) == 1, ups
