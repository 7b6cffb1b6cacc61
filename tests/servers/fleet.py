"""`mamoru fleet serve` as a real process over HTTPS on loopback (a test CA's certificate),
started and stopped (or killed) by PID."""

from __future__ import annotations

import os
import signal
import ssl
import time
import urllib.request
from pathlib import Path
from typing import Any, Self

from tests.helpers import MAMORU
from tests.servers.ports import LOOPBACK, free_port
from tests.servers.process import ServerError, spawn, stop_process, tail
from tests.servers.tls import make_ca, make_leaf


class Collector:
    def __init__(self, workdir: Path, database: str, *extra: str, port: int = 0) -> None:
        self.workdir = workdir
        self.database = database
        self.extra = list(extra)
        self.port = port or free_port()
        self.log = workdir / "collector.log"
        self.ca_pem = workdir / "vendor-ca.pem"
        self.cert, self.key = workdir / "collector.pem", workdir / "collector.key"
        if not self.cert.exists():  # a restart in the same workdir keeps its certificate
            ca = make_ca("mamoru fleet test CA")
            self.ca_pem.write_bytes(ca.cert_pem)
            make_leaf(ca, ("localhost",), ("127.0.0.1",)).write(self.cert, self.key)
        self.proc: Any = None

    @property
    def url(self) -> str:
        return f"https://{LOOPBACK}:{self.port}"

    def start(self) -> Self:
        argv = [*MAMORU, "fleet", "serve", "--database", self.database, "--listen",
                f"{LOOPBACK}:{self.port}", "--tls-cert", str(self.cert), "--tls-key",
                str(self.key), *self.extra]
        self.proc = spawn(argv, self.log, env={**os.environ})
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(f"the collector exited {self.proc.returncode}:\n"
                                  f"{tail(self.log)}")
            try:
                self.get("/health")
                return self
            except OSError:
                time.sleep(0.1)
        raise ServerError(f"the collector did not answer /health:\n{tail(self.log)}")

    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_pem))

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        return self.request("GET", path, None, headers)

    def request(self, method: str, path: str, body: bytes | None,
                headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        req = urllib.request.Request(self.url + path, data=body, method=method,
                                     headers=headers or {})
        try:
            with urllib.request.urlopen(req, context=self.context(), timeout=10) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def stop(self) -> None:
        stop_process(self.proc)

    def kill(self) -> None:
        """kill -9 by PID (mid-batch tests)."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
