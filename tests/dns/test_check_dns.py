"""check-dns below the CLI: write, see, remove and see gone, against real BIND and Knot."""

from __future__ import annotations

import pytest

from mamoru.challenges.dns.check import check_dns
from tests.dns.conftest import solver_for
from tests.servers.authdns import AuthoritativeServer, TestKey

pytestmark = pytest.mark.e2e

NAMES = ["clinic.test", "*.clinic.test", "delegated.clinic.test"]


def test_a_working_setup_passes_and_leaves_nothing(dns_server: AuthoritativeServer) -> None:
    dns_server.update("clinic.test", add=[("_acme-challenge.clinic.test.", "keep-me")])
    result = check_dns(solver_for(dns_server), solver_for(dns_server), NAMES, 10)
    assert result.ok, result.error
    assert result.records == ("_acme-challenge.clinic.test",
                              "_acme-challenge.delegated.clinic.test")
    assert result.published_seconds is not None and result.removed_seconds is not None
    assert dns_server.zone_txt("clinic.test") == {"_acme-challenge.clinic.test": {"keep-me"}}
    assert dns_server.zone_txt("challenges.test") == {}


def test_a_wrong_key_is_found_at_setup(dns_server: AuthoritativeServer) -> None:
    solver = solver_for(dns_server, key=TestKey(name=dns_server.key.name))
    result = check_dns(solver, solver, NAMES, 10)
    assert not result.ok and result.error is not None
    assert "BADSIG" in str(result.error) and result.published_seconds is None
    assert dns_server.zone_txt("clinic.test") == {}


def test_a_nameserver_that_never_sees_it(bind_factory) -> None:
    primary, never = bind_factory(), bind_factory()
    solver = solver_for(primary, nameservers=[primary.address, never.address])
    result = check_dns(solver, solver, ["clinic.test"], 1)
    assert not result.ok and never.address in str(result.error)
    assert primary.zone_txt("clinic.test") == {}
