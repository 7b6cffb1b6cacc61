"""Each order's polling follows the Retry-After of its own answers, never another order's.

Two orders share one session (as every order of a run does) and poll their authorizations at
the same time over real HTTP against a minimal ACME endpoint on loopback: order A's CA answers
say `Retry-After: 3`, order B's say `Retry-After: 1`. The session's stop event records every
wait a polling loop decides on, per thread. The two polls are interleaved on purpose (A's loop
goes on only after B's answer arrived), which is when a Retry-After kept in the shared session
steered the wrong order."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from mamoru.protocol.session import POLL_FIRST, AcmeSession, Order

RETRY_AFTER = {"a": "3", "b": "1"}


class _CA(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: Any = None, headers: dict[str, str] | None = None
              ) -> None:
        data = json.dumps(body).encode() if body is not None else b""
        self.send_response(status)
        self.send_header("Replay-Nonce", base64.urlsafe_b64encode(b"n%d" % id(data))
                         .decode().rstrip("="))
        self.send_header("Content-Type", "application/json")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_HEAD(self) -> None:
        self._send(200)

    def do_GET(self) -> None:
        base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._send(200, {"newNonce": f"{base}/nonce", "newAccount": f"{base}/account",
                         "newOrder": f"{base}/order"})

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        base = f"http://127.0.0.1:{self.server.server_address[1]}"
        if self.path == "/account":
            self._send(201, {"status": "valid"}, {"Location": f"{base}/acct/1"})
            return
        which = self.path.rsplit("/", 1)[-1]  # /authz/a or /authz/b
        with self.server.lock:
            self.server.polls[which] += 1
            first = self.server.polls[which] == 1
        # pending on the first poll (asking to come back after RETRY_AFTER), then valid
        self._send(200, {"status": "pending" if first else "valid",
                         "identifier": {"type": "dns", "value": f"{which}.example"}},
                   {"Retry-After": RETRY_AFTER[which]})


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _CA)
        self.lock = threading.Lock()
        self.polls = {"a": 0, "b": 0}


class _Waits(threading.Event):
    """The session's stop event (never set), recording each wait by thread name."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: dict[str, list[float]] = {}

    def wait(self, timeout: float | None = None) -> bool:
        name = threading.current_thread().name
        self.waits.setdefault(name, []).append(timeout if timeout is not None else -1.0)
        return super().wait(timeout)


class _Interleaved(AcmeSession):
    """A's first answer is handed back only after B's first answer arrived."""

    a_polled = threading.Event()
    b_polled = threading.Event()

    def get(self, url: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        body = super().get(url, *args, **kwargs)
        if url.endswith("/authz/a") and not self.a_polled.is_set():
            self.a_polled.set()
            self.b_polled.wait(5)
        elif url.endswith("/authz/b"):
            self.b_polled.set()
        return body


@pytest.fixture
def ca() -> Iterator[_Server]:
    server = _Server()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_two_orders_each_follow_their_own_retry_after(ca: _Server) -> None:
    stop = _Waits()
    session = _Interleaved(f"http://127.0.0.1:{ca.server_address[1]}/directory", timeout=5,
                           stop=stop)
    session.use_account(ec.generate_private_key(ec.SECP256R1()))
    base = f"http://127.0.0.1:{ca.server_address[1]}"
    errors: list[BaseException] = []

    def poll(which: str) -> None:
        order = Order(url=f"{base}/order/{which}", status="pending",
                      identifiers=[f"{which}.example"],
                      authorizations=[f"{base}/authz/{which}"], finalize="")
        try:
            session.wait_authorizations(order, [], time.monotonic() + 20)
        except BaseException as error:  # handed to the test thread
            errors.append(error)

    a = threading.Thread(target=poll, args=("a",), name="order-a")
    b = threading.Thread(target=poll, args=("b",), name="order-b")
    a.start()
    assert session.a_polled.wait(5)
    b.start()
    a.join(15)
    b.join(15)
    assert not errors, errors
    assert ca.polls == {"a": 2, "b": 2}
    # the first look waits POLL_FIRST (the CA was told just now); then one wait each,
    # between its pending answer and its valid one
    first_a, wait_a = stop.waits["order-a"]
    first_b, wait_b = stop.waits["order-b"]
    assert first_a == first_b == POLL_FIRST, stop.waits
    assert 2.5 <= wait_a <= 3.05, stop.waits  # A's CA said 3 s, whatever B's said
    assert 0.5 <= wait_b <= 1.05, stop.waits  # B's CA said 1 s
