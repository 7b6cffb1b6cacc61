"""A clinic's outbox against the real collector: a backlog of thousands of records (a clinic
offline for days) streams in while the collector is killed (kill -9) in the middle and
restarted; in the end every record is stored exactly once, in order."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from mamoru.config import load_config_text
from mamoru.observe.events import Events
from mamoru.observe.outbox import FleetSink
from mamoru.storage import FileStorage
from tests.servers.fleet import Collector

pytestmark = pytest.mark.e2e

BACKLOG = 4000


def stored(database: str) -> tuple[int, int, int]:
    with psycopg.connect(database) as conn:
        row = conn.execute("SELECT count(*), count(DISTINCT seq), coalesce(max(seq), 0) "
                           "FROM event WHERE kind <> 'snapshot'").fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


def test_a_backlog_survives_the_collector_killed_mid_stream(
        tmp_path: Path, database: str, add_clinic: Callable[..., str],
        collectors: Callable[..., Collector]) -> None:
    collector = collectors(workdir=tmp_path / "vendor")
    token = tmp_path / "fleet.token"
    token.write_text(add_clinic("tanaka-clinic") + "\n")
    token.chmod(0o600)
    settings = load_config_text(f"""\
acme: {{directory: "https://ca.example/dir", contact: "a@clinic.example"}}
paths: {{state: {tmp_path}/state, live: {tmp_path}/live}}
sites: {{www: {{domains: [www.clinic.example], challenge: {{webroot: {tmp_path}/www}}}}}}
fleet: {{url: "{collector.url}", token_file: {token}, ca_bundle: {collector.ca_pem},
        clinic: tanaka-clinic, batch: 50, heartbeat_minutes: 0.05}}
""")
    storage = FileStorage(settings.paths.state, settings.paths.live)
    collector.stop()
    offline = FleetSink(settings, storage, push=False)  # the clinic, offline, keeps working
    events = Events([offline])
    for i in range(BACKLOG):
        events.emit("skipped", "www", f"not due ({i})", next_due="2027-01-01T00:00:00Z")
    assert offline.outbox.lag()["waiting"] == BACKLOG

    collector = collectors(workdir=tmp_path / "vendor", port=collector.port)
    pusher = FleetSink(settings, storage, push=True)
    try:
        deadline = time.monotonic() + 60
        while stored(database)[0] < BACKLOG // 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        count = stored(database)[0]
        assert 0 < count < BACKLOG, count  # killed in the middle of the stream
        collector.kill()
        time.sleep(2)
        collector = collectors(workdir=tmp_path / "vendor", port=collector.port)
        deadline = time.monotonic() + 120
        while pusher.outbox.lag()["waiting"] and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        pusher.close()
    assert pusher.outbox.lag()["waiting"] == 0
    assert stored(database) == (BACKLOG, BACKLOG, BACKLOG)
    with psycopg.connect(database) as conn:
        messages = [row[0] for row in conn.execute(
            "SELECT body ->> 'message' FROM event WHERE kind <> 'snapshot' ORDER BY seq")]
    assert messages == [f"not due ({i})" for i in range(BACKLOG)]
