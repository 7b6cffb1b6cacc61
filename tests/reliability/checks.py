"""Checks shared by the reliability tests and the scripts (scripts/killnine.py): is a site's
live pair whole and matching, and did a secret end up somewhere it should not be.
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

LIVE_FILES = ("privkey.pem", "cert.pem", "chain.pem", "fullchain.pem", "meta.json")
_SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


class Inconsistent(AssertionError):
    """live/<site> is not a whole, matching key and certificate pair."""


def check_live(live_dir: str | Path, site: str) -> str:
    """Check live/<site> the way a web server would use it; returns the leaf's serial (hex).

    The symlink must be relative and resolve to a complete version directory; privkey.pem
    must be the private half of cert.pem; fullchain.pem must be cert.pem followed by
    chain.pem; meta.json must name the same serial. Raises Inconsistent saying what is wrong.
    """
    link = Path(live_dir) / site
    if not link.is_symlink():
        raise Inconsistent(f"{link} is not a symlink")
    target = os.readlink(link)
    if os.path.isabs(target):
        raise Inconsistent(f"{link} -> {target} is absolute (moving the tree would break it)")
    version = link.resolve()
    if not version.is_dir():
        raise Inconsistent(f"{link} -> {target} does not resolve to a directory")
    present = sorted(os.listdir(version))
    missing = [name for name in LIVE_FILES if name not in present]
    if missing:
        raise Inconsistent(f"{version} lacks {', '.join(missing)} (has {present})")
    cert_pem = (version / "cert.pem").read_bytes()
    chain_pem = (version / "chain.pem").read_bytes()
    fullchain = (version / "fullchain.pem").read_bytes()
    try:
        leaf = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key((version / "privkey.pem").read_bytes(), None)
        chain = x509.load_pem_x509_certificates(fullchain)
    except ValueError as error:
        raise Inconsistent(f"{version}: unreadable PEM: {error}") from None
    if key.public_key().public_bytes(*_SPKI) != leaf.public_key().public_bytes(*_SPKI):
        raise Inconsistent(f"{version}: privkey.pem does not match cert.pem")
    if not fullchain.startswith(cert_pem) or fullchain != cert_pem + chain_pem:
        raise Inconsistent(f"{version}: fullchain.pem is not cert.pem + chain.pem")
    if len(chain) < 2:
        raise Inconsistent(f"{version}: fullchain.pem holds no intermediate")
    try:
        meta = json.loads((version / "meta.json").read_text())
    except ValueError as error:
        raise Inconsistent(f"{version}: meta.json is not JSON: {error}") from None
    serial = format(leaf.serial_number, "x")
    if meta.get("serial") != serial:
        raise Inconsistent(f"{version}: meta.json serial {meta.get('serial')} != {serial}")
    return serial


def check_jsonl(path: str | Path) -> int:
    """Every line of the event log is one whole JSON object; returns the line count."""
    count = 0
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            try:
                event = json.loads(line)
            except ValueError:
                raise Inconsistent(f"{path}:{number}: not a whole JSON line: {line!r}") from None
            if not isinstance(event, dict) or "kind" not in event:
                raise Inconsistent(f"{path}:{number}: not an event: {line!r}")
            count += 1
    return count


# --- secrets ----------------------------------------------------------------------------------

PEM_PRIVATE = re.compile(rb"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----")
# Pebble logs every http-01 fetch: "Attempting to validate w/ HTTP: http://NAME:PORT/.well-known/
# acme-challenge/TOKEN" — the authoritative list of the tokens a run used.
PEBBLE_TOKEN = re.compile(rb"/\.well-known/acme-challenge/([A-Za-z0-9_-]{16,})")
KEY_FILE_NAMES = {"privkey.pem", "key.pem"}


@dataclass(frozen=True)
class Finding:
    path: str
    what: str
    offset: int

    def __str__(self) -> str:
        return f"{self.path}@{self.offset}: {self.what}"


def walk_files(roots: Iterable[str | Path], skip_dirs: Iterable[str | Path] = ()) -> Iterator[Path]:
    """Every regular file under `roots` (symlinks not followed), except under `skip_dirs`."""
    skip = {os.path.realpath(s) for s in skip_dirs}
    for root in roots:
        for directory, dirnames, filenames in os.walk(root):
            if os.path.realpath(directory) in skip:
                dirnames[:] = []
                continue
            dirnames[:] = [d for d in dirnames
                           if os.path.realpath(os.path.join(directory, d)) not in skip]
            for name in filenames:
                path = Path(directory) / name
                if path.is_file() and not path.is_symlink():
                    yield path


def key_fingerprints(pem: bytes) -> dict[str, bytes]:
    """Strings that identify a private key in the encodings a leak would likely use, all cut
    from its secret part (the EC private value, the RSA private exponent), never from the
    header every key of a type shares or from the public key: that secret in base64url (a JWK
    "d"), and the stretch of the PKCS#8 DER's base64 and base64url that covers it, as one line
    and as laid out in the PEM (64 characters a line)."""
    key = serialization.load_pem_private_key(pem, None)
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    if isinstance(key, ec.EllipticCurvePrivateKey):
        value = key.private_numbers().private_value
    elif isinstance(key, rsa.RSAPrivateKey):
        value = key.private_numbers().d
    else:
        raise TypeError(f"not a key mamoru makes: {type(key).__name__}")
    secret = value.to_bytes((value.bit_length() + 7) // 8, "big")
    at = der.find(secret)
    assert at > 0, "the private value is not in the DER"
    out = {"JWK d": base64.urlsafe_b64encode(secret).rstrip(b"=")[:32]}
    first = -(-at // 3) * 3  # the first whole base64 group inside the secret
    length = 18  # bytes: 24 characters, 144 bits
    assert first + length <= at + len(secret)
    start = first // 3 * 4
    out["DER base64"] = base64.b64encode(der)[start:start + 24]
    out["DER base64url"] = base64.urlsafe_b64encode(der)[start:start + 24]
    while start % 64 + 24 > 64:  # keep the PEM's stretch on one of its lines
        first += 3
        start += 4
    assert first + length <= at + len(secret)
    body = b"".join(line for line in pem.splitlines() if not line.startswith(b"-----"))
    out["PEM body"] = body[start:start + 24]
    assert out["PEM body"] in pem
    return out


def scan(files: Iterable[Path], secrets: dict[bytes, str], *, tokens: Iterable[bytes] = (),
         texts: dict[str, bytes] | None = None) -> list[Finding]:
    """Search `files` and captured `texts` (name -> bytes) for:

    * any PEM private key block, and each secret string in `secrets` (value -> label), except
      in files named privkey.pem or key.pem (a key's home);
    * each ACME token in `tokens` (or the key authorization that starts with it), anywhere.
    """
    tokens = [t for t in set(tokens) if t]
    findings: list[Finding] = []

    def look(name: str, data: bytes, is_key_file: bool) -> None:
        if not is_key_file:
            for match in PEM_PRIVATE.finditer(data):
                findings.append(Finding(name, "PEM private key block", match.start()))
        for value, label in secrets.items():
            if not value or is_key_file:
                continue
            index = data.find(value)
            if index >= 0:
                findings.append(Finding(name, label, index))
        for token in tokens:
            index = data.find(token)
            if index >= 0:
                findings.append(Finding(name, f"ACME token {token[:8].decode()}...", index))

    for path in files:
        try:
            data = path.read_bytes()
        except OSError:
            continue
        look(str(path), data, path.name in KEY_FILE_NAMES)
    for name, data in (texts or {}).items():
        look(name, data, False)
    return findings
