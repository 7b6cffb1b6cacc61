"""A small fault-injecting HTTPS proxy in front of an ACME server (Pebble), switchable at run time.

Usage::

    with FaultProxy(tmp_path / "proxy", upstream=pebble.base_url,
                    upstream_ca=pebble.ca_bundle) as proxy:
        config: acme.directory = proxy.url("/dir"), acme.ca_bundle = proxy.ca_bundle
        proxy.set_mode("pass")                       # forward everything (the default)
        proxy.set_mode("429", paths=("/order-plz",), retry_after="3600")
        proxy.set_mode("closed")                     # the port refuses connections

Modes (``FaultProxy.MODES``):

* ``pass``   forward the request to the upstream and relay its answer unchanged;
* ``closed`` stop listening (connections are refused) and drop open keep-alive connections;
* ``hang``   accept the TCP connection (or read the request) and never answer;
* ``500``    ``500 Internal Server Error`` with an HTML body (a broken front end);
* ``503``    ``503 Service Unavailable`` with ``Retry-After`` and an HTML body (overload);
* ``429``    ``429 Too Many Requests`` with ``Retry-After`` and an RFC 8555 ``rateLimited``
  problem document (``application/problem+json``).

``paths`` limits a fault to requests whose path starts with one of the prefixes; the others
pass through (e.g. a rate limit on newOrder only). ``closed`` and ``hang`` at connection time
always apply to every path (there is no request to look at yet).

The proxy terminates TLS with a certificate for ``127.0.0.1``/``localhost`` from its own
throwaway CA (trust it with ``.ca_bundle``) and forwards over HTTPS, keeping the client's
``Host`` header: Pebble builds every URL it hands out (directory, orders, ``Location``) from
that header, so a client that starts at the proxy stays on the proxy, and the JWS ``url`` the
client signs matches the URL Pebble sees.

Every request is recorded in ``.records`` (method, path, mode applied, status sent) for
assertions such as "no request reached the CA while the fault was on". Everything binds
127.0.0.1; ``stop()`` closes the listener, releases hung connections and joins the threads.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from .ports import LOOPBACK, free_port
from .tls import make_ca, make_leaf

HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
              "trailers", "transfer-encoding", "upgrade", "content-length"}


@dataclass(frozen=True)
class ProxyRecord:
    method: str
    path: str
    mode: str
    status: int | None  # None: no answer was sent (hang, closed)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, proxy: FaultProxy, address: tuple[str, int]) -> None:
        self.proxy = proxy
        super().__init__(address, _Handler)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        # Decide before the TLS handshake: a hung or closed CA never completes it either.
        proxy = self.proxy
        mode = proxy.connection_mode()
        if mode in ("hang", "closed"):
            proxy._record("CONNECT", "", mode, None)
            if mode == "hang":
                proxy._park()
            self.shutdown_request(request)
            return
        try:
            tls = proxy._context.wrap_socket(request, server_side=True)
        except (OSError, ssl.SSLError):
            self.shutdown_request(request)
            return
        proxy._track(tls, True)
        try:
            self.finish_request(tls, client_address)
        except Exception:  # a client that went away mid-request: nothing to report
            pass
        finally:
            proxy._track(tls, False)
            self.shutdown_request(tls)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"  # keep-alive, like a real CA front end

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self._handle()

    def do_HEAD(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def _handle(self) -> None:
        proxy = self.server.proxy
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        mode, retry_after = proxy.request_mode(self.path)
        if mode in ("hang", "closed"):
            proxy._record(self.command, self.path, mode, None)
            if mode == "hang":
                proxy._park()
            self.close_connection = True
            return
        if mode == "pass":
            status, headers, payload = proxy._forward(self.command, self.path, self.headers,
                                                      body)
        elif mode == "429":
            problem = {"type": "urn:ietf:params:acme:error:rateLimited",
                       "detail": "too many new orders recently (fault proxy)", "status": 429}
            status, payload = 429, json.dumps(problem).encode()
            headers = [("Content-Type", "application/problem+json"),
                       ("Retry-After", retry_after)]
        elif mode == "503":
            status, payload = 503, b"<html><body>503 Service Unavailable</body></html>\n"
            headers = [("Content-Type", "text/html"), ("Retry-After", retry_after)]
        else:  # "500"
            status, payload = 500, b"<html><body>500 Internal Server Error</body></html>\n"
            headers = [("Content-Type", "text/html")]
        proxy._record(self.command, self.path, mode, status)
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)


class FaultProxy:
    """An HTTPS proxy to ``upstream`` that injects faults on demand (see the module docstring).

    Args:
        workdir: where the proxy's TLS files go (created if missing).
        upstream: the upstream base URL, e.g. ``pebble.base_url`` (``https://127.0.0.1:PORT``).
        upstream_ca: PEM bundle to verify the upstream's TLS certificate.
        port: the port to listen on (a free one by default; kept across ``closed`` and back).
        timeout: seconds for one exchange with the upstream.
    """

    MODES = ("pass", "closed", "hang", "500", "503", "429")

    def __init__(self, workdir: str | Path, *, upstream: str, upstream_ca: str | None,
                 port: int | None = None, timeout: float = 30.0) -> None:
        self.workdir = Path(workdir)
        parts = urlsplit(upstream)
        if parts.scheme != "https" or not parts.hostname or not parts.port:
            raise ValueError(f"upstream must be https://HOST:PORT, not {upstream!r}")
        self.upstream_host, self.upstream_port = parts.hostname, parts.port
        self.upstream_ca = upstream_ca
        self.port = port or free_port()
        self.timeout = timeout
        self.ca_bundle = str(self.workdir / "proxy-ca.pem")
        self.records: list[ProxyRecord] = []
        self._mode = "pass"
        self._paths: tuple[str, ...] | None = None
        self._retry_after = "120"
        self._lock = threading.Lock()
        self._release = threading.Event()  # set: every hung request returns
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._open: set[ssl.SSLSocket] = set()
        self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._upstream_context = ssl.create_default_context(cafile=upstream_ca)

    # ---- lifecycle ---------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        self.workdir.mkdir(parents=True, exist_ok=True)
        ca = make_ca("fault proxy test CA")
        leaf = make_leaf(ca, names=["localhost"], ips=[LOOPBACK])
        Path(self.ca_bundle).write_bytes(ca.cert_pem)
        cert_path, key_path = self.workdir / "proxy-cert.pem", self.workdir / "proxy-key.pem"
        leaf.write(cert_path, key_path)
        self._context.load_cert_chain(cert_path, key_path)
        self._listen()
        return self

    def stop(self) -> None:
        """Stop listening, release hung requests, close open connections."""
        self._release.set()
        self._unlisten()
        self._drop_connections()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _listen(self) -> None:
        deadline = time.monotonic() + 5
        while True:
            try:
                self._server = _Server(self, (LOOPBACK, self.port))
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True,
                                        name=f"fault-proxy:{self.port}")
        self._thread.start()

    def _unlisten(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def _drop_connections(self) -> None:
        with self._lock:
            sockets = list(self._open)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    # ---- switching -----------------------------------------------------------------------------

    def set_mode(self, mode: str, *, paths: tuple[str, ...] | None = None,
                 retry_after: str = "120") -> None:
        """Switch to `mode` (see MODES) for `paths` (prefixes; None = every path).
        `retry_after` is the Retry-After value sent with 503 and 429 (seconds or an HTTP date).
        """
        if mode not in self.MODES:
            raise ValueError(f"unknown mode {mode!r} (one of {', '.join(self.MODES)})")
        with self._lock:
            previous = self._mode
            self._mode, self._paths, self._retry_after = mode, paths, retry_after
            # Hung requests of the previous mode end now (their connection is closed).
            self._release.set()
            self._release = threading.Event()
        if mode == "closed" and paths is None and self._server is not None:
            self._unlisten()
            self._drop_connections()
        elif previous == "closed" and self._server is None:
            self._listen()
        elif mode != "pass":
            # Idle keep-alive connections would carry on past a connection-level fault.
            self._drop_connections()

    @property
    def mode(self) -> str:
        return self._mode

    def url(self, path: str = "/dir") -> str:
        return f"https://{LOOPBACK}:{self.port}{path}"

    def counts(self) -> dict[str, int]:
        """Requests seen per mode."""
        out: dict[str, int] = {}
        with self._lock:
            for record in self.records:
                out[record.mode] = out.get(record.mode, 0) + 1
        return out

    # ---- used by the server threads --------------------------------------------------------------

    def connection_mode(self) -> str:
        with self._lock:
            return self._mode if self._paths is None and self._mode in ("hang", "closed") \
                else "pass"

    def request_mode(self, path: str) -> tuple[str, str]:
        with self._lock:
            applies = self._paths is None or any(path.startswith(p) for p in self._paths)
            return (self._mode if applies else "pass"), self._retry_after

    def _park(self) -> None:
        with self._lock:
            release = self._release
        release.wait(timeout=300)

    def _record(self, method: str, path: str, mode: str, status: int | None) -> None:
        with self._lock:
            self.records.append(ProxyRecord(method, path, mode, status))

    def _track(self, sock: ssl.SSLSocket, add: bool) -> None:
        with self._lock:
            if add:
                self._open.add(sock)
            else:
                self._open.discard(sock)

    def _forward(self, method: str, path: str, headers: Any, body: bytes
                 ) -> tuple[int, list[tuple[str, str]], bytes]:
        connection = http.client.HTTPSConnection(self.upstream_host, self.upstream_port,
                                                 timeout=self.timeout,
                                                 context=self._upstream_context)
        try:
            out_headers = {k: v for k, v in headers.items() if k.lower() not in HOP_BY_HOP}
            connection.request(method, path, body=body or None, headers=out_headers)
            response = connection.getresponse()
            payload = response.read()
            relayed = [(k, v) for k, v in response.getheaders() if k.lower() not in HOP_BY_HOP]
            return response.status, relayed, payload
        except OSError as error:
            return 502, [("Content-Type", "text/plain")], f"proxy: {error}\n".encode()
        finally:
            connection.close()
