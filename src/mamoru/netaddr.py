"""Addresses as the config writes them ("host:port", "[v6]:port", "port") and the one rule for
reaching a wildcard listen address from this machine.

Imports nothing of mamoru's: the config loader, the installers and the checks all use it.
"""

from __future__ import annotations

import ipaddress
import re

# Listen hosts that mean "every address": never a place to connect to.
WILDCARD_HOSTS = frozenset({"*", "0.0.0.0", "::", ""})  # noqa: S104 - parsed, never bound
LOCALHOST = "127.0.0.1"


def parse_address(raw: str, default_host: str | None = None) -> tuple[str, int] | None:
    """Parse "host:port", "[v6]:port" or (with default_host) "port". None when malformed.

    The host must be an IPv4 address, an IPv6 address in brackets, `*`, or a host name of
    letters, digits, hyphens and dots: these strings end up in generated nginx and Apache
    configs, so nothing that could end a directive or a line gets through."""
    host: str | None
    if raw.startswith("["):
        end = raw.find("]")
        host, port_text = raw[1:end], raw[end + 2:] if end > 0 else ""
        if end < 0 or raw[end + 1:end + 2] != ":" or not _is_ipv6(host):
            return None
    elif ":" in raw:
        host, _, port_text = raw.rpartition(":")
        if not _plain_host(host):
            return None
    else:
        host, port_text = default_host, raw
    if not host or not port_text.isdigit() or not port_text.isascii():
        return None
    port = int(port_text)
    if not 1 <= port <= 65535:
        return None
    return host, port


_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)\Z")


def _is_ipv6(host: str) -> bool:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return False
    return True


def _plain_host(host: str) -> bool:
    """`*`, an IPv4 address, or a host name (LDH labels): what may stand before ":port"."""
    if host == "*":
        return True
    try:
        ipaddress.IPv4Address(host)
        return True
    except ValueError:
        pass
    name = host[:-1] if host.endswith(".") else host
    return 0 < len(name) <= 253 and all(_LABEL.match(label) for label in name.split("."))


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def reachable(host: str) -> str:
    """Where to connect to reach a server listening on `host`: a wildcard means this
    machine's loopback of the same family (`::` -> `::1`, `*`/`0.0.0.0` -> 127.0.0.1)."""
    if host == "::":
        return "::1"
    if host in WILDCARD_HOSTS:
        return LOCALHOST
    return host


def connect_address(raw: str, default_host: str = LOCALHOST) -> tuple[str, int] | None:
    """The address to connect to for a listen setting ("443", "*:443", "[::]:8443", ...)."""
    parsed = parse_address(raw, default_host)
    if parsed is None:
        return None
    host, port = parsed
    return reachable(host), port


def show_address(host: str, port: int) -> str:
    """HOST:PORT as people and configs write it: an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
