"""The vendor's alerts, through the same channels as a clinic's (mamoru.observe.alerts):

- a clinic silent for `silent_after` (a dead man's switch): one alert, until it reports again;
- a site whose last known certificate is under 1/6 of its lifetime left, whether or not the
  clinic still reports: one alert per certificate;
- failing sites: one alert each, except when `digest_min` or more clinics fail the same way
  (one problem type) within `incident_window`: then one digest lists them all, and clinics
  that join the incident later are added to it without another alert.

Each decision is one UPDATE ... RETURNING, so replicas sharing a database never alert twice;
every alert sent is kept in `fleet_alert`."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from mamoru.config.model import AlertSettings
from mamoru.observe.alerts.channels import Alert, AlertDeliveryError, Channel, channels_for
from mamoru.observe.danger import DANGER_FRACTION

log = logging.getLogger("mamoru.fleet.alerts")


@dataclass
class FleetAlerts:
    settings: AlertSettings
    silent_after: timedelta = timedelta(hours=24)
    digest_min: int = 5
    incident_window: timedelta = timedelta(hours=2)
    interval: float = 60.0

    def channels(self) -> list[Channel]:
        return channels_for(self.settings)

    async def loop(self, url: str) -> None:
        """Check every `interval` seconds until cancelled (run by `fleet serve`)."""
        while True:
            try:
                await asyncio.to_thread(self.check, url)
            except Exception as error:  # the next round tries again
                log.warning("fleet alert check failed: %s: %s", type(error).__name__,
                            str(error).splitlines()[0:1])
            await asyncio.sleep(self.interval)

    def check(self, url: str, now: datetime | None = None) -> list[Alert]:
        """One round: decide, record and send; returns the alerts sent."""
        now = now or datetime.now(UTC)
        with psycopg.connect(url, connect_timeout=10) as conn:
            alerts = self.decide(conn, now)
        channels = self.channels()
        for alert in alerts:
            for channel in channels:
                try:
                    channel.send(alert)
                except AlertDeliveryError as error:
                    log.error("fleet alert %s not delivered by %s: %s", alert.kind,
                              channel.name, error)
        return alerts

    def decide(self, conn: psycopg.Connection[Any], now: datetime) -> list[Alert]:
        alerts = []
        for name, last in conn.execute(
                "UPDATE clinic SET silent_alerted = %s WHERE silent_alerted IS NULL AND "
                "coalesce(last_report, created) < %s RETURNING name, last_report",
                (now, now - self.silent_after)).fetchall():
            alerts.append(self._record(conn, Alert(
                "silent", None, f"clinic {name} has not reported since "
                f"{last.isoformat() if last else 'it was added'}", now, since=last,
                details={"clinic": name, "silent_after_hours":
                         self.silent_after.total_seconds() / 3600}), [name]))
        for name, site, not_after in conn.execute(
                "UPDATE site s SET expiry_alerted = s.not_after FROM clinic c "
                "WHERE c.id = s.clinic_id AND s.not_after IS NOT NULL "
                "AND s.not_before IS NOT NULL AND s.expiry_alerted IS DISTINCT FROM s.not_after "
                "AND s.not_after - %s < (s.not_after - s.not_before) * %s "
                "RETURNING c.name, s.site, s.not_after", (now, DANGER_FRACTION)).fetchall():
            days = (not_after - now).total_seconds() / 86400
            alerts.append(self._record(conn, Alert(
                "expiring", site, f"{name}/{site}: the certificate expires in {days:.1f} days "
                f"({not_after.isoformat()})", now,
                details={"clinic": name, "not_after": not_after,
                         "days_left": round(days, 2)}), [name]))
        failing = conn.execute(
            "UPDATE site s SET failing_alerted = s.failing_since FROM clinic c "
            "WHERE c.id = s.clinic_id AND s.failing_since IS NOT NULL "
            "AND s.failing_alerted IS DISTINCT FROM s.failing_since "
            "RETURNING c.name, s.site, coalesce(s.problem_type, 'unknown'), s.failure, "
            "s.failing_since").fetchall()
        groups: dict[str, list[tuple[Any, ...]]] = {}
        for row in failing:
            groups.setdefault(row[2], []).append(row)
        for problem, rows in groups.items():
            clinics = sorted({row[0] for row in rows})
            open_incident = conn.execute(
                "SELECT id FROM fleet_alert WHERE kind = 'digest' AND "
                "payload ->> 'problem_type' = %s AND time > %s ORDER BY time DESC LIMIT 1",
                (problem, now - self.incident_window)).fetchone()
            if open_incident is not None:
                conn.execute("UPDATE fleet_alert SET clinics = ARRAY(SELECT DISTINCT "
                             "unnest(clinics || %s::text[])) WHERE id = %s",
                             (clinics, open_incident[0]))
                continue
            if len(clinics) >= self.digest_min:
                listed = [f"{r[0]}/{r[1]}" for r in rows]
                alerts.append(self._record(conn, Alert(
                    "digest", None, f"{len(clinics)} clinics failing the same way: {problem}",
                    now, since=min(r[4] for r in rows),
                    details={"problem_type": problem, "clinics": clinics, "sites": listed,
                             "detail": rows[0][3]}), clinics))
                continue
            for name, site, problem_type, failure, since in rows:
                alerts.append(self._record(conn, Alert(
                    "failing", site, f"{name}/{site}: renewal failing since "
                    f"{since.isoformat()}: {problem_type}", now, since=since,
                    details={"clinic": name, "problem_type": problem_type,
                             "detail": failure}), [name]))
        conn.commit()
        return alerts

    @staticmethod
    def _record(conn: psycopg.Connection[Any], alert: Alert, clinics: list[str]) -> Alert:
        payload = alert.payload()
        conn.execute("INSERT INTO fleet_alert (time, kind, clinics, summary, payload) "
                     "VALUES (%s, %s, %s, %s, %s)", (alert.time, alert.kind, clinics,
                                                     alert.summary, json.dumps(payload)))
        return alert
