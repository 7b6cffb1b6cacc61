"""ARI (RFC 9773) end to end against acme2certifier 0.46.3, whose renewal window says "renew
now" (a window wholly in the past for every certificate): mamoru asks for the window, renews
with `replaces: <old cert id>` in the new order, and does not loop on the fresh certificate."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from mamoru.protocol.ari import ari_cert_id
from tests.helpers import run_mamoru, write_config
from tests.servers.acme2certifier import Acme2Certifier

from .test_daemon import soak

pytestmark = pytest.mark.e2e

NAMES = ["clinic.test", "www.clinic.test"]


def renew(config: Path, *args: str) -> dict[str, Any]:
    result = run_mamoru("renew", "--json", "-c", str(config), *args, check=0)
    site: dict[str, Any] = json.loads(result.stdout)["sites"][0]
    return site


def age_live_certificate(tmp_path: Path, hours: float) -> None:
    """Make the live certificate look stored `hours` ago (as if mamoru had kept it that long):
    its stored_at in meta.json. acme2certifier's lifetimes come in whole days, too long to wait
    for; everything else about the certificate is the CA's own."""
    meta_path = tmp_path / "live" / "clinic" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["stored_at"] = (datetime.now(UTC) - timedelta(hours=hours)).isoformat()
    meta_path.write_text(json.dumps(meta))


def test_renew_now_window_renews_once_with_replaces(
        tmp_path: Path, a2c_factory: Callable[..., Acme2Certifier]) -> None:
    a2c = a2c_factory(dns_port=0, ari_window=(-7200, -3600), cert_validity_days=1,
                      ari_retry_after=120)
    assert "renewalInfo" in a2c.directory()
    config = write_config(tmp_path, a2c.directory_url, None, {
        "clinic": {"domains": NAMES, "profile": "tlsserver",
                   "challenge": {"standalone": f"127.0.0.1:{a2c.http_port}"}}})
    run_mamoru("provision", "-c", str(config), check=0)
    orders = a2c.orders()
    assert len(orders) == 1 and "replaces" not in orders[0]["payload"]
    assert orders[0]["payload"]["profile"] == "tlsserver"
    old_pem = (tmp_path / "live" / "clinic" / "cert.pem").read_bytes()
    old_id = ari_cert_id(old_pem)

    # A certificate stored moments ago is not renewed, whatever the window says: this one
    # (the CA's window ended an hour before the certificate existed) is ignored altogether.
    fresh = renew(config)
    assert fresh["status"] == "skipped" and fresh["why"] == "1/2 of the lifetime left"
    assert len(a2c.renewal_info_requests()) == 1
    assert len(a2c.orders()) == 1

    # Kept for three hours: the window (ending an hour ago) is now the CA asking to renew.
    age_live_certificate(tmp_path, 3)
    renewed = renew(config)
    assert renewed["status"] == "renewed", renewed
    assert renewed["why"] == "inside the CA's renewal window (ARI)"
    with_replaces = a2c.orders_with_replaces()
    assert len(with_replaces) == 1
    assert with_replaces[0]["payload"]["replaces"] == old_id
    assert with_replaces[0]["status"] == 201
    assert with_replaces[0]["payload"]["profile"] == "tlsserver"
    meta = json.loads((tmp_path / "live" / "clinic" / "meta.json").read_text())
    assert meta["replaced"] == old_id and meta["ari_cert_id"] != old_id
    events = soak.read_events(tmp_path / "log" / "events.jsonl")
    window = [e for e in events if e["kind"] == "ari"][-1]
    assert soak.when(window["ari_end"]) < datetime.now(UTC)
    order = [e for e in events if e["kind"] == "order"][-1]
    assert order["replaces"] == old_id

    # No loop: the new certificate gets the same "renew now" window, and is not renewed —
    # not by another pass, not by the daemon.
    again = renew(config)
    assert again["status"] == "skipped"
    state = json.loads((tmp_path / "state" / "sites" / "clinic" / "state.json").read_text())
    assert state["ari"]["serial"] == meta["serial"]  # the CA was asked about the new one
    assert datetime.fromisoformat(state["next_due"]) > datetime.now(UTC) + timedelta(hours=1)
    daemon = soak.Daemon(config, tmp_path / "mamoru.log").start()
    try:
        soak.wait_events(tmp_path / "log" / "events.jsonl", lambda e: e["kind"] == "started",
                         daemon=daemon)
        assert daemon.stop()[0] == 0
    finally:
        daemon.cleanup()
    assert len(a2c.orders()) == 2
