"""A certificate version as mamoru keeps it: four PEM files and the metadata renewal and status
need. Plain data; no I/O beyond reading a version's own files."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from mamoru.errors import StorageError


@dataclass(frozen=True)
class CertVersion:
    """One stored certificate with its key, as files on disk plus parsed metadata."""

    site: str
    number: int
    path: str
    meta: dict[str, Any]

    @property
    def name(self) -> str:
        return f"{self.number:04d}"

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def read(self, name: str) -> bytes:
        with open(self.file(name), "rb") as handle:
            return handle.read()

    @property
    def not_before(self) -> datetime:
        return datetime.fromisoformat(self.meta["not_before"])

    @property
    def not_after(self) -> datetime:
        return datetime.fromisoformat(self.meta["not_after"])

    @property
    def names(self) -> list[str]:
        return list(self.meta.get("names", []))


def cert_meta(cert_pem: bytes, **extra: Any) -> dict[str, Any]:
    """The metadata mamoru keeps beside a certificate (what renewal and status need)."""
    from cryptography import x509  # only when a certificate is stored: status, the daemon's
    # resident process and everything that only reads meta.json never load it

    cert = x509.load_pem_x509_certificate(cert_pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = san.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        names = []
    return {
        "serial": format(cert.serial_number, "x"),
        "names": names,
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "issuer": cert.issuer.rfc4514_string(),
        **extra,
    }


def split_chain(chain_pem: bytes) -> tuple[bytes, bytes]:
    """(leaf PEM, rest of the chain PEM) from a PEM chain as the CA sent it."""
    marker = b"-----END CERTIFICATE-----"
    index = chain_pem.find(marker)
    if index < 0:
        raise StorageError("the CA sent no certificate in PEM form")
    end = index + len(marker)
    leaf = chain_pem[:end].strip() + b"\n"
    rest = chain_pem[end:].strip()
    return leaf, (rest + b"\n") if rest else b""
