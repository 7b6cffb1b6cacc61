"""The standalone http-01 responder over real sockets on 127.0.0.1: what it answers (200, 404,
405, 400, 431, HEAD), HTTP/1.1 connections (keep-alive, `Connection: close`, pipelining),
clients that are slow, silent or many, the server shared by every solver of an address until
the last cleanup, and what stopping leaves (a free port, no thread)."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from tests.servers.ports import LOOPBACK, free_port, tcp_port_is_free

from mamoru.challenges import standalone
from mamoru.challenges.base import ChallengeTask
from mamoru.challenges.standalone import StandaloneSolver
from mamoru.errors import ChallengeFailed

TOKEN = "tok_" + "A" * 40
OTHER = "tok_" + "B" * 40
PATH = f"/.well-known/acme-challenge/{TOKEN}"


def task(token: str = TOKEN) -> ChallengeTask:
    return ChallengeTask("clinic.example", "http-01", token, f"{token}.thumbprint")


def get(path: str = PATH, *, method: str = "GET", fields: str = "Host: clinic.example\r\n",
        version: str = "HTTP/1.1") -> bytes:
    return f"{method} {path} {version}\r\n{fields}\r\n".encode()


def responder_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("http-01 ")]


@pytest.fixture(autouse=True)
def nothing_left_running() -> Iterator[None]:
    yield
    leftovers = dict(StandaloneSolver._servers)
    for server in leftovers.values():
        server.stop()
    StandaloneSolver._servers.clear()
    assert not leftovers, f"responders left running: {list(leftovers)}"
    assert not responder_threads()


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def solver(port: int) -> Iterator[StandaloneSolver]:
    solver = StandaloneSolver(LOOPBACK, port)
    solver.present(task())
    yield solver
    solver.cleanup(task())


def connect(port: int) -> socket.socket:
    sock = socket.create_connection((LOOPBACK, port), timeout=5)
    return sock


class Reader:
    """Reads HTTP/1.1 responses one by one off a socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.buf = sock, b""

    def _more(self) -> bool:
        data = self.sock.recv(65536)
        self.buf += data
        return bool(data)

    def response(self, *, head_only: bool = False) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buf:
            assert self._more(), f"closed before a whole response: {self.buf!r}"
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        status_line, *lines = head.decode("ascii").split("\r\n")
        version, status, _reason = status_line.split(" ", 2)
        assert version == "HTTP/1.1"
        fields = {}
        for line in lines:
            name, value = line.split(":", 1)
            assert name.lower() not in fields
            fields[name.lower()] = value.strip()
        length = 0 if head_only else int(fields["content-length"])
        while len(self.buf) < length:
            assert self._more(), "closed in the body"
        body, self.buf = self.buf[:length], self.buf[length:]
        return int(status), fields, body

    def closed(self) -> bool:
        """True when the server closes the connection with nothing more sent."""
        try:
            return not self._more() and not self.buf
        except ConnectionResetError:
            return True


def exchange(port: int, request: bytes, *, head_only: bool = False
             ) -> tuple[int, dict[str, str], bytes]:
    with connect(port) as sock:
        sock.sendall(request)
        return Reader(sock).response(head_only=head_only)


# -- what it answers ---------------------------------------------------------------------------


def test_a_presented_token_is_answered_with_its_key_authorization(
        solver: StandaloneSolver, port: int) -> None:
    status, fields, body = exchange(port, get())
    assert (status, body) == (200, f"{TOKEN}.thumbprint".encode())
    assert fields["content-type"] == "text/plain"
    assert fields["content-length"] == str(len(body))
    assert fields["server"] == "mamoru"
    # The query string is ignored; an absolute-form target is understood.
    assert exchange(port, get(PATH + "?x=1"))[2] == body
    assert exchange(port, get(f"http://clinic.example{PATH}"))[2] == body


@pytest.mark.parametrize("path", [
    f"/.well-known/acme-challenge/{OTHER}", "/", "/.well-known/acme-challenge/",
    f"/.well-known/acme-challenge/{TOKEN}/", f"/{TOKEN}", f"/.well-known/acme-challenge/{TOKEN}x",
    "/.well-known/acme-challenge/../acme-challenge/" + TOKEN,
])
def test_anything_else_is_not_found(solver: StandaloneSolver, port: int, path: str) -> None:
    status, fields, body = exchange(port, get(path))
    assert (status, body) == (404, b"not found")
    assert fields["content-length"] == "9"


def test_a_removed_token_is_not_found(port: int) -> None:
    solver = StandaloneSolver(LOOPBACK, port)
    solver.present(task())
    solver.present(task(OTHER))
    solver.cleanup(task(OTHER))
    assert exchange(port, get(f"/.well-known/acme-challenge/{OTHER}"))[0] == 404
    assert exchange(port, get())[0] == 200
    solver.cleanup(task())


def test_head_sends_the_fields_without_the_body(solver: StandaloneSolver, port: int) -> None:
    with connect(port) as sock:
        reader = Reader(sock)
        sock.sendall(get(method="HEAD"))
        status, fields, body = reader.response(head_only=True)
        assert (status, body) == (200, b"")
        assert fields["content-length"] == str(len(f"{TOKEN}.thumbprint"))
        sock.sendall(get(f"/.well-known/acme-challenge/{OTHER}", method="HEAD"))
        assert reader.response(head_only=True)[:2] == (404, fields | {"content-length": "9"})
        sock.sendall(get())  # the next response starts right after the last field
        assert reader.response()[2] == f"{TOKEN}.thumbprint".encode()


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS", "PATCH", "BREW"])
def test_other_methods_are_refused_with_405(solver: StandaloneSolver, port: int,
                                            method: str) -> None:
    status, fields, body = exchange(port, get(method=method))
    assert (status, body) == (405, b"method not allowed")
    assert fields["allow"] == "GET, HEAD"


@pytest.mark.parametrize("request_bytes", [
    b"hello\r\n\r\n",
    b"GET /\r\n\r\n",
    b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1 x\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.x\r\nHost: a\r\n\r\n",
    b"GET nothing HTTP/1.1\r\nHost: a\r\n\r\n",
    b"G\x00T / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /\x7f HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nno colon\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nName : value\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n folded\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"GET / HTTP/1.1\r\n\r\n",  # HTTP/1.1 without Host
    b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    bytes(range(256)) + b"\r\n\r\n",
], ids=lambda b: repr(b[:24]))
def test_a_malformed_request_is_refused_with_400_and_closed(
        solver: StandaloneSolver, port: int, request_bytes: bytes) -> None:
    with connect(port) as sock:
        sock.sendall(request_bytes + get())  # what follows is not answered
        reader = Reader(sock)
        status, fields, body = reader.response()
        assert (status, body, fields["connection"]) == (400, b"bad request", "close")
        assert reader.closed()


def test_other_http_versions_are_refused(solver: StandaloneSolver, port: int) -> None:
    assert exchange(port, get(version="HTTP/2.0"))[0] == 505
    assert exchange(port, get(version="HTTP/0.9"))[0] == 505
    assert exchange(port, f"GET {PATH}\r\n\r\n".encode())[0] == 400  # HTTP/0.9's form


def test_bare_line_feeds_and_leading_empty_lines_are_understood(
        solver: StandaloneSolver, port: int) -> None:
    assert exchange(port, f"GET {PATH} HTTP/1.0\n\n".encode())[0] == 200
    assert exchange(port, b"\r\n\r\n" + get())[0] == 200


def test_a_request_with_a_body_is_answered_then_closed(solver: StandaloneSolver,
                                                        port: int) -> None:
    with connect(port) as sock:
        sock.sendall(get(fields="Host: a\r\nContent-Length: 5\r\n") + b"hello")
        reader = Reader(sock)
        status, fields, _ = reader.response()
        assert (status, fields["connection"]) == (200, "close")
        assert reader.closed()
    with connect(port) as sock:
        sock.sendall(get(method="POST", fields="Host: a\r\nTransfer-Encoding: chunked\r\n")
                     + b"5\r\nhello\r\n0\r\n\r\n")
        reader = Reader(sock)
        assert reader.response()[0] == 405
        assert reader.closed()
    # An empty body changes nothing.
    with connect(port) as sock:
        sock.sendall(get(fields="Host: a\r\nContent-Length: 0\r\n") * 2)
        reader = Reader(sock)
        assert [reader.response()[0] for _ in range(2)] == [200, 200]


def test_the_token_is_never_logged(solver: StandaloneSolver, port: int,
                                   caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="mamoru.challenges.standalone"):
        exchange(port, get())
        exchange(port, get(f"/.well-known/acme-challenge/{OTHER}"))
        exchange(port, get(f"/.well-known/acme-challenge/{TOKEN}\x01", version="HTTP/1.1"))
        exchange(port, b"GET /\x1b[2J\r\n\r\n")
    text = caplog.text
    assert 'standalone 127.0.0.1: "GET /.well-known/acme-challenge/… HTTP/1.1" 200' in text
    assert "/acme-challenge/… HTTP/1.1\" 404" in text
    assert TOKEN not in text and OTHER not in text
    assert "\x1b" not in text and "\\x1b[2J" in text  # nothing the client sends is raw


# -- connections -------------------------------------------------------------------------------


def test_a_connection_is_kept_alive(solver: StandaloneSolver, port: int) -> None:
    with connect(port) as sock:
        reader = Reader(sock)
        for _ in range(3):
            sock.sendall(get())
            status, fields, _ = reader.response()
            assert status == 200 and "connection" not in fields
        sock.sendall(get("/nothing"))
        assert reader.response()[0] == 404  # a 404 keeps it too


def test_connection_close_is_honoured(solver: StandaloneSolver, port: int) -> None:
    with connect(port) as sock:
        sock.sendall(get(fields="Host: a\r\nConnection: close\r\n"))
        reader = Reader(sock)
        status, fields, _ = reader.response()
        assert (status, fields["connection"]) == (200, "close")
        assert reader.closed()


def test_http_1_0_closes_unless_asked_to_keep_alive(solver: StandaloneSolver,
                                                     port: int) -> None:
    with connect(port) as sock:
        sock.sendall(get(fields="", version="HTTP/1.0"))
        reader = Reader(sock)
        assert reader.response()[1]["connection"] == "close"
        assert reader.closed()
    with connect(port) as sock:
        reader = Reader(sock)
        for _ in range(2):
            sock.sendall(get(fields="Connection: Keep-Alive\r\n", version="HTTP/1.0"))
            assert reader.response()[1]["connection"] == "keep-alive"


def test_pipelined_requests_are_answered_in_order(solver: StandaloneSolver, port: int) -> None:
    with connect(port) as sock:
        sock.sendall(get() + get("/a") + get(method="HEAD") + get(method="POST")
                     + get(fields="Host: a\r\nConnection: close\r\n") + get())
        reader = Reader(sock)
        statuses = [reader.response(head_only=head)[0]
                    for head in (False, False, True, False, False)]
        assert statuses == [200, 404, 200, 405, 200]
        assert reader.closed()  # the request after "Connection: close" is not answered


def test_many_pipelined_requests(solver: StandaloneSolver, port: int,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """More answers than the output buffer holds: sent as the client reads them."""
    count = 2000
    monkeypatch.setattr(standalone, "MAX_REQUESTS", count + 1)
    with connect(port) as sock:
        sender = threading.Thread(target=sock.sendall, args=(get() * count,))
        sender.start()
        reader = Reader(sock)
        bodies = {reader.response()[2] for _ in range(count)}
        sender.join()
    assert bodies == {f"{TOKEN}.thumbprint".encode()}


def test_a_connection_closes_after_its_last_allowed_request(solver: StandaloneSolver,
                                                             port: int) -> None:
    with connect(port) as sock:
        sock.sendall(get() * (standalone.MAX_REQUESTS + 1))
        reader = Reader(sock)
        answers = [reader.response()[1].get("connection") for _ in range(standalone.MAX_REQUESTS)]
        assert answers == [None] * (standalone.MAX_REQUESTS - 1) + ["close"]
        assert reader.closed()


def test_a_request_sent_byte_by_byte_is_answered(solver: StandaloneSolver, port: int) -> None:
    with connect(port) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for byte in get():
            sock.send(bytes([byte]))
            time.sleep(0.001)
        assert Reader(sock).response()[0] == 200


def test_a_silent_client_holds_nothing_and_is_closed_after_the_deadline(
        solver: StandaloneSolver, port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(standalone, "TIMEOUT", 0.5)
    with connect(port) as silent, connect(port) as kept:
        kept.sendall(get())
        assert Reader(kept).response()[0] == 200
        assert exchange(port, get())[0] == 200  # others are served meanwhile
        started = time.monotonic()
        assert Reader(silent).closed()
        assert 0.4 < time.monotonic() - started < 2.0
        assert Reader(kept).closed()  # an idle kept-alive connection as well


def test_a_trickling_client_is_closed_at_the_deadline(
        solver: StandaloneSolver, port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bytes arriving do not extend the time a request head has (slowloris)."""
    monkeypatch.setattr(standalone, "TIMEOUT", 0.5)
    with connect(port) as sock:
        started = time.monotonic()
        with pytest.raises(OSError):  # reset, or a broken pipe, once closed
            for _ in range(100):
                sock.send(b"X-Slow: 1\r\n" if time.monotonic() - started > 0.05 else get()[:20])
                time.sleep(0.05)
        assert time.monotonic() - started < 2.0


def test_an_oversized_head_is_refused_and_closed(solver: StandaloneSolver, port: int) -> None:
    with connect(port) as sock:
        sock.sendall(get(fields="Host: a\r\n" + "X-Big: " + "x" * 9000 + "\r\n"))
        reader = Reader(sock)
        status, fields, _ = reader.response()
        assert (status, fields["connection"]) == (431, "close")
        assert reader.closed()
    with connect(port) as sock:  # and one that never ends
        sock.sendall(b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 1500)
        reader = Reader(sock)
        assert reader.response()[0] == 431
        assert reader.closed()
    assert exchange(port, get(fields="Host: a\r\n" + "X: y\r\n" * 900))[0] == 200  # < 8 KiB


def test_a_hundred_clients_at_once_are_all_answered(solver: StandaloneSolver,
                                                    port: int) -> None:
    socks = [connect(port) for _ in range(100)]
    try:
        for sock in socks:
            sock.sendall(get())
        assert {Reader(sock).response()[0] for sock in socks} == {200}
    finally:
        for sock in socks:
            sock.close()


def test_past_the_connection_limit_new_clients_wait_for_a_slot(
        solver: StandaloneSolver, port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(standalone, "MAX_CONNECTIONS", 3)
    monkeypatch.setattr(standalone, "TIMEOUT", 30.0)
    held = [connect(port) for _ in range(3)]
    try:
        time.sleep(0.1)
        with connect(port) as waiting:  # in the listen backlog, not accepted yet
            waiting.sendall(get())
            waiting.settimeout(0.3)
            with pytest.raises(TimeoutError):
                waiting.recv(1)
            held.pop().close()
            waiting.settimeout(5)
            assert Reader(waiting).response()[0] == 200
    finally:
        for sock in held:
            sock.close()


# -- one server per address, its start and its stop --------------------------------------------


def test_two_solvers_of_one_address_share_one_server(port: int) -> None:
    first, second = StandaloneSolver(LOOPBACK, port), StandaloneSolver(LOOPBACK, port)
    first.present(task())
    second.present(task(OTHER))  # no EADDRINUSE: the same server
    assert len(responder_threads()) == 1
    first.cleanup(task())
    assert exchange(port, get())[0] == 404
    assert exchange(port, get(f"/.well-known/acme-challenge/{OTHER}"))[0] == 200
    assert not tcp_port_is_free(port)
    second.cleanup(task(OTHER))
    assert tcp_port_is_free(port)
    assert not responder_threads()


def test_the_last_cleanup_frees_the_port_and_ends_the_thread(port: int) -> None:
    solver = StandaloneSolver(LOOPBACK, port)
    for _ in range(3):  # present right after the last cleanup binds again
        solver.present(task())
        with connect(port) as idle, connect(port) as kept:
            kept.sendall(get())
            assert Reader(kept).response()[0] == 200
            started = time.monotonic()
            solver.cleanup(task())
            assert time.monotonic() - started < 0.5
            assert Reader(idle).closed() and Reader(kept).closed()
        assert tcp_port_is_free(port)
        assert not responder_threads()
        assert StandaloneSolver._servers == {}


def test_cleanup_of_a_token_never_presented_does_nothing(port: int) -> None:
    solver = StandaloneSolver(LOOPBACK, port)
    solver.cleanup(task())  # no server at all
    solver.present(task())
    solver.cleanup(task(OTHER))  # a server, not this token: it keeps serving
    assert exchange(port, get())[0] == 200
    solver.cleanup(task())
    assert tcp_port_is_free(port)


def test_a_token_presented_twice_is_served_until_cleaned_up_twice(port: int) -> None:
    # A retried order can get the same pending authorization, so the same token, while the
    # first attempt still has it presented; each attempt cleans up once.
    first, second = StandaloneSolver(LOOPBACK, port), StandaloneSolver(LOOPBACK, port)
    first.present(task())
    second.present(task())
    first.cleanup(task())
    assert exchange(port, get())[0] == 200
    second.cleanup(task())
    assert tcp_port_is_free(port)
    assert not responder_threads()
    assert StandaloneSolver._servers == {}
    second.cleanup(task())  # one cleanup too many: nothing to undo, nothing started
    assert StandaloneSolver._servers == {}


def test_a_token_cleaned_up_while_another_is_presented_stops_being_answered(port: int) -> None:
    solver = StandaloneSolver(LOOPBACK, port)
    solver.present(task())
    solver.present(task(OTHER))
    solver.cleanup(task())
    assert exchange(port, get())[0] == 404
    assert exchange(port, get(f"/.well-known/acme-challenge/{OTHER}"))[0] == 200
    solver.cleanup(task(OTHER))
    assert tcp_port_is_free(port)


@pytest.fixture
def ipv6_port() -> int:
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
        probe.bind(("::1", 0))
        return int(probe.getsockname()[1])


def test_an_ipv6_address_is_served_over_ipv6(ipv6_port: int) -> None:
    solver = StandaloneSolver("::1", ipv6_port)
    solver.present(task())
    try:
        with socket.create_connection(("::1", ipv6_port), timeout=5) as sock:
            sock.sendall(get())
            status, _fields, body = Reader(sock).response()
        assert (status, body) == (200, f"{TOKEN}.thumbprint".encode())
    finally:
        solver.cleanup(task())
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as again:
        again.bind(("::1", ipv6_port))  # the port is free again


def test_an_ipv6_port_in_use_names_the_address_in_brackets(ipv6_port: int) -> None:
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as other:
        other.bind(("::1", ipv6_port))
        other.listen()
        with pytest.raises(ChallengeFailed) as failure:
            StandaloneSolver("::1", ipv6_port).present(task())
    assert f"cannot listen on [::1]:{ipv6_port} for the challenge" in str(failure.value)


def test_the_listen_family_follows_the_configured_host(monkeypatch: pytest.MonkeyPatch) -> None:
    listen = standalone.listen_address
    assert listen("127.0.0.1", 80) == (socket.AF_INET, ("127.0.0.1", 80), False)
    assert listen("localhost", 80) == (socket.AF_INET, ("localhost", 80), False)
    assert listen("::1", 80) == (socket.AF_INET6, ("::1", 80, 0, 0), False)
    assert listen("::", 80) == (socket.AF_INET6, ("::", 80, 0, 0), False)
    # "*": both families on one socket, because the CA may come over either.
    assert listen("*", 80) == (socket.AF_INET6, ("::", 80, 0, 0), True)
    monkeypatch.setattr(standalone, "_ipv6_available", lambda: False)
    assert listen("*", 80) == (socket.AF_INET, ("0.0.0.0", 80), False)


def test_a_port_in_use_fails_the_challenge_with_the_hint(port: int) -> None:
    with socket.socket() as other:
        other.bind((LOOPBACK, port))
        other.listen()
        with pytest.raises(ChallengeFailed) as failure:
            StandaloneSolver(LOOPBACK, port).present(task())
    assert f"cannot listen on 127.0.0.1:{port} for the challenge" in str(failure.value)
    assert "Another program (often the web server) uses this port" in failure.value.hint
    assert StandaloneSolver._servers == {}


def test_an_unusable_token_is_refused(port: int) -> None:
    with pytest.raises(ChallengeFailed, match="unusable challenge token"):
        StandaloneSolver(LOOPBACK, port).present(task("short"))
    with pytest.raises(ChallengeFailed):
        StandaloneSolver(LOOPBACK, port).present(task("x" * 20 + "/../"))
    assert StandaloneSolver._servers == {}


def test_present_and_cleanup_from_many_threads(port: int) -> None:
    tokens = [f"tok_{i:040d}" for i in range(40)]
    barrier = threading.Barrier(len(tokens))
    answered: list[int] = []

    def order(token: str) -> None:
        solver = StandaloneSolver(LOOPBACK, port)
        barrier.wait()
        solver.present(task(token))
        try:
            answered.append(exchange(port, get(f"/.well-known/acme-challenge/{token}"))[0])
        finally:
            solver.cleanup(task(token))

    threads = [threading.Thread(target=order, args=(token,)) for token in tokens]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answered == [200] * len(tokens)
    assert tcp_port_is_free(port) and not responder_threads()


def test_the_server_sockets_are_not_inherited(solver: StandaloneSolver, port: int) -> None:
    server, = StandaloneSolver._servers.values()
    assert not server._listener.get_inheritable()
    assert not os.get_inheritable(server._wake_r) and not os.get_inheritable(server._wake_w)


def test_importing_it_does_not_import_http_server() -> None:
    heavy = ("http.server", "socketserver", "email", "html", "mimetypes")
    out = subprocess.run(
        [sys.executable, "-c", "import sys, mamoru.challenges.standalone\n"
         "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in "
         "{'socketserver', 'email', 'html', 'mimetypes'} or m == 'http.server')))"],
        capture_output=True, text=True, check=True).stdout.split()
    assert out == [], f"{heavy}: {out}"
