"""One HTTP GET over an open connection (capped body, hard deadline), and connection failures
in plain words.

A small HTTP client on top of :mod:`mamoru.check.tls` rather than ``requests``: the request
goes to the address the check aims at while the Host header carries the real name.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import zlib
from dataclasses import dataclass

from mamoru.check.target import Target, authority
from mamoru.check.tls import Deadline, cut_at_deadline, tcp_connect, tls_connect

PAGE_SIZE_CAP = 2 * 1024 * 1024
"""Bytes of the HTML page read for the mixed-content scan; the rest is ignored."""

MAX_REDIRECTS = 5
"""Redirects followed, both for the HTTPS page and for the plain-HTTP redirect check."""


PERMANENT_REDIRECTS = frozenset({301, 308})
_TEMPORARY = frozenset({302, 303, 307})
REDIRECTS = PERMANENT_REDIRECTS | _TEMPORARY


_USER_AGENT = "Mozilla/5.0 (compatible; mamoru-check/0.1)"


@dataclass
class Response:
    """One HTTP answer: status, headers in order, and the body when it was read."""

    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    truncated: bool = False

    def header(self, name: str) -> str | None:
        lowered = name.lower()
        for key, value in self.headers:
            if key.lower() == lowered:
                return value
        return None

    def header_all(self, name: str) -> list[str]:
        lowered = name.lower()
        return [value for key, value in self.headers if key.lower() == lowered]


def exchange(
    sock: socket.socket,
    host_header: str,
    target: str,
    deadline: Deadline,
    *,
    read_body: bool,
) -> Response:
    """Send one GET on ``sock`` and read the answer (the body only when asked, capped)."""
    request = (
        f"GET {target} HTTP/1.1\r\n"
        f"Host: {host_header}\r\n"
        f"User-Agent: {_USER_AGENT}\r\n"
        "Accept: text/html,application/xhtml+xml,*/*;q=0.8\r\n"
        # Compressed bodies are still handled below, but asking for none keeps the cap honest.
        "Accept-Encoding: identity\r\n"
        "Connection: close\r\n\r\n"
    ).encode("latin-1")
    with cut_at_deadline(sock, deadline):
        sock.sendall(request)
        response = http.client.HTTPResponse(sock, method="GET")
        try:
            response.begin()
            result = Response(response.status, response.reason, list(response.getheaders()))
            if read_body:
                result.body, result.truncated = _read_capped(response, result)
        finally:
            response.close()
    return result


def _read_capped(response: http.client.HTTPResponse, meta: Response) -> tuple[bytes, bool]:
    encoding = (meta.header("Content-Encoding") or "identity").strip().lower()
    # wbits=47 accepts both gzip and zlib framing.
    inflater = zlib.decompressobj(47) if encoding in ("gzip", "x-gzip", "deflate") else None
    body = bytearray()
    truncated = False
    while True:
        chunk = response.read(64 * 1024)
        if not chunk:
            break
        if inflater is not None:
            try:
                chunk = inflater.decompress(chunk, PAGE_SIZE_CAP + 1 - len(body))
            except zlib.error:
                break
        body += chunk
        if len(body) > PAGE_SIZE_CAP:
            del body[PAGE_SIZE_CAP:]
            truncated = True
            break
    return bytes(body), truncated


def https_get(
    address: tuple[str, int],
    target: Target,
    path: str,
    context: ssl.SSLContext,
    deadline: Deadline,
) -> Response:
    """One GET of ``path`` over a new TLS connection to ``address`` (SNI and Host
    from ``target``), body read up to PAGE_SIZE_CAP."""
    sock = tls_connect(address, target.host, context, deadline)
    try:
        return exchange(
            sock, authority(target.host, target.port, 443), path, deadline, read_body=True
        )
    finally:
        sock.close()


def http_get(address: tuple[str, int], host: str, path: str, deadline: Deadline) -> Response:
    """One GET of ``path`` over plain HTTP to ``address`` (Host ``host``), body unread."""
    sock = tcp_connect(address, deadline)
    try:
        return exchange(sock, authority(host, 80, 80), path, deadline, read_body=False)
    finally:
        sock.close()


_TLS_REASONS: dict[str, str] = {
    "WRONG_VERSION_NUMBER": (
        "answered in plain HTTP where a secure (TLS) connection was expected; the HTTPS port "
        "is not set up for TLS"
    ),
    "HTTP_REQUEST": "answered in plain HTTP where a secure (TLS) connection was expected",
    "SSLV3_ALERT_HANDSHAKE_FAILURE": (
        "refused the secure handshake (no encryption settings in common with browsers, or no "
        "certificate configured for this name)"
    ),
    "TLSV1_ALERT_INTERNAL_ERROR": (
        "failed the secure handshake with an internal error (often: no certificate configured "
        "for this name)"
    ),
    "TLSV1_UNRECOGNIZED_NAME": "does not recognise the site name during the secure handshake",
    "NO_SHARED_CIPHER": "has no encryption settings in common with browsers",
}


def describe_failure(exc: BaseException, deadline: Deadline, where: str) -> tuple[str, str]:
    """A short reason code and a lower-case clause ("the server at <where> ...") for a
    connection failure; :func:`sentence` turns the clause into a sentence start."""
    if isinstance(exc, socket.gaierror):
        return "dns", f"the name in {where} could not be found in DNS"
    seconds = f"{deadline.seconds:g} second" + ("" if deadline.seconds == 1 else "s")
    where = f"the server at {where}"
    if deadline.expired or isinstance(exc, TimeoutError):
        return "timeout", f"{where} did not answer within {seconds}"
    if isinstance(exc, ConnectionRefusedError):
        return "refused", f"{where} refused the connection (nothing is listening on that port)"
    if isinstance(exc, http.client.RemoteDisconnected | ssl.SSLEOFError):
        return "closed", f"{where} closed the connection without answering"
    if isinstance(exc, ConnectionResetError | BrokenPipeError | ConnectionAbortedError):
        return "reset", f"{where} dropped the connection (connection reset)"
    if isinstance(exc, ssl.SSLError):
        reason = str(getattr(exc, "reason", "") or "")
        if reason in _TLS_REASONS:
            return "tls", f"{where} {_TLS_REASONS[reason]}"
        return "tls", f"{where} failed the secure (TLS) handshake: {reason or exc}"
    if isinstance(exc, http.client.HTTPException):
        return "bad-response", f"{where} answered with something that is not valid HTTP"
    detail = (exc.strerror if isinstance(exc, OSError) else None) or str(exc)
    return "unreachable", f"{where} could not be reached ({detail})"


NETWORK_ERRORS = (OSError, http.client.HTTPException)


def sentence(clause: str) -> str:
    """``clause`` with a capital first letter."""
    return clause[:1].upper() + clause[1:]
