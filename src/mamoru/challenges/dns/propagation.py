"""Wait until every authoritative nameserver of a zone serves every TXT value of an order.

The CA asks the zone's authoritative servers (through its own resolver); a record that the
primary has but a lagging secondary lacks fails validation at random. So mamoru asks each
authoritative server directly (never the local stub resolver, which may refuse or cache), for
every name of the order together, polling with a short capped backoff until all of them answer
with every value, or until the timeout, when the error names the servers still lagging.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.resolver

from mamoru.challenges.dns.base import DnsFailed, DnsTask

log = logging.getLogger(__name__)

FIRST_DELAY = 0.05  # seconds between the first polls: a primary's own update shows at once
MAX_DELAY = 2.0  # the cap: a secondary that lags by minutes is still seen within 2 s
QUERY_TIMEOUT = 3.0


@dataclass(frozen=True)
class Nameserver:
    """One authoritative server to ask: its name in the NS set (or the address as configured)
    and where to send the query."""

    name: str
    address: str
    port: int = 53

    def __str__(self) -> str:
        where = f"{self.address}:{self.port}" if self.port != 53 else self.address
        return where if self.name in (self.address, where) else f"{self.name} ({where})"


def parse_server(text: str, default_port: int = 53) -> tuple[str, int]:
    """`host`, `host:port`, `[v6]:port` or a bare IPv6 address -> (host, port)."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else default_port
    if text.count(":") == 1:
        host, port = text.split(":")
        return host, int(port)
    return text, default_port


def resolve_address(host: str) -> list[str]:
    """Addresses of a server name (an address is returned as is)."""
    try:
        infos = socket.getaddrinfo(host, 53, proto=socket.IPPROTO_UDP)
    except socket.gaierror:
        return []
    return sorted({str(info[4][0]) for info in infos})


def query(qname: str, rdtype: str, address: str, port: int,
          timeout: float = QUERY_TIMEOUT) -> dns.message.Message:
    """One non-recursive query, over UDP with a retry over TCP when the answer is truncated."""
    message = dns.message.make_query(qname, rdtype)
    message.flags &= ~dns.flags.RD  # ask the server itself, not what it may have cached
    response, _ = dns.query.udp_with_fallback(message, address, timeout=timeout, port=port)
    return response


def nameservers_of(zone: str, primary: tuple[str, int], *, port: int = 53,
                   timeout: float = QUERY_TIMEOUT) -> list[Nameserver]:
    """The zone's NS set as the primary serves it, each with its glue (or, for a name outside
    the zone, its address from the system resolver). `port` is where those servers answer."""
    host, primary_port = primary
    try:
        response = query(zone, "NS", host, primary_port, timeout)
    except (dns.exception.DNSException, OSError) as error:
        raise DnsFailed(f"cannot ask the primary {host}:{primary_port} for the NS set of "
                        f"{zone}: {error}") from None
    names = [str(rdata.target).rstrip(".").lower()
             for rrset in response.answer if rrset.rdtype == dns.rdatatype.NS for rdata in rrset]
    if not names:
        raise DnsFailed(f"the primary {host}:{primary_port} serves no NS records for {zone} "
                        f"({dns.rcode.to_text(response.rcode())})",
                        hint="Check the zone name, or list the nameservers to check in "
                        "propagation.nameservers.")
    glue: dict[str, list[str]] = {}
    for rrset in response.additional:
        if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            owner = str(rrset.name).rstrip(".").lower()
            glue.setdefault(owner, []).extend(str(rdata) for rdata in rrset)
    servers: list[Nameserver] = []
    for name in sorted(set(names)):
        addresses = glue.get(name) or _addresses_at(name, host, primary_port, timeout) \
            or resolve_address(name)
        if not addresses:
            raise DnsFailed(f"the nameserver {name} of {zone} has no address",
                            hint="Add its A/AAAA record, or list the nameservers to check "
                            "in propagation.nameservers.")
        servers.extend(Nameserver(name, address, port) for address in addresses)
    return servers


def _addresses_at(name: str, host: str, port: int, timeout: float) -> list[str]:
    found: list[str] = []
    for rdtype in ("A", "AAAA"):
        try:
            response = query(name, rdtype, host, port, timeout)
        except (dns.exception.DNSException, OSError):
            continue
        found.extend(str(rdata) for rrset in response.answer
                     if rrset.rdtype == dns.rdatatype.from_text(rdtype) for rdata in rrset)
    return found


def _missing_at(server: Nameserver, wanted: dict[str, set[str]],
                gone: bool = False) -> dict[str, set[str]]:
    """What `server` does not serve yet: {record name: values missing} ({} when all there).
    With `gone`, what it still serves of `wanted` ({} when none of it)."""
    missing: dict[str, set[str]] = {}
    for name, values in wanted.items():
        try:
            response = query(name, "TXT", server.address, server.port)
        except (dns.exception.DNSException, OSError) as error:
            log.debug("propagation: %s did not answer for %s: %s", server, name, error)
            missing[name] = set(values)
            continue
        served = {b"".join(rdata.strings).decode("ascii", "replace")
                  for rrset in response.answer
                  if rrset.rdtype == dns.rdatatype.TXT
                  and str(rrset.name).rstrip(".").lower() == name
                  for rdata in rrset}
        lacking = values & served if gone else values - served
        if lacking:
            missing[name] = lacking
    return missing


def wait_visible(records: Iterable[tuple[str, str]], servers: Sequence[Nameserver],
                 timeout: float, *, gone: bool = False,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> float:
    """Poll `servers` until each serves every (record name, value) of `records` (with
    `gone`: until none serves any of them any more); return the seconds it took. Raises
    DnsFailed naming each lagging server and what it lacks (or still has)."""
    wanted: dict[str, set[str]] = {}
    for name, value in records:
        wanted.setdefault(name.rstrip(".").lower(), set()).add(value)
    if not wanted:
        return 0.0
    if not servers:
        raise DnsFailed("no authoritative nameserver to check the dns-01 records on")
    start = clock()
    deadline = start + timeout
    delay = FIRST_DELAY
    pending = list(servers)
    lacking: dict[Nameserver, dict[str, set[str]]] = {}
    with ThreadPoolExecutor(max_workers=min(8, len(pending)),
                            thread_name_prefix="dns-01 check") as pool:
        while True:
            results = list(pool.map(lambda server: _missing_at(server, wanted, gone), pending))
            lacking = {server: missing for server, missing in zip(pending, results, strict=True)
                       if missing}
            pending = list(lacking)
            if not pending:
                took = clock() - start
                log.debug("propagation: %d name(s) on %d server(s) after %.2f s",
                          len(wanted), len(servers), took)
                return took
            now = clock()
            if now >= deadline:
                break
            sleep(min(delay, deadline - now))
            delay = min(delay * 2, MAX_DELAY)
    verb = "still serves" if gone else "lacks"
    details = "; ".join(
        f"{server} {verb} " + ", ".join(f"{len(values)} value(s) at {name}"
                                        for name, values in sorted(missing.items()))
        for server, missing in lacking.items())
    if gone:
        raise DnsFailed(f"after {timeout:g} s, {len(lacking)} of {len(servers)} authoritative "
                        f"nameserver(s) still serve removed dns-01 TXT values: {details}",
                        hint="The removal did not reach every nameserver: check zone "
                        "transfers from the primary to its secondaries.")
    raise DnsFailed(
        f"after {timeout:g} s, {len(lacking)} of {len(servers)} authoritative nameserver(s) "
        f"still do not serve the dns-01 TXT records: {details}",
        hint="A secondary that lags is usually not notified by the primary (check also-notify "
        "and zone transfers), or raise propagation_timeout.")


def zone_of(name: str, address: str, port: int, timeout: float = QUERY_TIMEOUT) -> str:
    """The zone that holds `name` on the server at address:port, from the SOA it returns for
    the name (in the answer at the apex, else in the authority section)."""
    try:
        response = query(name, "SOA", address, port, timeout)
    except (dns.exception.DNSException, OSError) as error:
        raise DnsFailed(f"cannot ask {address}:{port} which zone holds {name}: {error}",
                        hint="Check rfc2136.server (host:port of the primary).") from None
    for section in (response.answer, response.authority):
        for rrset in section:
            if rrset.rdtype == dns.rdatatype.SOA:
                return str(rrset.name).rstrip(".").lower()
    rcode = dns.rcode.to_text(response.rcode())
    raise DnsFailed(f"{address}:{port} is not authoritative for {name} (it answered {rcode} "
                    "without an SOA record)",
                    hint="Point rfc2136.server at the zone's primary, or set rfc2136.zone.")


def name_in(name: str, zone: str) -> bool:
    return dns.name.from_text(name).is_subdomain(dns.name.from_text(zone))


class PropagationWaiter:
    """The Waiter for solvers that only write records (hook, lexicon): each name's zone, its
    NS set and their addresses come from the resolver (`resolver` "host[:port]", else the
    system's), unless `nameservers` ("host[:port]" each) names the servers to ask. The
    records are then asked of those servers directly; `port` is where found servers answer."""

    def __init__(self, nameservers: Sequence[str] = (), *, resolver: str | None = None,
                 port: int = 53) -> None:
        self.nameservers = [Nameserver(text, *parse_server(text, port)) for text in nameservers]
        self.port = port
        self.resolver = dns.resolver.Resolver(configure=resolver is None)
        if resolver is not None:
            host, resolver_port = parse_server(resolver)
            self.resolver.nameservers = [host]
            self.resolver.port = resolver_port
        self.resolver.lifetime = QUERY_TIMEOUT * 2

    def wait(self, tasks: Sequence[DnsTask], timeout: float, *, gone: bool = False) -> None:
        records = [(task.record_name, task.value) for task in tasks]
        servers = list(self.nameservers)
        if not servers:
            for zone in sorted({self._zone(task.record_name) for task in tasks}):
                for server in self._discover(zone):
                    if server not in servers:
                        servers.append(server)
        wait_visible(records, servers, timeout, gone=gone)

    def _zone(self, name: str) -> str:
        try:
            return str(dns.resolver.zone_for_name(name, resolver=self.resolver)).rstrip(".")
        except dns.exception.DNSException as error:
            raise DnsFailed(f"cannot find the zone of {name} through the resolver: {error}",
                            hint="List the zone's nameservers in propagation.nameservers.",
                            ) from None

    def _discover(self, zone: str) -> list[Nameserver]:
        try:
            answer = self.resolver.resolve(zone, "NS")
        except dns.exception.DNSException as error:
            raise DnsFailed(f"cannot find the nameservers of {zone}: {error}",
                            hint="List them in propagation.nameservers.") from None
        servers: list[Nameserver] = []
        for rdata in answer:
            name = str(rdata.target).rstrip(".").lower()
            addresses = self._addresses(name)
            if not addresses:
                raise DnsFailed(f"the nameserver {name} of {zone} has no address",
                                hint="List the nameservers in propagation.nameservers.")
            servers.extend(Nameserver(name, address, self.port) for address in addresses)
        return servers

    def _addresses(self, name: str) -> list[str]:
        found: list[str] = []
        for rdtype in ("A", "AAAA"):
            try:
                answer = self.resolver.resolve(name, rdtype, raise_on_no_answer=False)
            except dns.exception.DNSException:
                continue
            found.extend(str(rdata) for rdata in answer.rrset or ())
        return found
