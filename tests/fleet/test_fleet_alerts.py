"""Fleet alerts: a silent clinic raises exactly one alert from a real `mamoru fleet serve`
(its dead man's switch), an expiring certificate one alert whether or not its clinic still
reports, and many clinics failing the same way one digest."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from mamoru.config.model import AlertSettings, WebhookAlerts
from mamoru.fleet.alerts import FleetAlerts
from tests.fleet.conftest import snapshot
from tests.servers.fleet import Collector
from tests.servers.receivers import WebhookReceiver

pytestmark = pytest.mark.e2e


@pytest.fixture
def hooks() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as receiver:
        yield receiver


def report(collector: Collector, token: str, events: list[dict[str, Any]]) -> None:
    status, body = collector.request("POST", "/v1/report", json.dumps({"events": events})
                                     .encode(), {"Authorization": f"Bearer {token}"})
    assert status == 200, body


def snap(seq: int, site: str, **fields: Any) -> dict[str, Any]:
    return {"id": str(uuid.uuid4()), "seq": seq, "time": datetime.now(UTC).isoformat(),
            "kind": "snapshot", "site": site, "body": snapshot(site, **fields)}


def test_a_silent_clinic_raises_exactly_one_alert(
        add_clinic: Callable[..., str], collectors: Callable[..., Collector],
        hooks: WebhookReceiver) -> None:
    collector = collectors("--alert-webhook", hooks.url, "--silent-after", "4s",
                           "--alert-interval", "0.5")
    alive = add_clinic("tanaka-clinic")
    report(collector, alive, [])
    add_clinic("sato-dental")  # registered, then never heard from
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # tanaka keeps reporting, sato stays silent
        report(collector, alive, [])
        time.sleep(0.5)
    alerts = [h.json for h in hooks.requests]
    assert [(a["alert"], a["clinic"]) for a in alerts] == [("silent", "sato-dental")], alerts
    assert "has not reported" in alerts[0]["summary"]


def test_silence_ends_with_a_report_and_a_new_silence_alerts_again(
        database: str, add_clinic: Callable[..., str], collectors: Callable[..., Collector],
        hooks: WebhookReceiver) -> None:
    token = add_clinic("tanaka-clinic")
    collector = collectors()
    alerts = FleetAlerts(AlertSettings(webhook=WebhookAlerts(hooks.url)),
                         silent_after=timedelta(hours=1))
    later = datetime.now(UTC) + timedelta(hours=2)
    assert [a.kind for a in alerts.check(database, later)] == ["silent"]
    assert alerts.check(database, later + timedelta(hours=5)) == []
    report(collector, token, [])
    assert [a.kind for a in alerts.check(database, later + timedelta(hours=5))] == ["silent"]
    assert len(hooks.wait_for(2)) == 2


def test_an_expiring_certificate_alerts_once_even_from_a_silent_clinic(
        database: str, add_clinic: Callable[..., str], collectors: Callable[..., Collector],
        hooks: WebhookReceiver) -> None:
    token = add_clinic("tanaka-clinic")
    collector = collectors()
    now = datetime.now(UTC)
    report(collector, token, [snap(1, "www", not_before=(now - timedelta(days=80)).isoformat(),
                                   not_after=(now + timedelta(days=10)).isoformat()),
                              snap(2, "booking")])
    alerts = FleetAlerts(AlertSettings(webhook=WebhookAlerts(hooks.url)),
                         silent_after=timedelta(days=365))
    sent = alerts.check(database)
    assert [(a.kind, a.site) for a in sent] == [("expiring", "www")]
    assert alerts.check(database) == []
    # the clinic went silent; days pass; the next certificate it never reported expires too
    assert alerts.check(database, now + timedelta(days=3)) == []


def test_many_clinics_failing_the_same_way_are_one_digest(
        database: str, add_clinic: Callable[..., str], collectors: Callable[..., Collector],
        hooks: WebhookReceiver) -> None:
    collector = collectors()
    failing = {"last_attempt": {"time": "2026-12-01T10:00:00Z", "outcome": "failed",
                                "problem_type": "urn:ietf:params:acme:error:serverInternal",
                                "detail": "the CA is down"}, "consecutive_failures": 1}
    tokens = {f"clinic-{i}": add_clinic(f"clinic-{i}") for i in range(8)}
    for token in list(tokens.values())[:6]:
        report(collector, token, [snap(1, "www", **failing)])
    other = dict(failing, last_attempt=dict(failing["last_attempt"],
                                            problem_type="urn:ietf:params:acme:error:dns"))
    report(collector, tokens["clinic-6"], [snap(1, "www", **other)])
    alerts = FleetAlerts(AlertSettings(webhook=WebhookAlerts(hooks.url)),
                         silent_after=timedelta(days=365), digest_min=5)
    sent = alerts.check(database)
    assert sorted(a.kind for a in sent) == ["digest", "failing"]
    digest = next(a for a in sent if a.kind == "digest")
    assert digest.details["clinics"] == [f"clinic-{i}" for i in range(6)]
    # a latecomer to the same incident joins the digest without another alert
    report(collector, tokens["clinic-7"], [snap(1, "www", **failing)])
    assert alerts.check(database) == []
    with psycopg.connect(database) as conn:
        row = conn.execute("SELECT clinics FROM fleet_alert WHERE kind = 'digest'").fetchone()
    assert row is not None and "clinic-7" in row[0]
    assert len(hooks.wait_for(2)) == 2
