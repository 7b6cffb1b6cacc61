"""Prometheus metrics: an HTTP endpoint (`metrics.listen`, loopback by default) and/or a
textfile-collector file (`metrics.textfile`, replaced atomically).

Every gauge is computed from disk at scrape time (live/<site> -> meta.json, and state.json),
the same way `mamoru status` reads it, so the numbers are right from the first scrape after a
start and agree with whatever a one-shot command did meanwhile. Failure counters are kept on
disk too (state/metrics.json, under a lock), so they only ever go up, across restarts and
across processes.

Metrics (times are Unix seconds, UTC):

=====================================================  ====================================
mamoru_certificate_not_after_timestamp_seconds          {site, name} the live certificate's
                                                        notAfter
mamoru_certificate_not_before_timestamp_seconds         {site, name} its notBefore
mamoru_last_renewal_success_timestamp_seconds           {site} last certificate put in service
mamoru_next_renewal_timestamp_seconds                   {site} next planned attempt (renewal
                                                        time, or the backoff retry)
mamoru_renewal_failures_total                           {site, error_class} failed attempts
mamoru_consecutive_failures                             {site} failed attempts since the last
                                                        success
mamoru_ari_window_start_timestamp_seconds               {site} the CA's renewal window (ARI)
mamoru_ari_window_end_timestamp_seconds                 {site}
mamoru_site_in_danger                                   {site} 1 when `mamoru status` says so
mamoru_build_info                                       {version, python} always 1
=====================================================  ====================================
"""

from __future__ import annotations

import logging
import os
import platform
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from mamoru.clock import parse_time
from mamoru.config.model import Settings, Site
from mamoru.errors import MamoruError
from mamoru.observe.danger import is_failure
from mamoru.observe.events import Event
from mamoru.observe.sinks import SinkState
from mamoru.observe.status import SiteStatus, site_status
from mamoru.storage import FileStorage

log = logging.getLogger(__name__)


# The per-site gauges: key -> (metric name, help text, labels).
GAUGES: dict[str, tuple[str, str, list[str]]] = {
    "not_after": ("mamoru_certificate_not_after_timestamp_seconds",
                  "Expiry (notAfter) of the live certificate, per site and name.",
                  ["site", "name"]),
    "not_before": ("mamoru_certificate_not_before_timestamp_seconds",
                   "Start of validity (notBefore) of the live certificate, per site and name.",
                   ["site", "name"]),
    "success": ("mamoru_last_renewal_success_timestamp_seconds",
                "When the site's certificate was last obtained and put in service.", ["site"]),
    "planned": ("mamoru_next_renewal_timestamp_seconds",
                "When mamoru plans the site's next renewal attempt (or backoff retry).",
                ["site"]),
    "streak": ("mamoru_consecutive_failures", "Failed attempts since the site's last success.",
               ["site"]),
    "ari_start": ("mamoru_ari_window_start_timestamp_seconds",
                  "Start of the CA's suggested renewal window (ARI), when the CA gives one.",
                  ["site"]),
    "ari_end": ("mamoru_ari_window_end_timestamp_seconds",
                "End of the CA's suggested renewal window (ARI).", ["site"]),
    "danger": ("mamoru_site_in_danger",
               "1 when the last attempt failed, there is no certificate, or under 1/6 of its "
               "lifetime is left (what makes `mamoru status` exit non-zero).", ["site"]),
}


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("mamoru")
    except Exception:
        return "unknown"


def _seconds(when: Any) -> float | None:
    parsed = parse_time(when)
    return parsed.timestamp() if parsed is not None else None


def _site_row(site: Site, storage: FileStorage, now: datetime) -> SiteStatus:
    """The one read of a site's state and live certificate (what `mamoru status` reads)."""
    return site_status(site, storage, now)


class FailureCounts:
    """Failed attempts per site and error class, on disk (state/metrics.json)."""

    def __init__(self, state_dir: str) -> None:
        self.file = SinkState(os.path.join(state_dir, "metrics.json"))

    def add(self, site: str, error_class: str) -> None:
        def bump(data: dict[str, Any]) -> None:
            per_site = data.setdefault("failures", {}).setdefault(site, {})
            per_site[error_class] = int(per_site.get(error_class, 0)) + 1

        self.file.update(bump)

    def read(self) -> dict[str, dict[str, int]]:
        failures = self.file.read().get("failures")
        return failures if isinstance(failures, dict) else {}


class StateCollector:
    """A prometheus_client custom collector reading every configured site from disk."""

    def __init__(self, settings: Settings, storage: FileStorage,
                 clock: Callable[[], datetime] | None = None) -> None:
        self.settings = settings
        self.storage = storage
        self.counts = FailureCounts(settings.paths.state)
        self.clock = clock or (lambda: datetime.now(UTC))

    def describe(self) -> list[Metric]:
        return []  # no collect() at registration time (it reads the disk)

    def collect(self) -> Iterator[Metric]:
        now = self.clock()
        rows = [_site_row(site, self.storage, now) for site in self.settings.sites]
        gauges = {key: GaugeMetricFamily(name, text, labels=labels)
                  for key, (name, text, labels) in GAUGES.items()}
        not_after, not_before = gauges["not_after"], gauges["not_before"]
        success, planned, streak = gauges["success"], gauges["planned"], gauges["streak"]
        ari_start, ari_end, danger = gauges["ari_start"], gauges["ari_end"], gauges["danger"]
        for row in rows:
            for name in row.names:
                if row.not_after is not None:
                    not_after.add_metric([row.site, name], row.not_after.timestamp())
                if row.not_before is not None:
                    not_before.add_metric([row.site, name], row.not_before.timestamp())
            if row.last_success is not None:
                success.add_metric([row.site], row.last_success.timestamp())
            if row.next_renewal is not None:
                planned.add_metric([row.site], row.next_renewal.timestamp())
            streak.add_metric([row.site], float(row.failures))
            window = row.ari or {}
            start, end = _seconds(window.get("start")), _seconds(window.get("end"))
            if start is not None and end is not None:
                ari_start.add_metric([row.site], start)
                ari_end.add_metric([row.site], end)
            danger.add_metric([row.site], 1.0 if row.danger else 0.0)
        failures = CounterMetricFamily(
            "mamoru_renewal_failures",  # exposed as mamoru_renewal_failures_total
            "Failed renewal attempts, by site and error class.", labels=["site", "error_class"])
        configured = {site.name for site in self.settings.sites}
        for site, per_class in sorted(self.counts.read().items()):
            if site in configured and isinstance(per_class, dict):
                for error_class, count in sorted(per_class.items()):
                    failures.add_metric([site, str(error_class)], float(count))
        build = GaugeMetricFamily("mamoru_build_info", "mamoru's version (always 1).",
                                  labels=["version", "python"])
        build.add_metric([_version(), platform.python_version()], 1.0)
        yield from (not_after, not_before, success, planned, failures, streak, ari_start,
                    ari_end, danger, build)


class MetricsSink:
    """The metrics event sink: counts failures as they happen, keeps the textfile fresh, and
    (when asked) serves the endpoint.

    `emit` never blocks on I/O beyond one small locked JSON update for a failure: the
    textfile is rewritten by the sink's own thread, at most every `min_interval` seconds.
    Call `close()` when the process is done: it writes the textfile one last time and stops
    the endpoint."""

    def __init__(self, settings: Settings, storage: FileStorage, *, serve: bool = False,
                 min_interval: float = 2.0,
                 clock: Callable[[], datetime] | None = None) -> None:
        self.settings = settings
        self.textfile = settings.metrics.textfile
        self.collector = StateCollector(settings, storage, clock)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.collector)
        self.min_interval = min_interval
        self._dirty = threading.Event()
        self._stop = threading.Event()
        self._writer: threading.Thread | None = None
        self._server: Any = None
        self._write_failed = False
        self.address: tuple[str, int] | None = None
        if serve and settings.metrics.listen:
            self.serve(*settings.metrics.listen)
        if self.textfile:
            self._dirty.set()  # right from the start, not only after the first event
            self._writer = threading.Thread(target=self._write_loop, name="metrics-textfile",
                                            daemon=True)
            self._writer.start()

    # -- the endpoint ----------------------------------------------------------------------

    def serve(self, host: str, port: int) -> tuple[str, int]:
        """Start the HTTP endpoint (GET /metrics) on host:port; returns the bound address.
        Raises MamoruError when the address cannot be bound (taken, not local)."""
        try:
            server = _endpoint(host, port, self.registry)
        except OSError as error:
            raise MamoruError(f"cannot serve metrics on {host}:{port}: {error.strerror}",
                              hint="Set metrics.listen to a free local port, or stop what "
                              "holds this one.") from None
        self._server = server
        bound = server.server_address
        self.address = (str(bound[0]), int(bound[1]))
        log.info("metrics endpoint on http://%s:%d/metrics", host, self.address[1])
        return self.address

    # -- the sink --------------------------------------------------------------------------

    def emit(self, event: Event) -> None:
        if event.kind == "failed" and event.site:
            error_class = str(event.get("error_class") or "MamoruError")
            if is_failure(error_class):
                try:
                    self.collector.counts.add(event.site, error_class)
                except Exception as error:  # the disk is full: the other sinks still record
                    log.warning("cannot count the failure in metrics: %s", error)
        if event.site:
            self._dirty.set()

    def render(self) -> bytes:
        """The exposition text (what a scrape returns)."""
        return bytes(generate_latest(self.registry))

    def write_textfile(self) -> None:
        """Replace the textfile atomically (temp file in its directory, fsync, rename)."""
        if not self.textfile:
            return
        from mamoru.storage.atomic import write_file

        try:
            write_file(self.textfile, self.render(), 0o644)
            self._write_failed = False
        except Exception as error:
            if not self._write_failed:  # once, not after every event
                log.error("cannot write the metrics file %s: %s", self.textfile, error)
            self._write_failed = True

    def _write_loop(self) -> None:
        """Write when something changed, at most once every `min_interval` seconds (a burst of
        events is one write). Between writes the thread waits for a change, with no timeout:
        an idle daemon does not wake up (not even `min_interval` after its last write)."""
        last = float("-inf")
        while not self._stop.is_set():
            self._dirty.wait()
            if self._stop.is_set():
                return
            pause = last + self.min_interval - time.monotonic()
            if pause > 0 and self._stop.wait(pause):
                return  # close() writes the last state
            self._dirty.clear()
            self.write_textfile()
            last = time.monotonic()

    def close(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._dirty.set()
        if self._writer is not None:
            self._writer.join(timeout)
            self._writer = None
            self.write_textfile()
        if self._server is not None:
            _stop_endpoint(self._server)
            self._server = None


def _endpoint(host: str, port: int, registry: Any) -> Any:
    """The /metrics HTTP server, serving on a daemon thread.

    Not prometheus_client's start_http_server: its serve_forever() polls twice a second, and
    an idle daemon must not wake up between jobs. This one waits in select() for an hour at a
    time; `_stop_endpoint` wakes it with a connection when it is time to stop."""
    import socket
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    from prometheus_client import make_wsgi_app

    class Server(ThreadingMixIn, WSGIServer):
        daemon_threads = True
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # scrapes are not news
            pass

    server = make_server(host, port, make_wsgi_app(registry), Server, QuietHandler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 3600.0},
                     name="metrics-endpoint", daemon=True).start()
    return server


def _stop_endpoint(server: Any) -> None:
    """Stop `_endpoint`'s server within about a second: ask it to stop, then poke it awake."""
    import contextlib
    import socket

    stopper = threading.Thread(target=server.shutdown, daemon=True)
    stopper.start()
    address = server.server_address[:2]
    for _ in range(20):
        with contextlib.suppress(OSError):
            socket.create_connection(address, timeout=0.5).close()
        stopper.join(0.05)
        if not stopper.is_alive():
            break
    server.server_close()
