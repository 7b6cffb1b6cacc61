"""The one clock and the one way to read a time back from text.

Every part that needs "now" is handed a `Clock` (the App's); tests inject one to live through a
certificate's whole lifetime in milliseconds. Times are stored as ISO 8601 with an offset; a
time without one (an old or hand-edited file) is taken as UTC, never as local time.

Imports nothing of mamoru's.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    """The wall clock, in UTC. The default `Clock`; nothing else calls datetime.now."""
    return datetime.now(UTC)


def parse_time(value: object) -> datetime | None:
    """An aware datetime from ISO 8601 text ("Z" accepted; no offset means UTC), or None for
    anything that is not one (None, "", garbage, a number)."""
    if isinstance(value, str):
        try:
            when = datetime.fromisoformat(value)  # what mamoru writes: one C call
        except ValueError:
            text = value.strip().replace("Z", "+00:00")
            if not text:
                return None
            try:
                when = datetime.fromisoformat(text)
            except ValueError:
                return None
    elif isinstance(value, datetime):
        when = value
    else:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)
