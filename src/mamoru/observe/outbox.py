"""Reporting to the vendor's fleet: a durable outbox on disk and a pusher thread.

Every event, and a snapshot of each site (what `status --json` shows for it), is appended to
`<outbox>/outbox.jsonl` as one JSON line with an id (UUID) and a sequence number, by one
write(2) under flock(2), then fsync(2): the daemon and one-shot commands append in one order,
and a kill -9 leaves at most a torn last line, which the next writer cuts off. `sent.json`
records how far the collector has acknowledged (written atomically); what is not acknowledged
is sent again after a restart, so delivery is at least once and the collector's idempotent
ingest (by event id) makes it exactly once in its database.

Bounded: when the file passes `outbox_max_bytes`, acknowledged lines are dropped, and if that
is not enough the oldest unsent ones too (counted in `dropped`, shown by `status`).

The pusher (one process at a time: it holds `pusher.lock`) sends batches over HTTPS with the
clinic's token, backs off when the collector is away (up to five minutes), and sends a
heartbeat when idle. `emit` only appends: a renewal never waits for the network.

May import: config, storage (atomic writes and site status), observe.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import random
import threading
import uuid
from datetime import UTC, datetime
from typing import Any

from mamoru.config.model import FleetSettings, Settings
from mamoru.observe.events import Event, iso

log = logging.getLogger(__name__)

BACKOFF_MAX = 300.0
_READ_CHUNK = 1024 * 1024


class Outbox:
    """The files of one outbox directory."""

    def __init__(self, directory: str, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.dir = directory
        self.data = os.path.join(directory, "outbox.jsonl")
        self.cursor = os.path.join(directory, "sent.json")
        self.lock_path = os.path.join(directory, "outbox.lock")
        self.max_bytes = max_bytes

    # -- locking and the cursor ------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Any:
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def read_cursor(self) -> dict[str, Any]:
        try:
            with open(self.cursor, encoding="utf-8") as handle:
                data = json.load(handle)
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _write_cursor(self, data: dict[str, Any]) -> None:
        from mamoru.storage.atomic import write_file

        write_file(self.cursor, json.dumps(data, sort_keys=True).encode(), 0o600)

    # -- appending ---------------------------------------------------------------------------

    def append(self, records: list[dict[str, Any]]) -> None:
        """Give each record an id and the next sequence number and append it durably."""
        if not records:
            return
        with self._locked():
            fd = os.open(self.data, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                last = self._repair_tail(fd)
                seq = max(last, int(self.read_cursor().get("acked") or 0))
                lines = []
                for record in records:
                    seq += 1
                    lines.append(json.dumps({"id": str(uuid.uuid4()), "seq": seq, **record},
                                            ensure_ascii=False, separators=(",", ":")) + "\n")
                view = memoryview("".join(lines).encode())
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
                size = os.fstat(fd).st_size
            finally:
                os.close(fd)
            if size > self.max_bytes:
                self._compact()

    def _repair_tail(self, fd: int) -> int:
        """Cut a torn last line (a writer killed mid-write); return the last sequence number."""
        size = os.fstat(fd).st_size
        if size == 0:
            return 0
        start = max(0, size - 64 * 1024)
        tail = os.pread(fd, size - start, start)
        if not tail.endswith(b"\n"):
            cut = tail.rfind(b"\n")
            keep = start + cut + 1 if cut >= 0 else (start if start else 0)
            os.ftruncate(fd, keep)
            log.warning("fleet outbox: cut a torn last record (%d bytes)", size - keep)
            tail = tail[:cut + 1] if cut >= 0 else b""
        for line in reversed(tail.splitlines()):
            try:
                return int(json.loads(line)["seq"])
            except (ValueError, KeyError, TypeError):
                continue
        return 0

    def _compact(self) -> None:
        """With the lock held: drop acknowledged lines, then the oldest unsent ones until the
        file is under 3/4 of its bound."""
        from mamoru.storage.atomic import write_file

        cursor = self.read_cursor()
        acked = int(cursor.get("acked") or 0)
        keep = [line for line in self._lines(0) if line[0] > acked]
        target = self.max_bytes * 3 // 4
        size = sum(len(raw) for _, raw, _ in keep)
        dropped = 0
        while keep and size > target:
            size -= len(keep[0][1])
            keep.pop(0)
            dropped += 1
        write_file(self.data, b"".join(raw for _, raw, _ in keep), 0o600)
        cursor.update(offset=0, inode=os.stat(self.data).st_ino,
                      dropped=int(cursor.get("dropped") or 0) + dropped)
        if dropped:
            cursor["acked"] = max(acked, keep[0][0] - 1 if keep else acked)
            log.error("fleet outbox over %d bytes: dropped the %d oldest unsent records",
                      self.max_bytes, dropped)
        self._write_cursor(cursor)

    # -- reading and acknowledging -------------------------------------------------------------

    def _lines(self, offset: int) -> list[tuple[int, bytes, int]]:
        """(seq, raw line, offset after it) of every whole line from `offset`."""
        out = []
        try:
            with open(self.data, "rb") as handle:
                handle.seek(offset)
                position = offset
                for raw in handle:
                    position += len(raw)
                    if not raw.endswith(b"\n"):
                        break  # a torn last line: not a record (yet)
                    try:
                        seq = int(json.loads(raw)["seq"])
                    except (ValueError, KeyError, TypeError):
                        continue
                    out.append((seq, raw, position))
        except FileNotFoundError:
            pass
        return out

    def _start(self, cursor: dict[str, Any]) -> int:
        try:
            inode = os.stat(self.data).st_ino
        except FileNotFoundError:
            return 0
        offset = int(cursor.get("offset") or 0)
        return offset if cursor.get("inode") == inode else 0

    def pending(self, limit: int) -> list[dict[str, Any]]:
        """Up to `limit` records not yet acknowledged, oldest first."""
        cursor = self.read_cursor()
        acked = int(cursor.get("acked") or 0)
        out = []
        for seq, raw, _ in self._lines(self._start(cursor)):
            if seq <= acked:
                continue
            out.append(json.loads(raw))
            if len(out) >= limit:
                break
        return out

    def ack(self, through: int, **facts: Any) -> None:
        """The collector has every record up to sequence `through`."""
        with self._locked():
            cursor = self.read_cursor()
            acked = max(int(cursor.get("acked") or 0), through)
            lines = self._lines(self._start(cursor))
            offset = self._start(cursor)
            for seq, _, after in lines:
                if seq > acked:
                    break
                offset = after
            with contextlib.suppress(FileNotFoundError):
                stat = os.stat(self.data)
                if offset >= stat.st_size and offset > 0:  # all sent: start the file afresh
                    with open(self.data, "r+b") as handle:
                        handle.truncate(0)
                    offset = 0
                cursor["inode"] = stat.st_ino
            cursor.update(acked=acked, offset=offset, **facts)
            self._write_cursor(cursor)

    def note(self, **facts: Any) -> None:
        with self._locked():
            cursor = self.read_cursor()
            cursor.update(facts)
            self._write_cursor(cursor)

    def lag(self) -> dict[str, Any]:
        """How far behind the outbox is: records waiting, the oldest one's time, the last
        successful push, the last error, records dropped because the outbox was full."""
        cursor = self.read_cursor()
        acked = int(cursor.get("acked") or 0)
        waiting = [raw for seq, raw, _ in self._lines(self._start(cursor)) if seq > acked]
        oldest = None
        if waiting:
            with contextlib.suppress(ValueError, KeyError):
                oldest = json.loads(waiting[0]).get("time")
        return {"waiting": len(waiting), "oldest_waiting": oldest,
                "last_sent": cursor.get("last_sent"), "last_error": cursor.get("last_error"),
                "last_attempt": cursor.get("last_attempt"), "acked": acked,
                "dropped": int(cursor.get("dropped") or 0)}


def record_of(event: Event) -> dict[str, Any]:
    return {"time": iso(event.time), "kind": event.kind, "site": event.site,
            "body": event.to_json()}


def _shape(snapshot: dict[str, Any]) -> str:
    """A snapshot without what changes by itself (days left): send only when this changes."""
    stable = {k: v for k, v in snapshot.items() if k not in ("days_left",)}
    return hashlib.sha256(json.dumps(stable, sort_keys=True).encode()).hexdigest()


class FleetSink:
    """The event sink that fills the outbox, and the thread that empties it."""

    def __init__(self, settings: Settings, storage: Any, *, push: bool = True,
                 clock: Any = None) -> None:
        assert settings.fleet is not None
        self.settings = settings
        self.fleet: FleetSettings = settings.fleet
        self.storage = storage
        self.clock = clock or (lambda: datetime.now(UTC))
        self.outbox = Outbox(self.fleet.outbox, self.fleet.outbox_max_bytes)
        self._dirty: set[str] = {site.name for site in settings.sites}
        self._shapes: dict[str, str] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pusher_fd: int | None = None
        self._session: Any = None
        if push:
            self._thread = threading.Thread(target=self._run, name="mamoru-fleet", daemon=True)
            self._thread.start()

    def emit(self, event: Event) -> None:
        try:
            self.outbox.append([record_of(event)])
        except OSError as error:
            log.error("cannot write the fleet outbox %s: %s", self.outbox.dir, error.strerror)
            return
        if event.site:
            with self._lock:
                self._dirty.add(event.site)
        self._wake.set()

    # -- the pusher ----------------------------------------------------------------------------

    def _take_pusher_lock(self) -> bool:
        if self._pusher_fd is not None:
            return True
        os.makedirs(self.outbox.dir, mode=0o700, exist_ok=True)
        fd = os.open(os.path.join(self.outbox.dir, "pusher.lock"),
                     os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._pusher_fd = fd
        return True

    def snapshot_sites(self, *, every: bool = False) -> int:
        """Append a snapshot of each site that changed (or of every site); returns how many."""
        from mamoru.observe.status import site_status

        with self._lock:
            names = {s.name for s in self.settings.sites} if every else set(self._dirty)
            self._dirty.clear()
        now = self.clock()
        records = []
        for site in self.settings.sites:
            if site.name not in names:
                continue
            snapshot = site_status(site, self.storage, now).to_json()
            shape = _shape(snapshot)
            if not every and self._shapes.get(site.name) == shape:
                continue
            self._shapes[site.name] = shape
            records.append({"time": iso(now), "kind": "snapshot", "site": site.name,
                            "body": snapshot})
        self.outbox.append(records)
        return len(records)

    def push_once(self, timeout: float | None = None) -> bool:
        """Send what is waiting (or a heartbeat), batch after batch; True when all went."""
        import requests

        if self._session is None:
            self._session = requests.Session()
        fleet = self.fleet
        while True:
            batch = self.outbox.pending(fleet.batch)
            now = iso(self.clock())
            body = json.dumps({"clinic": fleet.clinic, "events": batch},
                              ensure_ascii=False).encode()
            try:
                response = self._session.post(
                    f"{fleet.url}/v1/report", data=body, timeout=timeout or fleet.timeout,
                    verify=fleet.ca_bundle or True, allow_redirects=False,
                    headers={"Authorization": f"Bearer {fleet.token.reveal()}",
                             "Content-Type": "application/json",
                             "User-Agent": "mamoru-fleet"})
            except requests.RequestException as error:
                self.outbox.note(last_attempt=now, last_error=f"could not reach the fleet "
                                 f"collector: {type(error).__name__}")
                return False
            if response.status_code != 200:
                why = ""
                with contextlib.suppress(ValueError, AttributeError):
                    why = str(response.json().get("error") or "")[:200]
                self.outbox.note(last_attempt=now, last_error=f"the fleet collector answered "
                                 f"{response.status_code}" + (f": {why}" if why else ""))
                return False
            through = max((int(r["seq"]) for r in batch), default=0)
            self.outbox.ack(through, last_sent=now, last_attempt=now, last_error=None)
            if len(batch) < fleet.batch:
                return True

    def _run(self) -> None:
        fleet = self.fleet
        backoff = 0.0
        next_snapshot = 0.0
        import time

        while not self._stop.is_set():
            if not self._take_pusher_lock():  # another mamoru process pushes this outbox
                self._stop.wait(30)
                continue
            try:
                monotonic = time.monotonic()
                every = monotonic >= next_snapshot
                if every:
                    next_snapshot = monotonic + fleet.snapshot_minutes * 60
                self.snapshot_sites(every=every)
                ok = self.push_once()
            except Exception:  # never let the pusher die: the next round tries again
                log.exception("fleet push failed")
                ok = False
            if ok:
                backoff = 0.0
                wait = fleet.heartbeat_minutes * 60
            else:
                backoff = min(BACKOFF_MAX, max(1.0, backoff * 2))
                wait = backoff * (0.8 + 0.4 * random.random())
            self._wake.wait(wait)
            self._wake.clear()

    def close(self, timeout: float = 10.0) -> None:
        """Stop the pusher, then send what is waiting once more (within `timeout`, and only
        when no other mamoru process is pushing this outbox); what is still unsent stays in
        the outbox for the next process."""
        import time

        deadline = time.monotonic() + timeout
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        left = deadline - time.monotonic()
        if left > 1 and (self._thread is None or not self._thread.is_alive()):
            try:
                if self._take_pusher_lock():
                    self.snapshot_sites()
                    # a one-shot command (no pusher thread) gives it a few seconds at most
                    cap = self.fleet.timeout if self._thread is not None else 5.0
                    self.push_once(timeout=min(cap, left))
            except Exception:  # closing must not fail a command
                log.exception("the last fleet push failed")
        if self._pusher_fd is not None:
            os.close(self._pusher_fd)
            self._pusher_fd = None


def lag(settings: Settings) -> dict[str, Any] | None:
    """The outbox's lag for `status` (None when fleet reporting is not configured)."""
    if settings.fleet is None:
        return None
    return {"url": settings.fleet.url, "clinic": settings.fleet.clinic,
            **Outbox(settings.fleet.outbox, settings.fleet.outbox_max_bytes).lag()}


def describe_lag(lag: dict[str, Any]) -> str:
    """One line for `status`: how far behind the fleet outbox is."""
    waiting = lag["waiting"]
    text = f"fleet ({lag['url']} as {lag['clinic']}): "
    if waiting:
        text += f"{waiting} record{'s' if waiting != 1 else ''} waiting since " \
                f"{lag['oldest_waiting']}"
    else:
        text += "everything sent"
    text += f"; last sent {lag['last_sent'] or 'never'}"
    if lag.get("last_error"):
        text += f"; last error: {lag['last_error']}"
    if lag.get("dropped"):
        text += f"; {lag['dropped']} records dropped (outbox full)"
    return text
