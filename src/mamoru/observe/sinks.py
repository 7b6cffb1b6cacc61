"""Where events go: the JSON-lines event log (with its rotation), stderr / journald lines,
an in-memory list (tests, summaries), and `SinkState`, the small locked JSON file that sinks
keep between processes (alert de-duplication, failure counters).
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import logging
import os
import sys
import threading
from collections.abc import Callable
from typing import Any, TextIO

from mamoru import i18n
from mamoru.observe.events import Event, scrub
from mamoru.observe.messages import MESSAGES, render

# One encoder for every line of the event log (json.dumps builds a new one at each call).
_encode = json.JSONEncoder(ensure_ascii=False).encode

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
    """Human-readable lines, in the language mamoru.i18n chose for this process (the event's
    own `message`, English, stays as it is for the JSON-lines log). Under systemd (stderr is
    the JOURNAL_STREAM) each line starts with `<N>`, the syslog priority journald understands,
    so `journalctl -p err -u mamoru` shows exactly the failures. Elsewhere errors and
    warnings are marked in words."""

    def __init__(self, stream: TextIO | None = None, min_priority: int = 6,
                 journald: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.min_priority = min_priority
        self.journald = _journald_stream(self.stream) if journald is None else journald
        self._lock = threading.Lock()

    @staticmethod
    def words(event: Event) -> str:
        """The event's text for the person reading this stream."""
        lang = i18n.language()
        if lang == "en" or event.kind not in MESSAGES:
            return event.message
        text: str = scrub(render(event.kind, event.fields, site=event.site, lang=lang))
        return text

    def emit(self, event: Event) -> None:
        if event.priority > self.min_priority:
            return
        who = f"{event.site}: " if event.site else ""
        # One event, one line: a multi-line message would become several journal entries.
        message = " ".join(self.words(event).splitlines())
        if self.journald:
            line = f"<{event.priority}>{who}{message}"
        else:
            mark = {3: i18n._("error: "), 4: i18n._("warning: ")}.get(event.priority, "")
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

    The descriptor stays open between events (a provision of many sites writes thousands):
    each line costs flock, one stat(2) of the path (rotated or removed meanwhile? then the
    file is opened again), the write and the unlock. `close()` lets it go.
    """

    def __init__(self, path: str, max_bytes: int = 10 * 1024 * 1024, keep: int = 5) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.keep = keep
        self._lock = threading.Lock()
        self._fd = -1
        self._file: tuple[int, int] | None = None  # (st_dev, st_ino) of what _fd is open on
        self.failed = False

    def emit(self, event: Event) -> None:
        line = (_encode(event.to_json()) + "\n").encode()
        with self._lock:
            try:
                self._append(line)
                self.failed = False
            except OSError as error:
                self._drop()
                if not self.failed:  # say it once, not once per event
                    logging.getLogger(__name__).error("cannot write the event log %s: %s",
                                                      self.path, error.strerror)
                self.failed = True

    def close(self, timeout: float = 0.0) -> None:
        """Close the log's descriptor (the next event opens it again)."""
        with self._lock:
            self._drop()

    def _drop(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)  # releases a flock still held
        self._fd, self._file = -1, None

    def _open(self) -> None:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        try:
            fd = os.open(self.path, flags, 0o640)
        except FileNotFoundError:  # its directory is made once, not looked for per event
            os.makedirs(os.path.dirname(self.path) or ".", mode=0o750, exist_ok=True)
            fd = os.open(self.path, flags, 0o640)
        held = os.fstat(fd)
        self._fd, self._file = fd, (held.st_dev, held.st_ino)

    def _locked(self) -> int:
        """Lock the current log file and return its size, (re)opening it when the path now
        names another file (rotated) or none (removed)."""
        for _ in range(100):  # only a storm of concurrent rotations loops more than twice
            if self._fd < 0:
                self._open()
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                current = os.stat(self.path)
            except FileNotFoundError:
                current = None
            if current is not None and (current.st_dev, current.st_ino) == self._file:
                return current.st_size
            self._drop()  # rotated while we waited (or removed): open the new file
        raise OSError(0, "the event log keeps being rotated under us")

    def _append(self, line: bytes) -> None:
        while True:
            size = self._locked()
            try:
                if self.max_bytes and size and size + len(line) > self.max_bytes:
                    self._shift()
                    self._drop()  # the file we open next may have been written meanwhile
                    continue
                view = memoryview(line)
                while view:  # one write(2) in practice; the loop only guards a short write
                    view = view[os.write(self._fd, view):]
                return
            finally:
                if self._fd >= 0:
                    fcntl.flock(self._fd, fcntl.LOCK_UN)

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
