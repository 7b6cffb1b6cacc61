"""Running a web server's commands, and which commands a server type gets by default.

Commands are argv lists (never a shell string), run with stdin closed and a timeout; stdout and
stderr are kept together because that is where web servers explain themselves.

Defaults: when systemd runs the server, the reload goes through it (`systemctl reload nginx`,
`apache2` or `httpd`), so the unit's state stays true, and nginx's config test runs through
PID 1 too (`systemd-run ... nginx -t`): inside mamoru.service's sandbox a direct `nginx -t`
cannot open the pid file, the logs and the ports it checks (see systemd/mamoru.service).
Otherwise `nginx -t` and `nginx -s reload`. Apache: `apachectl -t` (it only reads files, so it
works in the sandbox) and, without systemd, `apachectl -k graceful`. Explicit `server.test` /
`server.reload` always win (transaction.installer_for applies them).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

OUTPUT_TAIL = 4000  # characters of a command's output kept in errors and events
DETECT_TIMEOUT = 5.0
SYSTEMD_UNITS = {"nginx": ("nginx",), "apache": ("apache2", "httpd")}
DIRECT_RELOAD = {"nginx": ("nginx", "-s", "reload"), "apache": ("apachectl", "-k", "graceful")}
DEFAULT_TEST = {"nginx": ("nginx", "-t"), "apache": ("apachectl", "-t")}


# --- running a command ------------------------------------------------------------------------


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int  # -1 when it timed out, 127 when the program was not found
    output: str  # stdout and stderr, interleaved as the program wrote them
    duration: float
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    @property
    def command(self) -> str:
        return " ".join(self.argv)

    def describe(self) -> str:
        """`nginx -t` exited with status 1 / timed out after 60 s / was not found."""
        if self.timed_out:
            return f"`{self.command}` did not finish within {self.duration:.0f} s"
        if self.returncode == 127 and not self.output.strip():
            return f"`{self.command}` could not be run: {self.argv[0]} was not found"
        return f"`{self.command}` exited with status {self.returncode}"


def run_command(argv: Sequence[str], timeout: float) -> CommandResult:
    """Run `argv` (no shell) with stdin closed and a hard `timeout`; never raises for the
    program's own failure, which the result describes."""
    started = time.monotonic()
    try:
        completed = subprocess.run(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as expired:
        partial = expired.output or b""
        return CommandResult(tuple(argv), -1, _text(partial), time.monotonic() - started, True)
    except OSError as error:  # not found, not executable
        return CommandResult(tuple(argv), 127, f"{argv[0]}: {error.strerror}",
                             time.monotonic() - started)
    return CommandResult(tuple(argv), completed.returncode, _text(completed.stdout),
                         time.monotonic() - started)


def _text(data: bytes | str) -> str:
    return data.decode("utf-8", "replace") if isinstance(data, bytes) else data


def important_lines(output: str, limit: int = 6) -> str:
    """The lines of a server's output worth showing in one message: its errors and warnings
    (nginx `[emerg]`), else its last lines (Apache's `AH00526: Syntax error on line...`)."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    # nginx marks its lines with a level; Apache's syntax errors span two unmarked lines.
    marked = [line for line in lines
              if any(level in line for level in ("[emerg]", "[alert]", "[crit]", "[error]"))]
    return " | ".join((marked or lines)[-limit:])


# --- the default commands per server type ------------------------------------------------------


def systemd_running() -> bool:
    """True when systemd is the init system (sd_booted(3): /run/systemd/system exists)."""
    return os.path.isdir("/run/systemd/system")


def unit_active(unit: str) -> bool:
    return run_command(["systemctl", "is-active", "--quiet", unit], DETECT_TIMEOUT).ok


def systemd_unit(server_type: str, *, systemd: Callable[[], bool] = systemd_running,
                 active: Callable[[str], bool] = unit_active) -> str | None:
    """The systemd unit running the server of `server_type`, or None (not under systemd)."""
    if systemd():
        for unit in SYSTEMD_UNITS[server_type]:
            if active(unit):
                return unit
    return None


def default_reload(server_type: str, unit: str | None) -> tuple[str, ...]:
    """The reload argv for `server_type` (nginx | apache), through `unit` when systemd runs
    the server."""
    return ("systemctl", "reload", unit) if unit else DIRECT_RELOAD[server_type]


def default_test(server_type: str, unit: str | None) -> tuple[str, ...]:
    """The config-test argv; nginx under systemd is tested through PID 1 (see above)."""
    if server_type == "nginx" and unit is not None:
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        return ("systemd-run", "--quiet", "--wait", "--pipe", "--collect",
                "--service-type=exec", binary, "-t")
    return DEFAULT_TEST[server_type]
