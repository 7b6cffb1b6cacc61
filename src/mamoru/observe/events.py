"""Structured events: one per pipeline step, fanned out to sinks (the sinks live in
observe/sinks.py, alerts and metrics in their own modules). The pipeline emits; it never knows
who listens. An event is a kind and fields; its English text comes from observe/messages.py.

Event fields are fixed names: `site`, `names`, `serial`, `not_after`, `order`, `attempt`,
`next_due`, `why`, `duration` (seconds), `outcome`, `error_class`, `problem_type`, `detail`...
No event ever holds a private key, an EAB HMAC, an ACME token or key authorization: the
pipeline never passes them, and `Events.emit` scrubs every message and field on the way out
(PEM private keys, challenge URLs' tokens, fields named like secrets) as a second line of
defence, because a CA's problem detail may quote the challenge URL it fetched.
"""

from __future__ import annotations

import dataclasses
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from mamoru.clock import utcnow
from mamoru.observe.messages import render

# kind -> syslog priority (RFC 5424): 3 err, 4 warning, 5 notice, 6 info, 7 debug.
LEVELS: dict[str, int] = {
    "failed": 3,
    "alert": 3,
    "alert-failed": 3,
    "verify-failed": 3,
    "rollback": 4,
    "backoff": 4,
    "warning": 4,
    "renewed": 5,
    "provisioned": 5,
    "issued": 5,
    "recovered": 5,
    "revoked": 5,
}
DEFAULT_LEVEL = 6
LEVEL_NAMES = {0: "emerg", 1: "alert", 2: "crit", 3: "error", 4: "warning", 5: "notice",
               6: "info", 7: "debug"}

# --- scrubbing --------------------------------------------------------------------------------

_PEM_KEY = re.compile(r"-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY-----.*?(-----END \1PRIVATE KEY-----|\Z)",
                      re.DOTALL)
# RFC 8555 §8.3: the token is base64url, at least 128 bits of entropy (22+ characters).
_CHALLENGE_TOKEN = re.compile(r"(acme-challenge/)[A-Za-z0-9_-]{16,}(\.[A-Za-z0-9_-]+)?")
_SECRET_FIELDS = frozenset({"token", "key_authorization", "keyauthorization", "hmac", "hmac_key",
                            "password", "secret", "private_key", "privkey", "account_key", "jwk"})
REDACTED = "[redacted]"


def scrub(value: Any) -> Any:
    """`value` with key material and challenge tokens replaced (recursively, any JSON shape)."""
    if isinstance(value, str):
        if "PRIVATE KEY" in value:
            value = _PEM_KEY.sub("[private key removed]", value)
        if "acme-challenge/" in value:
            value = _CHALLENGE_TOKEN.sub(r"\1[token]", value)
        return value
    if isinstance(value, dict):
        return {k: (REDACTED if str(k).lower() in _SECRET_FIELDS else scrub(v))
                for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub(v) for v in value]
    return value


# --- the event --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    kind: str
    site: str | None
    message: str
    fields: dict[str, Any] = field(default_factory=dict)
    time: datetime = field(default_factory=lambda: datetime.now(UTC))
    level: int = -1

    @property
    def priority(self) -> int:
        """The syslog priority: the explicit `level`, else the kind's (see LEVELS)."""
        return self.level if self.level >= 0 else LEVELS.get(self.kind, DEFAULT_LEVEL)

    def get(self, name: str, default: Any = None) -> Any:
        return self.fields.get(name, default)

    def to_json(self) -> dict[str, Any]:
        """The event as one JSON object: time, kind, level, site, message, then the fields."""
        out: dict[str, Any] = {
            "time": iso(self.time),
            "kind": self.kind,
            "level": LEVEL_NAMES.get(self.priority, "info"),
            "site": self.site,
            "message": self.message,
        }
        for key, value in self.fields.items():
            if key not in out:
                out[key] = _plain(value)
        return out


def iso(when: datetime) -> str:
    """An aware datetime as ISO 8601 in UTC with a `Z` (the event log's one time format)."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, tuple | list | set | frozenset):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


class EventSink(Protocol):
    def emit(self, event: Event) -> None:
        """Record `event`. Called from many threads at once; must not raise, must not block
        for long (slow work such as sending an alert belongs on the sink's own thread)."""


class Events:
    """Fans events out to sinks; a failing sink is logged, never breaks the pipeline.

    `clock` stamps each event (tests inject one to live through a certificate's lifetime).
    Events from many threads are stamped and handed out one at a time, so every sink sees them
    in the same order (the JSONL log's order is the outbox's and the journal's); sinks do not
    block, so the lock is held only for the hand-over. Re-entrant: a sink that emits from its
    own emit does not deadlock."""

    def __init__(self, sinks: Iterable[EventSink] = (),
                 clock: Callable[[], datetime] | None = None) -> None:
        self.sinks = list(sinks)
        self.clock = clock or utcnow
        self._order = threading.RLock()

    def add(self, sink: EventSink) -> None:
        self.sinks.append(sink)

    def emit(self, kind: str, site: str | None, message: str | None = None,
             **fields: Any) -> Event:
        """Build one event (fields that are None are left out; every value is scrubbed of key
        material and tokens) and hand it to every sink, in order. Never raises.

        The event's text is `messages.render(kind, fields)` (the one place where an event
        becomes words); an explicit `message` wins: for tests and tools only, mamoru's own
        code never passes one (tests/unit/test_messages.py checks)."""
        level = fields.pop("level", -1)  # an explicit syslog priority overrides the kind's
        present = {k: v for k, v in fields.items() if v is not None}
        text = message if message is not None else render(kind, present, site=site)
        clean, words = scrub(present), scrub(text)
        with self._order:
            event = Event(kind, site, words, clean, time=self.clock(),
                          level=int(level) if level is not None else -1)
            self._hand_over(event)
        return event

    def forward(self, event: Event) -> None:
        """Hand an event built elsewhere (the daemon's worker process: rendered, scrubbed and
        stamped there) to every sink, in order with this process's own events. Its fields are
        scrubbed again: what reaches a sink is never trusted to be clean."""
        event = dataclasses.replace(event, message=scrub(event.message),
                                    fields=scrub(event.fields))
        with self._order:
            self._hand_over(event)

    def _hand_over(self, event: Event) -> None:
        for sink in self.sinks:
            try:
                sink.emit(event)
            except Exception:  # a sink must never stop a renewal
                _log().exception("event sink %r failed", sink)

    def close(self, timeout: float = 10.0) -> None:
        """Close every sink that has work in flight (alerts still being delivered, a metrics
        file to write, an HTTP endpoint to stop). Call once, when the process is done."""
        for sink in self.sinks:
            closer = getattr(sink, "close", None)
            if callable(closer):
                try:
                    closer(timeout)
                except Exception:
                    _log().exception("closing event sink %r failed", sink)


def _log() -> Any:
    """This module's logger, for a sink that failed (logging is imported then: `mamoru status`
    and the resident daemon's start need no logging machinery)."""
    import logging

    return logging.getLogger(__name__)


# Sinks moved to observe/sinks.py; these names are still importable from here so callers
# written against the old layout keep working until they import from sinks directly.
_MOVED = frozenset({"JsonlSink", "StderrSink", "MemorySink", "SinkState"})


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        from mamoru.observe import sinks

        return getattr(sinks, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
