"""Many orders at once on one ACME session, against a real Pebble that rejects nonces.

20 sites, `acme.max_concurrent_orders: 10`, Pebble rejecting 30 % of nonces: every order
shares the session's counters. What mamoru counts (`requests`, `bad_nonce_retries`, the
numbers `provision --json` reports under `ca`) must equal what reached the CA, counted on the
other side by a recording proxy in front of Pebble (every request, and every 400 answer: with
nothing else wrong, those are the badNonce rejections). Pebble's own log agrees.

The run is in this process with the interpreter asked to switch threads every microsecond,
to give lost updates every chance. (CPython 3.11 does not switch threads inside `x += 1` on
an attribute, so this run also counted right before the counters were locked; the lock is what
keeps them exact on interpreters that do switch there, free-threaded builds among them.)"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mamoru.app import build_app
from mamoru.cli import run_sites
from mamoru.config import load_config
from tests.helpers import write_config
from tests.servers.fault_proxy import FaultProxy
from tests.servers.pebble import Pebble

pytestmark = pytest.mark.e2e

REQUEST_LOG_RE = re.compile(r"^.* (GET|HEAD|POST) (\S+) -> calling handler\(\)", re.M)
SITES = 20


@pytest.fixture
def busy_threads() -> Iterator[None]:
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


def test_twenty_concurrent_orders_counted_exactly(
        tmp_path: Path, pebble_factory: Callable[..., Pebble], busy_threads: None) -> None:
    pebble = pebble_factory(nonce_reject=30)
    sites = {f"c{i:02d}": {"domains": [f"c{i:02d}.example"],
                           "challenge": {"standalone": f"127.0.0.1:{pebble.http_port}"}}
             for i in range(SITES)}
    with FaultProxy(tmp_path / "proxy", upstream=pebble.base_url,
                    upstream_ca=pebble.ca_bundle) as proxy:
        config = write_config(tmp_path, proxy.url("/dir"), proxy.ca_bundle, sites,
                              acme={"max_concurrent_orders": 10})
        before = len(REQUEST_LOG_RE.findall(pebble.log_text()))  # readiness probes
        app = build_app(load_config(str(config)), stderr=False, observers=False)
        try:
            outcomes = run_sites(app, app.settings.sites, force=False, dry_run=False,
                                 honour_backoff=False)
            stats = app.session_stats()
        finally:
            app.reset_session()
            app.events.close(5)
        records = list(proxy.records)
    assert [o.status for o in outcomes] == ["issued"] * SITES, [o.to_json() for o in outcomes]
    assert pebble.issued_count() == SITES and pebble.order_count() == SITES
    rejected = [r for r in records if r.status == 400]
    assert stats["bad_nonce_retries"] > 0  # the fault really happened
    assert stats == {"requests": len(records), "bad_nonce_retries": len(rejected)}, (
        stats, len(records), len(rejected))
    assert len(REQUEST_LOG_RE.findall(pebble.log_text())) - before == len(records)


def test_orders_at_the_ca_never_exceed_max_concurrent_orders(
        tmp_path: Path, pebble_factory: Callable[..., Pebble],
        monkeypatch: pytest.MonkeyPatch) -> None:
    # More sites are at work than orders may be open (storage and install overlap the next
    # orders): the orders themselves, counted around the real issuance, stay within the limit.
    import threading

    import mamoru.issuance  # the pipeline imports obtain_for_site from it at each order

    pebble = pebble_factory()
    sites = {f"s{i:02d}": {"domains": [f"s{i:02d}.example"],
                           "challenge": {"standalone": f"127.0.0.1:{pebble.http_port}"}}
             for i in range(12)}
    config = write_config(tmp_path, pebble.directory_url, pebble.ca_bundle, sites,
                          acme={"max_concurrent_orders": 3})
    real = mamoru.issuance.obtain_for_site
    lock, open_orders, most = threading.Lock(), [0], [0]

    def counted(*args: object, **kwargs: object) -> object:
        with lock:
            open_orders[0] += 1
            most[0] = max(most[0], open_orders[0])
        try:
            return real(*args, **kwargs)  # type: ignore[arg-type]
        finally:
            with lock:
                open_orders[0] -= 1

    monkeypatch.setattr(mamoru.issuance, "obtain_for_site", counted)
    app = build_app(load_config(str(config)), stderr=False, observers=False)
    try:
        outcomes = run_sites(app, app.settings.sites, force=False, dry_run=False,
                             honour_backoff=False)
    finally:
        app.reset_session()
        app.events.close(5)
    assert [o.status for o in outcomes] == ["issued"] * 12, [o.to_json() for o in outcomes]
    assert 1 < most[0] <= 3, most[0]
    assert pebble.order_count() == 12
