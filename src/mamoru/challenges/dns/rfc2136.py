"""dns-01 by RFC 2136 dynamic update, signed with TSIG (RFC 8945), to the zone's primary
(BIND, Knot, PowerDNS, Windows DNS, ...).

Each value is *added* to the TXT set at its name (apex and wildcard need two values at once,
and a record some other process placed there survives); cleanup deletes only the values this
solver added. An `_acme-challenge` CNAME is followed, so the record may live in a delegated
challenge zone. The zone is found by an SOA query to the primary unless the config names it.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.resolver
import dns.rrset
import dns.tsig
import dns.update

from mamoru.challenges.dns.base import CHALLENGE_TYPE, DnsFailed, DnsTask
from mamoru.challenges.dns.propagation import (
    Nameserver,
    nameservers_of,
    parse_server,
    query,
    wait_visible,
    zone_of,
)

log = logging.getLogger(__name__)

ALGORITHMS = {
    "hmac-sha224": dns.tsig.HMAC_SHA224,
    "hmac-sha256": dns.tsig.HMAC_SHA256,
    "hmac-sha384": dns.tsig.HMAC_SHA384,
    "hmac-sha512": dns.tsig.HMAC_SHA512,
}
DEFAULT_ALGORITHM = "hmac-sha256"
MAX_CNAMES = 8

_BIND_KEY = re.compile(r'key\s+"?([^"\s{]+)"?\s*\{(.*?)\}\s*;', re.S)
_BIND_ALGORITHM = re.compile(r"algorithm\s+\"?([\w-]+)\"?\s*;")
_BIND_SECRET = re.compile(r'secret\s+"([^"]+)"\s*;')
_KNOT_KEY = re.compile(r"-\s*id:\s*\"?([^\s\"]+)\"?(.*?)(?=\n\s*-\s*id:|\Z)", re.S)
_KNOT_FIELD = re.compile(r"^\s*(algorithm|secret):\s*\"?([^\s\"]+)\"?\s*$", re.M)


@dataclass(frozen=True)
class TsigKey:
    """A TSIG key. The secret never shows in repr, logs or errors."""

    name: str
    algorithm: str
    secret: bytes = field(repr=False)

    def keyring(self) -> dict[dns.name.Name, dns.tsig.Key]:
        name = dns.name.from_text(self.name)
        return {name: dns.tsig.Key(name, self.secret, ALGORITHMS[self.algorithm])}


def parse_tsig_key(text: str, *, name: str, algorithm: str | None = None,
                   source: str = "the key file") -> TsigKey:
    """A key from the text of a key file: BIND's `key "NAME" { algorithm A; secret "S"; };`
    (as `tsig-keygen` writes it; the clause named `name` when there are several), Knot's
    `key: - id: NAME algorithm: A secret: S` (as `keymgr -t` writes it), or a bare base64
    secret. `algorithm` from the config wins over the file's only when the file has none;
    a disagreement is an error."""
    found: list[tuple[str, str | None, str]] = []
    for match in _BIND_KEY.finditer(text):
        alg = _BIND_ALGORITHM.search(match.group(2))
        secret_match = _BIND_SECRET.search(match.group(2))
        if secret_match:
            found.append((match.group(1), alg.group(1) if alg else None,
                          secret_match.group(1)))
    if not found and re.search(r"^\s*key\s*:", text, re.M):
        for match in _KNOT_KEY.finditer(text):
            fields = dict(_KNOT_FIELD.findall(match.group(2)))
            if "secret" in fields:
                found.append((match.group(1), fields.get("algorithm"), fields["secret"]))
    if found:
        wanted = name.rstrip(".").lower()
        chosen = [entry for entry in found if entry[0].rstrip(".").lower() == wanted]
        if not chosen:
            names = ", ".join(sorted(entry[0] for entry in found))
            raise DnsFailed(f"{source} has no key named {name!r} (it has: {names})",
                            hint="Set rfc2136.key_name to the name in the key file.")
        _, file_algorithm, secret_text = chosen[0]
        if file_algorithm and algorithm and file_algorithm.lower() != algorithm.lower():
            raise DnsFailed(f"{source} says key {name!r} uses {file_algorithm}, but "
                            f"rfc2136.key_algorithm is {algorithm}",
                            hint="Set rfc2136.key_algorithm to the algorithm in the key file.")
        algorithm = file_algorithm or algorithm
    else:
        secret_text = text.strip()
        if not secret_text or any(ch.isspace() for ch in secret_text):
            raise DnsFailed(f"{source} holds neither a key {{}} clause nor a base64 secret",
                            hint="Put the output of `tsig-keygen NAME` in it, or only the "
                            "base64 secret.")
    algorithm = (algorithm or DEFAULT_ALGORITHM).lower()
    if algorithm not in ALGORITHMS:
        raise DnsFailed(f"TSIG algorithm {algorithm!r} is not supported",
                        hint=f"Use one of {', '.join(ALGORITHMS)} (hmac-sha256 is the default).")
    try:
        secret = base64.b64decode(secret_text, validate=True)
    except (binascii.Error, ValueError):
        raise DnsFailed(f"the secret in {source} is not valid base64",
                        hint="Copy the secret exactly as tsig-keygen printed it.") from None
    if not secret:
        raise DnsFailed(f"the secret in {source} is empty")
    return TsigKey(name.rstrip("."), algorithm, secret)


def load_tsig_key(path: str, *, name: str, algorithm: str | None = None) -> TsigKey:
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else "not text"
        raise DnsFailed(f"cannot read the TSIG key file {path}: {reason}",
                        hint="Check rfc2136.key_secret_file; mamoru must be able to read it "
                        "(keep it 0600).") from None
    return parse_tsig_key(text, name=name, algorithm=algorithm, source=path)


@dataclass(frozen=True)
class _Placed:
    zone: str
    name: str  # where the TXT record lives (after CNAMEs), no trailing dot
    value: str


class Rfc2136Solver:
    """dns-01 by dynamic update to `server` ("host[:port]"). Implements DnsSolver and Waiter.

    `nameservers` ("host[:port]" each) replaces the NS set as the list to check for
    propagation; `nameserver_port` is the port of the servers found in the NS set;
    `resolver` ("host[:port]") answers CNAME lookups the primary is not authoritative for
    (default: the system's resolver).
    One instance serves one order at a time (it remembers what it added, for cleanup)."""

    challenge_type = CHALLENGE_TYPE

    def __init__(self, server: str, key: TsigKey, *, zone: str | None = None,
                 nameservers: Sequence[str] = (), nameserver_port: int = 53,
                 resolver: str | None = None, ttl: int = 60, timeout: float = 10.0) -> None:
        self.server = parse_server(server)
        self.resolver = parse_server(resolver) if resolver else None
        self.key = key
        self.zone = zone.rstrip(".").lower() if zone else None
        self.nameservers = [Nameserver(text, *parse_server(text)) for text in nameservers]
        self.nameserver_port = nameserver_port
        self.ttl = ttl
        self.timeout = timeout
        self._placed: dict[tuple[str, str], _Placed] = {}  # (record name, value) -> where
        self._unsent: set[tuple[str, str]] = set()  # given to present(), never sent: not there

    @property
    def _where(self) -> str:
        return f"{self.server[0]}:{self.server[1]}"

    # ---- DnsSolver -------------------------------------------------------------------------

    def present(self, tasks: Sequence[DnsTask]) -> None:
        self._unsent.update((task.record_name, task.value) for task in tasks)
        targets: dict[str, tuple[str, str]] = {}  # record name -> (zone, name after CNAMEs)
        by_zone: dict[str, list[DnsTask]] = {}
        for task in tasks:
            if task.record_name not in targets:
                name = self._follow_cnames(task.record_name)
                targets[task.record_name] = (self._zone_for(name), name)
            by_zone.setdefault(targets[task.record_name][0], []).append(task)
        for zone, zone_tasks in by_zone.items():  # one update message per zone
            update = self._update(zone)
            names = []
            for task in zone_tasks:
                name = targets[task.record_name][1]
                update.add(_relative(name, zone), self.ttl, "TXT", f'"{task.value}"')
                names.append(name)
                # Remembered before sending: if the answer is lost, cleanup still deletes it.
                self._placed[(task.record_name, task.value)] = _Placed(zone, name, task.value)
                self._unsent.discard((task.record_name, task.value))
            self._send(update, zone, names, "add")

    def cleanup(self, tasks: Sequence[DnsTask]) -> list[DnsTask]:
        by_zone: dict[str, dict[tuple[str, str], _Placed]] = {}
        failed: list[DnsTask] = []
        for task in tasks:
            key = (task.record_name, task.value)
            if key in self._unsent:  # present() failed before sending it: nothing to remove
                self._unsent.discard(key)
                continue
            try:
                placed = self._placement(task)
            except DnsFailed as error:
                log.warning("dns-01 cleanup of %s: %s", task.record_name, error)
                failed.append(task)
                continue
            by_zone.setdefault(placed.zone, {})[key] = placed
        for zone, records in by_zone.items():
            update = self._update(zone)
            for placed in records.values():
                update.delete(_relative(placed.name, zone), "TXT", f'"{placed.value}"')
            try:
                self._send(update, zone, [placed.name for placed in records.values()],
                           "delete")
            except DnsFailed as error:
                log.warning("dns-01 cleanup: %s", error)
                failed.extend(task for task in tasks
                              if (task.record_name, task.value) in records)
                continue
            for key in records:
                self._placed.pop(key, None)
        return failed

    # ---- Waiter ----------------------------------------------------------------------------

    def wait(self, tasks: Sequence[DnsTask], timeout: float, *, gone: bool = False) -> None:
        by_zone: dict[str, list[tuple[str, str]]] = {}
        for task in tasks:
            placed = self._placement(task)
            by_zone.setdefault(placed.zone, []).append((placed.name, placed.value))
        servers: list[Nameserver] = []
        records: list[tuple[str, str]] = []
        for zone, zone_records in by_zone.items():
            for server in self.nameservers or nameservers_of(zone, self.server,
                                                             port=self.nameserver_port):
                if server not in servers:
                    servers.append(server)
            records.extend(zone_records)
        wait_visible(records, servers, timeout, gone=gone)

    # ---- helpers ---------------------------------------------------------------------------

    def _placement(self, task: DnsTask) -> _Placed:
        """Where `task`'s value was (or would be) written: remembered from present(), or
        found again (a task of an earlier, killed run; a check after cleanup)."""
        placed = self._placed.get((task.record_name, task.value))
        if placed is None:
            name = self._follow_cnames(task.record_name)
            placed = _Placed(self._zone_for(name), name, task.value)
        return placed

    def _update(self, zone: str) -> dns.update.UpdateMessage:
        return dns.update.UpdateMessage(zone, keyring=self.key.keyring(),
                                        keyname=dns.name.from_text(self.key.name),
                                        keyalgorithm=ALGORITHMS[self.key.algorithm])

    def _follow_cnames(self, name: str) -> str:
        """The name the TXT record must be written at: `name`, or where its CNAME chain ends.
        Each link is asked of the primary; a name the primary is not authoritative for (the
        clinic's zone lives elsewhere and only the challenge zone is here) is asked of the
        resolver (`resolver`, else the system's)."""
        seen = [name]
        for _ in range(MAX_CNAMES):
            target = self._cname_at_primary(name)
            if target is False:
                target = self._cname_via_resolver(name)
            if target is None:
                return name
            if target in seen:
                raise DnsFailed(f"the CNAME chain from {seen[0]} loops: {' -> '.join(seen)}")
            log.debug("dns-01: %s is a CNAME to %s", name, target)
            seen.append(target)
            name = target
        raise DnsFailed(f"the CNAME chain from {seen[0]} is longer than {MAX_CNAMES}")

    def _cname_at_primary(self, name: str) -> str | Literal[False] | None:
        """The CNAME target at `name` as the primary serves it; None when it has none;
        False when the primary is not authoritative for `name`."""
        try:
            response = query(name, "CNAME", *self.server, timeout=self.timeout)
        except (dns.exception.DNSException, OSError) as error:
            raise DnsFailed(f"cannot ask the DNS server {self._where} about {name}: "
                            f"{error}", hint="Check rfc2136.server (host:port of the "
                            "primary that accepts updates) and that it runs.") from None
        target = _cname_in(response.answer, name)
        if target is None and not response.flags & dns.flags.AA:
            return False
        return target

    def _cname_via_resolver(self, name: str) -> str | None:
        resolver = dns.resolver.Resolver(configure=not self.resolver)
        if self.resolver:
            host, port = self.resolver
            resolver.nameservers = [host]
            resolver.port = port
        resolver.lifetime = self.timeout
        try:
            answer = resolver.resolve(name, "CNAME", raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            return None
        except dns.exception.DNSException as error:
            log.debug("dns-01: no CNAME answer for %s from the resolver: %s", name, error)
            return None
        return _cname_in(answer.response.answer, name)

    def _zone_for(self, name: str) -> str:
        if self.zone and dns.name.from_text(name).is_subdomain(dns.name.from_text(self.zone)):
            return self.zone
        return zone_of(name, *self.server, timeout=self.timeout)

    def _send(self, update: dns.update.UpdateMessage, zone: str, names: list[str],
              action: str) -> None:
        host, port = self.server
        what = f"{action} TXT at {', '.join(sorted(set(names)))} in zone {zone}"
        try:
            response = dns.query.tcp(update, host, port=port, timeout=self.timeout)
        except dns.tsig.PeerError as error:
            raise _tsig_failure(error, self.key, self._where, what) from None
        except (dns.exception.DNSException, OSError) as error:
            raise DnsFailed(f"the DNS server {self._where} did not answer the update "
                            f"({what}): {error}",
                            hint="Check rfc2136.server and that the server accepts TCP on "
                            "that port.") from None
        rcode = response.rcode()
        if rcode != dns.rcode.NOERROR:
            raise _rcode_failure(rcode, self.key, self._where, zone, what)
        log.debug("dns-01: %s: %s done", self._where, what)


def _cname_in(section: Sequence[dns.rrset.RRset], name: str) -> str | None:
    for rrset in section:
        if rrset.rdtype == dns.rdatatype.CNAME and str(rrset.name).rstrip(".").lower() == name:
            for rdata in rrset:
                return str(rdata.target).rstrip(".").lower()
    return None


def _relative(name: str, zone: str) -> dns.name.Name:
    return dns.name.from_text(name).relativize(dns.name.from_text(zone))


_TSIG_ERRORS: dict[type[dns.tsig.PeerError], tuple[str, str, str]] = {
    dns.tsig.PeerBadKey: (
        "BADKEY", "the server knows no TSIG key named {name} with {algorithm} for this zone",
        "Make rfc2136.key_name and key_algorithm match the key the server has (BIND: the "
        "key {{}} clause in named.conf; Knot: the key: section of knot.conf, and an acl of "
        "this zone naming the key, or Knot answers BADKEY too)."),
    dns.tsig.PeerBadSignature: (
        "BADSIG", "the server knows key {name} but the signature does not match: the secret "
        "differs", "Copy the secret again from the server's key file into "
        "rfc2136.key_secret_file (and check key_algorithm)."),
    dns.tsig.PeerBadTime: (
        "BADTIME", "the server says this machine's clock is off by more than the TSIG fudge "
        "(5 minutes)", "Synchronise the clocks of this machine and the DNS server (NTP)."),
    dns.tsig.PeerBadTruncation: (
        "BADTRUNC", "the server rejected the truncated TSIG signature of key {name}",
        "Use a full-length key (tsig-keygen -a hmac-sha256)."),
}


def _tsig_failure(error: dns.tsig.PeerError, key: TsigKey, where: str, what: str) -> DnsFailed:
    code, message, hint = next(
        (entry for kind, entry in _TSIG_ERRORS.items() if isinstance(error, kind)),
        ("TSIG error", "the server rejected the TSIG signature of key {name}",
         "Check rfc2136.key_name, key_algorithm and key_secret_file."))
    text = message.format(name=repr(key.name), algorithm=key.algorithm)
    failure = DnsFailed(f"the DNS server {where} refused the update ({what}): NOTAUTH, TSIG "
                        f"error {code}: {text}", hint=hint.format())
    failure.retryable = code == "BADTIME"
    return failure


def _rcode_failure(rcode: dns.rcode.Rcode, key: TsigKey, where: str, zone: str,
                   what: str) -> DnsFailed:
    name = dns.rcode.to_text(rcode)
    if rcode == dns.rcode.REFUSED:
        hint = (f"Allow key {key.name!r} to update TXT records there: BIND "
                f"`update-policy {{ grant {key.name} subdomain {zone}. TXT; }};` in the zone, "
                "Knot an acl with `action: update`, `update-type: TXT` and this key.")
        text = f"the server refused the update ({what}): REFUSED"
    elif rcode == dns.rcode.NOTAUTH:
        hint = ("Point rfc2136.server at the primary of the zone (secondaries do not take "
                "updates), or set rfc2136.zone to the zone it serves.")
        text = f"the server is not authoritative for zone {zone} ({what}): NOTAUTH"
    elif rcode == dns.rcode.NOTZONE:
        hint = "Set rfc2136.zone to the zone that holds the record, or leave it out."
        text = f"the record is outside zone {zone} ({what}): NOTZONE"
    else:
        hint = "Look at the DNS server's log for why it rejected the update."
        text = f"the update failed ({what}): {name}"
    failure = DnsFailed(f"the DNS server {where}: {text}", hint=hint)
    failure.retryable = rcode == dns.rcode.SERVFAIL
    return failure
