"""Structured events: one per pipeline step, fanned out to sinks (log file, stderr, metrics,
alerts). The pipeline emits; it never knows who listens.

Event fields are fixed names (`site`, `names`, `serial`, `not_after`, `order`, `attempt`,
`next_due`, `why`, `duration`, `error_class`, `problem_type`, `detail`...). No event ever holds
a private key, an EAB HMAC, an ACME token or key authorization: the pipeline never passes them.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import sys
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, TextIO

# kind -> syslog priority (RFC 5424): 3 err, 4 warning, 5 notice, 6 info, 7 debug.
LEVELS: dict[str, int] = {
    "failed": 3,
    "alert": 3,
    "verify-failed": 3,
    "rollback": 4,
    "backoff": 4,
    "warning": 4,
    "renewed": 5,
    "issued": 5,
    "recovered": 5,
}
DEFAULT_LEVEL = 6


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
        return self.level if self.level >= 0 else LEVELS.get(self.kind, DEFAULT_LEVEL)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "time": self.time.isoformat().replace("+00:00", "Z"),
            "kind": self.kind,
            "level": _LEVEL_NAMES.get(self.priority, "info"),
            "site": self.site,
            "message": self.message,
        }
        for key, value in self.fields.items():
            out[key] = _plain(value)
        return out


_LEVEL_NAMES = {3: "error", 4: "warning", 5: "notice", 6: "info", 7: "debug"}


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


class EventSink(Protocol):
    def emit(self, event: Event) -> None:
        """Record `event`. Called from many threads at once; must not raise."""


class Events:
    """Fans events out to sinks; a failing sink is logged, never breaks the pipeline."""

    def __init__(self, sinks: Iterable[EventSink] = ()) -> None:
        self.sinks = list(sinks)

    def add(self, sink: EventSink) -> None:
        self.sinks.append(sink)

    def emit(self, kind: str, site: str | None, message: str, **fields: Any) -> Event:
        level = fields.pop("level", -1)  # an explicit syslog priority overrides the kind's
        event = Event(kind, site, message, {k: v for k, v in fields.items() if v is not None},
                      level=int(level) if level is not None else -1)
        for sink in self.sinks:
            try:
                sink.emit(event)
            except Exception:  # a sink must never stop a renewal
                logging.getLogger(__name__).exception("event sink %r failed", sink)
        return event


class StderrSink:
    """Human-readable lines. Under systemd (JOURNAL_STREAM set) each line starts with `<N>`,
    the syslog priority journald understands, so `journalctl -p err` shows failures."""

    def __init__(self, stream: TextIO | None = None, min_priority: int = 6,
                 journald: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.min_priority = min_priority
        self.journald = bool(os.environ.get("JOURNAL_STREAM")) if journald is None else journald
        self._lock = threading.Lock()

    def emit(self, event: Event) -> None:
        if event.priority > self.min_priority:
            return
        who = f"{event.site}: " if event.site else ""
        if self.journald:
            line = f"<{event.priority}>{who}{event.message}"
        else:
            mark = {3: "error: ", 4: "warning: "}.get(event.priority, "")
            line = f"{who}{mark}{event.message}"
        with self._lock:
            self.stream.write(line + "\n")
            self.stream.flush()


class JsonlSink:
    """Appends one JSON object per line to the event log, safe across processes.

    Each event is one write(2) on an O_APPEND descriptor under flock(2), so the daemon and a
    one-shot command never interleave lines. Rotation is in-process by size: the writer that
    finds the file over `max_bytes` renames it to `.1` (shifting older ones) under the lock.
    """

    def __init__(self, path: str, max_bytes: int = 10 * 1024 * 1024, keep: int = 5) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.keep = keep
        self._lock = threading.Lock()
        self.failed = False

    def emit(self, event: Event) -> None:
        line = (json.dumps(event.to_json(), ensure_ascii=False, sort_keys=False) + "\n").encode()
        with self._lock:
            try:
                os.makedirs(os.path.dirname(self.path) or ".", mode=0o750, exist_ok=True)
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                             0o640)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                    if self.max_bytes and os.fstat(fd).st_size + len(line) > self.max_bytes:
                        os.close(fd)
                        fd = self._rotate()
                    os.write(fd, line)
                finally:
                    with contextlib.suppress(OSError):
                        os.close(fd)
                self.failed = False
            except OSError as error:
                if not self.failed:  # say it once, not once per event
                    logging.getLogger(__name__).error("cannot write the event log %s: %s",
                                                      self.path, error.strerror)
                self.failed = True

    def _rotate(self) -> int:
        # Take the lock on a separate lock file so two rotating writers do not both shift.
        lock_fd = os.open(self.path + ".lock", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            if os.path.exists(self.path) and os.path.getsize(self.path) > self.max_bytes // 2:
                for index in range(self.keep, 0, -1):
                    source = self.path if index == 1 else f"{self.path}.{index - 1}"
                    if os.path.exists(source):
                        if index > self.keep:
                            os.unlink(source)
                        else:
                            os.replace(source, f"{self.path}.{index}")
                if self.keep == 0:
                    os.unlink(self.path)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
            fcntl.flock(fd, fcntl.LOCK_EX)
            return fd
        finally:
            os.close(lock_fd)


class MemorySink:
    """Keeps events in a list (for tests and for summaries)."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._lock = threading.Lock()

    def emit(self, event: Event) -> None:
        with self._lock:
            self.events.append(event)

    def kinds(self, site: str | None = None) -> list[str]:
        return [e.kind for e in self.events if site is None or e.site == site]
