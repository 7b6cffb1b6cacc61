"""The CA misbehaves: nonces rejected, unreachable, hanging, 500, 503 and 429 with Retry-After,
a challenge it cannot reach. mamoru must give a typed error, plan the retry the backoff table
promises (state.json next_attempt, the `failed` event), never crash, and leave the old
certificate live and served. Everything talks to a real Pebble, through a real fault proxy.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import run_mamoru, write_config
from tests.reliability.checks import check_live
from tests.reliability.conftest import (
    Proxied,
    read_events,
    read_state,
    served_serial,
    standalone_site,
)
from tests.servers.pebble import Pebble
from tests.servers.webroot_http import WebrootServer

pytestmark = pytest.mark.e2e

NAMES = ["clinic.example", "www.clinic.example"]


def _when(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _provision(config: Path, *args: str, check: int) -> dict[str, Any]:
    result = run_mamoru("provision", "--json", "-c", str(config), *args, check=check)
    assert "Traceback" not in result.stderr, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def test_half_the_nonces_rejected_every_site_of_twenty_issued(
        tmp_path: Path, pebble_factory: Callable[..., Pebble]) -> None:
    pebble = pebble_factory(nonce_reject=50)
    sites = {f"s{i:02d}": standalone_site([f"s{i:02d}.example"], pebble.http_port)
             for i in range(20)}
    config = write_config(tmp_path, pebble.directory_url, pebble.ca_bundle, sites)
    summary = _provision(config, check=0)
    assert [s["status"] for s in summary["sites"]] == ["issued"] * 20, summary
    for name in sites:
        check_live(tmp_path / "live", name)
    assert pebble.issued_count() == 20
    # The fault really happened, often: about one signed request in two was refused.
    assert summary["ca"]["bad_nonce_retries"] >= 40, summary["ca"]


# (mode, paths the fault applies to, Retry-After sent, error class, words in the message)
HTTP_DATE_IN_2H = "http-date+2h"
FAULTS = {
    "closed": ("closed", None, None, "CAUnavailable", "cannot reach the CA"),
    "hang": ("hang", None, None, "CAUnavailable", "did not answer within 1 s"),
    "500": ("500", None, None, "CAUnavailable", "answered 500"),
    "503-retry-after": ("503", None, "1800", "CAUnavailable", "answered 503"),
    "429-rate-limited": ("429", ("/order-plz",), HTTP_DATE_IN_2H, "RateLimited",
                         "rateLimited"),
    "500-at-finalize": ("500", ("/finalize-order/",), None, "CAUnavailable", "answered 500"),
    "hang-at-download": ("hang", ("/certZ/",), None, "CAUnavailable", "did not answer"),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_ca_fault_typed_error_backoff_old_certificate_served(
        fault: str, tmp_path: Path, proxied: Proxied,
        live_nginx: Callable[[Path, str, list[str]], int]) -> None:
    mode, paths, retry_after, error_class, words = FAULTS[fault]
    pebble, proxy = proxied.pebble, proxied.proxy
    config = write_config(tmp_path, proxied.directory_url, proxied.ca_bundle,
                          {"clinic": standalone_site(NAMES, pebble.http_port)},
                          acme={"timeout": 1})
    first = _provision(config, check=0)["sites"][0]
    old_serial = check_live(tmp_path / "live", "clinic")
    assert first["serial"] == old_serial
    port = live_nginx(tmp_path / "live", "clinic", NAMES)
    assert served_serial(port, "clinic.example") == old_serial
    orders_before = pebble.order_count()

    ra_value = retry_after
    if retry_after == HTTP_DATE_IN_2H:
        ra_value = format_datetime(datetime.now(UTC) + timedelta(hours=2), usegmt=True)
    proxy.set_mode(mode, paths=paths, retry_after=ra_value or "120")
    attempts = []
    for attempt in (1, 2):
        started = datetime.now(UTC)
        summary = _provision(config, "--force", check=1)
        site = summary["sites"][0]
        assert site["status"] == "failed"
        error = site["error"]
        assert error["class"] == error_class, error
        assert words in error["message"], error
        assert error["hint"], error
        state = read_state(tmp_path, "clinic")
        assert state["attempts"] == attempt
        assert state["last_attempt"]["retryable"] is True
        next_attempt = _when(state["next_attempt"])
        assert site["next_due"] and _when(site["next_due"]) == next_attempt
        # The backoff table: 60 s after the first failure, 120 s after the second, +-10 %;
        # never before the CA's Retry-After.
        delay = (next_attempt - started).total_seconds()
        if retry_after is None:
            base = 60 * 2 ** (attempt - 1)
            assert base * 0.9 - 1 <= delay <= base * 1.1 + 30, delay
        elif retry_after == HTTP_DATE_IN_2H:
            assert 7200 - 60 <= delay <= 7200 + 60, delay
        else:
            assert int(retry_after) - 5 <= delay <= int(retry_after) + 60, delay
        attempts.append(next_attempt)
        failed = [e for e in read_events(tmp_path) if e["kind"] == "failed"]
        assert failed[-1]["error_class"] == error_class
        assert failed[-1]["retryable"] is True
        assert _when(failed[-1]["next_attempt"]) == next_attempt
        # Nothing changed for the web server: the same pair is live and served.
        assert check_live(tmp_path / "live", "clinic") == old_serial
        assert served_serial(port, "clinic.example") == old_serial
    if retry_after is None:
        assert attempts[1] - attempts[0] > timedelta(seconds=30)  # it backs off, doubling
    if paths is None:
        assert pebble.order_count() == orders_before  # nothing reached the CA
    if not (mode == "closed" and paths is None):  # a closed port sees no request at all
        assert proxy.counts().get(mode, 0) >= 2

    # The CA recovers: the next run succeeds by itself and the backoff is reset.
    proxy.set_mode("pass")
    renewed = _provision(config, "--force", check=0)["sites"][0]
    assert renewed["status"] == "renewed"
    new_serial = check_live(tmp_path / "live", "clinic")
    assert new_serial != old_serial
    state = read_state(tmp_path, "clinic")
    assert state["attempts"] == 0 and state["next_attempt"] is None


def test_challenge_the_ca_cannot_reach_names_the_url(tmp_path: Path, pebble: Pebble) -> None:
    # The webroot server runs, but serves another directory (a wrong webroot): the CA fetches
    # the challenge URL and gets 404.
    webroot, served = tmp_path / "webroot", tmp_path / "elsewhere"
    served.mkdir()
    config = write_config(tmp_path, pebble.directory_url, pebble.ca_bundle, {
        "clinic": {"domains": NAMES, "challenge": {"webroot": str(webroot)}}})
    with WebrootServer(served, pebble.http_port) as server:
        summary = _provision(config, check=1)
    error = summary["sites"][0]["error"]
    assert error["class"] == "ChallengeFailed"
    fetched = [r.path for r in server.requests if "/acme-challenge/" in r.path]
    assert fetched, "the CA never tried"
    # The message names the URL the CA tried (the token itself stays out of messages, state
    # and logs) and says what to check.
    host = error["message"].split("validating ", 1)[1].split(":", 1)[0]
    assert host in NAMES
    assert f"the CA fetched http://{host}/.well-known/acme-challenge/[token]" in error["message"]
    for path in fetched:
        token = path.rsplit("/", 1)[1]
        assert token not in json.dumps(summary)
        assert token not in (tmp_path / "state" / "sites" / "clinic" / "state.json").read_text()
    assert "webroot" in error["hint"] or "/.well-known/acme-challenge/" in error["hint"]
    assert os.listdir(webroot / ".well-known" / "acme-challenge") == []  # cleaned up
    assert not (tmp_path / "live" / "clinic").exists()
    state = read_state(tmp_path, "clinic")
    assert state["attempts"] == 1 and state["last_attempt"]["error_class"] == "ChallengeFailed"
