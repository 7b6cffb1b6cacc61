"""What the BIND and Knot launchers share: a TSIG key, zone files, and direct queries and
updates against the running server (to set up a test and to check the zone afterwards).

A test zone ``Zone("clinic.test")`` holds an SOA, ``NS ns1.<zone>``, ``ns1 A 127.0.0.1``,
``@ A 127.0.0.1`` plus the ``records`` lines given (zone-file syntax, relative names).
``updatable=False`` makes a zone that refuses every dynamic update (REFUSED); ``refresh``
sets the SOA refresh and retry (how often a secondary asks the primary for a new serial).

Servers run as an unprivileged user (``bind``/``knot``), so their files live in a private
directory made under /tmp (0700, owned by that user) and removed at stop; their log stays in
the test's workdir.
"""

from __future__ import annotations

import base64
import os
import pwd
import secrets
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.tsig
import dns.tsigkeyring
import dns.update
import dns.zone

from .ports import LOOPBACK

ALGORITHMS = {
    "hmac-sha224": dns.tsig.HMAC_SHA224,
    "hmac-sha256": dns.tsig.HMAC_SHA256,
    "hmac-sha384": dns.tsig.HMAC_SHA384,
    "hmac-sha512": dns.tsig.HMAC_SHA512,
}


@dataclass(frozen=True)
class TestKey:
    __test__: ClassVar[bool] = False  # not a pytest class

    name: str = "mamoru-test"
    algorithm: str = "hmac-sha256"
    secret: str = field(default_factory=lambda: base64.b64encode(secrets.token_bytes(32))
                        .decode("ascii"), repr=False)

    def bind_clause(self) -> str:
        """The key as ``tsig-keygen`` writes it."""
        return (f'key "{self.name}" {{\n\talgorithm {self.algorithm};\n'
                f'\tsecret "{self.secret}";\n}};\n')

    def keyring(self) -> dict[dns.name.Name, dns.tsig.Key]:
        name = dns.name.from_text(self.name)
        return {name: dns.tsig.Key(name, self.secret, ALGORITHMS[self.algorithm])}


@dataclass(frozen=True)
class Zone:
    name: str
    records: Sequence[str] = ()
    updatable: bool = True
    refresh: int = 60  # SOA refresh/retry: how often a secondary polls for a new serial

    def text(self) -> str:
        origin = self.name.rstrip(".") + "."
        lines = [
            f"$ORIGIN {origin}",
            "$TTL 60",
            f"@ IN SOA ns1.{origin} hostmaster.{origin} 1 {self.refresh} {self.refresh} 3600 60",
            f"@ IN NS ns1.{origin}",
            "ns1 IN A 127.0.0.1",
            "@ IN A 127.0.0.1",
            *self.records,
        ]
        return "\n".join(lines) + "\n"


def private_dir(user: str, prefix: str) -> Path:
    """A 0700 directory under /tmp owned by ``user`` (the server drops root to it)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    entry = pwd.getpwnam(user)
    os.chown(path, entry.pw_uid, entry.pw_gid)
    return path


def give(path: Path, user: str, text: str, mode: int = 0o600) -> None:
    path.write_text(text)
    entry = pwd.getpwnam(user)
    os.chown(path, entry.pw_uid, entry.pw_gid)
    path.chmod(mode)


def remove_dir(path: Path | None) -> None:
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)


class AuthoritativeServer:
    """Queries and updates against a started server on 127.0.0.1:``port``."""

    port: int
    key: TestKey
    zones: Sequence[Zone]

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def txt(self, name: str) -> set[str]:
        """The TXT values this server serves at ``name`` (an authoritative query)."""
        query = dns.message.make_query(name, "TXT")
        response = dns.query.tcp(query, LOOPBACK, port=self.port, timeout=5)
        return {b"".join(rdata.strings).decode() for rrset in response.answer
                if rrset.rdtype == dns.rdatatype.TXT for rdata in rrset}

    def zone_txt(self, zone: str) -> dict[str, set[str]]:
        """Every TXT record of ``zone``, read by a zone transfer (AXFR): {name: values}."""
        transferred = dns.zone.from_xfr(dns.query.xfr(LOOPBACK, zone, port=self.port,
                                                      timeout=5))
        out: dict[str, set[str]] = {}
        for name, rdataset in transferred.iterate_rdatasets("TXT"):
            fqdn = name.derelativize(transferred.origin).to_text().rstrip(".")
            out[fqdn] = {b"".join(rdata.strings).decode() for rdata in rdataset}
        return out

    def update(self, zone: str, *, add: Sequence[tuple[str, str]] = (),
               delete: Sequence[tuple[str, str]] = ()) -> None:
        """Add/delete TXT (name, value) pairs with the test key, as an admin would."""
        update = dns.update.UpdateMessage(zone, keyring=self.key.keyring(),
                                          keyalgorithm=ALGORITHMS[self.key.algorithm])
        for name, value in add:
            update.add(dns.name.from_text(name), 60, "TXT", f'"{value}"')
        for name, value in delete:
            update.delete(dns.name.from_text(name), "TXT", f'"{value}"')
        response = dns.query.tcp(update, LOOPBACK, port=self.port, timeout=5)
        if response.rcode() != dns.rcode.NOERROR:
            raise RuntimeError(f"test update refused: {dns.rcode.to_text(response.rcode())}")

    def wait_serving(self, proc_alive, timeout: float = 20.0) -> None:
        """Until every zone answers its SOA over TCP."""
        deadline = time.monotonic() + timeout
        pending = [zone.name for zone in self.zones]
        last: Exception | None = None
        while pending:
            if not proc_alive():
                raise RuntimeError("the DNS server exited while starting")
            try:
                query = dns.message.make_query(pending[0], "SOA")
                response = dns.query.tcp(query, LOOPBACK, port=self.port, timeout=1)
                if response.rcode() == dns.rcode.NOERROR and response.answer:
                    pending.pop(0)
                    continue
            except (OSError, dns.exception.DNSException) as error:
                last = error
            if time.monotonic() > deadline:
                raise TimeoutError(f"zones {pending} not served within {timeout}s ({last})")
            time.sleep(0.05)
