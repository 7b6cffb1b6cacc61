"""A real headless Chromium (Debian's `chromium`) driven over the DevTools protocol, for the
fleet page's tests: navigate, fill and submit forms, read the page, record every request it
made, take screenshots. Started with a fresh --user-data-dir, stopped by PID."""

from __future__ import annotations

import base64
import itertools
import json
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Self

from tests.servers.ports import LOOPBACK, free_port
from tests.servers.process import ServerError, require_binary, spawn, stop_process, tail

BINARY = "/usr/lib/chromium/chromium"  # the browser itself (/usr/bin/chromium is a wrapper)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


class Chromium:
    def __init__(self, workdir: Path, *, width: int = 1280, height: int = 900) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.profile = Path(tempfile.mkdtemp(prefix="profile-", dir=workdir))
        self.log = workdir / "chromium.log"
        self.size = (width, height)
        self.proc: Any = None
        self.ws: Any = None
        self._ids = itertools.count(1)
        self.requests: list[str] = []

    def start(self, ignore_certificate_errors_for: str | None = None) -> Self:
        import websocket

        binary = require_binary(BINARY, "chromium")
        argv = [binary, *FLAGS, f"--user-data-dir={self.profile}",
                f"--remote-debugging-port={self.port}", f"--remote-debugging-address={LOOPBACK}",
                f"--window-size={self.size[0]},{self.size[1]}"]
        if ignore_certificate_errors_for:  # the collector's test CA is not in Chromium's store
            argv.append("--ignore-certificate-errors")
        argv.append("about:blank")
        self.proc = spawn(argv, self.log)
        deadline = time.monotonic() + 30
        target = None
        while time.monotonic() < deadline and target is None:
            if self.proc.poll() is not None:
                raise ServerError(f"chromium exited {self.proc.returncode}:\n{tail(self.log)}")
            try:
                with urllib.request.urlopen(f"http://{LOOPBACK}:{self.port}/json/list",
                                            timeout=2) as resp:
                    pages = [t for t in json.load(resp) if t.get("type") == "page"]
                target = pages[0]["webSocketDebuggerUrl"] if pages else None
            except (OSError, ValueError):
                time.sleep(0.2)
        if target is None:
            raise ServerError(f"chromium's DevTools did not answer:\n{tail(self.log)}")
        self.ws = websocket.create_connection(target, timeout=30, suppress_origin=True)
        self.call("Page.enable")
        self.call("Network.enable")
        self.call("Emulation.setDeviceMetricsOverride", width=self.size[0],
                  height=self.size[1], deviceScaleFactor=1, mobile=self.size[0] < 600)
        return self

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        ident = next(self._ids)
        self.ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            self._note(message)
            if message.get("id") == ident:
                if "error" in message:
                    raise ServerError(f"{method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result

    def _note(self, message: dict[str, Any]) -> None:
        if message.get("method") == "Network.requestWillBeSent":
            self.requests.append(message["params"]["request"]["url"])

    def wait_event(self, method: str, timeout: float = 20) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = json.loads(self.ws.recv())
            self._note(message)
            if message.get("method") == method:
                params: dict[str, Any] = message.get("params", {})
                return params
        raise ServerError(f"no {method} within {timeout} s")

    def navigate(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        self.wait_event("Page.loadEventFired")

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result.get("result", {}).get("value")

    def submit(self, expression: str) -> None:
        """Run `expression` (which submits a form) and wait for the next page to load."""
        self.call("Runtime.evaluate", expression=expression)
        self.wait_event("Page.loadEventFired")

    def screenshot(self, path: Path, *, full: bool = True) -> Path:
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=full)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data["data"]))
        return path

    def set_width(self, width: int, height: int) -> None:
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height,
                  deviceScaleFactor=2 if width < 600 else 1, mobile=width < 600)

    def stop(self) -> None:
        if self.ws is not None:
            self.ws.close()
            self.ws = None
        stop_process(self.proc)
