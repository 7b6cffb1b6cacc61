"""The fleet page in a real headless Chromium against a real collector and PostgreSQL: the
login, every clinic and site sorted by danger, the filters, a clinic's history, a phone's
width, and nothing loaded from anywhere but the collector. Screenshots go to
build/screenshots/fleet/ (or $MAMORU_SCREENSHOTS) for a person to look at."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.fleet.conftest import snapshot
from tests.helpers import run_mamoru
from tests.servers.chromium import Chromium
from tests.servers.fleet import Collector

pytestmark = pytest.mark.e2e

SHOTS = Path(os.environ.get("MAMORU_SCREENSHOTS") or
             Path(__file__).resolve().parents[2] / "build" / "screenshots" / "fleet")


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Chromium]:
    chromium = Chromium(tmp_path).start(ignore_certificate_errors_for="collector")
    yield chromium
    chromium.stop()


def ev(seq: int, kind: str, where: str | None, when: datetime, body: dict[str, Any] | None = None,
       **fields: Any) -> dict[str, Any]:
    return {"id": str(uuid.uuid4()), "seq": seq, "time": when.isoformat(), "kind": kind,
            "site": where, "body": {**(body or {}), **fields}}


def fill_fleet(collector: Collector, add_clinic: Callable[..., str]) -> None:
    now = datetime.now(UTC)

    def post(token: str, events: list[dict[str, Any]]) -> None:
        status, body = collector.request("POST", "/v1/report", json.dumps(
            {"events": events}).encode(), {"Authorization": f"Bearer {token}"})
        assert status == 200, body

    def lifetime(days_ago: float, days: float = 90) -> dict[str, str]:
        start = now - timedelta(days=days_ago)
        return {"not_before": start.isoformat(),
                "not_after": (start + timedelta(days=days)).isoformat(),
                "last_success": start.isoformat(),
                "next_renewal": (start + timedelta(days=60)).isoformat()}

    healthy = add_clinic("aoki-pediatrics")
    post(healthy, [ev(1, "snapshot", "www", now, snapshot("www", **lifetime(10))),
                   ev(2, "renewed", "www", now - timedelta(days=10),
                      message="renewed www: serial 0a1b, 90 days")])
    failing = add_clinic("tanaka-clinic")
    post(failing, [
        ev(1, "renewed", "www", now - timedelta(days=70), message="renewed www: 90 days"),
        ev(2, "failed", "www", now - timedelta(days=2), message="renewal failed",
           problem_type="urn:ietf:params:acme:error:unauthorized",
           detail="Invalid response from http://www.tanaka.example/.well-known/acme-challenge/"
                  "[token]: 404"),
        ev(3, "snapshot", "www", now, snapshot("www", **lifetime(80), consecutive_failures=3,
                                                 last_attempt={
            "time": (now - timedelta(days=2)).isoformat(), "outcome": "failed",
            "problem_type": "urn:ietf:params:acme:error:unauthorized",
            "detail": "Invalid response from http://www.tanaka.example/: 404"})),
        ev(4, "snapshot", "booking", now, snapshot("booking", **lifetime(30)))])
    short = add_clinic("sato-dental")
    post(short, [ev(1, "snapshot", "www", now, snapshot("www", **lifetime(5.5, days=6)))])
    add_clinic("mori-eye-clinic")  # never reported


def login(browser: Chromium, collector: Collector, user: str, password: str) -> None:
    browser.navigate(collector.url + "/login")
    browser.submit(f"document.getElementById('name').value = {json.dumps(user)};"
                   f"document.getElementById('password').value = {json.dumps(password)};"
                   "document.getElementById('login').click()")


def rows(browser: Chromium, table: str = "sites") -> list[list[str]]:
    value = browser.evaluate(
        f"Array.from(document.querySelectorAll('#{table} tbody tr')).map("
        "r => Array.from(r.cells).map(c => c.innerText.trim()))")
    assert isinstance(value, list)
    return value


def test_the_page_after_login_shows_the_fleet_by_danger_and_a_clinics_history(
        database: str, add_clinic: Callable[..., str], collectors: Callable[..., Collector],
        browser: Chromium) -> None:
    collector = collectors()
    fill_fleet(collector, add_clinic)
    password = run_mamoru("fleet", "add-user", "vendor", "--database", database,
                          check=0).stdout.strip()

    browser.navigate(collector.url + "/")  # a stranger is sent to the login
    assert browser.evaluate("location.pathname") == "/login"
    login(browser, collector, "vendor", "not the password")
    assert "wrong name or password" in browser.evaluate("document.body.innerText")
    browser.screenshot(SHOTS / "01-login-refused.png")

    login(browser, collector, "vendor", password)
    assert browser.evaluate("location.pathname") == "/"
    table = rows(browser)
    clinics = list(dict.fromkeys(row[0].splitlines()[0] for row in table))
    # danger first (a clinic's rows together, its worst site first): the failing site, then
    # the 6-day certificate near its end, ...
    assert clinics[0] == "tanaka-clinic" and "unauthorized" in table[0][5]
    assert clinics[1] == "sato-dental"
    assert {"aoki-pediatrics", "mori-eye-clinic"} <= set(clinics)
    assert "4 clinics, 4 sites" in browser.evaluate("document.querySelector('h1').innerText")
    browser.screenshot(SHOTS / "02-fleet.png")

    browser.navigate(collector.url + "/?failing=1")
    assert [r[0].splitlines()[0] for r in rows(browser)] == ["tanaka-clinic"]
    browser.screenshot(SHOTS / "03-failing-only.png")

    browser.navigate(collector.url + "/")
    browser.submit("Array.from(document.querySelectorAll('#sites a'))"
                   ".find(a => a.innerText === 'tanaka-clinic').click()")
    assert browser.evaluate("location.pathname") == "/clinic/tanaka-clinic"
    history = rows(browser, "history")
    assert [r[2] for r in history] == ["failed", "renewed"]
    assert "[token]" in history[0][3] and "unauthorized" in history[0][3]
    browser.screenshot(SHOTS / "04-clinic-history.png")

    browser.set_width(390, 844)  # a phone
    browser.navigate(collector.url + "/")
    assert browser.evaluate("document.documentElement.scrollWidth <= 400")
    browser.screenshot(SHOTS / "05-phone.png")

    origin = collector.url
    outside = [u for u in browser.requests if not u.startswith(origin) and
               not u.startswith(("data:", "about:"))]
    assert outside == [], outside
    for name in ("01-login-refused", "02-fleet", "03-failing-only", "04-clinic-history",
                 "05-phone"):
        assert (SHOTS / f"{name}.png").stat().st_size > 5000
