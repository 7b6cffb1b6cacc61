"""A plain-HTTP static file server on 127.0.0.1 for http-01 via a webroot, without nginx.

``WebrootServer(root_dir, port)`` serves ``root_dir/<path>`` for GET/HEAD (so a client that
writes ``<webroot>/.well-known/acme-challenge/<token>`` is answered), threaded, in this test
process. Every request is recorded in ``.requests`` (a list of ``RequestRecord``) for
assertions such as "Pebble fetched the token 3 times" or "the Host header was the name".
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

from .ports import LOOPBACK, free_port


@dataclass(frozen=True)
class RequestRecord:
    method: str
    path: str
    host: str | None
    status: int
    client: str
    headers: dict[str, str] = field(default_factory=dict)


class _Handler(SimpleHTTPRequestHandler):
    server: _Server

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        try:
            status = int(code)
        except (TypeError, ValueError):
            status = 0
        rec = RequestRecord(
            method=self.command,
            path=self.path,
            host=self.headers.get("Host"),
            status=status,
            client=self.client_address[0],
            headers={k: v for k, v in self.headers.items()},
        )
        with self.server.log_lock:
            self.server.request_log.append(rec)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output quiet; records are in .requests

    def list_directory(self, path: str | os.PathLike[str]) -> None:  # type: ignore[override]
        self.send_error(404, "No directory listings")
        return None

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-store")
        super().end_headers()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_log: list[RequestRecord]
    log_lock: threading.Lock


class WebrootServer:
    """Threaded static HTTP server on ``127.0.0.1:port`` serving ``root_dir``.

    Args:
        root_dir: directory served (created if missing); ``/x`` maps to ``root_dir/x``.
        port: TCP port on 127.0.0.1 (None = a free one; see ``.port``).

    Attributes: ``.root_dir``, ``.port``, ``.url`` (``http://127.0.0.1:PORT``), ``.requests``
    (copy of the request records), ``.challenge_dir`` (``root_dir/.well-known/acme-challenge``).
    Methods: ``start()``, ``stop()``, ``clear_requests()``, ``requests_for(path_prefix)``.
    """

    def __init__(self, root_dir: str | os.PathLike[str], port: int | None = None) -> None:
        self.root_dir = Path(root_dir)
        self.port = int(port) if port is not None else free_port()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def challenge_dir(self) -> Path:
        return self.root_dir / ".well-known" / "acme-challenge"

    @property
    def requests(self) -> list[RequestRecord]:
        if self._server is None:
            return []
        with self._server.log_lock:
            return list(self._server.request_log)

    def requests_for(self, path_prefix: str) -> list[RequestRecord]:
        return [r for r in self.requests if r.path.startswith(path_prefix)]

    def clear_requests(self) -> None:
        if self._server is not None:
            with self._server.log_lock:
                self._server.request_log.clear()

    def start(self) -> WebrootServer:
        self.root_dir.mkdir(parents=True, exist_ok=True)
        handler = partial(_Handler, directory=str(self.root_dir))
        server = _Server((LOOPBACK, self.port), handler)
        server.request_log = []
        server.log_lock = threading.Lock()
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"webroot-http-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._thread = None

    def __enter__(self) -> WebrootServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
