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


# Times come back as ISO 8601 text and the arithmetic is done in SQL: formatting 5,000 rows'
# timestamps in Python costs more than the query itself.
_T = "to_char({} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"
_SQL = f"""
SELECT c.name, {_T.format("c.last_report")},
       round((extract(epoch FROM %(now)s - c.last_report) / 3600)::numeric, 2)::float8,
       {_T.format("c.silent_alerted")}, s.site, {_T.format("s.not_before")},
       {_T.format("s.not_after")}, {_T.format("s.last_renewal")}, {_T.format("s.next_renewal")},
       {_T.format("s.failing_since")}, s.failure, s.problem_type, s.consecutive_failures,
       {_T.format("s.reported")}, s.snapshot -> 'names',
       round((extract(epoch FROM s.not_after - %(now)s) / 86400)::numeric, 2)::float8,
       CASE WHEN s.not_after > s.not_before THEN round(greatest(0, extract(epoch FROM
            s.not_after - %(now)s) / extract(epoch FROM s.not_after - s.not_before))::numeric,
            3)::float8 END
  FROM clinic c LEFT JOIN site s ON s.clinic_id = c.id
 WHERE ({{clinic}} IS NULL OR c.name = {{clinic}})
"""  # noqa: S608 - built from constants only; every value is a parameter


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
    failing_text = "failing since "
    for (name, last_report, silent_hours, silent_alerted, site, not_before, not_after,
         last_renewal, next_renewal, failing_since, failure, problem_type, failures, reported,
         names, days_left, fraction) in rows:
        clinic = clinics.get(name)
        if clinic is None:
            clinic = clinics[name] = {
                "clinic": name, "last_report": last_report, "silent_for_hours": silent_hours,
                "silent_alerted": silent_alerted, "sites": []}
        if site is None:
            continue
        danger = []
        if failing_since is not None:
            danger.append(failing_text + failing_since)
        if not_after is None:
            danger.append("no certificate")
        elif days_left is not None and days_left <= 0:
            danger.append("certificate expired")
        elif fraction is not None and fraction < DANGER_FRACTION:
            danger.append("under 1/6 of its lifetime left")
        clinic["sites"].append({
            "site": site, "names": names or [], "days_left": days_left,
            "lifetime_left": fraction, "not_before": not_before,
            "not_after": not_after, "last_renewal": last_renewal,
            "next_renewal": next_renewal, "failing_since": failing_since,
            "failure": failure, "problem_type": problem_type,
            "consecutive_failures": failures, "last_report": reported,
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
