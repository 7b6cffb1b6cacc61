"""`mamoru provision` end to end into REAL nginx and REAL Apache, certificates from the REAL
Pebble, http-01 answered by the web server itself from the challenge webroot (the realistic
setup: the user's port-80 server at first, then mamoru's own redirect server).

Each server runs with its own prefix on free 127.0.0.1 ports; mamoru drives it through the
server's own test and reload commands, exactly as configured by a user."""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from tests.helpers import provision_json, run_mamoru, verify_chain, write_config
from tests.servers.apache import Apache, make_traversable
from tests.servers.nginx import Nginx
from tests.servers.pebble import Pebble
from tests.servers.ports import free_port
from tests.servers.tls import make_ca, make_leaf

pytestmark = pytest.mark.e2e

NAMES = ["clinic.example", "www.clinic.example"]
HSTS = 31536000


@dataclass
class Clinic:
    """A clinic machine: a real web server, a real CA, and mamoru's config for them."""

    kind: str
    server: Nginx | Apache
    pebble: Pebble
    tmp: Path
    https: int
    http: int
    webroot: Path
    docroot: Path
    root_file: Path
    server_settings: dict[str, Any] = field(default_factory=dict)

    def config(self, **server: Any) -> Path:
        settings = {"type": self.kind, "mode": "site", "conf_dir": str(self.server.conf_dir),
                    "listen": {"https": f"127.0.0.1:{self.https}",
                               "http": f"127.0.0.1:{self.http}"},
                    "root": str(self.docroot), "test": list(self.server.test_argv),
                    "reload": list(self.server.reload_argv), "hsts": HSTS, "verify_timeout": 5,
                    **server}
        return write_config(self.tmp, self.pebble.directory_url, self.pebble.ca_bundle, {
            "clinic": {"domains": NAMES, "challenge": {"webroot": str(self.webroot)},
                       "server": settings}}, extra={"check": {"after_install": False}})

    def reload_marker(self) -> Any:
        if isinstance(self.server, Nginx):
            return frozenset(self.server.worker_pids())
        return self.server.generation()

    def generated(self) -> Path:
        return self.server.conf_dir / "mamoru-clinic.conf"

    def live_version(self) -> str:
        return os.path.basename(os.readlink(self.tmp / "live" / "clinic"))

    def user_https_block(self, *, include: str | None = None,
                         cert: tuple[Path, Path] | None = None) -> str:
        if isinstance(self.server, Nginx):
            body = f"include {include};" if include else (
                f"ssl_certificate {cert[0]};\n    ssl_certificate_key {cert[1]};" if cert else "")
            return (f"server {{\n    listen 127.0.0.1:{self.https} ssl;\n    server_name "
                    f"{' '.join(NAMES)};\n    {body}\n    root {self.docroot};\n}}\n")
        body = f"Include {include}" if include else (
            f"SSLEngine on\n    SSLCertificateFile {cert[0]}\n    SSLCertificateKeyFile {cert[1]}"
            if cert else "")
        return (f"Listen 127.0.0.1:{self.https}\n<VirtualHost 127.0.0.1:{self.https}>\n"
                f"    ServerName {NAMES[0]}\n    ServerAlias {' '.join(NAMES[1:])}\n"
                f"    DocumentRoot {self.docroot}\n    {body}\n</VirtualHost>\n")


@pytest.fixture(params=["nginx", "apache"])
def clinic(request: pytest.FixtureRequest, tmp_path: Path,
           pebble_factory: Callable[..., Pebble], nginx_factory: Callable[..., Nginx],
           apache_factory: Callable[..., Apache]) -> Iterator[Clinic]:
    https, http = free_port(), free_port()
    pebble = pebble_factory(http_port=http)  # the CA fetches http-01 from the web server
    webroot = tmp_path / "acme-webroot"
    webroot.mkdir()
    root_file = tmp_path / "pebble-root.pem"
    root_file.write_text(pebble.root_pem())
    if request.param == "nginx":
        server: Nginx | Apache = nginx_factory()
        docroot = tmp_path / "www"
        docroot.mkdir()
        # A fresh nginx's default server: serves the webroot on port 80, nothing else.
        server.write_conf("000-default", (
            f"server {{\n    listen 127.0.0.1:{http} default_server;\n"
            f"    location /.well-known/acme-challenge/ {{ root {webroot}; }}\n"
            "    location / { return 404; }\n}\n"))
        server.start(wait_ports=(http,))
    else:
        server = apache_factory(listen=[http])  # the user's ports.conf: Listen on port 80
        docroot = server.docroot
        make_traversable(webroot, readable=True)
        server.write_conf("000-default", (
            f"<VirtualHost 127.0.0.1:{http}>\n    DocumentRoot {webroot}\n"
            f"    <Directory {webroot}>\n        Require all granted\n    </Directory>\n"
            "</VirtualHost>\n"))
        server.start()
    (docroot / "index.html").write_text("<!doctype html><title>Clinic</title><p>Welcome</p>\n")
    (docroot / "index.html").chmod(0o644)
    yield Clinic(request.param, server, pebble, tmp_path, https, http, webroot, docroot,
                 root_file)


# --- what a client sees -----------------------------------------------------------------------


def served_serial(port: int, name: str) -> str:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname=name) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der
    return format(x509.load_der_x509_certificate(der).serial_number, "x")


def serves(clinic: Clinic, serial: str, settle: float = 2.0) -> bool:
    """Every name serves `serial` (old workers may take a connection just after a reload)."""
    deadline = time.monotonic() + settle
    while True:
        if all(served_serial(clinic.https, name) == serial for name in NAMES):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)


def verified_https_get(clinic: Clinic, name: str, path: str) -> http.client.HTTPResponse:
    """GET https://name/path through the real TLS stack, trusting only Pebble's root: the
    served chain must verify to it for `name`."""
    context = ssl.create_default_context(cafile=str(clinic.root_file))
    connection = http.client.HTTPSConnection("127.0.0.1", clinic.https, context=context,
                                             timeout=5)
    # SNI and hostname checking use the real name, the TCP connection goes to loopback.
    connection.sock = context.wrap_socket(socket.create_connection(("127.0.0.1", clinic.https),
                                                                   timeout=5),
                                          server_hostname=name)
    connection.request("GET", path, headers={"Host": name})
    return connection.getresponse()


def http_get(clinic: Clinic, name: str, path: str) -> http.client.HTTPResponse:
    connection = http.client.HTTPConnection("127.0.0.1", clinic.http, timeout=5)
    connection.request("GET", path, headers={"Host": name})
    return connection.getresponse()


class HandshakeLoop:
    """Handshakes with every name, back to back, in a thread: records serials and failures."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.serials: list[str] = []
        self.failures: list[str] = []
        self.count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for name in NAMES:
                try:
                    serial = served_serial(self.port, name)
                except (OSError, ssl.SSLError) as error:
                    self.failures.append(f"{name}: {error!r}")
                    continue
                self.count += 1
                if not self.serials or self.serials[-1] != serial:
                    self.serials.append(serial)

    def __enter__(self) -> HandshakeLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


# --- the tests --------------------------------------------------------------------------------


def test_provision_serves_redirects_and_renews_without_dropping_a_connection(
        clinic: Clinic) -> None:
    config = clinic.config()
    summary = provision_json("-c", str(config))
    site = summary["sites"][0]
    assert summary["ok"] and site["status"] == "issued", summary
    serial = site["serial"]

    # Every name serves the new certificate, and its chain verifies to Pebble's root.
    assert serves(clinic, serial)
    fullchain = (clinic.tmp / "live" / "clinic" / "fullchain.pem").read_bytes()
    for name in NAMES:
        verify_chain(fullchain, clinic.root_file.read_text(), name)
        response = verified_https_get(clinic, name, "/")
        assert response.status == 200 and b"Welcome" in response.read()
        assert response.getheader("Strict-Transport-Security") == f"max-age={HSTS}"

    # Plain HTTP: 301 to the same host and path on https; ACME challenges still answered.
    challenge = clinic.webroot / ".well-known" / "acme-challenge" / "probe-token"
    challenge.write_text("probe-answer")
    challenge.chmod(0o644)
    for name in NAMES:
        response = http_get(clinic, name, "/appointments/book?day=monday")
        assert response.status == 301
        assert response.getheader("Location") == (
            f"https://{name}:{clinic.https}/appointments/book?day=monday")
        response = http_get(clinic, name, "/.well-known/acme-challenge/probe-token")
        assert response.status == 200 and response.read() == b"probe-answer"

    # What mamoru wrote: only its own file, 0644, nothing secret; the key stays root's.
    assert sorted(p.name for p in clinic.server.conf_dir.iterdir()) == [
        "000-default.conf", "mamoru-clinic.conf"]
    text = clinic.generated().read_text()
    assert text.startswith("# mamoru-generated") and "PRIVATE KEY" not in text
    assert "stapling" not in text.lower()
    assert clinic.generated().stat().st_mode & 0o777 == 0o644
    key = clinic.tmp / "live" / "clinic" / "privkey.pem"
    assert os.stat(key).st_mode & 0o777 == 0o600 and os.stat(key).st_uid == 0

    # Five renewals while a client handshakes throughout: never a failed connection, and
    # each renewal's certificate is proven served within a second of being stored.
    timings = []
    with HandshakeLoop(clinic.https) as loop:
        for _ in range(5):
            renewed = provision_json("-c", str(config), "--force")["sites"][0]
            assert renewed["status"] == "renewed", renewed
            timings.append(renewed["timings"]["stored_to_verified"])
        last = renewed["serial"]
        assert serves(clinic, last)
    assert loop.failures == []
    assert loop.count > 50 and serial in loop.serials and last in loop.serials
    median = statistics.median(timings)
    print(f"\n{clinic.kind}: stored -> verified as served, 5 renewals: median {median:.3f} s, "
          f"all {[round(t, 3) for t in timings]}; last by step {renewed['timings']}")
    assert median < 1.0, timings


def test_broken_config_is_never_reloaded_and_a_failed_reload_rolls_back(
        clinic: Clinic) -> None:
    config = clinic.config()
    first = provision_json("-c", str(config))["sites"][0]
    assert serves(clinic, first["serial"])
    version = clinic.live_version()
    good = clinic.generated().read_bytes()

    # The user's own file is broken: the config test fails, nothing is reloaded.
    clinic.server.write_conf("zz-broken", "server {\n    listen 127.0.0.1:1;\n    "
                             "this_is_not_a_directive on;\n}\n" if clinic.kind == "nginx" else
                             "<VirtualHost 127.0.0.1:1>\n    ThisIsNotADirective on\n"
                             "</VirtualHost>\n")
    before = clinic.reload_marker()
    result = run_mamoru("provision", "-c", str(config), "--force", check=1)
    if clinic.kind == "nginx":
        assert 'unknown directive "this_is_not_a_directive"' in result.stderr
        assert "zz-broken.conf:3" in result.stderr
    else:
        assert "Invalid command 'ThisIsNotADirective'" in result.stderr
        assert "zz-broken.conf" in result.stderr
    assert "broken even without mamoru's change" in result.stderr
    assert clinic.reload_marker() == before
    assert clinic.live_version() == version
    assert clinic.generated().read_bytes() == good
    assert serves(clinic, first["serial"])
    clinic.server.remove_conf("zz-broken")

    # The reload command fails: live/ and the generated file are put back.
    failing = [sys.executable, "-c",
               "import sys; sys.stderr.write('reload refused by policy\\n'); sys.exit(1)"]
    config = clinic.config(reload=failing)
    result = run_mamoru("provision", "-c", str(config), "--force", "--json", check=1)
    error = json.loads(result.stdout)["sites"][0]["error"]
    assert error["class"] == "ReloadFailed"
    assert "reload refused by policy" in error["message"]
    assert clinic.live_version() == version
    assert clinic.generated().read_bytes() == good
    assert serves(clinic, first["serial"])
    events = [json.loads(line) for line in
              (clinic.tmp / "log" / "events.jsonl").read_text().splitlines()]
    assert [e["kind"] for e in events if e["kind"] in ("rollback", "failed")][-2:] == [
        "rollback", "failed"]


def test_include_mode_without_the_include_is_reported(clinic: Clinic) -> None:
    # The clinic's own HTTPS server block, with a certificate from elsewhere.
    ca = make_ca()
    old = make_leaf(ca, NAMES, ())
    old.write(clinic.tmp / "old.pem", clinic.tmp / "old.key")
    user_file = clinic.server.write_conf("clinic", clinic.user_https_block(
        cert=(clinic.tmp / "old.pem", clinic.tmp / "old.key")))
    clinic.server.reload()
    include_dir = clinic.tmp / "mamoru-includes"
    include_dir.mkdir()
    config = clinic.config(mode="include", conf_dir=str(include_dir), redirect=False,
                           verify_timeout=1)
    tls = include_dir / "mamoru-clinic-tls.inc"
    line = f"include {tls};" if clinic.kind == "nginx" else f"Include {tls}"

    before = clinic.reload_marker()
    result = run_mamoru("provision", "-c", str(config), "--json", check=1)
    if isinstance(clinic.server, Apache):  # its graceful restarts read the config later
        clinic.server.wait_generation(before + 2)  # the reload and the rollback's
    error = json.loads(result.stdout)["sites"][0]["error"]
    assert error["class"] == "VerifyFailed"
    assert error["names"] == NAMES
    assert "serve a certificate mamoru did not install" in error["message"]
    assert f"does not include {tls}" in error["message"]
    assert line in error["message"]  # the exact line to add
    assert line in result.stderr
    assert not tls.exists() and not (clinic.tmp / "live" / "clinic").exists()

    # The user adds the line; the next provision is proven served.
    user_file.write_text(clinic.user_https_block(include=str(tls)))
    summary = provision_json("-c", str(config))
    assert summary["sites"][0]["status"] == "issued"
    assert serves(clinic, summary["sites"][0]["serial"])
