"""Fixtures for the dns-01 tests: real BIND 9 and Knot DNS primaries on loopback.

``dns_server`` is parametrized over both implementations; each serves

* ``clinic.test`` (updatable: the key may change TXT records), with
  ``_acme-challenge.delegated.clinic.test CNAME delegated.challenges.test.``;
* ``challenges.test`` (updatable), where that CNAME points: a delegated challenge zone;
* ``refused.test``, which refuses every update.

``bind_factory`` starts more BIND servers (e.g. a second nameserver that lags).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mamoru.challenges.dns.rfc2136 import Rfc2136Solver, parse_tsig_key
from tests.servers.authdns import AuthoritativeServer, TestKey, Zone
from tests.servers.bind import Bind
from tests.servers.knot import Knot

ZONES = [
    Zone("clinic.test", ["_acme-challenge.delegated IN CNAME delegated.challenges.test.",
                         "www IN A 127.0.0.1"]),
    Zone("challenges.test"),
    Zone("refused.test", updatable=False),
]


@pytest.fixture
def tsig_key() -> TestKey:
    return TestKey()


@pytest.fixture
def bind_factory(tmp_path: Path, tsig_key: TestKey) -> Iterator[Callable[..., Bind]]:
    started: list[Bind] = []

    def make(**kwargs: Any) -> Bind:
        kwargs.setdefault("zones", ZONES)
        kwargs.setdefault("key", tsig_key)
        server = Bind(tmp_path / f"bind{len(started)}", **kwargs)
        started.append(server)
        return server.start()

    yield make
    for server in reversed(started):
        server.stop()


@pytest.fixture(params=["bind", "knot"])
def dns_server(request: pytest.FixtureRequest, tmp_path: Path,
               tsig_key: TestKey) -> Iterator[AuthoritativeServer]:
    cls = Bind if request.param == "bind" else Knot
    with cls(tmp_path / request.param, zones=ZONES, key=tsig_key) as server:
        yield server


def solver_for(server: AuthoritativeServer, key: TestKey | None = None,
               **kwargs: Any) -> Rfc2136Solver:
    key = key or server.key
    kwargs.setdefault("nameserver_port", server.port)
    return Rfc2136Solver(server.address, parse_tsig_key(key.bind_clause(), name=key.name),
                         **kwargs)
