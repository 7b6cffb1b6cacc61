"""Prometheus metrics: scraped over real HTTP and parsed with prometheus_client's parser;
right from state at start; failure counters survive restarts; the textfile is atomic."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from tests.helpers import write_config
from tests.servers.ports import free_port
from tests.servers.sitestate import failed_attempt, install_site, succeeded

from mamoru.app import build_app
from mamoru.config import load_config
from mamoru.config.model import Settings
from mamoru.observe.metrics import MetricsSink
from mamoru.storage import CertVersion, FileStorage

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
DAY = dt.timedelta(days=1)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} from exposition text, via the official parser."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(found: dict[Any, float], metric: str, /, **labels: str) -> float:
    return found[(metric, tuple(sorted(labels.items())))]


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Settings, dict[str, CertVersion]]:
    storage = FileStorage(str(tmp_path / "state"), str(tmp_path / "live"))
    versions = {}
    versions["clinic"] = install_site(storage, "clinic", ["clinic.example", "www.clinic.example"],
                                      NOW - 5 * DAY, NOW + 85 * DAY)
    succeeded(storage, "clinic", versions["clinic"], at=NOW - 5 * DAY, next_due=NOW + 55 * DAY,
              ari={"serial": versions["clinic"].meta["serial"],
                   "start": (NOW + 50 * DAY).isoformat(), "end": (NOW + 52 * DAY).isoformat(),
                   "retry_after": (NOW + DAY).isoformat(), "explanation_url": None, "pick": 0.1})
    versions["dental"] = install_site(storage, "dental", ["dental.example"], NOW - 70 * DAY,
                                      NOW + 20 * DAY)
    succeeded(storage, "dental", versions["dental"], at=NOW - 70 * DAY, next_due=NOW - 10 * DAY)
    failed_attempt(storage, "dental", at=NOW - 3600 * DAY / 86400, attempts=2,
                   retry_at=NOW + 7200 * DAY / 86400)
    config = write_config(tmp_path, "https://ca.test/directory", None, {
        "clinic": {"domains": ["clinic.example", "www.clinic.example"],
                   "challenge": {"webroot": "/srv/www"}},
        "dental": {"domains": ["dental.example"], "challenge": {"webroot": "/srv/www"}},
        "newsite": {"domains": ["new.example"], "challenge": {"webroot": "/srv/www"}}},
        extra={"metrics": {"listen": f"127.0.0.1:{free_port()}",
                           "textfile": str(tmp_path / "prom" / "mamoru.prom")}})
    (tmp_path / "prom").mkdir()
    return load_config(str(config)), versions


def test_endpoint_is_right_from_state_at_start(setup: tuple[Settings, dict[str, CertVersion]]
                                               ) -> None:
    settings, versions = setup
    app = build_app(settings, stderr=False, event_log=False, serve_metrics=True)
    sink = next(s for s in app.events.sinks if isinstance(s, MetricsSink))
    try:
        assert sink.address is not None and sink.address[0] == "127.0.0.1"
        assert settings.metrics.listen is not None
        assert sink.address[1] == settings.metrics.listen[1]
        response = requests.get(f"http://127.0.0.1:{sink.address[1]}/metrics", timeout=5)
        assert response.status_code == 200
        found = samples(response.text)  # no event was emitted: all of this comes from disk
    finally:
        app.events.close(5)

    clinic, dental = versions["clinic"], versions["dental"]
    for name in ("clinic.example", "www.clinic.example"):
        assert value(found, "mamoru_certificate_not_after_timestamp_seconds", site="clinic",
                     name=name) == clinic.not_after.timestamp()
        assert value(found, "mamoru_certificate_not_before_timestamp_seconds", site="clinic",
                     name=name) == clinic.not_before.timestamp()
    assert value(found, "mamoru_certificate_not_after_timestamp_seconds", site="dental",
                 name="dental.example") == dental.not_after.timestamp()
    assert value(found, "mamoru_last_renewal_success_timestamp_seconds",
                 site="clinic") == (NOW - 5 * DAY).timestamp()
    assert value(found, "mamoru_next_renewal_timestamp_seconds",
                 site="clinic") == (NOW + 55 * DAY).timestamp()
    # a failing site's next attempt is its backoff retry
    assert value(found, "mamoru_next_renewal_timestamp_seconds",
                 site="dental") == (NOW + dt.timedelta(hours=2)).timestamp()
    assert value(found, "mamoru_consecutive_failures", site="dental") == 2
    assert value(found, "mamoru_ari_window_start_timestamp_seconds",
                 site="clinic") == (NOW + 50 * DAY).timestamp()
    assert value(found, "mamoru_ari_window_end_timestamp_seconds",
                 site="clinic") == (NOW + 52 * DAY).timestamp()
    assert value(found, "mamoru_site_in_danger", site="clinic") == 0
    assert value(found, "mamoru_site_in_danger", site="dental") == 1
    assert value(found, "mamoru_site_in_danger", site="newsite") == 1  # no certificate yet
    assert not any(labels and dict(labels).get("site") == "newsite"
                   for name, labels in found if name.startswith("mamoru_certificate"))
    build = [labels for name, labels in found if name == "mamoru_build_info"]
    assert len(build) == 1 and dict(build[0])["version"]


def test_failure_counters_persist_and_textfile_is_atomic(
        setup: tuple[Settings, dict[str, CertVersion]], tmp_path: Path) -> None:
    settings, _ = setup
    app = build_app(settings, stderr=False, event_log=False)  # a one-shot command: no server
    sink = next(s for s in app.events.sinks if isinstance(s, MetricsSink))
    assert sink.address is None
    for error_class in ("ChallengeFailed", "ChallengeFailed", "RateLimited", "Cancelled"):
        app.events.emit("failed", "dental", "failed", error_class=error_class)
    app.events.close(5)
    textfile = tmp_path / "prom" / "mamoru.prom"
    assert oct(os.stat(textfile).st_mode & 0o777) == "0o644"
    assert os.listdir(textfile.parent) == ["mamoru.prom"]  # no temp file left behind
    found = samples(textfile.read_text())
    assert value(found, "mamoru_renewal_failures_total", site="dental",
                 error_class="ChallengeFailed") == 2
    assert value(found, "mamoru_renewal_failures_total", site="dental",
                 error_class="RateLimited") == 1
    assert ("mamoru_renewal_failures_total",
            (("error_class", "Cancelled"), ("site", "dental"))) not in found  # a stop request

    # a second process (or a restart) starts from the counts on disk, and adds to them
    again = build_app(settings, stderr=False, event_log=False)
    again.events.emit("failed", "dental", "failed", error_class="ChallengeFailed")
    again.events.close(5)
    found = samples(textfile.read_text())
    assert value(found, "mamoru_renewal_failures_total", site="dental",
                 error_class="ChallengeFailed") == 3
    assert value(found, "mamoru_certificate_not_after_timestamp_seconds", site="clinic",
                 name="clinic.example") > NOW.timestamp()


def test_port_only_listen_binds_loopback(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path, "https://ca.test/directory", None, {
        "clinic": {"domains": ["clinic.example"], "challenge": {"webroot": "/srv/www"}}},
        extra={"metrics": {"listen": str(port)}})
    settings = load_config(str(config))
    assert settings.metrics.listen == ("127.0.0.1", port)
    sink = MetricsSink(settings, FileStorage(settings.paths.state, settings.paths.live),
                       serve=True)
    try:
        assert sink.address == ("127.0.0.1", port)
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        assert "mamoru_site_in_danger" in text
    finally:
        sink.close(1)


def test_a_taken_port_is_a_clear_error(tmp_path: Path) -> None:
    import socket

    from mamoru.errors import MamoruError

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        config = write_config(tmp_path, "https://ca.test/directory", None, {
            "clinic": {"domains": ["clinic.example"], "challenge": {"webroot": "/srv/www"}}},
            extra={"metrics": {"listen": f"127.0.0.1:{port}"}})
        settings = load_config(str(config))
        with pytest.raises(MamoruError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            build_app(settings, stderr=False, event_log=False, serve_metrics=True)


def test_textfile_writes_coalesce_and_the_writer_sleeps_between_changes(
        setup: tuple[Settings, dict[str, CertVersion]], monkeypatch: pytest.MonkeyPatch) -> None:
    """A burst of events is one write (at most one per min_interval), a lone change is written
    at once, and between changes the writer thread does not wake up at all."""
    import threading
    import time

    from mamoru.observe.events import Event

    settings, _ = setup
    storage = FileStorage(settings.paths.state, settings.paths.live)
    written: list[float] = []
    real = MetricsSink.write_textfile

    def counting(self: MetricsSink) -> None:
        written.append(time.monotonic())
        real(self)

    monkeypatch.setattr(MetricsSink, "write_textfile", counting)
    sink = MetricsSink(settings, storage, serve=False, min_interval=0.4)
    try:
        deadline = time.monotonic() + 5
        while not written and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(written) == 1  # the state at start
        writer = next(t for t in threading.enumerate() if t.name == "metrics-textfile")
        switches = Path(f"/proc/self/task/{writer.native_id}/status")

        def wakeups() -> int:
            line = next(x for x in switches.read_text().splitlines()
                        if x.startswith("voluntary_ctxt_switches"))
            return int(line.split()[1])

        time.sleep(0.05)  # the write is done; the writer waits for a change
        before = wakeups()
        time.sleep(1.0)  # well past min_interval after that write
        assert wakeups() == before  # nothing changed: the writer slept through
        sink.emit(Event("due-check", "clinic", "due"))
        time.sleep(0.15)
        assert len(written) == 2  # a change after a quiet while: written at once
        for _ in range(10):  # a burst right after it
            sink.emit(Event("due-check", "clinic", "due"))
            time.sleep(0.01)
        time.sleep(0.1)
        assert len(written) == 2  # ... waits for min_interval after the last write
        time.sleep(0.5)
        assert len(written) == 3  # ... and is one write
        assert written[2] - written[1] >= 0.35
    finally:
        sink.close(5)
