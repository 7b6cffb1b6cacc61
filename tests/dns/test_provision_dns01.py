"""`mamoru provision` with dns-01 sites, end to end: Pebble resolves every name through a real
BIND, mamoru writes the TXT records there by RFC 2136, and no http-01 port is needed."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import provision_json, verify_chain, write_config
from tests.servers.webroot_http import WebrootServer

pytestmark = pytest.mark.e2e


def rfc2136(bind: Any, key_file: Path) -> dict[str, Any]:
    return {"server": bind.address, "key_name": bind.key.name,
            "key_secret_file": str(key_file)}


@pytest.fixture
def key_file(tmp_path: Path, tsig_key: Any) -> Path:
    path = tmp_path / "tsig.key"
    path.write_text(tsig_key.bind_clause())  # as tsig-keygen wrote it
    path.chmod(0o600)
    return path


def test_a_wildcard_site_by_rfc2136_with_no_http_port(bind_factory, pebble_factory,
                                                      tmp_path: Path, key_file: Path) -> None:
    bind = bind_factory()
    pebble = pebble_factory(dns_server=bind.address)  # nothing listens on its http port
    names = ["clinic.test", "*.clinic.test"]
    config = write_config(tmp_path, pebble.directory_url, pebble.ca_bundle, {
        "clinic": {"domains": names, "challenge": {
            "type": "dns-01", "rfc2136": rfc2136(bind, key_file),
            "nameservers": [bind.address], "propagation_timeout": 30}}})
    summary = provision_json("-c", str(config))
    assert summary["sites"][0]["status"] == "issued", summary
    fullchain = (tmp_path / "live" / "clinic" / "fullchain.pem").read_bytes()
    for name in ("clinic.test", "www.clinic.test"):
        verify_chain(fullchain, pebble.root_pem(), name)
    assert bind.zone_txt("clinic.test") == {}
    assert not (tmp_path / "state" / "sites" / "clinic" / "dns01-journal.json").exists()
    log = (tmp_path / "log" / "events.jsonl").read_text()
    assert '"dns-published"' in log and "dns-01 challenges" in log
    assert bind.key.secret not in log


def test_a_site_mixing_http01_and_dns01_names(bind_factory, pebble_factory, tmp_path: Path,
                                              key_file: Path) -> None:
    bind = bind_factory()  # www.clinic.test A 127.0.0.1: Pebble fetches http-01 from us
    pebble = pebble_factory(dns_server=bind.address)
    webroot = tmp_path / "webroot"
    webroot.mkdir()
    names = ["www.clinic.test", "*.clinic.test"]
    config = write_config(tmp_path, pebble.directory_url, pebble.ca_bundle, {
        "clinic": {"domains": names, "challenge": {
            "webroot": str(webroot), "dns01_names": ["*.clinic.test"],
            "rfc2136": rfc2136(bind, key_file), "nameservers": [bind.address]}}})
    with WebrootServer(webroot, pebble.http_port) as server:
        summary = provision_json("-c", str(config))
        assert summary["sites"][0]["status"] == "issued", summary
        assert server.requests  # www.clinic.test came by http-01
    fullchain = (tmp_path / "live" / "clinic" / "fullchain.pem").read_bytes()
    verify_chain(fullchain, pebble.root_pem(), "www.clinic.test")
    verify_chain(fullchain, pebble.root_pem(), "portal.clinic.test")
    log = (tmp_path / "log" / "events.jsonl").read_text()
    assert "dns-01 and http-01 challenges" in log
    assert bind.zone_txt("clinic.test") == {}


def test_a_wrong_key_fails_the_site_with_what_to_do(bind_factory, pebble_factory,
                                                    tmp_path: Path) -> None:
    from tests.servers.authdns import TestKey

    bind = bind_factory()
    pebble = pebble_factory(dns_server=bind.address)
    wrong = tmp_path / "wrong.key"
    wrong.write_text(TestKey(name=bind.key.name).secret + "\n")
    wrong.chmod(0o600)
    config = write_config(tmp_path, pebble.directory_url, pebble.ca_bundle, {
        "clinic": {"domains": ["clinic.test"], "challenge": {
            "type": "dns-01", "rfc2136": rfc2136(bind, wrong),
            "nameservers": [bind.address]}}})
    summary = provision_json("-c", str(config), check=1)
    text = str(summary)
    assert "BADSIG" in text and "key_secret_file" in text, text
    assert wrong.read_text().strip() not in text
    assert bind.zone_txt("clinic.test") == {}


def test_check_dns_verb(bind_factory, tmp_path: Path, key_file: Path) -> None:
    from tests.helpers import run_mamoru
    from tests.servers.authdns import TestKey

    bind = bind_factory()
    wrong = tmp_path / "wrong.key"
    wrong.write_text(TestKey(name="nobody").bind_clause().replace("nobody", bind.key.name))
    wrong.chmod(0o600)
    config = write_config(tmp_path, "https://ca.invalid/dir", None, {
        "clinic": {"domains": ["clinic.test", "*.clinic.test", "delegated.clinic.test"],
                   "challenge": {"type": "dns-01", "rfc2136": rfc2136(bind, key_file),
                                 "nameservers": [bind.address]}},
        "other": {"domains": ["refused.test"],
                  "challenge": {"type": "dns-01", "rfc2136": rfc2136(bind, wrong),
                                "nameservers": [bind.address]}},
        "web": {"domains": ["www.clinic.test"], "challenge": {"webroot": str(tmp_path)}}})
    ok = run_mamoru("check-dns", "-c", str(config), "clinic", check=0)
    assert "clinic: ok" in ok.stdout
    assert "_acme-challenge.clinic.test, _acme-challenge.delegated.clinic.test" in ok.stdout
    bad = run_mamoru("check-dns", "-c", str(config), check=1)
    assert "clinic: ok" in bad.stdout and "other: FAILED" in bad.stdout
    assert "BADSIG" in bad.stdout and "web" not in bad.stdout
    assert bind.zone_txt("clinic.test") == {} and bind.zone_txt("challenges.test") == {}


def test_the_daemon_renews_a_dns01_site_with_no_http_port(bind_factory, pebble_factory,
                                                           tmp_path: Path,
                                                           key_file: Path) -> None:
    """Short-lived certificates (16 s): `mamoru run` renews the wildcard site at half its
    lifetime through BIND, while nothing listens on Pebble's http-01 port."""
    from tests.e2e.test_daemon import soak

    bind = bind_factory()
    pebble = pebble_factory(dns_server=bind.address, validity_seconds=16)
    config = write_config(tmp_path, pebble.directory_url, pebble.ca_bundle, {
        "clinic": {"domains": ["clinic.test", "*.clinic.test"], "challenge": {
            "type": "dns-01", "rfc2136": rfc2136(bind, key_file),
            "nameservers": [bind.address]}}},
        extra={"renewal": {"jitter_fraction": 0.1}})
    daemon = soak.Daemon(config, tmp_path / "mamoru.log").start()
    try:
        events = tmp_path / "log" / "events.jsonl"
        live = tmp_path / "live" / "clinic" / "fullchain.pem"
        soak.wait_events(events, lambda e: e["kind"] == "issued", timeout=30, daemon=daemon)
        deadline = time.monotonic() + 10
        while not live.exists():  # issued, then put in service
            assert time.monotonic() < deadline
            time.sleep(0.05)
        first = live.read_bytes()
        soak.wait_events(events, lambda e: e["kind"] == "renewed", timeout=40, daemon=daemon)
        renewed = live.read_bytes()
        assert renewed != first
        verify_chain(renewed, pebble.root_pem(), "www.clinic.test")
        assert daemon.stop()[0] == 0
    finally:
        daemon.cleanup()
    assert bind.zone_txt("clinic.test") == {}
    assert pebble.order_count() >= 2


@pytest.mark.slow
def test_twenty_dns01_names_through_mamoru_provision(bind_factory, pebble_factory,
                                                      tmp_path: Path, key_file: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    bind = bind_factory()
    pebble = pebble_factory(dns_server=bind.address)
    names = ["clinic.test", "*.clinic.test"] + [f"n{i}.clinic.test" for i in range(18)]
    config = write_config(tmp_path, pebble.directory_url, pebble.ca_bundle, {
        "clinic": {"domains": names, "challenge": {
            "type": "dns-01", "rfc2136": rfc2136(bind, key_file),
            "nameservers": [bind.address]}}})
    started = time.monotonic()
    summary = provision_json("-c", str(config))
    took = time.monotonic() - started
    assert summary["sites"][0]["status"] == "issued", summary
    assert bind.zone_txt("clinic.test") == {}
    with capsys.disabled():
        print(f"\n`mamoru provision`, one site with 20 dns-01 names (apex + wildcard + 18) "
              f"against BIND: {took:.2f} s for the whole process")
    assert took < 30
