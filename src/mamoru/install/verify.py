"""Proof that the web server serves the certificate mamoru stored: a TLS handshake per name.

For each of the site's names, connect to the verify address (`server.verify`, default
127.0.0.1:<https port>) with SNI set to that name and compare the leaf certificate the server
sends, byte for byte (DER), with the stored one. Trust does not matter here (the chain was
checked when the certificate was stored); identity does. A reload is asynchronous, so
`wait_until_served` keeps trying, with short pauses, until every name matches or time is up.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from mamoru.check.tls import served_leaf
from mamoru.config.model import Site
from mamoru.netaddr import connect_address
from mamoru.storage import CertVersion

# Pauses between rounds: the first retries come quickly (an nginx reload takes tens of
# milliseconds), later ones back off so a slow server is not hammered.
_PAUSES = (0.01, 0.02, 0.05, 0.1, 0.2)
_MAX_PAUSE = 0.25
HANDSHAKE_TIMEOUT = 3.0
SETTLE = 0.2  # seconds every name must keep serving the new certificate (see wait_until_served)


def leaf_der(cert_pem: bytes) -> bytes:
    """The DER bytes of the first certificate in `cert_pem`."""
    return x509.load_pem_x509_certificate(cert_pem).public_bytes(Encoding.DER)


def verify_address(site: Site) -> tuple[str, int] | None:
    """Where to handshake for `site`, or None when it has no server to prove (type none, or
    type command without an explicit `server.verify`: mamoru cannot guess where a server that
    is not a web server answers TLS)."""
    server = site.server
    if server.type == "none":
        return None
    if server.verify is not None:
        return server.verify
    if server.type == "command":
        return None
    return connect_address(server.listen_https)


def sni_name(name: str) -> str:
    """The SNI to send for a certificate name (a wildcard is probed with one label in place)."""
    return "mamoru-verify" + name[1:] if name.startswith("*.") else name


@dataclass(frozen=True)
class Served:
    """What one handshake returned for one name: the leaf (DER), or why there was none."""

    name: str
    der: bytes | None
    error: str | None = None
    unreachable: bool = False  # no TCP connection at all (refused, timed out, no route)

    def serial(self) -> str | None:
        if self.der is None:
            return None
        return format(x509.load_der_x509_certificate(self.der).serial_number, "x")


def fetch_leaf(address: tuple[str, int], name: str, timeout: float = HANDSHAKE_TIMEOUT
               ) -> Served:
    """One TLS handshake to `address` with SNI `name` (the probe of `mamoru check`, so
    connecting and the handshake together end within `timeout`); never raises. The leaf is
    not trusted, only compared byte for byte."""
    try:
        der = served_leaf(address, sni_name(name), timeout)
    except OSError as error:
        # A TLS error means something answered; anything else below TLS means nobody did.
        return Served(name, None, _reason(error), unreachable=not isinstance(error, ssl.SSLError))
    if not der:
        return Served(name, None, "the server sent no certificate")
    return Served(name, der)


def _reason(error: BaseException) -> str:
    if isinstance(error, ConnectionRefusedError):
        return "connection refused (is the server listening there?)"
    if isinstance(error, TimeoutError | socket.timeout):
        return "no answer in time"
    if isinstance(error, ssl.SSLError):
        return f"TLS handshake failed ({error.reason or error})"
    return getattr(error, "strerror", None) or str(error)


@dataclass
class VerifyReport:
    """The last answer for each name, and the time spent."""

    address: tuple[str, int]
    served: dict[str, Served] = field(default_factory=dict)
    expected: bytes = b""
    duration: float = 0.0
    rounds: int = 0
    stable: bool = False  # every name served `expected` for the whole settle time
    last_wrong: dict[str, Served] = field(default_factory=dict)  # latest other answer per name

    @property
    def mismatched(self) -> list[str]:
        """Names whose latest answer was not the expected certificate."""
        return [n for n, s in self.served.items() if s.der != self.expected]

    @property
    def failed(self) -> list[str]:
        """The names to blame when not stable: the latest round's mismatches, else the names
        that kept switching back to another answer during the settle time."""
        return self.mismatched or list(self.last_wrong)

    @property
    def ok(self) -> bool:
        """The latest round saw the expected certificate on every name."""
        return not self.mismatched


def fetch_leaves(address: tuple[str, int], names: Sequence[str],
                 timeout: float = HANDSHAKE_TIMEOUT) -> dict[str, Served]:
    """One handshake per name, in turn: what each name serves right now."""
    return {name: fetch_leaf(address, name, timeout) for name in names}


def wait_until_served(address: tuple[str, int], names: Sequence[str], expected: bytes, *,
                      timeout: float, settle: float = SETTLE,
                      stop: threading.Event | None = None) -> VerifyReport:
    """Handshake for every name, round after round, until every name has served `expected`
    (DER) in every round for `settle` seconds, or `timeout` seconds pass (or `stop` is set).
    Never raises; the report's `ok` says which.

    Why settle: after a reload the server's old workers keep accepting connections for a
    moment (nginx starts the new workers, then waits 100 ms before telling the old ones to
    leave), so one new-certificate answer proves the new config is loaded, not that every
    visitor now gets it."""
    started = time.monotonic()
    deadline = started + timeout
    waiter = stop or threading.Event()
    report = VerifyReport(address, expected=expected)
    stable_since: float | None = None  # when the current run of all-matching rounds began
    while True:
        report.rounds += 1
        round_started = time.monotonic()
        for name in names:
            remaining = max(0.2, deadline - time.monotonic())
            served = fetch_leaf(address, name, min(HANDSHAKE_TIMEOUT, remaining))
            report.served[name] = served
            if served.der != expected:
                report.last_wrong[name] = served
        now = time.monotonic()
        if not report.ok:
            stable_since = None
        elif stable_since is None:
            stable_since = round_started
        if stable_since is not None and now - stable_since >= settle:
            report.stable = True
            break
        if now >= deadline or waiter.is_set():
            break
        pause = _PAUSES[report.rounds - 1] if report.rounds <= len(_PAUSES) else _MAX_PAUSE
        if stable_since is not None:
            pause = min(pause, stable_since + settle - now)
        # Waiting on an Event, not sleeping: a stop request ends the wait at once.
        if waiter.wait(max(0.0, min(pause, deadline - now))):
            break
    report.duration = time.monotonic() - started
    return report


def served_matches(site: Site, version: CertVersion) -> bool | None:
    """Does the server serve `version` on every name of the site right now? One handshake
    per name, no waiting. None when the site has no server to ask (see verify_address);
    False when any name serves another certificate or cannot be reached."""
    answer = served_state(site, version)
    return None if answer is None else answer == SERVED


SERVED, OTHER, UNREACHABLE = "served", "other", "unreachable"


def served_state(site: Site, version: CertVersion) -> str | None:
    """What the server answers for the site's names right now, one handshake per name:
    SERVED (every name serves `version`), UNREACHABLE (the server is down: see server_down),
    OTHER (some name serves another certificate, fails the handshake, or the TLS port is
    closed while the server answers on its HTTP port). None when there is no server to ask."""
    address = verify_address(site)
    if address is None:
        return None
    expected = leaf_der(version.read("cert.pem"))
    served = fetch_leaves(address, site.domains)
    if all(s.der == expected for s in served.values()):
        return SERVED
    if all(s.unreachable for s in served.values()) and server_down(site) is not None:
        return UNREACHABLE
    return OTHER


def server_down(site: Site, timeout: float = HANDSHAKE_TIMEOUT) -> tuple[str, int] | None:
    """The site's TLS address when the web server looks down: nothing accepts a connection at
    its TLS address nor at its HTTP listen address (a closed TLS port alone is a server that
    does not serve the site yet, and a reload is what fixes that). None when it answers."""
    address = verify_address(site)
    if address is None:
        return None
    others = [connect_address(site.server.listen_http)] if site.server.type != "command" else []
    for where in [address, *others]:
        if where is not None and _accepts(where, timeout):
            return None
    return address


def _accepts(address: tuple[str, int], timeout: float) -> bool:
    try:
        with socket.create_connection(address, timeout=timeout):
            return True
    except OSError:
        return False
