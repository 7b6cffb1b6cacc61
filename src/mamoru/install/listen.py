"""Listen addresses: the site's `listen` settings read as (address, port), whether this machine
has IPv6, and what Apache already listens on.

`Listen` lines in Apache — the choice, and why. Apache refuses two `Listen` lines for the same
address ("Cannot define multiple Listeners", caught by the config test), and worse, accepts
`Listen 8443` beside `Listen 127.0.0.1:8443` in the config test but then cannot bind the second
socket, so a graceful restart stops the server. Distributions listen on 80 and 443 in their own
files (Debian's ports.conf, RHEL's httpd.conf and ssl.conf). So before writing, mamoru asks
Apache which files it reads (`<test command> -D DUMP_INCLUDES`) and collects their `Listen`
lines:

- a user's `Listen` that already covers the address (same address, or every address on that
  port) -> mamoru writes no `Listen` for it;
- a user's `Listen` on the same port that cannot coexist with the configured address (one is
  every address, the other one address) -> mamoru refuses and says which line to change;
- nobody listens on it -> mamoru writes the `Listen` (apache.py guards it so that two mamoru
  sites on one port produce it once).

When Apache cannot list its files (a custom test command), mamoru writes `Listen` for every
port except 80 and 443, which every stock configuration already listens on.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

from mamoru.config.model import Site
from mamoru.install.commands import run_command
from mamoru.install.files import InstallRefused, is_mamoru_file
from mamoru.netaddr import WILDCARD_HOSTS, parse_address

STANDARD_PORTS = (80, 443)


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


def has_ipv6() -> bool:
    """True when this machine has an IPv6 address configured (so `[::]:PORT` can be bound)."""
    try:
        with open("/proc/net/if_inet6", encoding="ascii") as handle:
            return bool(handle.read().strip())
    except OSError:
        return False


# --- what Apache listens on already -----------------------------------------------------------


@dataclass(frozen=True)
class UserListen:
    host: str | None  # None: every address
    port: int
    where: str  # "file:line"


_LISTEN = re.compile(r"^\s*Listen\s+(\S+)", re.IGNORECASE)
_INCLUDED = re.compile(r"^\s*\((?:\*|\d+)\)\s+(\S.*?)\s*$", re.MULTILINE)


def apache_included_files(test_argv: Sequence[str], timeout: float) -> set[str] | None:
    """Every file Apache's config reads (`<test> -D DUMP_INCLUDES`), or None when the test
    command does not list them."""
    result = run_command([*test_argv, "-D", "DUMP_INCLUDES"], timeout)
    if "Included configuration files" not in result.output:
        return None
    return {os.path.realpath(path) for path in _INCLUDED.findall(result.output)}


def user_listens(files: set[str]) -> list[UserListen]:
    """The `Listen` lines in `files`, mamoru's own files left out."""
    found = []
    for path in sorted(files):
        if is_mamoru_file(path):
            continue
        try:
            with open(path, encoding="utf-8", errors="replace") as handle:
                found += parse_listens(handle.read(), path)
        except OSError:
            continue
    return found


def parse_listens(text: str, where: str) -> list[UserListen]:
    """The `Listen` directives in one config file's text (conditional ones count too: safer
    to assume an `<IfModule>` around it is true)."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        match = _LISTEN.match(line)
        if not match:
            continue
        raw = match.group(1)
        try:
            host, port = listen_address(raw)
        except InstallRefused:
            continue  # ${VARIABLE} or a form we cannot read: Apache's own test judges it
        found.append(UserListen(host, port, f"{where}:{number}"))
    return found


def listens_needed(wanted: Sequence[str], existing: Sequence[UserListen] | None
                   ) -> list[str]:
    """Which of the `wanted` listen settings mamoru must write a `Listen` for, given the
    user's `existing` ones (None: unknown, so every port but 80 and 443). Raises
    InstallRefused when a wanted address and a user's `Listen` cannot both be bound."""
    needed = []
    for raw in wanted:
        host, port = listen_address(raw)
        if existing is None:
            if port not in STANDARD_PORTS:
                needed.append(raw)
            continue
        same_port = [e for e in existing if e.port == port]
        if any(theirs.host is None or theirs.host == host for theirs in same_port):
            continue  # already listened on: a second Listen would be an error
        if host is None and same_port:
            theirs = same_port[0]
            raise InstallRefused(
                f"Apache already listens on {theirs.host}:{port} ({theirs.where}), and the "
                f"site's listen setting {raw!r} means every address on port {port}: Apache "
                "cannot bind both and would stop at its next restart",
                hint=f"Set the site's server.listen to \"{theirs.host}:{port}\", or change "
                     f"that Listen line to `Listen {port}`.")
        needed.append(raw)
    return needed
