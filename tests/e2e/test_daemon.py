"""`mamoru run` end to end: the daemon as a separate process against a real Pebble (and a real
nginx), with $NOTIFY_SOCKET pointing at a datagram socket the test holds.

The harness (NotifySocket, Daemon, read_events, the soak itself) lives in
scripts/soak_daemon.py; the full 10-minute soak is `python scripts/soak_daemon.py`.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.helpers import run_mamoru, write_config
from tests.servers.pebble import Pebble

pytestmark = pytest.mark.e2e

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "soak_daemon.py"


def load_soak() -> ModuleType:
    if "soak_daemon" in sys.modules:
        return sys.modules["soak_daemon"]
    spec = importlib.util.spec_from_file_location("soak_daemon", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["soak_daemon"] = module
    spec.loader.exec_module(module)
    return module


soak = load_soak()


@pytest.fixture
def notify() -> Iterator[Any]:
    sock = soak.NotifySocket()
    yield sock
    sock.close()


@pytest.fixture
def daemons() -> Iterator[Callable[..., Any]]:
    """Start `mamoru run` processes; any still running are killed (by PID) at teardown."""
    started: list[Any] = []

    def start(config: Path, log: Path, **kwargs: Any) -> Any:
        daemon = soak.Daemon(config, log, **kwargs).start()
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.cleanup()


def standalone(pebble: Pebble, *names: str) -> dict[str, Any]:
    return {name: {"domains": [f"{name}.example"],
                   "challenge": {"standalone": f"127.0.0.1:{pebble.http_port}"}}
            for name in names}


def events_of(tmp_path: Path) -> Path:
    return tmp_path / "log" / "events.jsonl"


def kinds(tmp_path: Path, site: str | None = None) -> list[str]:
    return [e["kind"] for e in soak.read_events(events_of(tmp_path))
            if site is None or e.get("site") == site]


def state_of(tmp_path: Path, site: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        (tmp_path / "state" / "sites" / site / "state.json").read_text())
    return data


def context_switches(pid: int) -> int:
    """Voluntary + involuntary context switches of every thread of `pid` so far."""
    total = 0
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        try:
            text = status.read_text()
        except FileNotFoundError:  # a thread that just ended
            continue
        for line in text.splitlines():
            if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                total += int(line.split()[1])
    return total


# -- renewal on schedule ------------------------------------------------------------------------



def backoff_then_one_order(tmp_path: Path, pebble: Pebble, daemon: Any, *, since: float
                           ) -> None:
    """After one interrupted attempt: no new order for 2 s after `since` (the backoff), then
    exactly one, and the site is provisioned."""
    while time.monotonic() - since < 2.0:
        assert pebble.order_count() == 1
        time.sleep(0.1)
    soak.wait_events(events_of(tmp_path), lambda e: e["kind"] == "provisioned", timeout=40,
                     daemon=daemon)
    assert pebble.order_count() == 2

def test_run_keeps_two_sites_served_renewing_at_half_the_lifetime(tmp_path: Path) -> None:
    """The short variant of scripts/soak_daemon.py: 30-second certificates, 50 seconds of
    `mamoru run`, nginx sampled every 0.5 s. Each site renews (at least) twice, each renewal
    is ordered at 45-50 % of the previous lifetime (1/2 left, minus up to 10 % jitter), every
    certificate is proven served by nginx, no sample ever saw an invalid certificate, and
    Pebble's order count equals the certificates issued (no storm, no retry)."""
    report = soak.run(validity=30, duration=50, sites=2, workdir=tmp_path, echo=False)
    assert report.ok, report.summary()
    assert report.exit_code == 0 and report.stop_seconds < 5, report.summary()
    for site in report.sites.values():
        assert site.renewals >= 2, report.summary()
        assert len(site.renewed_at_fraction) == site.renewals
        assert all(0.44 <= f <= 0.6 for f in site.renewed_at_fraction), report.summary()
        assert not site.gaps and site.samples >= 60
        assert site.min_left_fraction > 0.3  # never served close to expiry
        assert len(site.served_serials) == site.renewals + 1
    assert report.orders == report.issued == sum(s.renewals + 1 for s in report.sites.values())
    messages = report.notify
    assert any(m.startswith("READY=1") for m in messages), messages
    statuses = [m for m in messages if "STATUS=2 sites" in m]
    assert any("next renewal clinic" in m for m in statuses), messages
    assert any(m.startswith("STOPPING=1") for m in messages), messages


# -- reload ------------------------------------------------------------------------------------


def test_sighup_adds_changes_and_removes_sites_and_survives_a_bad_config(
        tmp_path: Path, pebble: Pebble, notify: Any, daemons: Callable[..., Any]) -> None:
    config = write_config(tmp_path, pebble.directory_url, pebble.ca_bundle,
                          standalone(pebble, "first"))
    # WATCHDOG_USEC as systemd sets it (WatchdogSec=1): pings every half second.
    daemon = daemons(config, tmp_path / "mamoru.log", notify=notify,
                     env={"WATCHDOG_USEC": "1000000"})
    notify.wait_for("READY", "1")
    soak.wait_events(events_of(tmp_path), lambda e: e["kind"] == "provisioned", daemon=daemon)
    assert pebble.order_count() == 1

    # A broken config: reported, the old one keeps running, systemd hears READY again.
    good = config.read_text()
    config.write_text(good + "  second:\n    domains: [not..valid]\n")
    mark = len(notify.snapshot())
    daemon.signal(signal.SIGHUP)
    notify.wait_for("RELOADING", "1", after=mark)
    _, fields = notify.wait_for("READY", "1", after=mark)
    assert "FAILED" in fields["STATUS"] and "1 site" in fields["STATUS"]
    rejected = soak.wait_events(events_of(tmp_path), lambda e: e["kind"] == "config-rejected")
    assert rejected[0]["level"] == "error"
    assert any("sites.second.domains" in p for p in rejected[0]["problems"])
    assert daemon.alive()

    # Add a site: it is issued at once; the first is left alone.
    write_config(tmp_path, pebble.directory_url, pebble.ca_bundle,
                 standalone(pebble, "first", "second"))
    mark = len(notify.snapshot())
    daemon.signal(signal.SIGHUP)
    _, fields = notify.wait_for("READY", "1", after=mark)
    assert fields["STATUS"].startswith("2 sites")
    soak.wait_events(events_of(tmp_path),
                     lambda e: e["kind"] == "provisioned" and e["site"] == "second",
                     daemon=daemon)
    reloaded = soak.wait_events(events_of(tmp_path), lambda e: e["kind"] == "config-reloaded")
    assert "added second" in reloaded[0]["message"]
    assert pebble.order_count() == 2

    # Change a site (one more name) and the number of orders in flight (a new worker pool,
    # a new ACME session): renewed at once for the new names; the other site is left alone.
    sites = standalone(pebble, "first", "second")
    sites["first"]["domains"].append("www.first.example")
    write_config(tmp_path, pebble.directory_url, pebble.ca_bundle, sites,
                 acme={"max_concurrent_orders": 2})
    daemon.signal(signal.SIGHUP)
    renewed = soak.wait_events(events_of(tmp_path), lambda e: e["kind"] == "renewed"
                               and e["site"] == "first", daemon=daemon)
    assert sorted(renewed[0]["names"]) == ["first.example", "www.first.example"]
    reloaded = soak.wait_events(events_of(tmp_path), lambda e: e["kind"] == "config-reloaded",
                                count=2)
    assert reloaded[1]["message"].endswith("changed first; acme settings changed")
    assert pebble.order_count() == 3

    # Remove a site: the status line counts one; nothing is ordered for it any more.
    write_config(tmp_path, pebble.directory_url, pebble.ca_bundle, standalone(pebble, "second"),
                 acme={"max_concurrent_orders": 2})
    mark = len(notify.snapshot())
    daemon.signal(signal.SIGHUP)
    _, fields = notify.wait_for("READY", "1", after=mark)
    assert fields["STATUS"].startswith("1 site,"), fields
    assert pebble.order_count() == 3

    # The watchdog was fed all along, at about half the interval.
    index = 0
    for _ in range(3):
        index, _fields = notify.wait_for("WATCHDOG", "1", after=index + 1, timeout=2)
    pings = [t for t, m in notify.snapshot() if m.get("WATCHDOG") == "1"]
    assert len(pings) >= 3
    assert all(0.3 <= b - a <= 0.8 for a, b in itertools.pairwise(pings[-3:])), pings
    code, seconds = daemon.stop()
    assert code == 0 and seconds < 5, daemon.output()[-3000:]
    notify.wait_for("STOPPING", "1")


# -- restarts -----------------------------------------------------------------------------------


def test_kill9_and_restart_order_nothing_for_valid_certificates_and_idle_means_asleep(
        tmp_path: Path, pebble: Pebble, notify: Any, daemons: Callable[..., Any]) -> None:
    config = write_config(tmp_path, pebble.directory_url, pebble.ca_bundle,
                          standalone(pebble, "alpha", "beta"))
    first = daemons(config, tmp_path / "mamoru.log", notify=notify)
    soak.wait_events(events_of(tmp_path), lambda e: e["kind"] == "provisioned", count=2,
                     daemon=first)
    assert pebble.order_count() == 2
    first.kill9()

    mark = len(notify.snapshot())
    second = daemons(config, tmp_path / "mamoru2.log", notify=notify)
    _, ready = notify.wait_for("READY", "1", after=mark)
    assert ready["STATUS"].startswith("2 sites, next renewal "), ready
    # Pebble's certificates last 5 years: the next check is the periodic one, 12 h away; a
    # restart honours it (no check, no order now).
    time.sleep(1.5)
    assert pebble.order_count() == 2
    assert kinds(tmp_path).count("due-check") == 2  # the two first issuances only
    for site in ("alpha", "beta"):
        check = datetime.fromisoformat(state_of(tmp_path, site)["next_check"])
        assert check - datetime.now(UTC) > timedelta(hours=11)

    # Idle means asleep: no thread of the daemon wakes up while nothing is due.
    before = context_switches(second.pid)
    time.sleep(3)
    woke = context_switches(second.pid) - before
    assert woke <= 3, f"the idle daemon woke {woke} times in 3 s"

    code, seconds = second.stop()
    assert code == 0 and seconds < 3


def test_kill9_mid_order_counts_as_a_failed_attempt_and_backs_off(
        tmp_path: Path, pebble_factory: Callable[..., Pebble], daemons: Callable[..., Any]
        ) -> None:
    # Pebble sleeps 0-15 s before validating without NOSLEEP: an order stays in flight.
    pebble = pebble_factory(extra_env={"PEBBLE_VA_NOSLEEP": "0"})
    config = write_config(tmp_path, pebble.directory_url, pebble.ca_bundle,
                          standalone(pebble, "clinic"),
                          extra={"renewal": {"retry_first_seconds": 3}})
    first = daemons(config, tmp_path / "mamoru.log")
    soak.wait_events(events_of(tmp_path), lambda e: e["kind"] == "challenge", daemon=first)
    first.kill9()
    assert pebble.order_count() == 1
    assert "in_flight" in state_of(tmp_path, "clinic")

    restarted_at = time.monotonic()
    second = daemons(config, tmp_path / "mamoru2.log")
    failed = soak.wait_events(events_of(tmp_path), lambda e: e["kind"] == "failed",
                              daemon=second)
    assert failed[0]["error_class"] == "Interrupted"
    state = state_of(tmp_path, "clinic")
    assert state["attempts"] == 1 and "in_flight" not in state
    assert state["last_attempt"]["outcome"] == "interrupted"
    retry = datetime.fromisoformat(state["next_attempt"])
    assert 2.5 <= (retry - datetime.fromisoformat(failed[0]["time"].replace("Z", "+00:00"))
                   ).total_seconds() <= 3.5
    # The backoff holds: no new order before the next attempt, then one.
    backoff_then_one_order(tmp_path, pebble, second, since=restarted_at)
    assert second.stop()[0] == 0


# -- the CA goes away -----------------------------------------------------------------------------


def test_unreachable_ca_backs_off_past_expiry_then_recovers_on_reload(
        tmp_path: Path, pebble_factory: Callable[..., Pebble], notify: Any,
        daemons: Callable[..., Any]) -> None:
    pebble = pebble_factory(validity_seconds=16)
    renewal = {"retry_first_seconds": 1, "retry_max_seconds": 4, "jitter_fraction": 0.1}
    config = write_config(tmp_path, pebble.directory_url, pebble.ca_bundle,
                          standalone(pebble, "clinic"), extra={"renewal": renewal})
    run_mamoru("provision", "-c", str(config), check=0)
    live = tmp_path / "live" / "clinic" / "fullchain.pem"
    old_chain = live.read_bytes()
    not_after = datetime.fromisoformat(
        json.loads((tmp_path / "live" / "clinic" / "meta.json").read_text())["not_after"])
    pebble.stop()  # the CA is gone

    daemon = daemons(config, tmp_path / "mamoru.log", notify=notify)
    # Due at half the lifetime (~8 s), then failing: 1, 2, 4, 4 ... s apart, past expiry.
    failures = soak.wait_events(
        events_of(tmp_path), lambda e: e["kind"] == "failed"
        and soak.when(e["time"]) > not_after + timedelta(seconds=2), timeout=40, daemon=daemon)
    assert failures
    failed = [e for e in soak.read_events(events_of(tmp_path)) if e["kind"] == "failed"]
    assert len(failed) >= 4
    assert {e["error_class"] for e in failed} == {"CAUnavailable"}
    assert [e["attempt"] for e in failed] == list(range(1, len(failed) + 1))
    gaps = [(soak.when(b["time"]) - soak.when(a["time"])).total_seconds()
            for a, b in itertools.pairwise(failed)]
    expected = [min(2 ** i, 4) for i in range(len(gaps))]
    for gap, want in zip(gaps, expected, strict=True):
        assert want * 0.9 - 0.05 <= gap <= want * 1.1 + 1.5, (gaps, expected)
    backoffs = [e for e in soak.read_events(events_of(tmp_path)) if e["kind"] == "backoff"]
    assert len(backoffs) >= len(failed) - 1
    assert daemon.alive()
    assert live.read_bytes() == old_chain  # the old certificate is still what live/ holds
    assert any("1 failing (clinic)" in m.get("STATUS", "") for _, m in notify.snapshot())

    # A new CA (a config change and SIGHUP): the site is retried at once and recovers.
    fresh = pebble_factory()
    write_config(tmp_path, fresh.directory_url, fresh.ca_bundle, standalone(fresh, "clinic"),
                 extra={"renewal": renewal})
    daemon.signal(signal.SIGHUP)
    soak.wait_events(events_of(tmp_path), lambda e: e["kind"] == "renewed", timeout=20,
                     daemon=daemon)
    assert live.read_bytes() != old_chain
    assert state_of(tmp_path, "clinic")["attempts"] == 0
    assert fresh.order_count() == 1
    assert daemon.stop()[0] == 0


# -- the worker process ---------------------------------------------------------------------------


def workers_of(pid: int) -> list[int]:
    """The daemon's worker processes (children running mamoru.service.worker)."""
    found = []
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            pids = [int(c) for c in children.read_text().split()]
        except FileNotFoundError:
            continue
        for child in pids:
            try:
                cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            except FileNotFoundError:
                continue
            if b"mamoru.service.worker" in cmdline:
                found.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in text


def test_a_worker_killed_mid_order_costs_one_failed_attempt_and_the_daemon_carries_on(
        tmp_path: Path, pebble_factory: Callable[..., Pebble], notify: Any,
        daemons: Callable[..., Any]) -> None:
    # Pebble sleeps 0-15 s before validating without NOSLEEP: the order stays in flight.
    pebble = pebble_factory(extra_env={"PEBBLE_VA_NOSLEEP": "0"})
    config = write_config(tmp_path, pebble.directory_url, pebble.ca_bundle,
                          standalone(pebble, "clinic"),
                          extra={"renewal": {"retry_first_seconds": 3}})
    daemon = daemons(config, tmp_path / "mamoru.log", notify=notify)
    soak.wait_events(events_of(tmp_path), lambda e: e["kind"] == "challenge", daemon=daemon)
    workers = workers_of(daemon.pid)
    assert len(workers) == 1, workers
    assert "in_flight" in state_of(tmp_path, "clinic")
    os.kill(workers[0], signal.SIGKILL)

    failed = soak.wait_events(events_of(tmp_path), lambda e: e["kind"] == "failed",
                              daemon=daemon)
    killed_at = time.monotonic()
    assert daemon.alive()
    # It was ordering: the same record as after a crash of the whole daemon.
    assert failed[0]["error_class"] == "Interrupted", failed
    state = state_of(tmp_path, "clinic")
    assert state["attempts"] == 1 and "in_flight" not in state
    assert state["last_attempt"]["outcome"] == "interrupted"
    assert [e["kind"] for e in soak.read_events(events_of(tmp_path))].count("backoff") == 1
    # Backoff holds: nothing is ordered again before the next attempt, then a new worker
    # orders once, and the site is served.
    backoff_then_one_order(tmp_path, pebble, daemon, since=killed_at)
    assert not alive(workers[0])
    code, _ = daemon.stop()
    assert code == 0, daemon.output()[-3000:]


def test_sigterm_during_a_worker_run_cancels_it_cleanly_and_leaves_no_worker(
        tmp_path: Path, pebble_factory: Callable[..., Pebble], notify: Any,
        daemons: Callable[..., Any]) -> None:
    pebble = pebble_factory(extra_env={"PEBBLE_VA_NOSLEEP": "0"})
    config = write_config(tmp_path, pebble.directory_url, pebble.ca_bundle,
                          standalone(pebble, "clinic"))
    daemon = daemons(config, tmp_path / "mamoru.log", notify=notify)
    soak.wait_events(events_of(tmp_path), lambda e: e["kind"] == "challenge", daemon=daemon)
    workers = workers_of(daemon.pid)
    assert len(workers) == 1, workers
    code, seconds = daemon.stop()
    assert code == 0 and seconds < 10, daemon.output()[-3000:]
    notify.wait_for("STOPPING", "1")
    assert not alive(workers[0])
    # Cancelled, not failed: no attempt counted, no marker left for the next start to find.
    state = state_of(tmp_path, "clinic")
    assert "in_flight" not in state and state.get("attempts", 0) == 0, state
    events = soak.read_events(events_of(tmp_path))
    assert [e["error_class"] for e in events if e["kind"] == "failed"] == ["Cancelled"]
    assert events[-1]["kind"] == "stopped" and "abandoned" not in events[-1], events[-1]
    # The worker's events went through the daemon's event log, in order with its own.
    order = [e["kind"] for e in events]
    assert order.index("started") < order.index("challenge") < order.index("stopping")
