"""A CA that refuses the account again after mamoru registered a new one: the order is tried
once more, not in a loop, and the second refusal is reported as any failure is.

No test CA can be told to forget an account on every request, so a minimal ACME endpoint on
loopback does: every newAccount creates /acct/N, every newOrder answers accountDoesNotExist."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from tests.helpers import write_config
from tests.servers.ports import free_port

from mamoru import pipeline
from mamoru.app import build_app
from mamoru.config import load_config
from mamoru.observe.events import MemorySink
from mamoru.protocol.account import account_dir


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
                         "newOrder": f"{base}/order"})

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        base = f"http://127.0.0.1:{self.server.server_address[1]}"
        with self.server.lock:
            self.server.posts.append(self.path)
            accounts = self.server.posts.count("/account")
        if self.path == "/account":
            self._send(201, {"status": "valid"}, {"Location": f"{base}/acct/{accounts}"})
            return
        self._send(400, {"type": "urn:ietf:params:acme:error:accountDoesNotExist",
                         "detail": "no such account"})


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _CA)
        self.lock = threading.Lock()
        self.posts: list[str] = []


@pytest.fixture
def ca() -> Iterator[_Server]:
    server = _Server()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_second_refusal_is_reported_not_looped(tmp_path: Path, ca: _Server) -> None:
    directory = f"http://127.0.0.1:{ca.server_address[1]}/directory"
    config = write_config(tmp_path, directory, None, {
        "clinic": {"domains": ["clinic.example"],
                   "challenge": {"standalone": f"127.0.0.1:{free_port()}"}}})
    memory = MemorySink()
    app = build_app(load_config(str(config)), sinks=[memory], stderr=False, observers=False)
    try:
        outcome = pipeline.provision(app.settings.sites[0], app, force=True)
    finally:
        app.reset_session()
        app.events.close(5)
    # register, order (refused), register anew once, order once more (refused): no more
    assert ca.posts == ["/account", "/order", "/account", "/order"]
    assert outcome.status == "failed"
    error = outcome.to_json()["error"]
    assert error["class"] == "AccountError"  # the kind events and metrics always showed
    assert "accountDoesNotExist" in error["message"]
    said = [e for e in memory.events if e.kind == "account" and e.fields.get("replaced")]
    assert [e.fields["previous"] for e in said] == [f"{directory.rsplit('/', 1)[0]}/acct/1"]
    assert said[0].fields["account"].endswith("/acct/2")
    stored = Path(account_dir(str(tmp_path / "state"), directory))
    assert len(list(stored.glob("key.pem.gone-*"))) == 1
    assert json.loads((stored / "account.json").read_text())["url"].endswith("/acct/2")
