"""The fleet's state as `mamoru fleet status` and the page show it: every clinic with its
sites, most dangerous first. One query; the indexes make it independent of history size."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg

from mamoru.observe.events import iso

DANGER_FRACTION = 1 / 6  # as the clinic's own `status`: under 1/6 of the lifetime left


@dataclass(frozen=True)
class Filters:
    failing: bool = False
    expiring: timedelta | None = None
    silent: timedelta | None = None
    clinic: str | None = None


_SQL = """
SELECT c.name, c.last_report, c.silent_alerted, s.site, s.not_before, s.not_after,
       s.last_renewal, s.next_renewal, s.failing_since, s.failure, s.problem_type,
       s.consecutive_failures, s.reported, s.snapshot -> 'names'
  FROM clinic c LEFT JOIN site s ON s.clinic_id = c.id
 WHERE ({clinic} IS NULL OR c.name = {clinic})
"""


def fleet(conn: psycopg.Connection[Any], now: datetime, filters: Filters | None = None
          ) -> list[dict[str, Any]]:
    """Clinics (each with `sites`), filtered, ordered by danger: silent or failing first,
    then the least time left."""
    sql, params = fleet_query(now, filters)
    return fleet_rows(conn.execute(sql, params).fetchall(), now)


def fleet_query(now: datetime, filters: Filters | None = None) -> tuple[str, dict[str, Any]]:
    """The SQL and parameters of `fleet` (the async server runs them itself)."""
    filters = filters or Filters()
    where = []
    params: dict[str, Any] = {"clinic": filters.clinic, "now": now}
    if filters.failing:
        where.append("s.failing_since IS NOT NULL")
    if filters.expiring is not None:
        where.append("s.not_after < %(expiring)s")
        params["expiring"] = now + filters.expiring
    if filters.silent is not None:
        where.append("(c.last_report IS NULL OR c.last_report < %(silent)s)")
        params["silent"] = now - filters.silent
    sql = _SQL.format(clinic="%(clinic)s::text")
    if where:
        sql += " AND " + " AND ".join(where)
    return sql, params


def fleet_rows(rows: list[Any], now: datetime) -> list[dict[str, Any]]:
    """`fleet_query`'s rows as clinics with their sites, most dangerous first."""
    clinics: dict[str, dict[str, Any]] = {}
    for (name, last_report, silent_alerted, site, not_before, not_after, last_renewal,
         next_renewal, failing_since, failure, problem_type, failures, reported,
         names) in rows:
        clinic = clinics.setdefault(name, {
            "clinic": name, "last_report": _iso(last_report),
            "silent_for_hours": (round((now - last_report).total_seconds() / 3600, 2)
                                 if last_report else None),
            "silent_alerted": _iso(silent_alerted), "sites": []})
        if site is None:
            continue
        days_left = fraction = None
        if not_after is not None:
            days_left = round((not_after - now).total_seconds() / 86400, 2)
            if not_before is not None and not_after > not_before:
                fraction = round(max(0.0, (not_after - now) / (not_after - not_before)), 3)
        danger = []
        if failing_since is not None:
            danger.append(f"failing since {iso(failing_since)}")
        if not_after is None:
            danger.append("no certificate")
        elif not_after <= now:
            danger.append("certificate expired")
        elif fraction is not None and fraction < DANGER_FRACTION:
            danger.append("under 1/6 of its lifetime left")
        clinic["sites"].append({
            "site": site, "names": names or [], "days_left": days_left,
            "lifetime_left": fraction, "not_before": _iso(not_before),
            "not_after": _iso(not_after), "last_renewal": _iso(last_renewal),
            "next_renewal": _iso(next_renewal), "failing_since": _iso(failing_since),
            "failure": failure, "problem_type": problem_type,
            "consecutive_failures": failures, "last_report": _iso(reported),
            "danger": danger})
    out = list(clinics.values())
    for clinic in out:
        clinic["sites"].sort(key=_site_danger)
        clinic["danger"] = min((_site_danger(s) for s in clinic["sites"]), default=(3, 0.0))
    out.sort(key=lambda c: (c["danger"], c["clinic"]))
    for clinic in out:
        del clinic["danger"]
    return out


def _site_danger(site: dict[str, Any]) -> tuple[int, float]:
    rank = 0 if site["failing_since"] else 1 if site["danger"] else 2
    return rank, site["lifetime_left"] if site["lifetime_left"] is not None else -1.0


def history(conn: psycopg.Connection[Any], clinic: str, limit: int = 200
            ) -> list[dict[str, Any]]:
    """A clinic's last events (snapshots left out), newest first."""
    return history_rows(conn.execute(HISTORY, (clinic, limit)).fetchall())


HISTORY = ("SELECT e.time, e.kind, e.site, e.body ->> 'message', e.body ->> 'problem_type', "
           "e.body ->> 'detail' FROM event e JOIN clinic c ON c.id = e.clinic_id "
           "WHERE c.name = %s AND e.kind <> 'snapshot' ORDER BY e.time DESC, e.seq DESC "
           "LIMIT %s")


def history_rows(rows: list[Any]) -> list[dict[str, Any]]:
    return [{"time": _iso(t), "kind": k, "site": s, "message": m, "problem_type": p,
             "detail": d} for t, k, s, m, p, d in rows]


def _iso(when: datetime | None) -> str | None:
    return iso(when) if when is not None else None


def parse_span(text: str) -> timedelta:
    """'14d', '24h', '30m', '90s' as a timedelta (ValueError otherwise)."""
    units = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    text = text.strip().lower()
    if len(text) < 2 or text[-1] not in units or not text[:-1].replace(".", "", 1).isdigit():
        raise ValueError(f"{text!r} is not a time span such as 14d, 24h or 30m")
    return timedelta(seconds=float(text[:-1]) * units[text[-1]])
