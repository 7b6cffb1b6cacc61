"""Process helpers shared by the launchers: start a server in the foreground, stop it by PID.

Servers are always run as direct children (``subprocess.Popen``), in the foreground, so the PID
we hold is the server's own (nginx master, Apache parent, pebble) and ``wait()`` reaps it: no
pid-file races, no zombies, no daemon re-parenting. Stopping is "terminate, wait, then kill",
by that PID only — never by process name.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

#: Every child started by spawn(); an atexit hook stops those still running, so a test run
#: that dies on an exception or Ctrl-C before fixture teardown leaves no server behind.
_SPAWNED: list[subprocess.Popen[bytes]] = []


@atexit.register
def _stop_leftovers() -> None:
    for proc in reversed(_SPAWNED):
        if proc.poll() is None:
            stop_process(proc, timeout=2.0)


class ServerError(RuntimeError):
    """A test server could not be started (message says why, with its log tail)."""


def require_binary(path: str | os.PathLike[str], package: str) -> str:
    """Return ``path`` if it is an executable file, else fail with an install hint.

    Tests never skip because a server is missing: CI installs everything, so a missing binary is
    an environment bug that must be loud.
    """
    p = Path(path)
    if not (p.is_file() and os.access(p, os.X_OK)):
        raise ServerError(
            f"{p} is missing: install the Debian package {package!r} "
            f"(apt-get install -y {package}); tests need the real server"
        )
    return str(p)


def tail(path: str | os.PathLike[str], lines: int = 40) -> str:
    """Last ``lines`` lines of a log file ('' when it does not exist)."""
    try:
        text = Path(path).read_text(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def pid_alive(pid: int) -> bool:
    """True while a process with this PID exists (and is not a zombie we can see)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie still answers kill(0); treat it as gone
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def spawn(
    argv: Sequence[str],
    log_path: str | os.PathLike[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` with stdout+stderr appended to ``log_path`` and no stdin.

    The child gets its own session so that a Ctrl-C in the test terminal does not hit it
    before our own cleanup runs; we still stop it by PID.
    """
    log = open(log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
    try:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )
    finally:
        log.close()
    _SPAWNED[:] = [p for p in _SPAWNED if p.poll() is None]
    _SPAWNED.append(proc)
    return proc


def stop_process(
    proc: subprocess.Popen[bytes] | None,
    *,
    timeout: float = 5.0,
    sig: int = signal.SIGTERM,
) -> int | None:
    """Stop a child by its PID: send ``sig`` (SIGTERM), wait ``timeout``, then SIGKILL.

    Children started by :func:`spawn` lead their own process group (pgid == pid). If the
    leader had to be killed, or left helpers behind (nginx workers, Apache children), those are
    SIGKILLed through that group id — ours alone, never matched by name.

    Returns the exit code (None if there was no process). Safe to call twice.
    """
    if proc is None:
        return None
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=timeout)
    _kill_leftover_group(proc.pid)
    return proc.returncode


def _kill_leftover_group(pgid: int) -> None:
    """SIGKILL whatever is still in process group ``pgid`` (a group we created)."""
    for pid in group_members(pgid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) PIDs whose process group is ``pgid``."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        # fields[0]=state, [1]=ppid, [2]=pgrp
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def children_of(pid: int) -> list[int]:
    """Live (non-zombie) PIDs whose parent is ``pid`` (e.g. nginx workers of a master)."""
    kids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[1]) == pid:
            kids.append(int(entry.name))
    return sorted(kids)


def wait_pid_gone(pid: int, timeout: float = 5.0) -> bool:
    """Poll until ``pid`` no longer exists; True if it went away within ``timeout``."""
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


class ForegroundServer:
    """What nginx and Apache launchers share: one foreground parent process (`_proc`) that
    writes `pid_file`, `error_log` and `stdout_log`, stopped by PID; a context manager.

    Subclasses set those attributes and `_proc` (None until started), define `start()`, and may
    change `stop_timeout`."""

    stop_timeout = 5.0
    _proc: subprocess.Popen[bytes] | None
    pid_file: Path
    error_log: Path
    stdout_log: Path

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self, timeout: float | None = None) -> None:
        """Stop the parent by PID: SIGTERM, then SIGKILL after ``timeout``."""
        stop_process(self._proc, timeout=self.stop_timeout if timeout is None else timeout)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def pid(self) -> int | None:
        """The parent's PID while it runs, else None."""
        if self._proc is not None and self._proc.poll() is None:
            return self._proc.pid
        return None

    @property
    def running(self) -> bool:
        return self.pid is not None and pid_alive(self.pid)

    def _children(self) -> list[int]:
        return children_of(self._proc.pid) if self._proc is not None and self.pid else []

    def _read_pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def error_log_text(self) -> str:
        try:
            return self.error_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def diagnostics(self) -> str:
        return (
            f"--- {self.error_log} ---\n{tail(self.error_log)}\n"
            f"--- {self.stdout_log} ---\n{tail(self.stdout_log)}"
        )
