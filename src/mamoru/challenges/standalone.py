"""http-01 answered by mamoru itself: a tiny HTTP responder on the configured address.

One responder per address serves every site that names it, so many concurrent orders can share
port 80; it runs only while some challenge is presented and stops with the last cleanup.
"""

from __future__ import annotations

import logging
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

from mamoru.challenges.base import TOKEN, ChallengeTask
from mamoru.errors import ChallengeFailed

log = logging.getLogger(__name__)
_TOKEN_IN_PATH = re.compile(r"(/acme-challenge/)[A-Za-z0-9_-]+")
PREFIX = "/.well-known/acme-challenge/"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # The CA fetches every token from several vantage points at once, for every name of every
    # order in flight: with the default listen backlog of 5, the connections past it are
    # dropped and the CA's client retries its SYN a whole second later.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int]) -> None:
        self.answers: dict[str, str] = {}
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "mamoru"
    sys_version = ""

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        token = path[len(PREFIX):] if path.startswith(PREFIX) else ""
        answer = self.server.answers.get(token) if TOKEN.match(token or "") else None
        body = (answer or "not found").encode("ascii")
        self.send_response(200 if answer else 404)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_HEAD = do_GET

    def log_message(self, format: str, *args: object) -> None:
        # Even at debug level, no challenge token in the log: "/acme-challenge/…" is enough.
        line = _TOKEN_IN_PATH.sub(r"\1…", format % args)
        log.debug("standalone %s: %s", self.client_address[0], line)


class StandaloneSolver:
    challenge_type = "http-01"
    _lock: ClassVar = threading.Lock()
    _servers: ClassVar[dict[tuple[str, int], tuple[_Server, threading.Thread, int]]] = {}

    def __init__(self, host: str, port: int) -> None:
        self.address = (host, port)

    def present(self, task: ChallengeTask) -> None:
        if not TOKEN.match(task.token):
            raise ChallengeFailed(f"the CA sent an unusable challenge token for {task.identifier}")
        with self._lock:
            entry = self._servers.get(self.address)
            if entry is None:
                try:
                    server = _Server(self.address)
                except OSError as error:
                    raise ChallengeFailed(
                        f"cannot listen on {self.address[0]}:{self.address[1]} for the "
                        f"challenge: {error.strerror}",
                        hint="Another program (often the web server) uses this port: use "
                        "challenge.webroot instead, or another standalone address.",
                    ) from None
                thread = threading.Thread(target=server.serve_forever,
                                          # shutdown() waits up to one poll: the last
                                          # cleanup of an order is on its critical path.
                                          kwargs={"poll_interval": 0.01},
                                          name=f"http-01 {self.address}", daemon=True)
                thread.start()
                entry = (server, thread, 0)
            server, thread, users = entry
            server.answers[task.token] = task.key_authorization
            self._servers[self.address] = (server, thread, users + 1)

    def cleanup(self, task: ChallengeTask) -> None:
        with self._lock:
            entry = self._servers.get(self.address)
            if entry is None:
                return
            server, thread, users = entry
            if server.answers.pop(task.token, None) is None:
                return  # present() never got this far
            if users > 1:
                self._servers[self.address] = (server, thread, users - 1)
                return
            del self._servers[self.address]
            # Close inside the lock: a present() for the same address right after must find
            # the port free, not race the closing socket (EADDRINUSE).
            server.shutdown()
            server.server_close()
