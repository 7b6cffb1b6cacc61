"""The daemon (`mamoru run`, a real process) against a CA that fails, and beside a one-shot
`mamoru provision` on the same site: it keeps running, retries on the schedule the backoff
table promises (never before the CA's Retry-After), recovers by itself, and never lets two
processes order for one site.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import MAMORU, run_mamoru, write_config
from tests.reliability.checks import check_live
from tests.reliability.conftest import Proxied, read_state, standalone_site
from tests.servers.pebble import Pebble

pytestmark = pytest.mark.e2e

NAMES = ["clinic.example", "www.clinic.example"]


def _when(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


class EventLog:
    """Reads a (growing) events.jsonl; `wait` polls it for a condition (a test helper, not
    the daemon path)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def events(self) -> list[dict[str, Any]]:
        try:
            lines = self.path.read_text().splitlines()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in lines if line.strip()]

    def kinds(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events() if e["kind"] == kind]

    def wait(self, kind: str, count: int, timeout: float,
             proc: subprocess.Popen[str] | None = None) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.kinds(kind)
            if len(found) >= count:
                return found
            if proc is not None and proc.poll() is not None:
                raise AssertionError(f"the daemon exited ({proc.returncode}) waiting for "
                                     f"{count} {kind!r} events: {proc.communicate()}")
            time.sleep(0.02)
        raise AssertionError(f"no {count} {kind!r} events within {timeout} s: "
                             f"{[e['kind'] for e in self.events()]}")


@pytest.fixture
def daemons() -> Iterator[Callable[[Path], subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []

    def start(config: Path) -> subprocess.Popen[str]:
        proc = subprocess.Popen([*MAMORU, "run", "-c", str(config)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        started.append(proc)
        return proc

    yield start
    for proc in started:  # stopped by PID, as the user's systemd would
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()


def stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Traceback" not in err, err
    return err


def test_daemon_backs_off_as_promised_and_recovers_by_itself(
        tmp_path: Path, proxied: Proxied, daemons: Callable[[Path], subprocess.Popen[str]]
        ) -> None:
    proxy = proxied.proxy
    config = write_config(tmp_path, proxied.directory_url, proxied.ca_bundle,
                          {"clinic": standalone_site(NAMES, proxied.pebble.http_port)},
                          acme={"timeout": 2},
                          extra={"renewal": {"retry_first_seconds": 1, "retry_max_seconds": 60,
                                             "jitter_fraction": 0.1}})
    log = EventLog(tmp_path / "log" / "events.jsonl")
    # The CA rate-limits new orders and names a time: 3 s from now.
    proxy.set_mode("429", paths=("/order-plz",), retry_after="3")
    daemon = daemons(config)
    first = log.wait("failed", 1, 30, daemon)[0]
    assert first["error_class"] == "RateLimited"
    # Then it answers 500 to everything.
    proxy.set_mode("500")
    failures = log.wait("failed", 3, 40, daemon)
    assert [f["error_class"] for f in failures[1:3]] == ["CAUnavailable"] * 2
    proxy.set_mode("pass")
    done = log.wait("provisioned", 1, 30, daemon)[0]
    attempts = log.kinds("due-check")

    # Attempt k+1 started when the backoff after attempt k said, never earlier: after the
    # rate limit not before its Retry-After (3 s, plus up to 5 s of spread); then 2 s and
    # 4 s (doubling from retry_first_seconds=1, +-10 %).
    failed_at = [_when(f["time"]) for f in failures[:3]]
    started_at = [_when(a["time"]) for a in attempts[1:4]]
    gaps = [round(s - f, 2) for f, s in zip(failed_at, started_at, strict=True)]
    assert 3.0 <= gaps[0] <= 8.0 + 1.0, gaps
    assert 2 * 0.9 <= gaps[1] <= 2 * 1.1 + 1.0, gaps
    assert 4 * 0.9 <= gaps[2] <= 4 * 1.1 + 1.0, gaps
    backoffs = log.kinds("backoff")[:3]
    for backoff, start in zip(backoffs, started_at, strict=True):
        assert _when(backoff["next_due"]) <= start + 0.5  # it ran when it had said
        assert start >= _when(backoff["next_due"]) - 0.05  # and not before
    assert len(attempts) == 4  # no attempt in between
    assert done["attempt"] == 4
    check_live(tmp_path / "live", "clinic")
    state = read_state(tmp_path, "clinic")
    assert state["attempts"] == 0 and state["next_attempt"] is None
    assert daemon.poll() is None  # still running, never crashed
    err = stop(daemon)
    assert "stopped" in [e["kind"] for e in log.events()][-2:] or "stopped" in err


def test_renew_pass_leaves_a_backing_off_site_alone(tmp_path: Path, proxied: Proxied) -> None:
    proxy = proxied.proxy
    config = write_config(tmp_path, proxied.directory_url, proxied.ca_bundle,
                          {"clinic": standalone_site(NAMES, proxied.pebble.http_port)})
    proxy.set_mode("503", retry_after="3600")
    result = run_mamoru("renew", "--json", "-c", str(config), check=1)
    assert json.loads(result.stdout)["sites"][0]["error"]["class"] == "CAUnavailable"
    seen = len(proxy.records)
    # A timer or cron running `mamoru renew` again within the hour must not hit the CA.
    for _ in range(3):
        again = run_mamoru("renew", "--json", "-c", str(config), check=0)
        assert json.loads(again.stdout)["sites"][0]["status"] != "failed", again.stdout
    assert len(proxy.records) == seen
    assert read_state(tmp_path, "clinic")["attempts"] == 1


@pytest.mark.parametrize("first", ["daemon", "provision"])
def test_provision_and_the_daemon_at_once_make_one_order(
        first: str, tmp_path: Path, proxied: Proxied,
        daemons: Callable[[Path], subprocess.Popen[str]]) -> None:
    pebble, proxy = proxied.pebble, proxied.proxy
    config = write_config(tmp_path, proxied.directory_url, proxied.ca_bundle,
                          {"clinic": standalone_site(NAMES, pebble.http_port)},
                          acme={"timeout": 20})
    log = EventLog(tmp_path / "log" / "events.jsonl")
    one_shot = [*MAMORU, "provision", "--json", "-c", str(config)]
    # The first process to start holds the site while the CA takes its time to finalize
    # (the proxy holds that request), so the second surely arrives while it is ordering.
    proxy.set_mode("hang", paths=("/finalize-order/",))
    if first == "daemon":
        daemon = daemons(config)
        log.wait("validated", 1, 30, daemon)
        proc = subprocess.Popen(one_shot, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    else:
        proc = subprocess.Popen(one_shot, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        log.wait("validated", 1, 30)
        daemon = daemons(config)
        log.wait("started", 1, 30, daemon)
    time.sleep(1.0)  # (test side) let the second process reach the site's lock and wait there
    assert proc.poll() is None and daemon.poll() is None
    assert pebble.order_count() == 1
    proxy.set_mode("pass")  # the CA answers again: the first finishes, the second re-checks

    out, err = proc.communicate(timeout=120)
    status = json.loads(out)["sites"][0]["status"]
    skipped = log.wait("skipped", 1, 30, daemon)
    assert status == ("skipped" if first == "daemon" else "issued"), err
    assert len(log.kinds("provisioned")) == 1 and len(skipped) == 1
    assert pebble.order_count() == 1
    check_live(tmp_path / "live", "clinic")
    assert daemon.poll() is None
    stop(daemon)
    assert pebble.order_count() == 1


def test_both_started_in_the_same_instant_make_one_order(
        tmp_path: Path, pebble: Pebble,
        daemons: Callable[[Path], subprocess.Popen[str]]) -> None:
    config = write_config(tmp_path, pebble.directory_url, pebble.ca_bundle,
                          {"clinic": standalone_site(NAMES, pebble.http_port)})
    log = EventLog(tmp_path / "log" / "events.jsonl")
    daemon = daemons(config)
    procs = [subprocess.Popen([*MAMORU, "provision", "--json", "-c", str(config)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    statuses = [json.loads(p.communicate(timeout=120)[0])["sites"][0]["status"] for p in procs]
    log.wait("provisioned", 1, 30, daemon)  # by the daemon or by one of the three
    stop(daemon)
    assert len(log.kinds("provisioned")) == 1
    assert statuses.count("issued") <= 1 and set(statuses) <= {"issued", "skipped"}, statuses
    assert pebble.order_count() == 1, statuses
    check_live(tmp_path / "live", "clinic")
