"""What every installer shares: the `Installer` seam, the files mamoru owns, and commands.

mamoru writes only files it owns: each starts with the HEADER line, lives in the directory the
user named (`server.conf_dir`), and is replaced atomically. A file there without the header is
the user's, and mamoru refuses to touch it. Commands are argv lists (never a shell string), run
with a timeout, their stdout and stderr kept together because that is where web servers explain
themselves.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from mamoru.config.model import Site
from mamoru.errors import ConfigTestFailed, InstallError, ReloadFailed, StorageError
from mamoru.netaddr import WILDCARD_HOSTS, parse_address
from mamoru.storage.atomic import write_file

# The first line of every file mamoru generates; a file without it is never overwritten.
HEADER_MARK = "# mamoru-generated"

# TLS 1.2 and 1.3 only. For TLS 1.2, forward-secret AEAD suites (ECDHE with AES-GCM or
# ChaCha20-Poly1305) in both ECDSA and RSA flavours, so either key type works; TLS 1.3 suites
# are all modern and left to the library. No DHE (it needs a dhparam file) and no OCSP
# stapling (Let's Encrypt switched its responders off in 2025; nginx would only warn).
TLS_PROTOCOLS = ("TLSv1.2", "TLSv1.3")
TLS12_CIPHERS = ":".join((
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
))
ACME_CHALLENGE_PATH = "/.well-known/acme-challenge/"
OUTPUT_TAIL = 4000  # characters of a command's output kept in errors and events


def header(site: Site, what: str, use: str = "") -> str:
    """The header block of a generated file: the mark line, then what the file is for."""
    return (f"{HEADER_MARK} for site {site.name}: {what}.\n"
            + (f"# {use}\n" if use else "")
            + "# Do not edit: mamoru rewrites this file at every install and renewal. To change\n"
            "# it, change the site's server: settings in mamoru's config, then run\n"
            "# `mamoru provision`.\n")


class InstallRefused(InstallError):
    """mamoru will not install as configured (a file it does not own is in the way, the conf
    directory is missing, a listen address clashes). A person must act; retrying cannot help."""

    retryable = False


# --- commands ---------------------------------------------------------------------------------


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


# --- files mamoru owns ------------------------------------------------------------------------


@dataclass(frozen=True)
class FileSnapshot:
    """A file as it was before deploy: its bytes and mode, or None when it did not exist."""

    path: str
    previous: bytes | None
    mode: int | None


@dataclass(frozen=True)
class IncludeLine:
    """A line the user's own config needs (include mode): `line` includes `path` for `purpose`
    ("tls": the HTTPS server block; "redirect": the plain-HTTP one), `where` says where."""

    path: str
    line: str
    where: str
    purpose: str

    def __str__(self) -> str:
        return f"`{self.line}` {self.where}"


@dataclass
class Deployment:
    """What one deploy changed, so `rollback` can put it back, and what the user must do
    (`includes`: the exact lines the user's own config needs, in include mode)."""

    site: str
    files: list[str] = field(default_factory=list)
    snapshots: list[FileSnapshot] = field(default_factory=list)
    includes: list[IncludeLine] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def is_mamoru_file(path: str) -> bool:
    """True when `path` exists and starts with mamoru's header mark."""
    try:
        with open(path, "rb") as handle:
            first = handle.readline(200)
    except OSError:
        return False
    return first.decode("utf-8", "replace").startswith(HEADER_MARK)


def snapshot(path: str) -> FileSnapshot:
    try:
        with open(path, "rb") as handle:
            data = handle.read()
            mode = os.fstat(handle.fileno()).st_mode & 0o7777
    except FileNotFoundError:
        return FileSnapshot(path, None, None)
    except OSError as error:
        raise StorageError(f"cannot read {path}: {error.strerror}") from None
    return FileSnapshot(path, data, mode)


def write_owned(files: dict[str, str], site: str) -> Deployment:
    """Write every file of `files` (path -> text) atomically, all or nothing.

    Refuses (InstallRefused) before writing anything when a path holds a file that does not
    start with the header mark, or when its directory does not exist. Generated files are 0644:
    they hold paths and directives, never a key, and the server's workers may need to read
    them."""
    for path in files:
        directory = os.path.dirname(path)
        if not os.path.isdir(directory):
            raise InstallRefused(
                f"the directory {directory} (server.conf_dir) does not exist",
                hint="Create it, or set server.conf_dir to the directory your web server "
                     "reads site configs from.")
        if os.path.lexists(path) and not is_mamoru_file(path):
            raise InstallRefused(
                f"{path} exists and was not written by mamoru (it lacks the "
                f"'{HEADER_MARK}' first line); mamoru never overwrites a file it did not create",
                hint="Move that file away (or rename it) and run `mamoru provision` again.")
    deployment = Deployment(site)
    try:
        for path, text in files.items():
            deployment.snapshots.append(snapshot(path))
            write_file(path, text.encode("utf-8"), 0o644)
            deployment.files.append(path)
    except BaseException:
        restore(deployment)
        raise
    return deployment


def restore(deployment: Deployment) -> list[str]:
    """Put every snapshotted file back as it was (remove it when it did not exist). Returns a
    description of each problem; never raises for one file, so the others are still restored."""
    problems = []
    for shot in reversed(deployment.snapshots):
        try:
            if shot.previous is None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(shot.path)
            else:
                write_file(shot.path, shot.previous, shot.mode if shot.mode is not None else 0o644)
        except (OSError, StorageError) as error:
            problems.append(f"could not restore {shot.path}: {error}")
    return problems


# --- the seam ---------------------------------------------------------------------------------


class Installer(Protocol):
    """Puts a site's certificate (files under live/<site>/) into a web server.

    One installer serves one site's `server:` settings. The transaction (mamoru.install)
    calls deploy, then flips live/<site>, then config_test, reload, and on any failure
    rollback; it holds the site's lock, so an installer never runs twice for one site at once
    (different sites' installers may run concurrently)."""

    kind: str  # nginx | apache | command

    def deploy(self, site: Site, live_dir: str) -> Deployment:
        """Write the generated config file(s) for `site` (certificate paths under
        `live_dir/<site>/`) atomically, all or nothing. Returns what to restore.
        Raises InstallRefused or StorageError, having changed nothing."""
        ...

    def config_test(self) -> CommandResult:
        """Run the server's config test. Raises ConfigTestFailed carrying the server's output
        when the config is rejected (or the test cannot run)."""
        ...

    def reload(self) -> CommandResult:
        """Ask the server to load its config again. Raises ReloadFailed with the command's
        output when the command fails or times out. The server may finish reloading after
        this returns (verification waits for it)."""
        ...

    def rollback(self, deployment: Deployment) -> list[str]:
        """Put back the files `deployment` changed. Returns problems found (never raises)."""
        ...


class CommandInstaller:
    """Runs the configured test and reload argv; writes no files of its own. The server reads
    live/<site>/fullchain.pem and privkey.pem directly (type `command`, and the base of the
    nginx and Apache installers)."""

    kind = "command"
    server_name = "the server"

    def __init__(self, test: Sequence[str] | None, reload: Sequence[str], timeout: float
                 ) -> None:
        self.test_argv = tuple(test) if test else None
        self.reload_argv = tuple(reload)
        self.timeout = timeout

    def deploy(self, site: Site, live_dir: str) -> Deployment:
        return Deployment(site.name)

    def config_test(self) -> CommandResult:
        if self.test_argv is None:
            return CommandResult((), 0, "", 0.0)
        result = run_command(self.test_argv, self.timeout)
        if not result.ok:
            raise ConfigTestFailed(
                f"{self.server_name} rejected its config: {result.describe()}: "
                f"{important_lines(result.output)}",
                output=result.output[-OUTPUT_TAIL:], hint=self.config_hint(result.output))
        return result

    def reload(self) -> CommandResult:
        result = run_command(self.reload_argv, self.timeout)
        if not result.ok:
            raise ReloadFailed(
                f"reloading {self.server_name} failed: {result.describe()}"
                + (f": {important_lines(result.output)}" if result.output.strip() else ""),
                output=result.output[-OUTPUT_TAIL:],
                hint="Check that the server runs and that server.reload is the right command; "
                     "the previous certificate and config were put back.")
        return result

    def rollback(self, deployment: Deployment) -> list[str]:
        return restore(deployment)

    def config_hint(self, output: str) -> str | None:
        """A hint for a rejected config, from the server's output (None: the default)."""
        return None


# --- listen addresses -------------------------------------------------------------------------

def listen_address(raw: str) -> tuple[str | None, int]:
    """`"443"` -> (None, 443) (every address); `"127.0.0.1:8443"` -> ("127.0.0.1", 8443);
    `"[::1]:443"` -> ("::1", 443). The config loader has already validated the form."""
    if raw.isdigit():
        return None, int(raw)
    parsed = parse_address(raw)
    if parsed is None:
        raise InstallRefused(f"{raw!r} is not a port or ADDRESS:PORT")
    host, port = parsed
    return (None if host in WILDCARD_HOSTS else host), port


def https_suffix(site: Site) -> str:
    """':8443' when the HTTPS server is not on the standard port 443, else ''."""
    _, port = listen_address(site.server.listen_https)
    return "" if port == 443 else f":{port}"


# -- the files mamoru owns in server.conf_dir (the same names for every server type) ---------


def quote(value: str) -> str:
    """A double-quoted string argument for nginx and Apache configs (paths may hold spaces)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _owned(site: Site, suffix: str) -> str:
    assert site.server.conf_dir is not None  # the loader requires it for nginx and apache
    return os.path.join(site.server.conf_dir, f"mamoru-{site.name}{suffix}")


def site_file(site: Site) -> str:
    """Site mode: the whole generated server config."""
    return _owned(site, ".conf")


def tls_file(site: Site) -> str:
    """Include mode: the TLS directives (.inc keeps it out of *.conf globs)."""
    return _owned(site, "-tls.inc")


def redirect_file(site: Site) -> str:
    """Include mode: the HTTP->HTTPS redirect snippet."""
    return _owned(site, "-redirect.inc")
