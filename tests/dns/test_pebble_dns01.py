"""dns-01 end to end: Pebble resolves through a real BIND (`-dnsserver`), mamoru publishes the
TXT records there by RFC 2136 and Pebble validates them; the certificate chains to Pebble's
root. Also the time of a 20-name dns-01 order (bound by the propagation poll, no sleeps)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import pytest
from cryptography import x509

from mamoru.challenges.dns.base import CHALLENGE_TYPE, DnsSolver, DnsTask, Waiter, publish
from mamoru.protocol.keys import generate_key, make_csr_der
from mamoru.protocol.session import AcmeSession
from tests.dns.conftest import solver_for
from tests.helpers import verify_chain
from tests.servers.pebble import Pebble

pytestmark = pytest.mark.e2e


def obtain_dns01(session: AcmeSession, names: list[str], solver: DnsSolver,
                 waiter: Waiter | None, timeout: float = 60) -> tuple[bytes, dict[str, float]]:
    """One order the way issuance runs it: every dns-01 record of the order published in one
    batch, one propagation wait, every challenge answered together, cleanup always."""
    timings: dict[str, float] = {}
    started = time.monotonic()
    deadline = started + timeout
    order = session.new_order(names)
    challenges = session.pending_challenges(order, CHALLENGE_TYPE)
    tasks = [DnsTask.for_key_authorization(c.identifier, c.key_authorization)
             for c in challenges]
    timings["challenges fetched"] = time.monotonic() - started
    with contextlib.ExitStack() as cleanup:
        publish(solver, waiter, tasks, timeout, cleanup)
        timings["published and seen"] = time.monotonic() - started
        for challenge in challenges:
            session.answer(challenge)
        session.wait_authorizations(order, challenges, deadline)
        timings["validated"] = time.monotonic() - started
    key = generate_key("ec-p256")
    chain = session.finalize(order, make_csr_der(key, names), deadline)
    timings["issued"] = time.monotonic() - started
    return chain, timings


@pytest.fixture
def pebble_on_bind(bind_factory: Callable[..., Any],
                   pebble_factory: Callable[..., Pebble]) -> tuple[Pebble, Any, AcmeSession]:
    bind = bind_factory()
    pebble = pebble_factory(dns_server=bind.address)
    session = AcmeSession(pebble.directory_url, ca_bundle=pebble.ca_bundle, timeout=10)
    session.use_account(generate_key("ec-p256"))
    return pebble, bind, session


def test_wildcard_and_apex_certificate_through_bind(pebble_on_bind: Any) -> None:
    pebble, bind, session = pebble_on_bind
    _wildcard_and_apex(pebble, bind, session)


def test_wildcard_and_apex_certificate_through_knot(
        tmp_path: Any, tsig_key: Any, pebble_factory: Callable[..., Pebble]) -> None:
    from tests.dns.conftest import ZONES
    from tests.servers.knot import Knot

    with Knot(tmp_path / "knot", zones=ZONES, key=tsig_key) as knot:
        pebble = pebble_factory(dns_server=knot.address)
        session = AcmeSession(pebble.directory_url, ca_bundle=pebble.ca_bundle, timeout=10)
        session.use_account(generate_key("ec-p256"))
        _wildcard_and_apex(pebble, knot, session)


def _wildcard_and_apex(pebble: Pebble, bind: Any, session: AcmeSession) -> None:
    solver = solver_for(bind)
    names = ["clinic.test", "*.clinic.test"]
    chain, _ = obtain_dns01(session, names, solver, solver)
    for name in ("clinic.test", "www.clinic.test"):
        leaf = verify_chain(chain, pebble.root_pem(), name)
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(sans.get_values_for_type(x509.DNSName)) == ["*.clinic.test", "clinic.test"]
    assert bind.zone_txt("clinic.test") == {}  # both values removed after the order
    assert f"Using custom DNS resolver for ACME challenges: {bind.address}" in pebble.log_text()


def test_a_record_never_published_fails_validation_at_pebble(pebble_on_bind: Any) -> None:
    """The negative control: the same order with a solver that publishes nothing is refused
    by Pebble, so the test above really depends on BIND's records."""
    _, _, session = pebble_on_bind

    class Nothing:
        challenge_type = CHALLENGE_TYPE

        def present(self, tasks: Any) -> None:
            pass

        def cleanup(self, tasks: Any) -> None:
            pass

    from mamoru.errors import ChallengeFailed
    with pytest.raises(ChallengeFailed) as caught:
        obtain_dns01(session, ["clinic.test"], Nothing(), None, timeout=30)
    assert "_acme-challenge.clinic.test" in str(caught.value)


@pytest.mark.slow
def test_twenty_names_in_one_order(pebble_on_bind: Any, capsys: pytest.CaptureFixture[str]
                                   ) -> None:
    pebble, bind, session = pebble_on_bind
    solver = solver_for(bind)
    names = [f"n{i}.clinic.test" for i in range(20)]
    chain, timings = obtain_dns01(session, names, solver, solver)
    verify_chain(chain, pebble.root_pem(), "n19.clinic.test")
    assert bind.zone_txt("clinic.test") == {}
    with capsys.disabled():
        print("\n20-name dns-01 order against BIND (seconds from newOrder): " +
              ", ".join(f"{step} {seconds:.2f}" for step, seconds in timings.items()))
    assert timings["issued"] < 30
