"""Alert receivers on 127.0.0.1: a real SMTP submission server and a real webhook endpoint.

``SmtpReceiver(workdir)``: aiosmtpd on a free port that *requires* STARTTLS (a certificate for
127.0.0.1 from a throwaway CA: trust it with ``.ca_bundle``) and AUTH (``.username`` /
``.password``, accepted only after STARTTLS). Every accepted message is parsed into
``.messages`` (``email.message.EmailMessage``); ``.logins`` records each AUTH attempt's user
name and whether it succeeded.

``WebhookReceiver()``: a threaded HTTP server recording every POST in ``.requests``
(``Hook``: path, headers, raw body, parsed JSON). ``.statuses`` is a list of answers to give,
in order (default: 200 forever); ``.delay`` seconds of stall before answering simulate a slow
receiver.

Both: ``start()`` / ``stop()`` / context manager; ``wait_for(n, timeout)`` blocks (on a
condition variable, no polling) until ``n`` deliveries arrived and returns them.
"""

from __future__ import annotations

import email
import email.policy
import json
import threading
from dataclasses import dataclass
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

from .ports import LOOPBACK, free_port
from .tls import make_ca, make_leaf


class _Inbox:
    def __init__(self) -> None:
        self._items: list[Any] = []
        self._changed = threading.Condition()

    def add(self, item: Any) -> None:
        with self._changed:
            self._items.append(item)
            self._changed.notify_all()

    def items(self) -> list[Any]:
        with self._changed:
            return list(self._items)

    def wait_for(self, count: int, timeout: float) -> list[Any]:
        with self._changed:
            self._changed.wait_for(lambda: len(self._items) >= count, timeout)
            return list(self._items)


class SmtpReceiver:
    def __init__(self, workdir: str | Path, *, username: str = "mamoru",
                 password: str = "smtp-pass-7f3a", implicit_tls: bool = False) -> None:
        self.implicit_tls = implicit_tls  # SMTPS (TLS from the first byte) instead of STARTTLS
        self.workdir = Path(workdir)
        self.username = username
        self.password = password
        self.port = 0
        self.logins: list[tuple[str, bool]] = []
        self._inbox = _Inbox()
        self._controller: Any = None
        self.ca_bundle = str(self.workdir / "smtp-ca.pem")

    @property
    def messages(self) -> list[EmailMessage]:
        return self._inbox.items()

    def wait_for(self, count: int, timeout: float = 10.0) -> list[EmailMessage]:
        return self._inbox.wait_for(count, timeout)

    def start(self) -> SmtpReceiver:
        import ssl

        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult, LoginPassword

        self.workdir.mkdir(parents=True, exist_ok=True)
        ca = make_ca("smtp test CA")
        leaf = make_leaf(ca, names=["localhost"], ips=[LOOPBACK])
        (self.workdir / "smtp-ca.pem").write_bytes(ca.cert_pem)
        leaf.write(self.workdir / "smtp-cert.pem", self.workdir / "smtp-key.pem")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.workdir / "smtp-cert.pem", self.workdir / "smtp-key.pem")
        receiver = self

        def authenticate(server: Any, session: Any, envelope: Any, mechanism: str,
                         auth_data: Any) -> AuthResult:
            ok = (isinstance(auth_data, LoginPassword)
                  and auth_data.login.decode() == receiver.username
                  and auth_data.password.decode() == receiver.password)
            login = auth_data.login.decode() if isinstance(auth_data, LoginPassword) else "?"
            receiver.logins.append((login, ok))
            return AuthResult(success=ok, handled=False)  # unhandled failure: 535 sent

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                message = email.message_from_bytes(envelope.content, policy=email.policy.default)
                assert isinstance(message, EmailMessage)
                message["X-Test-Envelope-To"] = ", ".join(envelope.rcpt_tos)
                tls = session.ssl or server.transport.get_extra_info("ssl_object")
                message["X-Test-TLS"] = "yes" if tls else "no"
                receiver._inbox.add(message)
                return "250 OK"

        self.port = free_port()
        if self.implicit_tls:
            self._controller = Controller(
                Handler(), hostname=LOOPBACK, port=self.port, ssl_context=context,
                # aiosmtpd's auth_require_tls looks at STARTTLS only; the whole connection is
                # TLS here (a plain client cannot even greet), which the handler records.
                auth_required=True, auth_require_tls=False, authenticator=authenticate)
        else:
            self._controller = Controller(
                Handler(), hostname=LOOPBACK, port=self.port, tls_context=context,
                require_starttls=True, auth_required=True, auth_require_tls=True,
                authenticator=authenticate)
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def __enter__(self) -> SmtpReceiver:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()


@dataclass(frozen=True)
class Hook:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class WebhookReceiver:
    def __init__(self, *, statuses: list[int] | None = None, delay: float = 0.0) -> None:
        self.statuses = list(statuses or [])
        self.delay = delay
        self.attempts = 0  # every POST, answered 2xx or not
        self._inbox = _Inbox()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._release = threading.Event()  # set at stop: a stalled answer returns at once
        self._lock = threading.Lock()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}/hooks/mamoru?token=url-secret-9c1d"

    @property
    def requests(self) -> list[Hook]:
        """The deliveries that were answered 2xx."""
        return self._inbox.items()

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Hook]:
        return self._inbox.wait_for(count, timeout)

    def start(self) -> WebhookReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                with receiver._lock:
                    receiver.attempts += 1
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                if receiver.delay:
                    receiver._release.wait(receiver.delay)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()
                if 200 <= status < 300:
                    receiver._inbox.add(Hook(self.path, dict(self.headers.items()), body))

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> WebhookReceiver:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()
