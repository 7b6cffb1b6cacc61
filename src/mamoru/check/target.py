"""What is checked: a URL turned into host, port and request path, and host comparisons.

The host is kept in its ASCII (IDNA) form, so SNI, the Host header and certificate name
matching all see the same name.
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    """One URL to check, normalised."""

    url: str  # normalised https:// URL
    host: str  # ASCII (IDNA) lower-case host, IPv6 without brackets
    port: int  # HTTPS port
    path: str  # path plus ?query, always starting with "/"


def normalize_url(url: str) -> str:
    """Turn ``clinic.example``, ``http://clinic.example/x`` or ``https://...`` into the
    ``https://`` URL that will be checked.

    A plain ``http://`` URL is checked as its ``https://`` twin (the plain-HTTP checks look at
    the http side anyway); an explicit port is kept only for https URLs. Raises ValueError for
    other schemes or a URL without a host.
    """
    return parse_target(url).url


def parse_target(url: str) -> Target:
    """The :class:`Target` for ``url`` (see :func:`normalize_url`); raises ValueError."""
    raw = url.strip()
    if "://" not in raw:
        raw = "https://" + raw
    parts = urllib.parse.urlsplit(raw)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise ValueError(f"cannot check {url!r}: only http:// and https:// addresses make sense")
    if not parts.hostname:
        raise ValueError(f"cannot check {url!r}: there is no host name in it")
    host = ascii_host(parts.hostname)
    try:
        explicit_port = parts.port
    except ValueError as exc:
        raise ValueError(f"cannot check {url!r}: {exc}") from exc
    port = explicit_port if scheme == "https" and explicit_port else 443
    path = request_target(parts.path or "/", parts.query)
    return Target(
        url=f"https://{authority(host, port, 443)}{path}", host=host, port=port, path=path
    )


def ascii_host(host: str) -> str:
    """``host`` in lower-case ASCII (IDNA) without a trailing dot; IPs as they are."""
    host = host.strip().rstrip(".").lower()
    if is_ip(host):
        return host
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise ValueError(f"{host!r} is not a valid host name: {exc}") from exc


def is_ip(host: str) -> bool:
    """Whether ``host`` is an IPv4 or IPv6 address."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def authority(host: str, port: int, default_port: int) -> str:
    """``host[:port]`` as written in a URL or Host header (the port only when not
    ``default_port``; IPv6 in brackets)."""
    shown = f"[{host}]" if ":" in host else host
    return shown if port == default_port else f"{shown}:{port}"


# Every printable ASCII character is left alone so an already-encoded path is sent verbatim;
# spaces, control characters (header injection) and non-ASCII get percent-encoded.
_PATH_SAFE = "".join(chr(c) for c in range(33, 127))


def request_target(path: str, query: str = "") -> str:
    """``path`` (and ``?query``) as sent in a request line: printable ASCII kept,
    everything else percent-encoded."""
    if not path.startswith("/"):
        path = "/" + path
    target = urllib.parse.quote(path, safe=_PATH_SAFE)
    if query:
        target += "?" + urllib.parse.quote(query, safe=_PATH_SAFE)
    return target


def same_host(a: str | None, b: str) -> bool:
    """Whether host ``a`` (as written, may be None) is ``b`` (ASCII form)."""
    if not a:
        return False
    try:
        return ascii_host(a) == b
    except ValueError:
        return False


def www_variant(a: str, b: str) -> bool:
    """Whether one name is the other with ``www.`` in front."""
    return a == "www." + b or b == "www." + a
