"""`mamoru check` against a real nginx serving real Pebble certificates, one fault per name.

One nginx, one HTTPS port with a server block per name (SNI), one HTTP port; each name shows
exactly one fault, and the check must name exactly that fault with a fix, in JSON and table.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import run_mamoru, write_config
from tests.servers.nginx import Nginx
from tests.servers.pebble import Pebble
from tests.servers.ports import free_port

pytestmark = pytest.mark.e2e

GOOD_PAGE = "<!doctype html><title>Clinic</title><img src='/logo.png'><p>ok</p>"
MIXED_PAGE = ("<!doctype html><title>Mixed</title>"
              "<script src='http://cdn.example/app.js'></script>"
              "<img src='http://cdn.example/logo.png'>"
              "<form action='http://mixed.example/login'></form>")
HSTS = 'add_header Strict-Transport-Security "max-age=31536000" always;'


def obtain(tmp_path: Path, pebble: Pebble, sites: dict[str, list[str]], tag: str) -> Path:
    """Certificates from the real Pebble via `mamoru provision` (standalone http-01)."""
    root = tmp_path / tag
    root.mkdir()
    config = write_config(root, pebble.directory_url, pebble.ca_bundle, {
        site: {"domains": names, "challenge": {"standalone": f"127.0.0.1:{pebble.http_port}"}}
        for site, names in sites.items()})
    run_mamoru("provision", "-c", str(config), check=0)
    return root / "live"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp_path = tmp_path_factory.mktemp("checkworld")
    with Pebble(tmp_path / "pebble", http_port=free_port()) as pebble:
        live = obtain(tmp_path, pebble, {
            "good": ["good.example"], "other": ["other.example"],
            "noredirect": ["noredirect.example"], "offsite": ["offsite.example"],
            "nohsts": ["nohsts.example"], "mixed": ["mixed.example"],
            "nochain": ["nochain.example"]}, "certs")
        root = tmp_path / "pebble-root.pem"
        root.write_text(pebble.root_pem())
        with Pebble(tmp_path / "pebble-short", http_port=free_port(),
                    validity_seconds=2) as short:
            expired_live = obtain(tmp_path, short, {"expired": ["expired.example"]}, "short")
            (tmp_path / "short-root.pem").write_text(short.root_pem())
        time.sleep(2.5)  # let the 2-second certificate expire

        https, http = free_port(), free_port()
        docroot = tmp_path / "www"
        docroot.mkdir()
        (docroot / "index.html").write_text(GOOD_PAGE)
        (docroot / "mixed.html").write_text(MIXED_PAGE)
        webroot = tmp_path / "acme"
        (webroot / ".well-known" / "acme-challenge").mkdir(parents=True)
        (webroot / ".well-known" / "acme-challenge" / "probe").write_text("ok")

        def tls_server(name: str, cert_dir: Path, *, chain: str = "fullchain.pem",
                       hsts: bool = True, index: str = "index.html",
                       served_as: str | None = None) -> str:
            return f"""
server {{
    listen 127.0.0.1:{https} ssl;
    server_name {served_as or name};
    ssl_certificate {cert_dir}/{chain};
    ssl_certificate_key {cert_dir}/privkey.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    root {docroot};
    index {index};
    {HSTS if hsts else ""}
}}"""

        def http_server(name: str, body: str) -> str:
            return f"""
server {{
    listen 127.0.0.1:{http};
    server_name {name};
    location /.well-known/acme-challenge/ {{ root {webroot}; }}
    location / {{ {body} }}
}}"""

        redirect = "return 301 https://$host$request_uri;"
        conf = "".join([
            tls_server("good.example", live / "good"),
            http_server("good.example", redirect),
            # a certificate for other.example served for wrongname.example
            tls_server("wrongname.example", live / "other", served_as="wrongname.example"),
            http_server("wrongname.example", redirect),
            tls_server("noredirect.example", live / "noredirect"),
            http_server("noredirect.example", f"root {docroot};"),
            tls_server("offsite.example", live / "offsite"),
            http_server("offsite.example", "return 301 https://elsewhere.example$request_uri;"),
            tls_server("nohsts.example", live / "nohsts", hsts=False),
            http_server("nohsts.example", redirect),
            tls_server("mixed.example", live / "mixed", index="mixed.html"),
            http_server("mixed.example", redirect),
            tls_server("nochain.example", live / "nochain", chain="cert.pem"),
            http_server("nochain.example", redirect),
            tls_server("expired.example", expired_live / "expired"),
            http_server("expired.example", redirect),
        ])
        nginx = Nginx(tmp_path / "nginx")
        nginx.write_conf("check.conf", conf)
        nginx.start(wait_ports=(https, http))
        try:
            yield {"https": https, "http": http, "root": str(root),
                   "short_root": str(tmp_path / "short-root.pem"), "tmp": tmp_path}
        finally:
            nginx.stop()


def check(world: dict[str, Any], name: str, *args: str, ca: str | None = None
          ) -> tuple[int, dict[str, dict[str, Any]], str]:
    base = ["check", f"https://{name}/", "--connect", f"127.0.0.1:{world['https']}",
            "--http-connect", f"127.0.0.1:{world['http']}", "--ca-bundle", ca or world["root"],
            "--timeout", "3"]
    result = run_mamoru(*base, "--json", *args)
    data = json.loads(result.stdout)
    findings = {f["check"]: f for f in data["targets"][0]["findings"]}
    table = run_mamoru(*base, *args).stdout
    return result.returncode, findings, table


def problems(findings: dict[str, dict[str, Any]], level: str = "problem") -> set[str]:
    return {check for check, f in findings.items() if f["status"] == level}


def test_good_site_is_all_ok(world: dict[str, Any]) -> None:
    code, findings, table = check(world, "good.example", "--strict")
    assert code == 0, findings
    assert problems(findings, "warning") == set() and problems(findings) == set()
    hsts = findings.get("hsts")
    assert hsts is not None, f"no hsts finding: {findings}"
    assert hsts["status"] == "ok" and hsts["details"]["max_age"] == 31536000, hsts
    assert "max-age=31536000" in hsts["message"], hsts["message"]
    assert "✓" in table and "✗" not in table


@pytest.mark.parametrize(
    ("name", "expected_problems", "expected_warnings", "words"),
    [
        ("wrongname.example", {"cert.names"}, set(), "other.example"),
        ("noredirect.example", {"http.redirect"}, set(), "redirect"),
        ("offsite.example", {"http.redirect"}, set(), "elsewhere.example"),
        ("nohsts.example", set(), {"hsts"}, "Strict-Transport-Security"),
        ("mixed.example", {"mixed-content"}, set(), "http://cdn.example/app.js"),
        ("nochain.example", {"cert.chain"}, set(), "intermediate"),
    ],
)
def test_each_fault_is_named_with_a_fix(world: dict[str, Any], name: str,
                                        expected_problems: set[str],
                                        expected_warnings: set[str], words: str) -> None:
    code, findings, table = check(world, name)
    assert problems(findings) == expected_problems, findings
    assert problems(findings, "warning") == expected_warnings, findings
    assert code == (2 if expected_problems else 0)
    for check_id in expected_problems | expected_warnings:
        finding = findings[check_id]
        assert finding["fix"], f"{check_id} has no fix"
        flat_table = " ".join(table.split())
        assert check_id in flat_table
        assert " ".join(finding["fix"].split())[:40] in flat_table
    text = json.dumps(findings)
    assert words in text, text
    if expected_warnings and not expected_problems:
        assert check(world, name, "--strict")[0] == 1


def test_mixed_content_lists_script_image_and_form(world: dict[str, Any]) -> None:
    _code, findings, _table = check(world, "mixed.example")
    text = json.dumps(findings["mixed-content"])
    for url in ("http://cdn.example/app.js", "http://cdn.example/logo.png",
                "http://mixed.example/login"):
        assert url in text


def test_expired_certificate(world: dict[str, Any]) -> None:
    code, findings, _table = check(world, "expired.example", ca=world["short_root"])
    assert code == 2
    assert findings["cert.expiry"]["status"] == "problem"
    assert "expired" in findings["cert.expiry"]["message"].lower()
    assert findings["cert.expiry"]["fix"]


def _serve(handler: Callable[[socket.socket], None]) -> tuple[int, threading.Event]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    stop = threading.Event()

    def loop() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            handler(conn)
        listener.close()

    threading.Thread(target=loop, daemon=True).start()
    return listener.getsockname()[1], stop


def test_reset_and_silent_servers_give_bounded_clear_problems() -> None:
    def reset(conn: socket.socket) -> None:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()

    held: list[socket.socket] = []
    reset_port, stop_reset = _serve(reset)
    silent_port, stop_silent = _serve(held.append)
    try:
        for port, word in ((reset_port, "reset"), (silent_port, "answer")):
            started = time.monotonic()
            result = run_mamoru("check", "https://stuck.example/", "--connect",
                                f"127.0.0.1:{port}", "--http-connect", f"127.0.0.1:{port}",
                                "--timeout", "1.5", "--json")
            elapsed = time.monotonic() - started
            assert result.returncode == 2
            assert "Traceback" not in result.stderr
            findings = {f["check"]: f for f in json.loads(result.stdout)["targets"][0]["findings"]}
            reach = findings["https.reachable"]
            assert reach["status"] == "problem" and reach["fix"]
            assert word in reach["message"].lower(), reach["message"]
            assert elapsed < 12, f"check took {elapsed:.1f} s"
    finally:
        stop_reset.set()
        stop_silent.set()
        for conn in held:
            conn.close()
