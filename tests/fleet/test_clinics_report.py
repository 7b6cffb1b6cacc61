"""Clinics reporting for real: `mamoru run` daemons against Pebble push every event and their
sites' snapshots into a real `mamoru fleet serve` on a real PostgreSQL, through a collector
killed (kill -9) and restarted while batches flow and a database down for a while; in the
end the collector holds every event of each clinic's own event log exactly once, in order."""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.e2e.test_daemon import soak, standalone
from tests.helpers import run_mamoru, write_config
from tests.servers.fleet import Collector
from tests.servers.pebble import Pebble
from tests.servers.postgres import Postgres

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def clinic_config(where: Path, pebble: Pebble, collector: Collector, clinic: str, token: str,
                  sites: tuple[str, ...]) -> Path:
    where.mkdir()
    token_file = where / "fleet.token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    return write_config(where, pebble.directory_url, pebble.ca_bundle,
                        standalone(pebble, *sites), extra={"fleet": {
                            "url": collector.url, "token_file": str(token_file),
                            "ca_bundle": str(collector.ca_pem), "clinic": clinic,
                            "heartbeat_minutes": 0.05, "snapshot_minutes": 1}})


def log_events(where: Path) -> list[dict[str, Any]]:
    return list(soak.read_events(where / "log" / "events.jsonl"))


def stored(database: str, clinic: str) -> list[tuple[int, dict[str, Any]]]:
    with psycopg.connect(database) as conn:
        return [(seq, body) for seq, body in conn.execute(
            "SELECT e.seq, e.body FROM event e JOIN clinic c ON c.id = e.clinic_id "
            "WHERE c.name = %s AND e.kind <> 'snapshot' ORDER BY e.seq", (clinic,))]


def fleet_status(database: str) -> dict[str, Any]:
    result = run_mamoru("fleet", "status", "--json", "--database", database)
    data: dict[str, Any] = json.loads(result.stdout)
    return {c["clinic"]: c for c in data["clinics"]}


def wait(what: str, check: Callable[[], Any], timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_daemons_report_through_a_collector_crash_and_a_database_outage(
        tmp_path: Path, postgres: Postgres, database: str, add_clinic: Callable[..., str],
        collectors: Callable[..., Collector], pebble_factory: Callable[..., Pebble],
        daemons: Callable[..., Any]) -> None:
    collector = collectors(workdir=tmp_path / "vendor")
    clinics = {"tanaka-clinic": ("www", "booking"), "sato-dental": ("www",)}
    configs = {}
    for name, sites in clinics.items():
        pebble = pebble_factory(validity_seconds=30)
        configs[name] = clinic_config(tmp_path / name, pebble, collector, name,
                                      add_clinic(name), sites)
    running = {name: daemons(config, tmp_path / f"{name}.log")
               for name, config in configs.items()}

    def all_sites_known() -> bool:
        status = fleet_status(database)
        return all(
            {s["site"] for s in status[name]["sites"] if s["not_after"]} == set(sites)
            for name, sites in clinics.items())
    wait("every site in fleet status", all_sites_known)

    # kill -9 the collector while clinics push, bring it back on the same port
    collector.kill()
    time.sleep(4)
    collector = collectors(workdir=tmp_path / "vendor", port=collector.port)

    # the database away for a while: the collector answers 503, outboxes fill and wait
    postgres.stop()
    time.sleep(3)
    status, _ = collector.get("/health")
    assert status == 503
    lag = json.loads(run_mamoru("status", "--json", "-c", str(configs["tanaka-clinic"])).stdout)
    assert lag["fleet"]["clinic"] == "tanaka-clinic"
    time.sleep(5)
    postgres.restart()

    # renewals went on meanwhile: wait for fresh events to arrive, then stop the daemons
    wait("renewals after the outage", lambda: all(
        sum(1 for e in log_events(tmp_path / n) if e["kind"] == "renewed") >= 2
        for n in clinics), timeout=90)
    for daemon in running.values():
        code, _ = daemon.stop()
        assert code == 0

    for name in clinics:
        where = tmp_path / name
        expected = log_events(where)
        lag = json.loads(run_mamoru("status", "--json", "-c", str(configs[name])).stdout)
        assert lag["fleet"]["waiting"] == 0, lag["fleet"]
        assert lag["fleet"]["last_error"] is None
        rows = stored(database, name)
        seqs = [seq for seq, _ in rows]
        assert len(seqs) == len(set(seqs))
        got = Counter(json.dumps(body, sort_keys=True) for _, body in rows)
        want = Counter(json.dumps(event, sort_keys=True) for event in expected)
        assert got == want, (f"{name}: missing {sum((want - got).values())}, "
                             f"extra {sum((got - want).values())}")
        # the outbox's order is the event log's order
        assert [body["time"] for _, body in rows] == [e["time"] for e in expected]
        assert "Traceback" not in (tmp_path / f"{name}.log").read_text()

    status = fleet_status(database)
    for name, sites in clinics.items():
        assert {s["site"] for s in status[name]["sites"]} == set(sites)
        for site in status[name]["sites"]:
            assert site["last_renewal"] and site["failing_since"] is None
    assert os.stat(tmp_path / "tanaka-clinic" / "state" / "fleet-outbox" / "outbox.jsonl"
                   ).st_mode & 0o077 == 0


def test_a_clinic_whose_collector_is_gone_still_renews(
        tmp_path: Path, database: str, add_clinic: Callable[..., str],
        collectors: Callable[..., Collector], pebble: Pebble) -> None:
    """`mamoru provision` with the collector stopped: the certificate is issued at once,
    the events wait in the outbox, and status says how many."""
    collector = collectors()
    config = clinic_config(tmp_path / "c", pebble, collector, "tanaka-clinic",
                           add_clinic("tanaka-clinic"), ("www",))
    collector.stop()
    started = time.monotonic()
    run_mamoru("provision", "-c", str(config), check=0)
    assert time.monotonic() - started < 30
    lag = json.loads(run_mamoru("status", "--json", "-c", str(config)).stdout)["fleet"]
    assert lag["waiting"] >= 3 and "could not reach" in (lag["last_error"] or "")
    text = run_mamoru("status", "-c", str(config)).stdout
    assert "records waiting since" in text

