"""certbot's state as certbot itself keeps it, read and checked, changing nothing.

    <config_dir>/renewal/NAME.conf               configobj: archive_dir, cert, privkey, chain,
                                                 fullchain, [renewalparams], [[webroot_map]]
    <config_dir>/live/NAME/{cert,privkey,chain,fullchain}.pem -> ../../archive/NAME/<kind>N.pem
    <config_dir>/accounts/<netloc><path>/<id>/{private_key.json (JWK), regr.json, meta.json}

`read_state` returns every lineage it could read whole, and for every other renewal conf the
reason it could not. A lineage is only "read" when all four live links resolve to files of one
archive version inside the certbot directory, the key matches the certificate, and its account
is there: anything less is a `Refusal`, so later steps never see half a lineage.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import configobj  # type: ignore[import-untyped]
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from mamoru.errors import MamoruError

KINDS = ("cert", "privkey", "chain", "fullchain")
_SHA256 = hashes.SHA256()
_ARCHIVE_NAME = re.compile(r"(cert|privkey|chain|fullchain)(\d+)\.pem\Z")


class Unreadable(MamoruError):
    """One lineage cannot be taken over; the message says why in words for the user."""


@dataclass(frozen=True)
class Refusal:
    """A renewal conf mamoru will not import, and why."""

    name: str
    conf_path: str
    reason: str


@dataclass(frozen=True)
class Account:
    """A certbot ACME account: the key as PKCS#8 PEM, its URL at the CA, its directory URL."""

    id: str
    path: str
    server: str
    uri: str
    key_pem: bytes = field(repr=False)
    contact: tuple[str, ...] = ()


@dataclass(frozen=True)
class Lineage:
    """One certbot lineage, read whole: where it lives and what certbot renews it with."""

    name: str
    conf_path: str
    archive_dir: str
    live_links: dict[str, str]  # kind -> the live/NAME/<kind>.pem symlink (from the conf)
    targets: dict[str, str]  # kind -> the archive file it points at (resolved, inside)
    version: int  # N of archive/NAME/<kind>N.pem in service
    params: dict[str, Any]  # [renewalparams] without [[webroot_map]]
    webroot_map: dict[str, str]
    renewal_info: dict[str, Any]  # [acme_renewal_info]
    renew_before_expiry: str | None
    account: Account
    names: tuple[str, ...]  # SAN DNS names of the certificate in service
    digests: dict[str, str] = field(default_factory=dict)  # kind -> sha256 of what was checked

    def read(self, kind: str) -> bytes:
        """The file as it was checked; raises Unreadable when it changed since."""
        with open(self.targets[kind], "rb") as handle:
            data = handle.read()
        if self.digests and hashlib.sha256(data).hexdigest() != self.digests[kind]:
            raise Unreadable(f"{self.targets[kind]} changed while it was being imported")
        return data

    def unchanged(self) -> bool:
        """True while every live link still resolves to the archive file that was checked."""
        return all(os.path.realpath(self.live_links[kind]) == self.targets[kind]
                   for kind in KINDS)


@dataclass(frozen=True)
class CertbotState:
    config_dir: str
    lineages: tuple[Lineage, ...]
    refused: tuple[Refusal, ...]


def read_state(config_dir: str) -> CertbotState:
    """Every lineage under `config_dir` (certbot's --config-dir, /etc/letsencrypt by default)."""
    root = os.path.realpath(config_dir)
    renewal = os.path.join(root, "renewal")
    if not os.path.isdir(renewal):
        raise Unreadable(f"{config_dir} has no renewal/ directory: is it certbot's config "
                         "directory (--from /etc/letsencrypt)?")
    lineages: list[Lineage] = []
    refused: list[Refusal] = []
    accounts: dict[tuple[str, str], Account] = {}
    for entry in sorted(os.listdir(renewal)):
        if not entry.endswith(".conf"):
            continue
        name = entry[:-len(".conf")]
        path = os.path.join(renewal, entry)
        try:
            lineages.append(read_lineage(root, name, path, accounts))
        except Unreadable as why:
            refused.append(Refusal(name, path, str(why)))
    return CertbotState(root, tuple(lineages), tuple(refused))


def read_conf(path: str) -> configobj.ConfigObj:
    """A renewal conf parsed by configobj, as certbot writes and reads it."""
    try:
        return configobj.ConfigObj(path, encoding="utf-8", file_error=True,
                                   default_encoding="utf-8")
    except (OSError, configobj.ConfigObjError, UnicodeDecodeError) as error:
        raise Unreadable(f"{path} cannot be parsed: {error}") from error


def read_lineage(root: str, name: str, conf_path: str,
                 accounts: dict[tuple[str, str], Account] | None = None) -> Lineage:
    conf = read_conf(conf_path)
    archive_dir = _inside(root, _text(conf, "archive_dir", conf_path), "archive_dir")
    params_section = conf.get("renewalparams")
    if not isinstance(params_section, configobj.Section):
        raise Unreadable(f"{conf_path} has no [renewalparams] section")
    params = {k: v for k, v in params_section.items() if not isinstance(v, configobj.Section)}
    webroot_map = {str(k): _one(v) for k, v in params_section.get("webroot_map", {}).items()}
    info_section = conf.get("acme_renewal_info", {})
    renewal_info = dict(info_section) if isinstance(info_section, configobj.Section) else {}

    live_links: dict[str, str] = {}
    targets: dict[str, str] = {}
    versions: set[int] = set()
    for kind in KINDS:
        link = _text(conf, kind, conf_path)
        if not os.path.isabs(link):
            raise Unreadable(f"{kind} = {link} is not an absolute path")
        _inside(root, os.path.dirname(link), kind)
        if not os.path.islink(link):
            raise Unreadable(f"{link} is not a symlink (certbot keeps live/{name}/ as links "
                             "into archive/)")
        target = os.path.join(os.path.dirname(link), os.readlink(link))
        real = os.path.realpath(target)
        if not _is_within(real, root) and os.path.islink(target) and _is_within(
                os.path.realpath(os.path.dirname(target)), root):
            raise Unreadable(f"already imported: {target} links to {os.readlink(target)} "
                             "(`mamoru import-certbot --undo` gives it back to certbot)")
        if not _is_within(real, root):
            raise Unreadable(f"{link} points outside the certbot directory ({real}); mamoru "
                             "only imports files certbot owns")
        if os.path.dirname(real) != os.path.realpath(archive_dir):
            raise Unreadable(f"{link} points at {real}, outside the lineage's archive_dir "
                             f"{archive_dir}")
        match = _ARCHIVE_NAME.match(os.path.basename(real))
        if not match or match.group(1) != kind:
            raise Unreadable(f"{link} points at {real}, not a certbot archive file")
        if not os.path.isfile(real):
            raise Unreadable(f"{link} points at {real}, which is missing")
        live_links[kind] = link
        targets[kind] = real
        versions.add(int(match.group(2)))
    if len(versions) != 1:
        raise Unreadable(f"live/{name}/ links point at different archive versions "
                         f"({sorted(versions)}): run `certbot update_symlinks` or fix them")

    names, digests = _check_files(targets)
    server = _one(params.get("server", ""))
    account_id = _one(params.get("account", ""))
    if not server or not account_id:
        raise Unreadable(f"{conf_path}: [renewalparams] has no server or account")
    cache = accounts if accounts is not None else {}
    if (server, account_id) not in cache:
        cache[(server, account_id)] = read_account(root, server, account_id)
    return Lineage(
        name=name, conf_path=conf_path, archive_dir=os.path.realpath(archive_dir),
        live_links=live_links, targets=targets, version=versions.pop(), params=params,
        webroot_map=webroot_map, renewal_info=renewal_info,
        renew_before_expiry=_optional(conf.get("renew_before_expiry")),
        account=cache[(server, account_id)], names=names, digests=digests)


def read_account(root: str, server: str, account_id: str) -> Account:
    """certbot's account `account_id` for the CA whose directory URL is `server`."""
    parts = urlsplit(server)
    base = os.path.join(root, "accounts", parts.netloc + parts.path)
    path = os.path.join(base, account_id)
    if not _is_within(os.path.realpath(path), root):
        raise Unreadable(f"account {account_id} is not under {root}/accounts")
    try:
        with open(os.path.join(path, "private_key.json"), encoding="utf-8") as handle:
            jwk = json.load(handle)
        with open(os.path.join(path, "regr.json"), encoding="utf-8") as handle:
            regr = json.load(handle)
    except FileNotFoundError as error:
        raise Unreadable(f"account {account_id} for {server} is missing ({error.filename})"
                         ) from error
    except (OSError, ValueError) as error:
        raise Unreadable(f"account {account_id} for {server} is unreadable: {error}") from error
    uri = regr.get("uri") if isinstance(regr, dict) else None
    if not isinstance(uri, str) or not uri.startswith("https://"):
        raise Unreadable(f"account {account_id}: regr.json has no account URL")
    body = regr.get("body") if isinstance(regr.get("body"), dict) else {}
    contact = tuple(str(c) for c in body.get("contact", ()) if isinstance(c, str))
    return Account(id=account_id, path=path, server=server, uri=uri,
                   key_pem=jwk_to_pem(jwk), contact=contact)


def jwk_to_pem(jwk: Any) -> bytes:
    """A private JWK (RFC 7518 §6: RSA or EC P-256/P-384) as unencrypted PKCS#8 PEM."""
    def number(name: str) -> int:
        value = jwk.get(name)
        if not isinstance(value, str):
            raise Unreadable(f"the account key has no {name!r}")
        return int.from_bytes(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)), "big")

    if not isinstance(jwk, dict):
        raise Unreadable("the account key is not a JWK object")
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    try:
        if jwk.get("kty") == "RSA":
            public = rsa.RSAPublicNumbers(number("e"), number("n"))
            key = rsa.RSAPrivateNumbers(number("p"), number("q"), number("d"), number("dp"),
                                        number("dq"), number("qi"), public).private_key()
        elif jwk.get("kty") == "EC" and jwk.get("crv") in ("P-256", "P-384"):
            curve = ec.SECP256R1() if jwk["crv"] == "P-256" else ec.SECP384R1()
            ec_public = ec.EllipticCurvePublicNumbers(number("x"), number("y"), curve)
            key = ec.EllipticCurvePrivateNumbers(number("d"), ec_public).private_key()
        else:
            raise Unreadable(f"the account key type {jwk.get('kty')!r} "
                             f"{jwk.get('crv', '')} is not supported")
    except ValueError as error:
        raise Unreadable(f"the account key is damaged: {error}") from error
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _check_files(targets: dict[str, str]) -> tuple[tuple[str, ...], dict[str, str]]:
    """Key matches certificate, fullchain is cert + chain, chain issues the cert. Returns the
    certificate's DNS names and the sha256 of each file as checked."""
    digests: dict[str, str] = {}

    def read(kind: str) -> bytes:
        with open(targets[kind], "rb") as handle:
            data = handle.read()
        digests[kind] = hashlib.sha256(data).hexdigest()
        return data

    try:
        cert = x509.load_pem_x509_certificate(read("cert"))
        chain = x509.load_pem_x509_certificates(read("chain"))
        fullchain = x509.load_pem_x509_certificates(read("fullchain"))
        key = serialization.load_pem_private_key(read("privkey"), password=None)
    except (ValueError, TypeError, OSError) as error:
        raise Unreadable(f"the certificate or key files cannot be read: {error}") from error
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if key.public_key().public_bytes(*spki) != cert.public_key().public_bytes(*spki):
        raise Unreadable(f"{targets['privkey']} is not the key of {targets['cert']}")
    if [c.fingerprint(_SHA256) for c in fullchain] != [
            c.fingerprint(_SHA256) for c in [cert, *chain]]:
        raise Unreadable(f"{targets['fullchain']} is not {targets['cert']} followed by "
                         f"{targets['chain']}")
    if not chain:
        raise Unreadable(f"{targets['chain']} holds no certificate: the chain is incomplete")
    try:
        cert.verify_directly_issued_by(chain[0])
    except (ValueError, TypeError) as error:
        raise Unreadable(f"{targets['chain']} does not issue {targets['cert']}: the chain is "
                         "incomplete") from error
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound as error:
        raise Unreadable(f"{targets['cert']} names no DNS name") from error
    return tuple(san.get_values_for_type(x509.DNSName)), digests


def _text(conf: configobj.ConfigObj, key: str, conf_path: str) -> str:
    value = _optional(conf.get(key))
    if not value:
        raise Unreadable(f"{conf_path} has no {key}")
    return value


def _optional(value: Any) -> str | None:
    if value is None:
        return None
    return _one(value)


def _one(value: Any) -> str:
    """configobj gives a list for a value with commas; certbot writes lists that way."""
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def as_list(value: Any) -> list[str]:
    if value is None:
        return []
    items = value if isinstance(value, list) else str(value).split(",")
    return [str(item).strip() for item in items if str(item).strip()]


def _inside(root: str, path: str, what: str) -> str:
    real = os.path.realpath(path)
    if not _is_within(real, root):
        raise Unreadable(f"{what} {path} is outside the certbot directory {root}")
    return path


def _is_within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")

