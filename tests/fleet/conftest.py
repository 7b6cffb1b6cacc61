"""Fixtures of the fleet tests: one real PostgreSQL per session (a fresh database per test),
the fleet schema migrated with the real `mamoru fleet migrate`, clinics added with the real
`mamoru fleet add-clinic`, and collectors as real `mamoru fleet serve` processes."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import run_mamoru
from tests.servers.fleet import Collector
from tests.servers.postgres import Postgres

_names = itertools.count(1)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    with Postgres() as pg:
        yield pg


@pytest.fixture
def database(postgres: Postgres) -> str:
    url = postgres.create_database(f"fleet_{next(_names)}")
    run_mamoru("fleet", "migrate", "--database", url, check=0)
    return url


@pytest.fixture
def add_clinic(database: str) -> Callable[..., str]:
    def add(name: str, *extra: str) -> str:
        result = run_mamoru("fleet", "add-clinic", name, "--database", database, *extra,
                            check=0)
        return result.stdout.strip()
    return add


@pytest.fixture
def collectors(tmp_path: Path, database: str) -> Iterator[Callable[..., Collector]]:
    started: list[Collector] = []

    def start(*extra: str, workdir: Path | None = None, port: int = 0) -> Collector:
        where = workdir or tmp_path / f"collector{len(started)}"
        where.mkdir(exist_ok=True)
        collector = Collector(where, database, *extra, port=port).start()
        started.append(collector)
        return collector
    yield start
    for collector in started:
        collector.stop()


def snapshot(site: str, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"site": site, "names": [f"{site}.example"],
                            "not_before": "2026-11-01T00:00:00Z",
                            "not_after": "2027-01-30T00:00:00Z",
                            "last_success": "2026-11-01T00:00:00Z",
                            "consecutive_failures": 0}
    body.update(fields)
    return body


@pytest.fixture
def daemons() -> Iterator[Callable[..., Any]]:
    """`mamoru run` processes (scripts/soak_daemon.py's harness), killed by PID at teardown."""
    from tests.e2e.test_daemon import soak

    started: list[Any] = []

    def start(config: Path, log: Path, **kwargs: Any) -> Any:
        daemon = soak.Daemon(config, log, **kwargs).start()
        started.append(daemon)
        return daemon
    yield start
    for daemon in started:
        daemon.cleanup()
