"""What one `mamoru provision` learned is used by the next, against a real Pebble.

A vendor's script runs `mamoru provision SITE` once per site, and the daemon runs each burst of
due sites in a fresh worker process. The second process must not fetch the CA's directory again
(it is kept on disk for `DIRECTORY_CACHE_SECONDS`) nor look its account up with newAccount (the
URL is stored). Pebble logs one line per request, so the requests are counted at the CA. A
kept directory that has gone stale, or is too old, is fetched again and the order still goes.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from mamoru.protocol.account import account_dir, directory_cache
from mamoru.protocol.session import DIRECTORY_CACHE_SECONDS
from tests.helpers import provision_json, write_config
from tests.servers.pebble import Pebble
from tests.servers.webroot_http import WebrootServer

pytestmark = pytest.mark.e2e


def requests_to(pebble: Pebble, method: str, path: str) -> int:
    return len(re.findall(rf"{method} {re.escape(path)} -> calling handler\(\)",
                          pebble.log_text()))


def two_sites(tmp_path: Path, pebble: Pebble, webroot: Path) -> Path:
    return write_config(tmp_path, pebble.directory_url, pebble.ca_bundle, {
        name: {"domains": [f"{name}.example"], "challenge": {"webroot": str(webroot)}}
        for name in ("clinic", "dental")})


def kept_directory(tmp_path: Path, pebble: Pebble) -> Path:
    return Path(directory_cache(str(tmp_path / "state"), pebble.directory_url))


def test_second_process_asks_the_ca_neither_directory_nor_account(tmp_path: Path,
                                                                  pebble: Pebble) -> None:
    webroot = tmp_path / "webroot"
    webroot.mkdir()
    config = two_sites(tmp_path, pebble, webroot)
    started = requests_to(pebble, "GET", "/dir")  # the fixture's own readiness check
    with WebrootServer(webroot, pebble.http_port):
        first = provision_json("-c", str(config), "clinic")
        assert first["ok"] is True, first
        directories, accounts = requests_to(pebble, "GET", "/dir"), \
            requests_to(pebble, "POST", "/sign-me-up")
        assert (directories - started, accounts) == (1, 1)
        kept = kept_directory(tmp_path, pebble)
        assert kept.stat().st_mode & 0o777 == 0o600
        assert json.loads(kept.read_text())["url"] == pebble.directory_url
        second = provision_json("-c", str(config), "dental")
    assert second["ok"] is True and second["sites"][0]["status"] == "issued", second
    assert requests_to(pebble, "GET", "/dir") == directories  # read from the kept copy
    assert requests_to(pebble, "POST", "/sign-me-up") == accounts  # the stored account URL
    stored = json.loads((Path(account_dir(str(tmp_path / "state"), pebble.directory_url))
                         / "account.json").read_text())
    events = [json.loads(line) for line in
              (tmp_path / "log" / "events.jsonl").read_text().splitlines()]
    used = [e["account"] for e in events if e["kind"] == "account"]
    assert used == [stored["url"]] * 2, used


def test_a_stale_kept_directory_is_fetched_again_and_the_order_goes(tmp_path: Path,
                                                                    pebble: Pebble) -> None:
    """The CA moved its endpoints since the directory was kept: newNonce answers 404 at the
    old URL. The copy is dropped, the directory fetched again, and the provision succeeds."""
    webroot = tmp_path / "webroot"
    webroot.mkdir()
    config = two_sites(tmp_path, pebble, webroot)
    with WebrootServer(webroot, pebble.http_port):
        assert provision_json("-c", str(config), "clinic")["ok"] is True
        kept = kept_directory(tmp_path, pebble)
        saved = json.loads(kept.read_text())
        real = dict(saved["directory"])
        saved["directory"]["newNonce"] = real["newNonce"] + "-moved"
        saved["directory"]["newOrder"] = real["newOrder"] + "-moved"
        kept.write_text(json.dumps(saved))
        before = requests_to(pebble, "GET", "/dir")
        second = provision_json("-c", str(config), "dental")
    assert second["ok"] is True and second["sites"][0]["status"] == "issued", second
    assert requests_to(pebble, "GET", "/dir") == before + 1
    assert json.loads(kept.read_text())["directory"] == real  # kept again, right this time


def test_a_kept_directory_older_than_its_lifetime_is_fetched_again(tmp_path: Path,
                                                                  pebble: Pebble) -> None:
    webroot = tmp_path / "webroot"
    webroot.mkdir()
    config = two_sites(tmp_path, pebble, webroot)
    with WebrootServer(webroot, pebble.http_port):
        assert provision_json("-c", str(config), "clinic")["ok"] is True
        kept = kept_directory(tmp_path, pebble)
        saved = json.loads(kept.read_text())
        saved["fetched"] = time.time() - DIRECTORY_CACHE_SECONDS - 1
        kept.write_text(json.dumps(saved))
        before = requests_to(pebble, "GET", "/dir")
        assert provision_json("-c", str(config), "dental")["ok"] is True
    assert requests_to(pebble, "GET", "/dir") == before + 1
    assert json.loads(kept.read_text())["fetched"] > time.time() - 60


def test_a_changed_contact_looks_the_account_up_again(tmp_path: Path, pebble: Pebble) -> None:
    """The stored account is used as it is only while the config still says what it was
    registered with; a new contact address goes through newAccount again."""
    webroot = tmp_path / "webroot"
    webroot.mkdir()
    sites = {name: {"domains": [f"{name}.example"], "challenge": {"webroot": str(webroot)}}
             for name in ("clinic", "dental")}
    config = write_config(tmp_path, pebble.directory_url, pebble.ca_bundle, sites)
    with WebrootServer(webroot, pebble.http_port):
        assert provision_json("-c", str(config), "clinic")["ok"] is True
        accounts = requests_to(pebble, "POST", "/sign-me-up")
        config = write_config(tmp_path, pebble.directory_url, pebble.ca_bundle, sites,
                              acme={"contact": "it@clinic.example"})
        assert provision_json("-c", str(config), "dental")["ok"] is True
    assert requests_to(pebble, "POST", "/sign-me-up") == accounts + 1


def test_a_key_that_is_not_the_stored_accounts_is_looked_up(tmp_path: Path,
                                                            pebble: Pebble) -> None:
    """key.pem put back from another copy of the state (a backup, another server) no longer
    matches account.json: the account is looked up with newAccount for that key, never
    signed for with the URL of another key's account."""
    from cryptography.hazmat.primitives.asymmetric import ec

    from mamoru.protocol.keys import key_pem

    webroot = tmp_path / "webroot"
    webroot.mkdir()
    config = two_sites(tmp_path, pebble, webroot)
    account = Path(account_dir(str(tmp_path / "state"), pebble.directory_url))
    with WebrootServer(webroot, pebble.http_port):
        assert provision_json("-c", str(config), "clinic")["ok"] is True
        accounts = requests_to(pebble, "POST", "/sign-me-up")
        old_url = json.loads((account / "account.json").read_text())["url"]
        (account / "key.pem").write_bytes(key_pem(ec.generate_private_key(ec.SECP256R1())))
        second = provision_json("-c", str(config), "dental")
    assert second["ok"] is True and second["sites"][0]["status"] == "issued", second
    assert requests_to(pebble, "POST", "/sign-me-up") == accounts + 1
    assert json.loads((account / "account.json").read_text())["url"] != old_url
