"""HTTP(S) to the CA: a small strict HTTP/1.1 client, keep-alive connections shared by threads.

One `ConnectionPool` serves every order of a process: a request takes an idle connection to
its host (or opens one), reads the whole answer, and gives the connection back, so concurrent
orders share a few TLS connections instead of a handshake per request. A kept connection the
server has closed meanwhile is noticed on its next use and replaced once by a fresh one.

The client speaks the part of HTTP/1.1 (RFC 9112) an ACME CA needs, on `socket` and `ssl`:
a request's head and body go out in one write (one TLS record and one read at the CA for each
signed POST); an answer is framed by Content-Length, by chunked transfer coding (Go's
net/http, under Boulder and Pebble, chunks larger bodies) or by the connection's close, and
everything outside that is refused rather than guessed: obs-fold, a header line that is no
field, conflicting lengths, an unknown transfer or content coding, more than `MAX_HEADERS`
header lines or `MAX_HEAD` bytes of head, a line over `MAX_LINE`, a body over `MAX_BODY`. A
refused answer closes its connection. Over TLS, an answer framed by the close must end with
the server's close_notify: a cut connection could otherwise drop the end of a chain.

Why not `http.client`: profiling a 400-site provision against Pebble put a third of mamoru's
Python CPU in it, half of that parsing answer headers with the `email` package. Against
Pebble on loopback (bench/http_client.py, one thread, a kept TLS connection), a request costs
this client about 45-60 µs of CPU where http.client took 100-110 µs (HEAD newNonce and GET
directory alike), and `import mamoru.protocol.session` no longer loads http.client and the
`email` parser (about 4 ms of import and 0.4 MB of peak RSS; `cryptography.x509` still loads
`email.utils`). Why not `requests`: it (with urllib3, charset_normalizer, idna) and
`acme.client` over it cost a one-certificate provision about 8 MB of its 47 MB peak and
0.08 s of its 0.46 s.

Errors: every fault of the exchange is an `OSError` (connection refused or reset, `ssl`
errors, `TimeoutError` for connect and for the answer, `ProtocolError` and its subclasses for
an answer that breaks HTTP or these limits); `ValueError` for a malformed URL, proxy setting or
request header. The session maps them to mamoru's typed errors.

Proxies: `https_proxy`/`HTTPS_PROXY` (or `all_proxy`) is honoured for https:// URLs through an
HTTP CONNECT tunnel (an `http://[user:password@]host[:port]` proxy), minus the hosts in
`no_proxy`; plain-http URLs (a CA on loopback, in tests) always go direct.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import socket
import ssl
import threading
import time
from typing import Any, overload
from urllib.parse import SplitResult, unquote, urljoin, urlsplit

from mamoru.tlstrust import client_context

MAX_BODY = 16 * 1024 * 1024  # the CA's biggest answer is a certificate chain: a few kB
MAX_HEADERS = 100  # header (or trailer) lines in one answer
MAX_HEAD = 64 * 1024  # bytes of status line and header lines together
MAX_LINE = 8 * 1024  # bytes in one line of the head, of a chunk size or of a trailer
MAX_INTERIM = 10  # 1xx answers skipped before the final one
MAX_REDIRECTS = 3  # followed for GET/HEAD only (a directory behind a redirect)
_REDIRECTS = (301, 302, 303, 307, 308)
_RECV = 65536
# An answer may end this much past the pool's timeout: the socket's timeout is cut to what is
# left only once a read starts later than this after the request. Each cut is a system call,
# and an answer that is whole within this never pays one (every answer on loopback).
_SLACK = 0.05

# Names the pool writes itself: a caller's value would contradict the framing it sends.
_RESERVED = frozenset({"host", "content-length", "transfer-encoding", "connection",
                       "accept-encoding"})
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 §5.6.2
_BAD_VALUE = re.compile(r"[\x00\r\n]")  # RFC 9110 §5.5: never inside a field value
_BAD_TARGET = re.compile(r"[\x00-\x20\x7f]")  # would end or split the request line
_STATUS = re.compile(r"HTTP/1\.([01]) ([1-5][0-9][0-9])(?: (.*))?")
_HEAD_END = re.compile(rb"\n\r?\n")  # the empty line (RFC 9112 §2.2 lets LF end a line)
_DIGITS = re.compile(r"[0-9]+")
_HEX = re.compile(r"[0-9A-Fa-f]+")


class ProtocolError(OSError):
    """The server's answer broke HTTP/1.1 or one of this module's limits (the connection is
    closed)."""


class AnswerTooLarge(ProtocolError):
    """The server sent (or announced) more than MAX_BODY bytes of body."""


class ClosedWithoutAnswer(ProtocolError):
    """The server closed the connection before sending a byte of its answer."""


class ProxyRefused(ProtocolError):
    """The https proxy answered CONNECT with something other than 2xx."""


# The ways a kept connection the server closed while it sat idle fails on its next use: the
# write fails, or the first read ends before a byte arrives.
_STALE = (ClosedWithoutAnswer, BrokenPipeError, ConnectionResetError, ConnectionAbortedError,
          ssl.SSLEOFError, ssl.SSLZeroReturnError)


class Headers:
    """An answer's header fields, in the order received, names matched case-insensitively.

    A repeated field keeps every value: `get` returns the first (as `email.message.Message`
    does), `get_all` all of them.
    """

    __slots__ = ("_fields", "_index")

    def __init__(self, fields: list[tuple[str, str]]) -> None:
        self._fields = fields
        index: dict[str, list[str]] = {}
        for name, value in fields:
            index.setdefault(name.lower(), []).append(value)
        self._index = index

    @overload
    def get(self, name: str) -> str | None: ...
    @overload
    def get(self, name: str, default: str) -> str: ...

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of field `name`, or `default` when the answer has none."""
        values = self._index.get(name.lower())
        return values[0] if values else default

    def get_all(self, name: str) -> list[str]:
        """Every value of field `name` in order (an empty list when the answer has none)."""
        return list(self._index.get(name.lower(), ()))

    def items(self) -> list[tuple[str, str]]:
        """(name, value) of every field as received."""
        return list(self._fields)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._index

    def __len__(self) -> int:
        return len(self._fields)

    def __repr__(self) -> str:
        return f"Headers({self._fields!r})"


class Response:
    """One complete answer (the body is read; the connection is back in the pool)."""

    __slots__ = ("content", "headers", "status", "url")

    def __init__(self, status: int, headers: Headers, content: bytes, url: str) -> None:
        self.status = status
        self.headers = headers  # case-insensitive .get() and .get_all()
        self.content = content
        self.url = url  # after redirects

    @property
    def ok(self) -> bool:
        return self.status < 400

    def json(self) -> Any:
        """The body parsed as JSON. Raises ValueError."""
        return json.loads(self.content)


class _Connection:
    """One socket and the bytes received on it but not yet parsed. Used by one thread at a
    time (the pool hands it out under its lock); every method raises OSError subclasses."""

    __slots__ = ("buffer", "deadline", "shortened", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()
        # When the whole answer must be in (time.monotonic()): each read waits at most the
        # socket's timeout, and at most _SLACK past this, so a server that trickles a byte
        # now and then cannot hold a renewal for much longer than the pool's timeout.
        self.deadline = float("inf")
        self.shortened = False  # the socket's timeout was cut to what is left before it

    def close(self) -> None:
        with contextlib.suppress(OSError):  # closing is all that is left to do with it
            self.sock.close()

    def _fill(self) -> bool:
        """Receive more bytes into the buffer; False at the end of the stream."""
        left = self.deadline - time.monotonic()
        if left < (self.sock.gettimeout() or float("inf")) - _SLACK:
            if left <= 0:
                raise TimeoutError("the whole answer did not arrive in time")
            self.sock.settimeout(left)
            self.shortened = True
        data = self.sock.recv(_RECV)
        if not data:
            return False
        self.buffer += data
        return True

    def await_answer(self) -> None:
        """Wait for the first byte of an answer. Raises ClosedWithoutAnswer if the stream ends
        first (a reset passes through): how a kept connection the server dropped shows."""
        if not self.buffer and not self._fill():
            raise ClosedWithoutAnswer("the server closed the connection without answering")

    def read_head(self) -> tuple[int, int, Headers]:
        """(HTTP minor version, status, header fields) of the next answer head."""
        buffer = self.buffer
        searched = 0
        while True:
            end = _HEAD_END.search(buffer, searched)
            if end is not None:
                break
            if len(buffer) > MAX_HEAD:
                raise ProtocolError(f"the answer's head is longer than {MAX_HEAD} bytes")
            searched = max(0, len(buffer) - 2)  # the empty line may straddle two reads
            if not self._fill():
                raise ProtocolError("the connection closed in the middle of the answer's head")
        if end.start() >= MAX_HEAD:
            raise ProtocolError(f"the answer's head is longer than {MAX_HEAD} bytes")
        text = buffer[:end.start() + 1].decode("latin-1").replace("\r\n", "\n")
        del buffer[:end.end()]
        if "\r" in text:
            raise ProtocolError("a bare CR in the answer's head")
        lines = text.split("\n")
        lines.pop()  # after the last line's LF
        if len(lines) - 1 > MAX_HEADERS:
            raise ProtocolError(f"the answer has more than {MAX_HEADERS} header lines")
        status_line = lines[0]
        match = _STATUS.fullmatch(status_line) if len(status_line) <= MAX_LINE else None
        if match is None:
            raise ProtocolError(f"not an HTTP/1.x status line: {status_line[:60]!r}")
        return int(match[1]), int(match[2]), Headers(_fields(lines[1:]))

    def read_line(self) -> str:
        """The next line (a chunk size or a trailer), without its line end."""
        buffer = self.buffer
        searched = 0
        while (end := buffer.find(b"\n", searched)) < 0:
            if len(buffer) > MAX_LINE:
                raise ProtocolError(f"a chunked-body line is longer than {MAX_LINE} bytes")
            searched = len(buffer)
            if not self._fill():
                raise ProtocolError("the connection closed in the middle of a chunked body")
        if end > MAX_LINE:
            raise ProtocolError(f"a chunked-body line is longer than {MAX_LINE} bytes")
        line = buffer[:end].decode("latin-1")
        del buffer[:end + 1]
        line = line.removesuffix("\r")
        if "\r" in line:
            raise ProtocolError("a bare CR in a chunked body")
        return line

    def read_exactly(self, size: int) -> bytes:
        """The next `size` bytes."""
        buffer = self.buffer
        while len(buffer) < size:
            if not self._fill():
                raise ProtocolError(f"the connection closed after {len(buffer)} of {size} "
                                    "body bytes")
        data = bytes(buffer[:size])
        del buffer[:size]
        return data

    def read_chunked(self) -> bytes:
        """A chunked body (RFC 9112 §7.1): extensions ignored, trailer fields read and
        dropped."""
        parts: list[bytes] = []
        total = 0
        while True:
            line = self.read_line()
            size_text = line.partition(";")[0].rstrip(" \t")  # BWS before an extension
            if not _HEX.fullmatch(size_text):
                raise ProtocolError(f"invalid chunk size {size_text[:20]!r}")
            digits = size_text.lstrip("0") or "0"
            size = int(digits, 16) if len(digits) <= 16 else MAX_BODY + 1
            if size == 0:
                break
            total += size
            if total > MAX_BODY:
                raise AnswerTooLarge(f"the chunked answer is larger than {MAX_BODY} bytes")
            parts.append(self.read_exactly(size))
            if self.read_line():
                raise ProtocolError("a chunk is longer than its size")
        trailers: list[str] = []
        length = 0
        while line := self.read_line():
            trailers.append(line)
            length += len(line)
            if len(trailers) > MAX_HEADERS or length > MAX_HEAD:
                raise ProtocolError("the chunked answer's trailer is too long")
        _fields(trailers)  # well-formed, though nothing in them is used
        return b"".join(parts)

    def read_to_close(self) -> bytes:
        """Everything until the server closes the connection (over TLS: its close_notify)."""
        buffer = self.buffer
        try:
            while len(buffer) <= MAX_BODY:
                if not self._fill():
                    break
        except ssl.SSLEOFError as error:
            raise ProtocolError("the TLS connection ended without close_notify: the answer "
                                "may be truncated") from error
        if len(buffer) > MAX_BODY:
            raise AnswerTooLarge(f"the answer is larger than {MAX_BODY} bytes")
        data = bytes(buffer)
        buffer.clear()
        return data

    def read_answer(self, method: str) -> tuple[int, Headers, bytes, bool]:
        """(status, headers, body, whether the connection may be reused) of the final answer
        to a request already sent; 1xx answers before it are skipped."""
        for _ in range(MAX_INTERIM + 1):
            minor, status, headers = self.read_head()
            if status >= 200:
                break
            if status == 101:
                raise ProtocolError("the server switched protocols unasked (101)")
        else:
            raise ProtocolError(f"more than {MAX_INTERIM} interim (1xx) answers")
        length, chunked = _framing(minor, headers)
        tokens = {token.strip().lower() for value in headers.get_all("connection")
                  for token in value.split(",")}
        reusable = "close" not in tokens and (minor == 1 or "keep-alive" in tokens)
        if method == "HEAD" or status in (204, 304):
            content = b""
        elif chunked:
            content = self.read_chunked()
        elif length is not None:
            if length > MAX_BODY:
                raise AnswerTooLarge(f"the answer announces {length} bytes, more than "
                                     f"{MAX_BODY}")
            content = self.read_exactly(length)
        else:
            content = self.read_to_close()
            reusable = False
        if content:
            coding = (headers.get("Content-Encoding") or "identity").strip().lower()
            if coding not in ("identity", ""):
                raise ProtocolError(f"unsupported Content-Encoding {coding[:30]!r} (asked for "
                                    "identity)")
        # Bytes after the answer mean the server frames answers otherwise than read here.
        return status, headers, content, reusable and not self.buffer


def _fields(lines: list[str]) -> list[tuple[str, str]]:
    """(name, value) of header or trailer lines; raises ProtocolError for any that is no
    field line."""
    fields: list[tuple[str, str]] = []
    for line in lines:
        if len(line) > MAX_LINE:
            raise ProtocolError(f"a header line is longer than {MAX_LINE} bytes")
        name, colon, value = line.partition(":")
        if not colon or not _TOKEN.fullmatch(name):
            if line[:1] in (" ", "\t"):
                raise ProtocolError("obsolete line folding in the answer's head "
                                    "(RFC 9112 §5.2)")
            raise ProtocolError(f"not a header field line: {line[:60]!r}")
        value = value.strip(" \t")
        if "\x00" in value:
            raise ProtocolError(f"a NUL in header field {name[:40]!r}")
        fields.append((name, value))
    return fields


def _framing(minor: int, headers: Headers) -> tuple[int | None, bool]:
    """(Content-Length or None, chunked?) of an answer (RFC 9112 §6.3), refusing what could be
    read two ways."""
    codings = [coding.strip().lower() for value in headers.get_all("transfer-encoding")
               for coding in value.split(",")]
    lengths = headers.get_all("content-length")
    if codings:
        if lengths:
            raise ProtocolError("the answer has both Transfer-Encoding and Content-Length")
        if minor == 0:
            raise ProtocolError("an HTTP/1.0 answer with Transfer-Encoding")
        if codings != ["chunked"]:
            raise ProtocolError(f"unsupported Transfer-Encoding {', '.join(codings)[:40]!r}")
        return None, True
    if not lengths:
        return None, False
    numbers = set()
    for value in lengths:
        for item in value.split(","):  # "Content-Length: 42, 42" is one length (§6.3)
            digits = item.strip(" \t")
            if not _DIGITS.fullmatch(digits):
                raise ProtocolError(f"invalid Content-Length {digits[:20]!r}")
            digits = digits.lstrip("0") or "0"
            numbers.add(int(digits) if len(digits) <= 18 else MAX_BODY + 1)
    if len(numbers) > 1:
        raise ProtocolError("conflicting Content-Length values")
    return numbers.pop(), False


def _authority(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _check_field(name: str, value: str) -> None:
    if not _TOKEN.fullmatch(name):
        raise ValueError(f"invalid request header name {name!r}")
    if _BAD_VALUE.search(value):
        raise ValueError(f"invalid value for request header {name!r}")
    if name.lower() in _RESERVED:
        raise ValueError(f"request header {name!r} is set by the connection pool")


_Key = tuple[str, str, int]


class ConnectionPool:
    """Keep-alive connections per (scheme, host, port), safe to share between threads.

    `ca_bundle`: trust only these roots for https (default: the system trust store, see
    `mamoru.tlstrust`). `timeout`: seconds for connecting, and for the whole answer from the
    moment the request is sent (each read waits at most that long, and at most `_SLACK` past
    what is left of it).
    `max_idle`: connections kept per host. `headers`: sent with every request (a request's own
    headers win); Host, Content-Length, Transfer-Encoding, Connection and Accept-Encoding are
    the pool's (ValueError).
    """

    def __init__(self, *, ca_bundle: str | None = None, timeout: float = 30.0,
                 max_idle: int = 8, headers: dict[str, str] | None = None) -> None:
        self.ca_bundle = ca_bundle
        self.timeout = timeout
        self.max_idle = max_idle
        self.headers = dict(headers or {})
        self._fields: dict[str, tuple[str, str]] = {}
        for name, value in self.headers.items():
            _check_field(name, value)
            self._fields[name.lower()] = (name, value)
        self._idle: dict[_Key, list[_Connection]] = {}
        self._lock = threading.Lock()
        self._context: ssl.SSLContext | None = None

    def _ssl_context(self) -> ssl.SSLContext:
        with self._lock:
            if self._context is None:
                # Raises OSError/ssl.SSLError for an unreadable or empty bundle.
                context = client_context(self.ca_bundle)
                context.set_alpn_protocols(["http/1.1"])
                self._context = context
            return self._context

    def _connect(self, key: _Key) -> _Connection:
        scheme, host, port = key
        proxy = _https_proxy(host) if scheme == "https" else None
        address = (proxy[0], proxy[1]) if proxy else (host, port)
        sock = socket.create_connection(address, timeout=self.timeout)
        try:
            # One write per request: nothing for Nagle's algorithm to wait for.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if proxy:
                _tunnel(sock, proxy, host, port)
            if scheme == "https":
                # Ragged EOFs are reported, not read as an end: see read_to_close.
                sock = self._ssl_context().wrap_socket(sock, server_hostname=host,
                                                       suppress_ragged_eofs=False)
        except BaseException:
            sock.close()
            raise
        return _Connection(sock)

    def _take(self, key: _Key) -> tuple[_Connection, bool]:
        with self._lock:
            idle = self._idle.get(key)
            if idle:
                return idle.pop(), True
        return self._connect(key), False

    def _give(self, key: _Key, connection: _Connection) -> None:
        with self._lock:
            idle = self._idle.setdefault(key, [])
            if len(idle) < self.max_idle:
                idle.append(connection)
                return
        connection.close()

    def request(self, method: str, url: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> Response:
        """Send one request and read the whole answer (following GET/HEAD redirects).

        `body` goes out in the same write as the head, with its Content-Length (0 for a POST,
        PUT or PATCH without one). Raises OSError subclasses (module docstring) or ValueError.
        """
        for _ in range(MAX_REDIRECTS + 1):
            response = self._exchange(method, url, body, headers or {})
            location = response.headers.get("Location")
            if method not in ("GET", "HEAD") or response.status not in _REDIRECTS or not location:
                return response
            url = urljoin(url, location)
        return response

    def _head(self, method: str, parts: SplitResult, key: _Key, body: bytes | None,
              headers: dict[str, str]) -> bytes:
        scheme, host, port = key
        if not _TOKEN.fullmatch(method):
            raise ValueError(f"invalid request method {method!r}")
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if not target.isascii() or _BAD_TARGET.search(target):
            raise ValueError(f"the URL's path cannot go in a request line: {target[:60]!r}")
        if not host.isascii():
            host = host.encode("idna").decode("ascii")
        authority = f"[{host}]" if ":" in host else host
        if port != (443 if scheme == "https" else 80):
            authority = f"{authority}:{port}"
        fields = self._fields
        if headers:
            fields = dict(fields)
            for name, value in headers.items():
                _check_field(name, value)
                fields[name.lower()] = (name, value)
        lines = [f"{method} {target} HTTP/1.1", f"Host: {authority}",
                 "Accept-Encoding: identity"]
        lines += [f"{name}: {value}" for name, value in fields.values()]
        if body is not None or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(body or b'')}")
        lines.append("\r\n")
        return "\r\n".join(lines).encode("latin-1") + (body or b"")

    def _exchange(self, method: str, url: str, body: bytes | None,
                  headers: dict[str, str]) -> Response:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        key = (parts.scheme, parts.hostname, parts.port or (443 if parts.scheme == "https"
                                                              else 80))
        data = self._head(method, parts, key, body, headers)
        connection, reused = self._take(key)
        while True:
            connection.deadline = time.monotonic() + self.timeout
            try:
                connection.sock.sendall(data)
                connection.await_answer()
            except _STALE:
                connection.close()
                if not reused:
                    raise
                # The server dropped this idle connection: one try on a fresh one.
                connection, reused = self._connect(key), False
                continue
            except BaseException:
                connection.close()
                raise
            try:
                status, answer_headers, content, reusable = connection.read_answer(method)
            except BaseException:
                connection.close()
                raise
            if reusable:
                if connection.shortened:  # the next request gets the whole timeout again
                    connection.sock.settimeout(self.timeout)
                    connection.shortened = False
                self._give(key, connection)
            else:
                connection.close()
            return Response(status, answer_headers, content, url)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection in connections:
                connection.close()


def _tunnel(sock: socket.socket, proxy: tuple[str, int, dict[str, str]], host: str,
            port: int) -> None:
    """Ask the proxy on `sock` for a tunnel to host:port; raises ProxyRefused unless it says
    2xx (naming its status, never the credentials sent)."""
    proxy_host, proxy_port, proxy_headers = proxy
    authority = _authority(host, port)
    lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}"]
    lines += [f"{name}: {value}" for name, value in proxy_headers.items()]
    lines.append("\r\n")
    sock.sendall("\r\n".join(lines).encode("latin-1"))
    connection = _Connection(sock)
    connection.await_answer()
    for _ in range(MAX_INTERIM + 1):
        _, status, _ = connection.read_head()
        if status >= 200:
            break
    else:
        raise ProtocolError(f"more than {MAX_INTERIM} interim (1xx) answers from the proxy")
    where = f"the proxy {_authority(proxy_host, proxy_port)}"
    if not 200 <= status < 300:
        hint = " (check the user and password in https_proxy)" if status == 407 else ""
        raise ProxyRefused(f"{where} refused the tunnel to {authority}: HTTP {status}{hint}")
    # A 2xx CONNECT answer has no body (RFC 9110 §9.3.6) and the TLS server speaks second.
    if connection.buffer:
        raise ProtocolError(f"{where} sent bytes after its CONNECT answer")


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
