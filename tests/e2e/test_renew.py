"""`mamoru renew`: one pass over what is due (the timer/cron alternative to `mamoru run`), as
a whole process against a real Pebble (and a real nginx)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from mamoru.install.verify import fetch_leaf
from tests.helpers import run_mamoru, write_config
from tests.servers.pebble import Pebble
from tests.servers.ports import free_port

from .test_daemon import soak

pytestmark = pytest.mark.e2e


def renew(config: Path, *args: str, check: int = 0) -> dict[str, dict[str, Any]]:
    result = run_mamoru("renew", "--json", "-c", str(config), *args, check=check)
    return {s["site"]: s for s in json.loads(result.stdout)["sites"]}


def site(pebble: Pebble, name: str, **extra: Any) -> dict[str, Any]:
    return {"domains": [f"{name}.example"],
            "challenge": {"standalone": f"127.0.0.1:{pebble.http_port}"}, **extra}


def test_renew_orders_only_what_is_due(tmp_path: Path, pebble: Pebble) -> None:
    # "tls" asks for a profile Pebble does not offer: ordered without one, and not taken for
    # a changed site at the next pass (no order loop).
    config = write_config(tmp_path, pebble.directory_url, pebble.ca_bundle, {
        "old": site(pebble, "old"), "new": site(pebble, "new"),
        "tls": site(pebble, "tls", profile="tlsserver")})
    run_mamoru("provision", "old", "-c", str(config), check=0)
    assert pebble.order_count() == 1

    first = renew(config)
    assert {n: s["status"] for n, s in first.items()} == {
        "old": "skipped", "new": "issued", "tls": "issued"}
    assert pebble.order_count() == 3

    again = renew(config)
    assert {s["status"] for s in again.values()} == {"skipped"}
    assert pebble.order_count() == 3
    quiet = run_mamoru("renew", "-c", str(config), check=0)
    assert quiet.stdout == ""  # nothing due: nothing to say (cron mails any output)

    forced = renew(config, "old", "--force")
    assert list(forced) == ["old"] and forced["old"]["status"] == "renewed"
    live = (tmp_path / "live" / "new" / "fullchain.pem").read_bytes()
    dry = renew(config, "new", "--dry-run", "--force")
    assert dry["new"]["status"] == "dry-run"
    assert (tmp_path / "live" / "new" / "fullchain.pem").read_bytes() == live
    assert pebble.order_count() == 5
    state = json.loads((tmp_path / "state" / "sites" / "new" / "state.json").read_text())
    assert "in_flight" not in state and state["attempts"] == 0


def test_renew_leaves_a_backing_off_site_alone_until_its_next_attempt(
        tmp_path: Path, pebble: Pebble) -> None:
    sites = {"clinic": site(pebble, "clinic")}
    closed = write_config(tmp_path, f"https://127.0.0.1:{free_port()}/dir", pebble.ca_bundle,
                          sites)
    failed = renew(closed, check=1)["clinic"]
    assert failed["status"] == "failed" and failed["error"]["class"] == "CAUnavailable"

    good = write_config(tmp_path, pebble.directory_url, pebble.ca_bundle, sites)
    result = run_mamoru("renew", "--json", "-c", str(good), check=0)
    waiting = json.loads(result.stdout)["sites"][0]
    assert waiting["status"] == "skipped" and waiting["next_due"]
    assert "backing off after 1 failed attempt" in result.stderr
    assert pebble.order_count() == 0

    assert renew(good, "--force")["clinic"]["status"] == "issued"
    assert pebble.order_count() == 1


def test_renew_puts_back_a_certificate_the_server_no_longer_serves(
        tmp_path: Path, pebble: Pebble) -> None:
    """Someone removed mamoru's nginx file and reloaded: the next pass installs the stored,
    still-valid certificate again (install transaction, verified by handshake) — no order."""
    webroot, docroot = tmp_path / "acme", tmp_path / "www"
    (webroot / ".well-known" / "acme-challenge").mkdir(parents=True)
    docroot.mkdir()
    nginx = soak.start_nginx(tmp_path / "nginx", pebble.http_port, webroot)
    try:
        https = free_port()
        config = soak.write_soak_config(tmp_path, pebble, nginx, https, webroot, docroot,
                                        ["clinic"])
        assert renew(config)["clinic"]["status"] == "issued"
        serial = renew(config)["clinic"]["serial"]  # skipped: served, nothing to do
        assert fetch_leaf(("127.0.0.1", https), "clinic.example").serial() == serial

        os.unlink(nginx.conf_dir / "mamoru-clinic.conf")
        nginx.reload()
        assert fetch_leaf(("127.0.0.1", https), "clinic.example").der is None

        result = renew(config)["clinic"]
        assert result["status"] == "reinstalled" and result["serial"] == serial
        assert "web server does not serve" in result["why"]
        assert fetch_leaf(("127.0.0.1", https), "clinic.example").serial() == serial
        assert pebble.order_count() == 1
        assert renew(config)["clinic"]["status"] == "skipped"
    finally:
        nginx.stop()
