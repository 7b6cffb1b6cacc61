"""http-01 answered by mamoru itself: a small HTTP/1.1 responder on the configured address.

One responder per address serves every site that names it, so many concurrent orders can share
port 80; it runs only while some challenge is presented: the first present() starts it, the
last cleanup() stops it and closes its socket.

Why one thread and a selector, and not `http.server`: the CA fetches every token several times
(Pebble three times, Let's Encrypt from several vantage points), each on a new connection.
`ThreadingHTTPServer` started an OS thread for each (1,200 for a 400-site `mamoru provision`,
each one contending for the GIL with the orders' threads), cost 280-410 µs of CPU a fetch
(about 8 % of a provision's Python CPU), and its import pulled in socketserver, html, mimetypes
and email.utils: 27 ms and 8.7 MB of peak RSS in every short-lived process. This responder
serves every connection from one thread, with non-blocking sockets and `selectors`: 30-45 µs
of CPU a fetch on a new connection, 12-20 µs on a kept-alive one, no thread per fetch, and
its import adds 8 ms and 1.8 MB to `mamoru.challenges.base`'s, most of it `logging` and
`socket` that a provision imports anyway. Its stop (the last cleanup() of an order, on the
order's critical path) wakes the selector through a pipe: 0.15 ms (median) instead of
`shutdown()`'s poll, 4.3 ms. Figures: `bench/responder.py`, 3,000 fetches from another
process, two shared cores.

The port is on the internet while a challenge is presented, so the server is strict and
bounded: a request head is at most 8 KiB and must arrive within `TIMEOUT` seconds of the
connection becoming idle (a client trickling bytes cannot hold a slot), an idle kept-alive
connection is closed after as long, at most `MAX_CONNECTIONS` are open (past that, new
connections wait in the listen backlog until some close), and a request with a body is
answered and its connection closed (a validator sends none).

Thread-safety: present() and cleanup() run in the orders' threads and change a responder's
`answers` under the class lock; the server thread only reads it, one `dict.get` at a time,
which is atomic (the GIL; per-dict locking in free-threaded builds). The server thread never
takes the lock, so cleanup() can join it while holding the lock.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import selectors
import socket
import threading
import time
from typing import ClassVar

from mamoru.challenges.base import PREFIX_HTTP01, TOKEN, ChallengeTask
from mamoru.errors import ChallengeFailed

log = logging.getLogger(__name__)
_TOKEN_IN_PATH = re.compile(r"(/acme-challenge/)[A-Za-z0-9_-]+")
PREFIX = PREFIX_HTTP01
_PREFIX = PREFIX.encode("ascii")

# The CA fetches every token from several vantage points at once, for every name of every order
# in flight: with a listen backlog of 5 (http.server's), the connections past it were dropped
# and the CA's client retried its SYN a whole second later.
BACKLOG = 128
MAX_HEAD = 8192  # bytes of request line and header fields
MAX_CONNECTIONS = 256
TIMEOUT = 5.0  # seconds for a whole request head, from accept or from the previous answer
LINGER = 1.0  # seconds to drain what a client still sends after the answer that closes
MAX_REQUESTS = 100  # on one connection; the last answer says "Connection: close"
_SWEEP = 0.25  # how often deadlines are checked while connections are open
_RECV = 16384
_OUT_FULL = 65536  # stop answering pipelined requests until this much output is sent
_ACCEPT_PAUSE = 0.1  # after accept() fails for want of descriptors or memory

_READ, _WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE
_ACCEPT, _WAKE = "accept", "wake"  # the selector's data for the listening socket and the pipe

_REASON = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 405: b"Method Not Allowed",
           431: b"Request Header Fields Too Large", 505: b"HTTP Version Not Supported"}
_BODY = {404: b"not found", 400: b"bad request", 405: b"method not allowed",
         431: b"request header too large", 505: b"HTTP version not supported"}
_TCHAR = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")  # a method or a field name (RFC 9110)
# A target in origin-form or absolute-form: visible ASCII. Controls, other than the line ends
# and tabs in field values, and a CR not followed by LF: the head is refused.
_TARGET = re.compile(rb"(?:https?://[!-.0-~]*)?(/[!-~]*)\Z", re.IGNORECASE)
_BAD_BYTES = re.compile(rb"[\x00-\x08\x0b-\x0c\x0e-\x1f\x7f]|\r(?!\n)")
_VERSION = re.compile(rb"HTTP/[0-9]\.[0-9]\Z")


class _Conn:
    __slots__ = ("answered", "closing", "deadline", "drain", "eof", "events", "inbuf",
                 "lingering", "out", "peer", "sock")

    def __init__(self, sock: socket.socket, peer: str, deadline: float) -> None:
        self.sock = sock
        self.peer = peer
        self.deadline = deadline
        self.inbuf = b""
        self.out = b""
        self.events = _READ
        self.answered = 0  # requests answered on this connection
        self.closing = False  # answer no more requests; close once `out` is sent
        self.eof = False  # the client will send nothing more
        self.drain = False  # the client may have sent more than was read: drain before closing
        self.lingering = False  # our side is shut; reading until the client closes its side


class _Responder:
    """The listening socket, bound and listening from the constructor (raises OSError), and
    the thread that serves it from start() until stop()."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.answers: dict[str, bytes] = {}  # token -> key authorization
        self.presented: dict[str, int] = {}  # token -> present() calls not yet cleaned up
        self._stopping = False
        with contextlib.ExitStack() as undo:  # what is made so far, closed if the rest fails
            # Every descriptor here is close-on-exec (Python's default): a hook or a reload
            # command that mamoru runs inherits none.
            family, sockaddr, dual_stack = listen_address(*address)
            self._listener = listener = socket.socket(family, socket.SOCK_STREAM)
            undo.callback(listener.close)
            # A present() right after the last cleanup() binds again at once, with the closed
            # connections of the previous responder still in TIME_WAIT.
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if dual_stack:
                listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            listener.bind(sockaddr)
            listener.listen(BACKLOG)
            listener.setblocking(False)
            self._wake_r, self._wake_w = os.pipe()  # written to by stop(): wakes the selector
            undo.callback(os.close, self._wake_r)
            undo.callback(os.close, self._wake_w)
            self._selector = selectors.DefaultSelector()
            undo.callback(self._selector.close)
            self._selector.register(self._wake_r, _READ, _WAKE)
            self._selector.register(listener, _READ, _ACCEPT)
            undo.pop_all()
        self._conns: set[_Conn] = set()
        self._accepting = True
        self._accept_at = 0.0  # accepting paused until then (descriptors or memory ran out)
        self._thread = threading.Thread(target=self._serve, name=f"http-01 {address}",
                                        daemon=True)

    def start(self) -> None:
        try:
            self._thread.start()
        except BaseException:
            self._close_all()
            raise

    def stop(self) -> None:
        """Wake the server thread, wait for it, and close every socket: when this returns,
        the address can be bound again."""
        self._stopping = True
        os.write(self._wake_w, b"\0")
        self._thread.join(10.0)
        if self._thread.is_alive():  # never seen: a log handler blocked in the server thread
            log.warning("the http-01 responder's thread did not stop; closing its socket")
        self._close_all()

    def _close_all(self) -> None:
        for conn in self._conns:
            conn.sock.close()
        self._conns.clear()
        self._selector.close()
        self._listener.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._wake_r = self._wake_w = -1

    # -- the server thread --------------------------------------------------------------------

    def _serve(self) -> None:
        select, conns = self._selector.select, self._conns
        next_sweep = time.monotonic() + _SWEEP
        try:
            while not self._stopping:
                now = time.monotonic()
                if now >= next_sweep:
                    for conn in [c for c in conns if c.deadline <= now]:
                        self._close(conn)
                    next_sweep = now + _SWEEP
                if not self._accepting and len(conns) < MAX_CONNECTIONS \
                        and now >= self._accept_at:
                    self._selector.register(self._listener, _READ, _ACCEPT)
                    self._accepting = True
                timeout: float | None = None
                if conns:
                    timeout = next_sweep - now
                if not self._accepting and len(conns) < MAX_CONNECTIONS:
                    wait = max(self._accept_at - now, 0.0)
                    timeout = wait if timeout is None else min(timeout, wait)
                for key, mask in select(timeout):
                    data = key.data
                    if data is _ACCEPT:
                        self._accept()
                    elif data is not _WAKE:
                        self._ready(data, mask)
        except Exception:  # a bug: the orders' validations will fail, and say so
            log.exception("the http-01 responder stopped answering")
        finally:
            for conn in conns:
                conn.sock.close()
            conns.clear()

    def _accept(self) -> None:
        while len(self._conns) < MAX_CONNECTIONS:
            try:
                sock, peer = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as error:  # EMFILE, ENFILE, ENOBUFS, ENOMEM: pause, then retry
                log.warning("the http-01 responder cannot accept a connection now: %s",
                            error.strerror)
                self._accept_at = time.monotonic() + _ACCEPT_PAUSE
                break
            sock.setblocking(False)
            conn = _Conn(sock, peer[0], time.monotonic() + TIMEOUT)
            self._conns.add(conn)
            self._selector.register(sock, _READ, conn)
        # At the limit: the next connections wait in the listen backlog until some close.
        self._selector.unregister(self._listener)
        self._accepting = False

    def _ready(self, conn: _Conn, mask: int) -> None:
        try:
            if mask & _READ:
                data = conn.sock.recv(_RECV)
                if conn.lingering:
                    if not data:
                        self._close(conn)
                    return
                if data:
                    conn.inbuf = conn.inbuf + data if conn.inbuf else data
                else:
                    conn.eof = True
            self._work(conn)
        except BlockingIOError:
            return
        except OSError as error:  # reset by the peer, and the like
            log.debug("standalone %s: %s", conn.peer, error.strerror or error)
            self._close(conn)
        except Exception:
            log.exception("the http-01 responder failed on a connection from %s", conn.peer)
            self._close(conn)

    def _work(self, conn: _Conn) -> None:
        """Answer the complete requests read so far, send, and wait for what comes next."""
        answered = conn.answered
        while True:
            full = False if conn.closing else self._answer(conn)
            if conn.eof and not full:
                conn.closing = True
            if conn.out:
                try:
                    sent = conn.sock.send(conn.out)
                except BlockingIOError:
                    sent = 0
                conn.out = conn.out[sent:]
                if conn.out:
                    self._want(conn, _WRITE)
                    return
            if conn.closing:
                self._finish(conn)
                return
            if not full:
                break
        if conn.answered > answered:  # the next request has its own time, from now
            conn.deadline = time.monotonic() + TIMEOUT
        self._want(conn, _READ)

    def _want(self, conn: _Conn, events: int) -> None:
        if conn.events != events:
            self._selector.modify(conn.sock, events, conn)
            conn.events = events

    def _finish(self, conn: _Conn) -> None:
        """Close after the last answer. When the client may have sent more than was read (a
        body, a refused head, pipelined requests), shut our side and drain until it closes
        its side: closing with unread data would reset the connection, and the client could
        lose the answer."""
        if conn.eof or not (conn.inbuf or conn.drain):
            self._close(conn)
            return
        conn.inbuf = b""
        conn.lingering = True
        conn.deadline = time.monotonic() + LINGER
        conn.sock.shutdown(socket.SHUT_WR)
        self._want(conn, _READ)

    def _close(self, conn: _Conn) -> None:
        self._conns.discard(conn)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(conn.sock)
        conn.sock.close()

    # -- HTTP -------------------------------------------------------------------------------------

    def _answer(self, conn: _Conn) -> bool:
        """Answer each complete request head in `conn.inbuf`. True when it stopped because
        the output is full (more may be answered once it is sent)."""
        buf = conn.inbuf
        while buf and not conn.closing:
            if len(conn.out) >= _OUT_FULL:
                conn.inbuf = buf
                return True
            if buf[0] in b"\r\n":  # empty lines before a request line are allowed
                buf = buf.lstrip(b"\r\n")
                continue
            end, start = buf.find(b"\n\r\n"), 3
            lf = buf.find(b"\n\n", 0, end + 2 if end >= 0 else len(buf))
            if lf >= 0 and (end < 0 or lf < end):
                end, start = lf, 2
            if end < 0 or end >= MAX_HEAD:
                if end >= MAX_HEAD or len(buf) >= MAX_HEAD:
                    self._refuse(conn, buf.split(b"\n", 1)[0], 431)
                break
            head, buf = buf[:end + 1], buf[end + start:]
            self._request(conn, head)
        conn.inbuf = buf  # after a request that closes: what the client sent past it
        return False

    def _request(self, conn: _Conn, head: bytes) -> None:
        """Answer one request head (its lines, each ending with LF or CRLF)."""
        line_end = head.find(b"\n")
        request_line = head[:line_end].removesuffix(b"\r")
        parts = request_line.split(b" ")
        if len(parts) != 3 or _BAD_BYTES.search(head) is not None:
            self._refuse(conn, request_line, 400)
            return
        method, target, version = parts
        if version not in (b"HTTP/1.1", b"HTTP/1.0"):
            self._refuse(conn, request_line, 505 if _VERSION.match(version) else 400)
            return
        path = _TARGET.match(target)
        if path is None or _TCHAR.match(method) is None:
            self._refuse(conn, request_line, 400)
            return
        hosts, lengths = 0, set()
        closes, keep_alive, chunked = False, False, False
        for field in head[line_end + 1:].split(b"\n")[:-1]:
            name, colon, value = field.removesuffix(b"\r").partition(b":")
            if not colon or _TCHAR.match(name) is None:  # also a folded line, "Name :"
                self._refuse(conn, request_line, 400)
                return
            name = name.lower()
            if name == b"host":
                hosts += 1
            elif name == b"connection":
                options = {option.strip(b" \t") for option in value.lower().split(b",")}
                closes |= b"close" in options
                keep_alive |= b"keep-alive" in options
            elif name == b"content-length":
                value = value.strip(b" \t")
                if not value.isdigit() or len(value) > 18:
                    self._refuse(conn, request_line, 400)
                    return
                lengths.add(int(value))
            elif name == b"transfer-encoding":
                chunked = True
        if (version == b"HTTP/1.1" and hosts != 1) or len(lengths) > 1 \
                or (lengths and chunked):
            self._refuse(conn, request_line, 400)
            return
        conn.answered += 1
        # HTTP/1.1 keeps the connection unless told not to; HTTP/1.0 only when asked to.
        close = closes if version == b"HTTP/1.1" else closes or not keep_alive
        if chunked or (lengths and lengths != {0}):
            # A body is not read: the connection closes after the answer, once what the client
            # sends is drained (a validator sends none).
            close = conn.drain = True
        close = close or conn.answered >= MAX_REQUESTS
        extra = b"Connection: keep-alive\r\n" if version == b"HTTP/1.0" and not close else b""
        if method == b"GET" or method == b"HEAD":
            path_only = path[1].split(b"?", 1)[0]
            answer = None
            if path_only.startswith(_PREFIX):  # only valid tokens are keys: no TOKEN check
                answer = self.answers.get(path_only[len(_PREFIX):].decode("ascii"))
            status = 200 if answer is not None else 404
            self._respond(conn, status, answer or _BODY[404], close=close,
                          head_only=method == b"HEAD", extra=extra)
        else:
            status = 405
            self._respond(conn, 405, _BODY[405], close=close,
                          extra=extra + b"Allow: GET, HEAD\r\n")
        self._log(conn, request_line, status)

    def _refuse(self, conn: _Conn, request_line: bytes, status: int) -> None:
        """Answer an error and close: what follows the refused head is not read."""
        conn.drain = True
        self._respond(conn, status, b"", close=True)
        self._log(conn, request_line, status)

    @staticmethod
    def _respond(conn: _Conn, status: int, body: bytes, *, close: bool,
                 head_only: bool = False, extra: bytes = b"") -> None:
        body = body or _BODY[status]
        conn.out += (b"HTTP/1.1 %d %s\r\nServer: mamoru\r\nContent-Type: text/plain\r\n"
                     b"Content-Length: %d\r\n%s%s\r\n%s"
                     % (status, _REASON[status], len(body), extra,
                        b"Connection: close\r\n" if close else b"", b"" if head_only else body))
        if close:
            conn.closing = True

    @staticmethod
    def _log(conn: _Conn, request_line: bytes, status: int) -> None:
        if log.isEnabledFor(logging.DEBUG):
            # Even at debug level, no challenge token in the log: "/acme-challenge/…" is enough;
            # and nothing the client sent can forge a line or a terminal sequence.
            shown = request_line[:200].decode("ascii", "backslashreplace")
            shown = _TOKEN_IN_PATH.sub("\\1…", shown.encode("unicode_escape").decode("ascii"))
            log.debug('standalone %s: "%s" %d', conn.peer, shown, status)


class StandaloneSolver:
    challenge_type = "http-01"
    _lock: ClassVar = threading.Lock()
    _servers: ClassVar[dict[tuple[str, int], _Responder]] = {}

    def __init__(self, host: str, port: int) -> None:
        self.address = (host, port)

    def present(self, task: ChallengeTask) -> None:
        if not TOKEN.match(task.token):
            raise ChallengeFailed(f"the CA sent an unusable challenge token for {task.identifier}")
        with self._lock:
            server = self._servers.get(self.address)
            if server is None:
                try:
                    server = _Responder(self.address)
                except OSError as error:
                    from mamoru.netaddr import show_address  # only for this message

                    raise ChallengeFailed(
                        f"cannot listen on {show_address(*self.address)} for the challenge: "
                        f"{error.strerror}",
                        hint="Another program (often the web server) uses this port: use "
                        "challenge.webroot instead, or another standalone address.",
                    ) from None
                server.start()
                self._servers[self.address] = server
            server.answers[task.token] = task.key_authorization.encode("ascii")
            server.presented[task.token] = server.presented.get(task.token, 0) + 1

    def cleanup(self, task: ChallengeTask) -> None:
        """Undo one present() of this token; the last cleanup() of the last token stops the
        responder. A token presented twice (a retried order that got the same authorization)
        is answered until it is cleaned up twice."""
        with self._lock:
            server = self._servers.get(self.address)
            if server is None:
                return
            left = server.presented.get(task.token, 0) - 1
            if left < 0:
                return  # present() never got this far
            if left:
                server.presented[task.token] = left
                return
            del server.presented[task.token]
            server.answers.pop(task.token, None)
            if server.presented:
                return
            del self._servers[self.address]
            # Stop inside the lock: a present() for the same address right after must find
            # the port free, not race the closing socket (EADDRINUSE).
            server.stop()


def listen_address(host: str, port: int) -> tuple[socket.AddressFamily, tuple[str | int, ...],
                                                   bool]:
    """The socket family, the address to bind and whether to accept IPv4 on an IPv6 socket.

    `*` is every address of both families: one IPv6 socket with
    IPV6_V6ONLY off, or IPv4's 0.0.0.0 on a kernel without IPv6. Let's Encrypt validates over
    IPv6 first when a name has an AAAA record, so an IPv4-only responder there fails the
    challenge. An IPv6 literal (`::`, `::1`, `2001:db8::1`) binds an IPv6 socket as the system
    sets it (on Linux, `::` also takes IPv4 unless net.ipv6.bindv6only is 1). Anything else
    is IPv4, as before: an address or a host name that resolves to one.
    """
    if host == "*":
        if _ipv6_available():
            return socket.AF_INET6, ("::", port, 0, 0), True
        return socket.AF_INET, ("0.0.0.0", port), False  # noqa: S104 - asked for: "*"
    if ":" in host:
        return socket.AF_INET6, (host, port, 0, 0), False
    return socket.AF_INET, (host, port), False


def _ipv6_available() -> bool:
    try:
        socket.socket(socket.AF_INET6, socket.SOCK_STREAM).close()
    except OSError:  # EAFNOSUPPORT: booted with ipv6.disable=1
        return False
    return True
