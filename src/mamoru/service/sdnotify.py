"""A dependency-free client for systemd's service notification protocol (sd_notify(3)).

mamoru.service is `Type=notify` with `WatchdogSec=`: the daemon tells systemd when it is ready,
what it is doing, that it is still alive, and when it reloads or stops. Outside systemd (a
terminal, a test, `mamoru renew` from cron) $NOTIFY_SOCKET is absent and every call does nothing,
so callers never need to ask whether they run under systemd.

Usage by the daemon::

    notifier = Notifier()                 # reads $NOTIFY_SOCKET once
    notifier.ready("watching 3 sites")    # after the config is loaded and the scheduler runs
    interval = notifier.watchdog_interval()
    # if interval: a thread calls notifier.watchdog() every interval / 2 seconds, but only
    # while the daemon is healthy (a ping from a thread that ignores a stuck scheduler would
    # defeat the watchdog)
    notifier.reloading()                  # on SIGHUP, before re-reading the config ...
    notifier.ready()                      # ... and after: systemd waits for READY=1 again
    notifier.stopping()                   # on SIGTERM, before the shutdown work

Contract:
- Every method may be called from any thread, any number of times.
- No method raises because of the socket: a failed send (systemd gone, socket full for longer
  than a short timeout, an address this client cannot use) is logged at debug level and
  reported by returning False. Notification is best effort; renewal never depends on it.
- Messages are exactly the documented assignments, newline-separated, UTF-8 (e.g.
  b"READY=1\\nSTATUS=watching 3 sites"); a line break (or NUL) inside a status text becomes a
  space, so a status can never inject another assignment.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Mapping

__all__ = ["Notifier"]

log = logging.getLogger(__name__)

# How long one send may block. PID 1 drains its socket quickly; if it does not (a hung or
# overloaded manager), the caller (often the watchdog thread) must not hang with it.
SEND_TIMEOUT_SECONDS = 2.0


class Notifier:
    """Sends state notifications to systemd over $NOTIFY_SOCKET.

    `environ` defaults to `os.environ`; tests pass a mapping. NOTIFY_SOCKET is read once, here.
    It may name a filesystem socket ("/run/systemd/notify") or an abstract one ("@name"). Any
    other value (absent, empty, relative, the "vsock:" addresses of newer systemd) disables the
    notifier: `enabled` is False and every send returns False without touching a socket.
    WATCHDOG_USEC and WATCHDOG_PID are read from `environ` on each `watchdog_interval()` call.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ: Mapping[str, str] = os.environ if environ is None else dict(environ)
        self._address = _parse_address(self._environ.get("NOTIFY_SOCKET"))
        self._lock = threading.Lock()
        self._socket: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        """True when $NOTIFY_SOCKET named a socket this client can send to."""
        return self._address is not None

    def ready(self, status: str | None = None) -> bool:
        """READY=1 (plus STATUS= when given): startup or a reload has finished."""
        return self._send(["READY=1"], status)

    def status(self, text: str) -> bool:
        """STATUS=<text>: one line shown by `systemctl status`."""
        return self._send([], text)

    def watchdog(self) -> bool:
        """WATCHDOG=1: the service is alive; resets systemd's watchdog timer."""
        return self._send(["WATCHDOG=1"], None)

    def stopping(self, status: str | None = None) -> bool:
        """STOPPING=1: the service has begun shutting down."""
        return self._send(["STOPPING=1"], status)

    def reloading(self, status: str | None = None) -> bool:
        """RELOADING=1 with MONOTONIC_USEC=<now on CLOCK_MONOTONIC, in microseconds>.

        systemd 253+ needs the timestamp for Type=notify-reload; older versions ignore it.
        Either way the unit shows "reloading" until the next `ready()`, which the caller must
        send when the reload is done (or has failed and the old config stays in force).
        """
        # time.monotonic_ns() is CLOCK_MONOTONIC on Linux, the clock systemd compares with.
        usec = time.monotonic_ns() // 1000
        return self._send(["RELOADING=1", f"MONOTONIC_USEC={usec}"], status)

    def watchdog_interval(self) -> float | None:
        """Seconds within which systemd expects WATCHDOG=1, or None if no watchdog applies.

        None when WATCHDOG_USEC is absent, not a positive integer, or when WATCHDOG_PID is set
        and names another process (the variables were inherited from a parent; sd_watchdog_
        enabled(3) does the same). Callers ping at half this interval.
        """
        raw = self._environ.get("WATCHDOG_USEC")
        if not raw:
            return None
        pid_text = self._environ.get("WATCHDOG_PID")
        if pid_text:
            try:
                pid = int(pid_text)
            except ValueError:
                log.debug("ignoring the watchdog: WATCHDOG_PID=%r is not a number", pid_text)
                return None
            if pid != os.getpid():
                return None
        try:
            usec = int(raw)
        except ValueError:
            log.debug("ignoring the watchdog: WATCHDOG_USEC=%r is not a number", raw)
            return None
        if usec <= 0:
            return None
        return usec / 1_000_000

    def close(self) -> None:
        """Release the socket; a later send opens a new one. Safe to call more than once."""
        with self._lock:
            if self._socket is not None:
                self._socket.close()
                self._socket = None

    def _send(self, assignments: list[str], status: str | None) -> bool:
        if self._address is None:
            return False
        if status is not None:
            assignments = [*assignments, "STATUS=" + _one_line(status)]
        message = "\n".join(assignments).encode("utf-8", errors="replace")
        # One lock for the lazy socket and the send: threads may call concurrently, and a
        # close() must not pull the socket from under a send.
        with self._lock:
            try:
                if self._socket is None:
                    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                    sock.settimeout(SEND_TIMEOUT_SECONDS)
                    self._socket = sock
                # One datagram per message, unconnected: the receiver may be recreated (a
                # daemon-reexec of PID 1) and each sendto() finds the current one.
                self._socket.sendto(message, self._address)
            except OSError as error:
                # Includes socket.timeout (an OSError): systemd did not take the message in time.
                log.debug("sd_notify %r to %r failed: %s", message, self._printable(), error)
                return False
        return True

    def _printable(self) -> str:
        address = self._address or ""
        return "@" + address[1:] if address.startswith("\0") else address


def _parse_address(value: str | None) -> str | None:
    """The sendto() address for a $NOTIFY_SOCKET value, or None when unusable."""
    if not value:
        return None
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        # Linux abstract namespace: a leading NUL instead of the "@" systemd writes.
        return "\0" + value[1:]
    log.debug("NOTIFY_SOCKET=%r is not a path or abstract socket; notifications disabled", value)
    return None


def _one_line(text: str) -> str:
    # The protocol is newline-separated assignments: a newline in a status would start a new
    # one (e.g. "x\nREADY=1"), and systemd reads the datagram as a C string, so a NUL would
    # cut it short. Both become spaces.
    for char in ("\r\n", "\n", "\r", "\0"):
        text = text.replace(char, " ")
    return text
