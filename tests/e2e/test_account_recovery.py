"""A CA that forgets or deactivates mamoru's ACME account, against a real Pebble.

Pebble keeps accounts in memory, so restarting it (same ports, same listener certificate) makes
the stored account unknown, exactly as a CA that deleted it or a state restored from an old
backup would. Deactivation is done the way a user (or the CA) would: a POST to the account URL
with `status: deactivated`, signed by mamoru's own session."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mamoru.app import build_app
from mamoru.cli import run_sites
from mamoru.config import load_config
from mamoru.observe.events import MemorySink
from mamoru.protocol.account import account_dir
from tests.helpers import provision_json, write_config
from tests.servers.pebble import Pebble
from tests.servers.webroot_http import WebrootServer

pytestmark = pytest.mark.e2e


def clinic_config(tmp_path: Path, pebble: Pebble, webroot: Path) -> Path:
    return write_config(tmp_path, pebble.directory_url, pebble.ca_bundle, {
        "clinic": {"domains": ["clinic.example"], "challenge": {"webroot": str(webroot)}}})


def events(tmp_path: Path) -> list[dict[str, Any]]:
    text = (tmp_path / "log" / "events.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines()]


def account_files(tmp_path: Path, pebble: Pebble) -> Path:
    return Path(account_dir(str(tmp_path / "state"), pebble.directory_url))


def stored_url(tmp_path: Path, pebble: Pebble) -> str:
    info = json.loads((account_files(tmp_path, pebble) / "account.json").read_text())
    url: str = info["url"]
    return url


def replaced(evs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in evs if e["kind"] == "account" and e.get("replaced")]


def test_restarted_ca_forgot_the_account_next_provision_says_so(tmp_path: Path,
                                                                pebble: Pebble) -> None:
    webroot = tmp_path / "webroot"
    webroot.mkdir()
    config = clinic_config(tmp_path, pebble, webroot)
    with WebrootServer(webroot, pebble.http_port):
        assert provision_json("-c", str(config))["ok"] is True
        old = stored_url(tmp_path, pebble)
        pebble.restart()  # Pebble forgets every account
        summary = provision_json("--force", "-c", str(config))
    assert summary["ok"] is True and summary["sites"][0]["status"] == "renewed"
    new = stored_url(tmp_path, pebble)
    assert new != old
    said = replaced(events(tmp_path))
    assert len(said) == 1, said
    assert said[0]["account"] == new and said[0]["previous"] == old
    assert "no longer knew" in said[0]["message"]
    # the old account's record is kept aside, never deleted
    aside = list(account_files(tmp_path, pebble).glob("account.json.gone-*"))
    assert len(aside) == 1 and json.loads(aside[0].read_text())["url"] == old


def test_long_running_process_registers_again_once_and_retries_the_orders(
        tmp_path: Path, pebble: Pebble) -> None:
    """The daemon's case: one App (one session, account loaded once) across a CA restart.
    Three orders at once fail with accountDoesNotExist; one new account is registered, each
    order is retried once and succeeds."""
    webroot = tmp_path / "webroot"
    webroot.mkdir()
    names = ("clinic", "lab", "dental")
    config = write_config(tmp_path, pebble.directory_url, pebble.ca_bundle, {
        name: {"domains": [f"{name}.example"], "challenge": {"webroot": str(webroot)}}
        for name in names})
    memory = MemorySink()
    app = build_app(load_config(str(config)), sinks=[memory], stderr=False, observers=False)
    sites = app.settings.sites
    try:
        with WebrootServer(webroot, pebble.http_port):
            first = run_sites(app, sites, force=True, dry_run=False, honour_backoff=False)
            assert [o.status for o in first] == ["issued"] * 3, [o.to_json() for o in first]
            old = stored_url(tmp_path, pebble)
            old_key = (account_files(tmp_path, pebble) / "key.pem").read_bytes()
            pebble.restart()
            second = run_sites(app, sites, force=True, dry_run=False, honour_backoff=False)
    finally:
        app.reset_session()
        app.events.close(5)
    assert [o.status for o in second] == ["renewed"] * 3, [o.to_json() for o in second]
    said = [e for e in memory.events if e.kind == "account" and e.fields.get("replaced")]
    assert len(said) == 1, [e.message for e in said]  # once, however many orders met it
    assert said[0].fields["previous"] == old
    assert said[0].fields["account"] == stored_url(tmp_path, pebble) != old
    assert said[0].fields["why"] == "the CA does not know the account"
    directory = account_files(tmp_path, pebble)
    kept = list(directory.glob("key.pem.gone-*"))
    assert len(kept) == 1 and kept[0].read_bytes() == old_key  # the old key is never deleted
    assert (kept[0].stat().st_mode & 0o777) == 0o600
    assert ((directory / "key.pem").stat().st_mode & 0o777) == 0o600
    # pebble.log spans the restart: three orders before it; after it, the refused newOrders
    # created nothing and the three retries were issued
    assert pebble.order_count() == 6 and pebble.issued_count() == 6


def test_deactivated_account_is_replaced_with_a_new_key(tmp_path: Path, pebble: Pebble) -> None:
    webroot = tmp_path / "webroot"
    webroot.mkdir()
    config = clinic_config(tmp_path, pebble, webroot)
    with WebrootServer(webroot, pebble.http_port):
        assert provision_json("-c", str(config))["ok"] is True
        old = stored_url(tmp_path, pebble)
        old_key = (account_files(tmp_path, pebble) / "key.pem").read_bytes()
        app = build_app(load_config(str(config)), stderr=False, event_log=False,
                        observers=False)
        try:
            session = app.account_session()
            assert session.account_url == old
            answer = session.post(old, {"status": "deactivated"},
                                  context="deactivating the account").json()
            assert answer["status"] == "deactivated"
        finally:
            app.reset_session()
            app.events.close(5)
        summary = provision_json("--force", "-c", str(config))
    assert summary["ok"] is True and summary["sites"][0]["status"] == "renewed", summary
    said = replaced(events(tmp_path))
    assert len(said) == 1, said
    assert said[0]["previous"] == old and said[0]["why"] == "account deactivated"
    new = stored_url(tmp_path, pebble)
    assert said[0]["account"] == new != old
    directory = account_files(tmp_path, pebble)
    assert (directory / "key.pem").read_bytes() != old_key  # the CA refuses the old key
    assert [p.read_bytes() for p in directory.glob("key.pem.gone-*")] == [old_key]
