"""`mamoru log`: query the JSON-lines event log, including its rotated files, newest last.

The log is `paths.event_log` plus up to `paths.event_log_keep` rotated files beside it
(`events.jsonl.1` is the newest old one; see observe.events.JsonlSink). Lines that are not JSON
objects (a disk that filled mid-line, a hand edit) are skipped and counted, never fatal.

Filters: `site`, `since` (an aware datetime; `parse_since` reads "30m", "12h", "7d", "2w",
"2026-11-01" or a full ISO 8601 time), and `failed`: events at error level (`failed`,
`verify-failed`, `alert-failed`, a browser `check` that found a problem...), exactly what
`journalctl -p err` shows.
"""

from __future__ import annotations

import glob
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from mamoru import i18n
from mamoru.clock import parse_time
from mamoru.observe.messages import MESSAGES, fallback, render

_SPAN = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(s|m|min|h|d|w)\s*\Z", re.IGNORECASE)
_UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
ERROR_LEVELS = frozenset({"error", "crit", "alert", "emerg"})


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """'30m' / '12h' / '7d' / '2w' ago, or an ISO date or time (UTC unless it says otherwise).
    Raises ValueError with a message for people."""
    now = now or datetime.now(UTC)
    match = _SPAN.match(text)
    if match:
        amount, unit = float(match.group(1)), match.group(2).lower()
        return now - timedelta(seconds=amount * _UNITS[unit])
    when = parse_time(text)
    if when is None:
        raise ValueError(f"--since {text!r}: use a span like 30m, 12h, 7d, 2w, or a date like "
                         "2026-11-01 or 2026-11-01T09:00")
    return when


def log_files(path: str) -> list[str]:
    """The event log's files, oldest first: events.jsonl.N ... events.jsonl.1, events.jsonl."""
    rotated = []
    for name in glob.glob(glob.escape(path) + ".*"):
        suffix = name[len(path) + 1:]
        if suffix.isdigit():
            rotated.append((int(suffix), name))
    files = [name for _, name in sorted(rotated, reverse=True)]
    if os.path.exists(path):
        files.append(path)
    return files


@dataclass
class Query:
    site: str | None = None
    since: datetime | None = None
    failed: bool = False

    def wants(self, event: dict[str, Any]) -> bool:
        if self.site is not None and event.get("site") != self.site:
            return False
        if self.failed and event.get("level") not in ERROR_LEVELS:
            return False
        if self.since is not None:
            when = parse_time(event.get("time"))
            if when is None or when < self.since:
                return False
        return True


class Reader:
    """Reads the log's files in order; `skipped` counts lines that were not JSON objects."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.skipped = 0

    def events(self, query: Query | None = None) -> Iterator[dict[str, Any]]:
        """Matching events, oldest first (newest last)."""
        query = query or Query()
        for name in log_files(self.path):
            if query.since is not None and name != self.path:
                # A rotated file is never written again: if its last change is older than
                # `since`, none of its lines can match.
                try:
                    if datetime.fromtimestamp(os.stat(name).st_mtime, UTC) < query.since:
                        continue
                except OSError:
                    continue
            try:
                handle = open(name, "rb")  # noqa: SIM115 - closed below; files may vanish
            except OSError:
                continue  # rotated away between listing and opening
            with handle:
                for raw in handle:
                    if not raw.strip():
                        continue
                    try:
                        event = json.loads(raw)
                    except ValueError:
                        self.skipped += 1
                        continue
                    if not isinstance(event, dict):
                        self.skipped += 1
                        continue
                    if query.wants(event):
                        yield event


# --- output -------------------------------------------------------------------------------------

def render_line(event: dict[str, Any]) -> str:
    """One event as a line for people: time (UTC), level, site, kind, message."""
    when = parse_time(event.get("time"))
    stamp = f"{when.astimezone(UTC):%Y-%m-%d %H:%M:%S}" if when else str(event.get("time"))
    level = str(event.get("level") or "info")
    mark = {"error": "ERR ", "warning": "WARN", "notice": "NOTE"}.get(level, "    ")
    site = str(event.get("site") or "-")
    kind = str(event.get("kind") or "?")
    message = " ".join(_words(event, kind).split())
    line = f"{stamp}  {mark}  {site:<16} {kind:<12} {message}"
    if level in ERROR_LEVELS:
        extra = [f"{k}={event[k]}" for k in ("problem_type", "detail")
                 if event.get(k) and str(event[k]) not in message]
        if extra:
            line += "  [" + "; ".join(extra) + "]"
    return line


_OWN_KEYS = frozenset({"time", "kind", "level", "site", "message"})


def _words(event: dict[str, Any], kind: str) -> str:
    """The logged (English) message, or the event put into words again in the language
    mamoru.i18n chose (the log keeps every field, so old events read the same)."""
    logged = str(event.get("message") or "")
    lang = i18n.language()
    if lang == "en" or kind not in MESSAGES:
        return logged
    fields = {key: value for key, value in event.items() if key not in _OWN_KEYS}
    text = render(kind, fields, site=event.get("site"), lang=lang)
    return logged if text == fallback(kind, fields) else text


def to_json_line(event: dict[str, Any]) -> str:
    return json.dumps(event, ensure_ascii=False)
