"""The fleet page: server-rendered HTML (Jinja2, autoescaped), inline CSS, no script and
nothing loaded from anywhere else, so clinics' data stays in the vendor's network."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import jinja2

from mamoru.fleet.query import Filters

SILENT_HOURS = 24.0
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

_ENV = jinja2.Environment(loader=jinja2.PackageLoader("mamoru.fleet", "templates"),
                          autoescape=True, undefined=jinja2.StrictUndefined)


def _when(value: str | None) -> str:
    """An ISO time as 'YYYY-MM-DD HH:MM' (UTC), for people; the full value is the title."""
    return value[:16].replace("T", " ") if value else "—"


_ENV.filters["when"] = _when


def _span(delta: timedelta | None) -> str:
    if delta is None:
        return ""
    seconds = delta.total_seconds()
    if seconds % 86400 == 0:
        return f"{int(seconds // 86400)}d"
    return f"{seconds / 3600:g}h"


def login_page(error: str | None) -> str:
    return _ENV.get_template("login.html").render(user=None, error=error)


PAGE_ROWS = 300  # the most dangerous rows; a filter or ?all=1 shows the rest


def overview(clinics: list[dict[str, Any]], filters: Filters, user: str, now: datetime,
             *, everything: bool = False) -> str:
    sites = [s for c in clinics for s in c["sites"]]
    shown, rows = [], 0
    for clinic in clinics:  # already sorted by danger
        if rows >= PAGE_ROWS and not everything:
            break
        shown.append(clinic)
        rows += max(1, len(clinic["sites"]))
    silent = sum(1 for c in clinics
                 if c["silent_for_hours"] is None or c["silent_for_hours"] > SILENT_HOURS)
    return _ENV.get_template("overview.html").render(
        clinics=shown, total_clinics=len(clinics), user=user,
        now=now.strftime("%Y-%m-%d %H:%M UTC"), filters=filters,
        site_count=len(sites), failing=sum(1 for s in sites if s["failing_since"]),
        expiring=sum(1 for s in sites if s["danger"] and not s["failing_since"]),
        silent_count=silent, silent_hours=SILENT_HOURS,
        expiring_value=_span(filters.expiring), silent_value=_span(filters.silent))


def clinic(row: dict[str, Any], events: list[dict[str, Any]], user: str, now: datetime) -> str:
    return _ENV.get_template("clinic.html").render(clinics=[row], events=events, user=user,
                                                   silent_hours=SILENT_HOURS)


def not_found(name: str) -> str:
    return _ENV.from_string('{% extends "base.html" %}{% block main %}<h1>No clinic '
                            '{{ name }}</h1>{% endblock %}').render(name=name, user=None)
