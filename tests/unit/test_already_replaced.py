"""RFC 9773 §5: an order whose `replaces` the CA answers 409 alreadyReplaced is sent again
without it. Neither test CA (Pebble has no ARI, acme2certifier never answers 409) can show
this, so a minimal ACME endpoint on loopback does, over real HTTP, with real JWS bodies."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from mamoru.errors import OrderFailed
from mamoru.protocol.session import AcmeSession

PROBLEM = "urn:ietf:params:acme:error:"


def _b64json(text: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)) or b"null")


class _CA(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: Any = None, headers: dict[str, str] | None = None
              ) -> None:
        data = json.dumps(body).encode() if body is not None else b""
        self.send_response(status)
        self.send_header("Replay-Nonce", base64.urlsafe_b64encode(b"nonce-%d" % id(data))
                         .decode().rstrip("="))
        ctype = "application/problem+json" if status >= 400 else "application/json"
        self.send_header("Content-Type", ctype)
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
                         "newOrder": f"{base}/order", "renewalInfo": f"{base}/ari",
                         "revokeCert": f"{base}/revoke"})

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        jws = json.loads(self.rfile.read(length))
        payload = _b64json(jws["payload"])
        base = f"http://127.0.0.1:{self.server.server_address[1]}"
        if self.path == "/account":
            self._send(201, {"status": "valid"}, {"Location": f"{base}/acct/1"})
            return
        self.server.orders.append(payload)
        if "replaces" in payload and self.server.answer_409:
            self._send(409, {"type": PROBLEM + "alreadyReplaced",
                             "detail": "certificate already replaced"})
            return
        if "replaces" in payload and self.server.refuse_other:
            self._send(400, {"type": PROBLEM + "malformed", "detail": "bad identifiers"})
            return
        self._send(201, {"status": "pending", "identifiers": payload["identifiers"],
                         "authorizations": [], "finalize": f"{base}/finalize/1"},
                   {"Location": f"{base}/order/1"})


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _CA)
        self.orders: list[dict[str, Any]] = []
        self.answer_409 = True
        self.refuse_other = False


@pytest.fixture
def ca() -> Iterator[_Server]:
    server = _Server()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def session_for(ca: _Server) -> AcmeSession:
    session = AcmeSession(f"http://127.0.0.1:{ca.server_address[1]}/directory", timeout=5)
    session.use_account(ec.generate_private_key(ec.SECP256R1()))
    return session


def test_already_replaced_orders_again_without_replaces(ca: _Server) -> None:
    order = session_for(ca).new_order(["clinic.example"], replaces="aki.serial")
    assert [o.get("replaces") for o in ca.orders] == ["aki.serial", None]
    assert order.replaced is None
    assert order.url.endswith("/order/1")


def test_accepted_replaces_is_recorded(ca: _Server) -> None:
    ca.answer_409 = False
    order = session_for(ca).new_order(["clinic.example"], replaces="aki.serial")
    assert [o.get("replaces") for o in ca.orders] == ["aki.serial"]
    assert order.replaced == "aki.serial"


def test_other_errors_with_replaces_are_not_hidden(ca: _Server) -> None:
    ca.answer_409, ca.refuse_other = False, True
    with pytest.raises(OrderFailed, match="bad identifiers"):
        session_for(ca).new_order(["clinic.example"], replaces="aki.serial")
    assert len(ca.orders) == 1
