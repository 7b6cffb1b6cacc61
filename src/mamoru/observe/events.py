"""Structured events: one per pipeline step, fanned out to sinks (log file, stderr, metrics,
alerts). The pipeline emits; it never knows who listens.

Event fields are fixed names: `site`, `names`, `serial`, `not_after`, `order`, `attempt`,
`next_due`, `why`, `duration` (seconds), `outcome`, `error_class`, `problem_type`, `detail`...
No event ever holds a private key, an EAB HMAC, an ACME token or key authorization: the
pipeline never passes them, and `Events.emit` scrubs every message and field on the way out
(PEM private keys, challenge URLs' tokens, fields named like secrets) as a second line of
defence, because a CA's problem detail may quote the challenge URL it fetched.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import logging
import os
import re
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, TextIO

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


class ClosableSink(EventSink, Protocol):
    """A sink holding a thread, a server or buffered work (metrics, alerts)."""

    def close(self, timeout: float = 10.0) -> None:
        """Finish pending work (at most `timeout` seconds) and release what the sink holds."""


class Events:
    """Fans events out to sinks; a failing sink is logged, never breaks the pipeline.

    `clock` stamps each event (tests inject one to live through a certificate's lifetime)."""

    def __init__(self, sinks: Iterable[EventSink] = (),
                 clock: Callable[[], datetime] | None = None) -> None:
        self.sinks = list(sinks)
        self.clock = clock or (lambda: datetime.now(UTC))

    def add(self, sink: EventSink) -> None:
        self.sinks.append(sink)

    def emit(self, kind: str, site: str | None, message: str, **fields: Any) -> Event:
        """Build one event (fields that are None are left out; every value is scrubbed of key
        material and tokens) and hand it to every sink, in order. Never raises."""
        level = fields.pop("level", -1)  # an explicit syslog priority overrides the kind's
        clean = scrub({k: v for k, v in fields.items() if v is not None})
        event = Event(kind, site, scrub(message), clean, time=self.clock(),
                      level=int(level) if level is not None else -1)
        for sink in self.sinks:
            try:
                sink.emit(event)
            except Exception:  # a sink must never stop a renewal
                logging.getLogger(__name__).exception("event sink %r failed", sink)
        return event

    def close(self, timeout: float = 10.0) -> None:
        """Close every sink that has work in flight (alerts still being delivered, a metrics
        file to write, an HTTP endpoint to stop). Call once, when the process is done."""
        for sink in self.sinks:
            closer = getattr(sink, "close", None)
            if callable(closer):
                try:
                    closer(timeout)
                except Exception:
                    logging.getLogger(__name__).exception("closing event sink %r failed", sink)


# --- stderr / journald ------------------------------------------------------------------------


def _journald_stream(stream: TextIO) -> bool:
    """True when `stream` is the journal stream systemd connected us to (JOURNAL_STREAM holds
    its device:inode), so a redirected stderr does not get `<N>` prefixes by mistake."""
    value = os.environ.get("JOURNAL_STREAM", "")
    try:
        device, inode = (int(part) for part in value.split(":"))
        info = os.fstat(stream.fileno())
    except (ValueError, OSError, AttributeError, io.UnsupportedOperation):
        return False
    return (info.st_dev, info.st_ino) == (device, inode)


class StderrSink:
    """Human-readable lines. Under systemd (stderr is the JOURNAL_STREAM) each line starts with
    `<N>`, the syslog priority journald understands, so `journalctl -p err -u mamoru` shows
    exactly the failures. Elsewhere errors and warnings are marked in words."""

    def __init__(self, stream: TextIO | None = None, min_priority: int = 6,
                 journald: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.min_priority = min_priority
        self.journald = _journald_stream(self.stream) if journald is None else journald
        self._lock = threading.Lock()

    def emit(self, event: Event) -> None:
        if event.priority > self.min_priority:
            return
        who = f"{event.site}: " if event.site else ""
        # One event, one line: a multi-line message would become several journal entries.
        message = " ".join(event.message.splitlines())
        if self.journald:
            line = f"<{event.priority}>{who}{message}"
        else:
            mark = {3: "error: ", 4: "warning: "}.get(event.priority, "")
            line = f"{who}{mark}{message}"
        with self._lock:
            try:
                self.stream.write(line + "\n")
                self.stream.flush()
            except (OSError, ValueError):
                pass  # stderr closed (a detached process): the other sinks still record it


# --- the JSON-lines event log -----------------------------------------------------------------


class JsonlSink:
    """Appends one JSON object per line to the event log, safe across processes.

    Safety: each event is one write(2) of one whole line on an O_APPEND descriptor, made while
    holding flock(2) on the file, so the daemon and any number of one-shot commands never
    interleave or tear lines.

    Rotation (in-process, by size; no logrotate file is needed or shipped): the writer that
    would push the file past `max_bytes` renames `events.jsonl.(N-1)` -> `.N` ... and
    `events.jsonl` -> `events.jsonl.1` while it holds the lock on the current file, then
    writes to a fresh `events.jsonl`; at most `keep` old files are kept. A writer that was
    waiting for the lock notices the rename (the path's inode changed) and re-opens, so no
    line lands in a rotated file after rotation. `mamoru log` reads the old files too.
    """

    def __init__(self, path: str, max_bytes: int = 10 * 1024 * 1024, keep: int = 5) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.keep = keep
        self._lock = threading.Lock()
        self.failed = False

    def emit(self, event: Event) -> None:
        line = (json.dumps(event.to_json(), ensure_ascii=False) + "\n").encode()
        with self._lock:
            try:
                self._append(line)
                self.failed = False
            except OSError as error:
                if not self.failed:  # say it once, not once per event
                    logging.getLogger(__name__).error("cannot write the event log %s: %s",
                                                      self.path, error.strerror)
                self.failed = True

    def _open_locked(self) -> int:
        """An O_APPEND descriptor on the current log file, holding its flock."""
        os.makedirs(os.path.dirname(self.path) or ".", mode=0o750, exist_ok=True)
        for _ in range(100):  # only a storm of concurrent rotations loops more than twice
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                held = os.fstat(fd)
                try:
                    current = os.stat(self.path)
                except FileNotFoundError:
                    current = None
                if current is not None and (current.st_dev, current.st_ino) == (
                        held.st_dev, held.st_ino):
                    return fd
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)  # rotated while we waited: open the new file
        raise OSError(0, "the event log keeps being rotated under us")

    def _append(self, line: bytes) -> None:
        while True:
            fd = self._open_locked()
            try:
                size = os.fstat(fd).st_size
                if self.max_bytes and size and size + len(line) > self.max_bytes:
                    self._shift()
                    continue  # the file we now open may have been written meanwhile
                view = memoryview(line)
                while view:  # one write(2) in practice; the loop only guards a short write
                    view = view[os.write(fd, view):]
                return
            finally:
                with contextlib.suppress(OSError):
                    os.close(fd)  # closing releases the flock

    def _shift(self) -> None:
        """Rotate: .N-1 -> .N, ..., current -> .1 (the caller holds the current file's lock)."""
        if self.keep <= 0:
            os.unlink(self.path)
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{self.path}.{self.keep}")
        for index in range(self.keep - 1, 0, -1):
            with contextlib.suppress(FileNotFoundError):
                os.replace(f"{self.path}.{index}", f"{self.path}.{index + 1}")
        os.replace(self.path, f"{self.path}.1")


class SinkState:
    """A small JSON file a sink keeps between processes (alert de-duplication, failure
    counters): read-modify-write under flock(2) on `<path>.lock`, written atomically, so the
    daemon and one-shot commands never lose each other's updates."""

    def __init__(self, path: str) -> None:
        self.path = path

    def read(self) -> dict[str, Any]:
        try:
            with open(self.path, encoding="utf-8") as handle:
                data = json.load(handle)
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def update(self, change: Callable[[dict[str, Any]], Any]) -> Any:
        """Run `change(data)` on the current contents under the lock, save, return its result.
        Raises OSError or StorageError when the file cannot be written."""
        from mamoru.storage.atomic import write_file

        os.makedirs(os.path.dirname(self.path) or ".", mode=0o700, exist_ok=True)
        fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            data = self.read()
            result = change(data)
            write_file(self.path, json.dumps(data, indent=1, sort_keys=True).encode(), 0o600,
                       sync_dir=False)
            return result
        finally:
            os.close(fd)


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

    def of_kind(self, kind: str) -> list[Event]:
        return [e for e in self.events if e.kind == kind]
