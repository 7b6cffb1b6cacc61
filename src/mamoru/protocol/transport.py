"""HTTP(S) to the CA: keep-alive connections shared by threads, on the standard library.

One `ConnectionPool` serves every order of a process: a request takes an idle connection to
its host (or opens one), reads the whole answer, and gives the connection back, so concurrent
orders share a few TLS connections instead of a handshake per request. A kept connection the
server has closed meanwhile is noticed on its next use and replaced at once.

Errors are left as the standard library raises them (`OSError` and its `ssl`, timeout and
connection subclasses, `http.client.HTTPException`, `ValueError` for a malformed URL): the
session maps them to mamoru's typed errors.

Proxies: `https_proxy`/`HTTPS_PROXY` (or `all_proxy`) is honoured for https:// URLs through an
HTTP CONNECT tunnel (an `http://[user:password@]host[:port]` proxy), minus the hosts in
`no_proxy`; plain-http URLs (a CA on loopback, in tests) always go direct.

Why not `requests`: it (with urllib3, charset_normalizer, idna) and `acme.client` over it cost
a one-certificate provision about 8 MB of its 47 MB peak and 0.08 s of its 0.46 s, and urllib3's
per-request work showed in many-site runs (docs/PERFORMANCE.md).
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import ssl
import threading
from email.message import Message
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit

MAX_BODY = 16 * 1024 * 1024  # the CA's biggest answer is a certificate chain: a few kB
MAX_REDIRECTS = 3  # followed for GET/HEAD only (a directory behind a redirect)
_REDIRECTS = (301, 302, 303, 307, 308)
# A kept-alive connection the server closed while it sat idle fails like this on reuse.
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError,
          ssl.SSLEOFError)


class AnswerTooLarge(http.client.HTTPException):
    """The server sent more than MAX_BODY bytes."""


class Response:
    """One complete answer (the body is read; the connection is back in the pool)."""

    __slots__ = ("content", "headers", "status", "url")

    def __init__(self, status: int, headers: Message, content: bytes, url: str) -> None:
        self.status = status
        self.headers = headers  # case-insensitive .get()
        self.content = content
        self.url = url  # after redirects

    @property
    def ok(self) -> bool:
        return self.status < 400

    def json(self) -> Any:
        """The body parsed as JSON. Raises ValueError."""
        return json.loads(self.content)


_Key = tuple[str, str, int]


class _OneWrite:
    """http.client sends a request's head and its body in two writes: two TLS records, two
    system calls and two reads at the CA for every signed POST. A body of bytes (what every
    ACME request has) goes out with the head in one write here; anything else is sent as
    http.client does."""

    _buffer: list[bytes]

    def _send_output(self, message_body: Any = None, encode_chunked: bool = False) -> None:
        if isinstance(message_body, bytes) and not encode_chunked and \
                isinstance(getattr(self, "_buffer", None), list):
            self._buffer.extend((b"", b""))
            head = b"\r\n".join(self._buffer)
            del self._buffer[:]
            self.send(head + message_body)  # type: ignore[attr-defined]
            return
        super()._send_output(message_body, encode_chunked)  # type: ignore[misc]


class _HTTPConnection(_OneWrite, http.client.HTTPConnection):
    pass


class _HTTPSConnection(_OneWrite, http.client.HTTPSConnection):
    pass


class ConnectionPool:
    """Keep-alive connections per (scheme, host, port), safe to share between threads.

    `ca_bundle`: trust only these roots for https (default: the system trust store).
    `timeout`: seconds for connecting and for each read. `max_idle`: connections kept per host.
    """

    def __init__(self, *, ca_bundle: str | None = None, timeout: float = 30.0,
                 max_idle: int = 8, headers: dict[str, str] | None = None) -> None:
        self.ca_bundle = ca_bundle
        self.timeout = timeout
        self.max_idle = max_idle
        self.headers = dict(headers or {})
        self._idle: dict[_Key, list[http.client.HTTPConnection]] = {}
        self._lock = threading.Lock()
        self._context: ssl.SSLContext | None = None

    def _ssl_context(self) -> ssl.SSLContext:
        with self._lock:
            if self._context is None:
                # Raises OSError/ssl.SSLError for an unreadable or empty bundle.
                self._context = ssl.create_default_context(cafile=self.ca_bundle)
            return self._context

    def _connect(self, key: _Key) -> http.client.HTTPConnection:
        scheme, host, port = key
        if scheme == "http":
            return _HTTPConnection(host, port, timeout=self.timeout)
        proxy = _https_proxy(host)
        if proxy is None:
            return _HTTPSConnection(host, port, timeout=self.timeout,
                                    context=self._ssl_context())
        proxy_host, proxy_port, proxy_headers = proxy
        connection = _HTTPSConnection(proxy_host, proxy_port, timeout=self.timeout,
                                      context=self._ssl_context())
        connection.set_tunnel(host, port, headers=proxy_headers)
        return connection

    def _take(self, key: _Key) -> tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            idle = self._idle.get(key)
            if idle:
                return idle.pop(), True
        return self._connect(key), False

    def _give(self, key: _Key, connection: http.client.HTTPConnection) -> None:
        with self._lock:
            idle = self._idle.setdefault(key, [])
            if len(idle) < self.max_idle:
                idle.append(connection)
                return
        connection.close()

    def request(self, method: str, url: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> Response:
        """Send one request and read the whole answer (following GET/HEAD redirects)."""
        for _ in range(MAX_REDIRECTS + 1):
            response = self._exchange(method, url, body, headers or {})
            location = response.headers.get("Location")
            if method not in ("GET", "HEAD") or response.status not in _REDIRECTS or not location:
                return response
            url = urljoin(url, location)
        return response

    def _exchange(self, method: str, url: str, body: bytes | None,
                  headers: dict[str, str]) -> Response:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        key = (parts.scheme, parts.hostname, parts.port or (443 if parts.scheme == "https"
                                                              else 80))
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        while True:
            connection, reused = self._take(key)
            try:
                connection.request(method, target, body=body, headers={**self.headers,
                                                                       **headers})
                answer = connection.getresponse()
                content = answer.read(MAX_BODY + 1)
            except _STALE:
                connection.close()
                if reused:
                    continue  # the server dropped an idle connection: one fresh try
                raise
            except BaseException:
                connection.close()
                raise
            if len(content) > MAX_BODY:
                connection.close()
                raise AnswerTooLarge(f"the answer from {url} is larger than {MAX_BODY} bytes")
            if answer.will_close:
                connection.close()
            else:
                self._give(key, connection)
            return Response(answer.status, answer.headers, content, url)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection in connections:
                connection.close()


def _https_proxy(host: str) -> tuple[str, int, dict[str, str]] | None:
    """(host, port, CONNECT headers) of the proxy for an https:// URL to `host`, or None."""
    env = os.environ
    url = (env.get("https_proxy") or env.get("HTTPS_PROXY") or env.get("all_proxy")
           or env.get("ALL_PROXY"))
    if not url:
        return None
    from urllib.request import proxy_bypass  # only with a proxy: costs start-up

    if proxy_bypass(host):
        return None
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"unsupported proxy {parts.scheme}://{parts.hostname} (https_proxy "
                         "must be an http:// proxy that offers CONNECT)")
    headers = {}
    if parts.username:
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        headers["Proxy-Authorization"] = "Basic " + base64.b64encode(
            credentials.encode()).decode("ascii")
    return parts.hostname, parts.port or 80, headers
