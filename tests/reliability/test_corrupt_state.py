"""Damaged state on disk (meta.json, state.json, the account files, the live link): mamoru must
recover or stop with a clear error, and never fall into a loop that orders again and again.
Pebble's own log counts the orders.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import run_mamoru, write_config
from tests.reliability.checks import check_live
from tests.reliability.conftest import standalone_site
from tests.servers.pebble import Pebble

pytestmark = pytest.mark.e2e

RUNS = 3  # runs after the damage; a loop would order on each of them


def provision(config: Path, *args: str, check: int | None = 0) -> dict[str, Any]:
    result = run_mamoru("provision", "--json", "-c", str(config), *args, check=check)
    assert "Traceback" not in result.stderr, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def setup_site(tmp_path: Path, pebble: Pebble) -> tuple[Path, Path]:
    config = write_config(tmp_path, pebble.directory_url, pebble.ca_bundle, {
        "clinic": standalone_site(["clinic.example"], pebble.http_port)})
    provision(config)
    version = (tmp_path / "live" / "clinic").resolve()
    return config, version


META_DAMAGE = {
    "garbage": b"\x00\xff not json",
    "empty": b"",
    "truncated": b'{"serial": "12',
    "a list": b"[1, 2, 3]",
    "no dates": b'{"serial": "1"}',
    "wrong types": b'{"serial": 7, "names": "x", "not_before": 1, "not_after": null}',
    "bad dates": b'{"serial": "1", "names": [], "not_before": "yesterday", '
                 b'"not_after": "soon"}',
}


@pytest.mark.parametrize("damage", list(META_DAMAGE))
def test_corrupt_meta_json_is_rebuilt_from_the_certificate(
        damage: str, tmp_path: Path, pebble: Pebble) -> None:
    config, version = setup_site(tmp_path, pebble)
    serial = check_live(tmp_path / "live", "clinic")
    (version / "meta.json").write_bytes(META_DAMAGE[damage])
    for _ in range(RUNS):
        site = provision(config)["sites"][0]
        assert site["status"] == "skipped", site  # the certificate is the truth: still good
        assert site["serial"] == serial and site["names"] == ["clinic.example"]
    assert pebble.order_count() == 1


def test_unreadable_certificate_orders_once_then_settles(tmp_path: Path, pebble: Pebble
                                                         ) -> None:
    config, version = setup_site(tmp_path, pebble)
    (version / "meta.json").write_bytes(b"garbage")
    (version / "cert.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\nnope\n")
    statuses = [provision(config)["sites"][0]["status"] for _ in range(RUNS)]
    assert statuses == ["issued"] + ["skipped"] * (RUNS - 1)
    assert pebble.order_count() == 2  # one replacement, not one per run
    check_live(tmp_path / "live", "clinic")


def test_deleted_live_version_orders_once_then_settles(tmp_path: Path, pebble: Pebble) -> None:
    config, version = setup_site(tmp_path, pebble)
    shutil.rmtree(version)  # live/clinic now dangles
    statuses = [provision(config)["sites"][0]["status"] for _ in range(RUNS)]
    assert statuses == ["issued"] + ["skipped"] * (RUNS - 1)
    assert pebble.order_count() == 2
    check_live(tmp_path / "live", "clinic")


def test_corrupt_state_json_is_forgotten_not_fatal(tmp_path: Path, pebble: Pebble) -> None:
    config, _version = setup_site(tmp_path, pebble)
    state = tmp_path / "state" / "sites" / "clinic" / "state.json"
    for damage in (b"{{{", b"[]", b'{"attempts": "many", "next_attempt": 5, "ari": 3}'):
        state.write_bytes(damage)
        assert provision(config)["sites"][0]["status"] == "skipped"
        json.loads(state.read_text())  # rewritten whole
    assert pebble.order_count() == 1


def test_live_path_that_is_not_our_link_is_a_clear_error_before_any_order(
        tmp_path: Path, pebble: Pebble) -> None:
    config, version = setup_site(tmp_path, pebble)
    link = tmp_path / "live" / "clinic"
    link.unlink()
    shutil.copytree(version, link)  # someone replaced the link with a copy of the files
    for _ in range(RUNS):
        site = provision(config, check=1)["sites"][0]
        assert site["status"] == "failed"
        assert "not a symlink" in site["error"]["message"], site
        assert str(link) in site["error"]["message"]
    assert pebble.order_count() == 1  # it never ordered a certificate it could not install


def account_files(tmp_path: Path) -> tuple[Path, Path]:
    keys = list((tmp_path / "state" / "accounts").glob("*/*/key.pem"))
    assert len(keys) == 1, keys
    return keys[0], keys[0].parent / "account.json"


@pytest.mark.parametrize("damage", [b"", b"-----BEGIN PRIVATE KEY-----\ngarbage\n", b"\x00" * 64])
def test_corrupt_account_key_is_moved_aside_and_a_new_account_registered_once(
        damage: bytes, tmp_path: Path, pebble: Pebble) -> None:
    config, _version = setup_site(tmp_path, pebble)
    key, info = account_files(tmp_path)
    first_url = json.loads(info.read_text())["url"]
    key.write_bytes(damage)
    for _ in range(RUNS):
        assert provision(config, "--force")["sites"][0]["status"] == "renewed"
    aside = list(key.parent.glob("key.pem.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == damage  # kept for a person to look at
    assert os.stat(aside[0]).st_mode & 0o077 == 0
    second_url = json.loads(info.read_text())["url"]
    assert second_url != first_url
    assert pebble.order_count() == 1 + RUNS  # exactly the forced orders, no extra
    accounts = [line for line in pebble.log_text().splitlines() if "accounts in memory" in line]
    assert accounts[-1].endswith("There are now 2 accounts in memory")  # one new, reused after
    events = [json.loads(line) for line in
              (tmp_path / "log" / "events.jsonl").read_text().splitlines()]
    used = [e["account"] for e in events if e["kind"] == "account"]
    assert used[-RUNS:] == [second_url] * RUNS


def test_corrupt_account_json_is_rewritten(tmp_path: Path, pebble: Pebble) -> None:
    config, _version = setup_site(tmp_path, pebble)
    _key, info = account_files(tmp_path)
    url = json.loads(info.read_text())["url"]
    info.write_bytes(b"\xff\xfe garbage")
    assert provision(config, "--force")["sites"][0]["status"] == "renewed"
    assert json.loads(info.read_text())["url"] == url  # the same account, found by its key
    assert pebble.order_count() == 2
