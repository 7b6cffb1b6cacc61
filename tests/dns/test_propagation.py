"""The propagation poll: every server asked directly, a short capped backoff, all names of an
order in each round (a DNS responder in the test process plays the nameservers)."""

from __future__ import annotations

import pytest

from mamoru.challenges.dns.base import DnsFailed
from mamoru.challenges.dns.propagation import (
    MAX_DELAY,
    Nameserver,
    parse_server,
    wait_visible,
)
from tests.servers.dns_stub import DnsStub
from tests.servers.ports import free_port


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 3))
        self.now += seconds


@pytest.fixture
def stubs():
    servers = [DnsStub(free_port(udp=True)).start() for _ in range(2)]
    yield servers
    for server in servers:
        server.stop()


def test_backoff_is_short_and_capped_and_the_error_names_the_laggard(stubs) -> None:
    good, lagging = stubs
    good.set_txt("_acme-challenge.a.test", "v1")
    good.set_txt("_acme-challenge.b.test", "v2")
    lagging.set_txt("_acme-challenge.a.test", "v1")
    servers = [Nameserver("ns1.a.test", "127.0.0.1", good.port),
               Nameserver("ns2.a.test", "127.0.0.1", lagging.port)]
    clock = FakeClock()
    with pytest.raises(DnsFailed) as caught:
        wait_visible([("_acme-challenge.a.test", "v1"), ("_acme-challenge.b.test", "v2")],
                     servers, 10, clock=clock, sleep=clock.sleep)
    assert clock.sleeps[:6] == [0.05, 0.1, 0.2, 0.4, 0.8, 1.6]
    assert max(clock.sleeps) == MAX_DELAY and sum(clock.sleeps) == pytest.approx(10)
    message = str(caught.value)
    assert f"ns2.a.test (127.0.0.1:{lagging.port}) lacks 1 value(s) at _acme-challenge.b.test" \
        in message
    assert "ns1.a.test" not in message
    # every round asked the lagging server for both names; the good one only in round one
    rounds = len(clock.sleeps) + 1
    assert len(lagging.queries) == 2 * rounds and len(good.queries) == 2


def test_returns_as_soon_as_every_server_has_every_value(stubs) -> None:
    for stub in stubs:
        stub.set_txt("_acme-challenge.a.test", "v1", "other")
    servers = [Nameserver(str(s.port), "127.0.0.1", s.port) for s in stubs]
    clock = FakeClock()
    assert wait_visible([("_acme-challenge.a.test.", "v1")], servers, 10, clock=clock,
                        sleep=clock.sleep) == 0
    assert clock.sleeps == []


def test_gone_waits_until_no_server_serves_the_value(stubs) -> None:
    stubs[0].set_txt("_acme-challenge.a.test", "v1")
    servers = [Nameserver("x", "127.0.0.1", s.port) for s in stubs]
    clock = FakeClock()
    with pytest.raises(DnsFailed, match="still serves 1 value"):
        wait_visible([("_acme-challenge.a.test", "v1")], servers, 1, gone=True, clock=clock,
                     sleep=clock.sleep)
    stubs[0].clear_txt("_acme-challenge.a.test")
    wait_visible([("_acme-challenge.a.test", "v1")], servers, 1, gone=True)


@pytest.mark.parametrize(("text", "expected"), [
    ("192.0.2.1", ("192.0.2.1", 53)), ("192.0.2.1:5353", ("192.0.2.1", 5353)),
    ("ns1.clinic.example", ("ns1.clinic.example", 53)), ("[2001:db8::1]:54", ("2001:db8::1", 54)),
    ("2001:db8::1", ("2001:db8::1", 53)),
])
def test_parse_server(text: str, expected: tuple[str, int]) -> None:
    assert parse_server(text) == expected
