"""Take certbot lineages over, all or nothing per lineage, and give them back (`undo`).

For each planned lineage, after a byte-exact backup of everything that will change:

1. certbot's current key and certificate become version 0001 of the mamoru site (through the
   Storage seam: key 0600 from its first byte), checked again as stored (key matches, chain
   issues the leaf, names as in the lineage), and go live in mamoru's live/<site>.
2. certbot's ACME account key and URL are written where mamoru's account code looks for that
   CA (protocol/account.py: <state>/accounts/<ca-host>/<id>/{key.pem, account.json}), so the
   next order is signed by the same account.
3. The old paths keep working, through mamoru: certbot's archive/NAME gets one more version,
   <kind>N+1.pem, each a symlink to mamoru's live/<site>/<kind>.pem, and live/NAME/<kind>.pem
   is pointed at it. certbot's own view stays consistent (`certbot certificates` lists the
   lineage and shows the certificate mamoru serves), and every later mamoru renewal shows up at
   /etc/letsencrypt/live/NAME/ the moment mamoru flips its own live link.
4. `autorenew = False` goes into [renewalparams], which makes `certbot renew` skip the lineage.

A failure in any step puts that lineage's certbot files back from the backup and removes what
was made for it in mamoru's store; the other lineages are not affected. `undo` restores every
backed-up file byte for byte, removes the added archive links and the imported sites.

The manifest (<state>/certbot-import/manifest.json, 0600) lists every import with its backup.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from mamoru.errors import MamoruError, StorageError
from mamoru.migrate.certbot_state import KINDS, Lineage, Unreadable, read_conf
from mamoru.migrate.plan import SitePlan
from mamoru.protocol.account import account_dir
from mamoru.storage.atomic import ensure_dir, fsync_dir, replace_symlink, write_file
from mamoru.storage.filesystem import FileStorage

MANIFEST = "manifest.json"


class ImportFailed(MamoruError):
    """A lineage could not be taken over; its certbot files are as they were."""


@dataclass(frozen=True)
class Imported:
    lineage: str
    site: str
    serial: str
    account_url: str


@dataclass(frozen=True)
class Failed:
    lineage: str
    reason: str


def import_dir(state_dir: str) -> str:
    return os.path.join(state_dir, "certbot-import")


def adopt_all(plans: list[SitePlan], storage: FileStorage, state_dir: str
              ) -> tuple[list[Imported], list[Failed]]:
    """Import every plan; each lineage all or nothing. Returns (imported, failed)."""
    manifest = load_manifest(state_dir)
    done: list[Imported] = []
    failed: list[Failed] = []
    for plan in plans:
        try:
            done.append(adopt(plan, storage, state_dir, manifest))
        except (ImportFailed, Unreadable, StorageError, OSError, ValueError) as error:
            failed.append(Failed(plan.lineage.name, str(error)))
    return done, failed


def adopt(plan: SitePlan, storage: FileStorage, state_dir: str,
          manifest: dict[str, Any]) -> Imported:
    lineage = plan.lineage
    # What is imported is what was checked: the same archive files, byte for byte (read()
    # compares each file's digest).
    if not lineage.unchanged():
        raise ImportFailed(f"lineage {lineage.name} changed while it was being imported")
    if os.path.exists(storage.versions_dir(plan.site)) and os.listdir(
            storage.versions_dir(plan.site)):
        raise ImportFailed(f"mamoru already has a site {plan.site}; remove it or import with "
                           "another config")
    entry = backup(plan, state_dir)
    entry["site_dir_created"] = not os.path.isdir(storage.site_dir(plan.site))
    manifest.setdefault("imports", []).append(entry)
    save_manifest(state_dir, manifest)
    # The site lock: a mamoru already running with this site in its config waits for us.
    with storage.lock(plan.site):
        try:
            url = _take_over(plan, storage, state_dir, entry)
        except BaseException:
            restore(entry, storage, state_dir)
            manifest["imports"].remove(entry)
            save_manifest(state_dir, manifest)
            raise
    entry["state"] = "imported"
    save_manifest(state_dir, manifest)
    return Imported(lineage.name, plan.site, entry["serial"], url)


def _take_over(plan: SitePlan, storage: FileStorage, state_dir: str,
               entry: dict[str, Any]) -> str:
    lineage = plan.lineage
    key_pem = lineage.read("privkey")
    fullchain = lineage.read("fullchain")
    version = storage.store(plan.site, key_pem, fullchain,
                            {"imported_from": f"certbot:{lineage.name}",
                             "domains": list(plan.domains)})
    entry["site_created"] = True
    _verify_version(version.path, lineage, key_pem)
    entry["serial"] = version.meta["serial"]
    storage.activate(version)

    url = _import_account(plan, state_dir, entry)

    live = storage.live_path(plan.site)
    number = entry["archive_number"]
    for kind in KINDS:
        added = os.path.join(lineage.archive_dir, f"{kind}{number}.pem")
        os.symlink(os.path.join(os.path.abspath(live), f"{kind}.pem"), added)
        entry["added"].append(added)
    fsync_dir(lineage.archive_dir)
    for kind in KINDS:
        link = lineage.live_links[kind]
        target = os.path.relpath(os.path.join(lineage.archive_dir, f"{kind}{number}.pem"),
                                 os.path.dirname(link))
        replace_symlink(link, target)
    for kind in KINDS:  # what a web server reads through the old path is mamoru's file
        with open(lineage.live_links[kind], "rb") as old, open(
                os.path.join(live, f"{kind}.pem"), "rb") as new:
            if old.read() != new.read():
                raise ImportFailed(f"{lineage.live_links[kind]} does not read as mamoru's "
                                   f"{kind}.pem after the switch")

    conf = read_conf(lineage.conf_path)
    conf["renewalparams"]["autorenew"] = "False"
    mode = os.stat(lineage.conf_path).st_mode & 0o7777
    conf.filename = None  # write() then returns the lines instead of writing in place
    lines = [line if isinstance(line, str) else line.decode("utf-8") for line in conf.write()]
    write_file(lineage.conf_path, ("\n".join(lines) + "\n").encode("utf-8"), mode)
    return url


def _verify_version(path: str, lineage: Lineage, key_pem: bytes) -> None:
    """The stored version, read back: the key certbot's certificate was checked against
    (byte for byte), the same certificate, a chain that issues it, the lineage's names."""
    names = lineage.names

    def read(name: str) -> bytes:
        with open(os.path.join(path, name), "rb") as handle:
            return handle.read()

    if read("privkey.pem") != key_pem:
        raise ImportFailed(f"the stored key in {path} is not certbot's key")
    cert = x509.load_pem_x509_certificate(read("cert.pem"))
    if cert != x509.load_pem_x509_certificate(lineage.read("cert")):
        raise ImportFailed(f"the stored certificate in {path} is not certbot's")
    chain = x509.load_pem_x509_certificates(read("chain.pem"))
    if not chain:
        raise ImportFailed(f"the stored chain in {path} is empty")
    cert.verify_directly_issued_by(chain[0])
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    if tuple(san.get_values_for_type(x509.DNSName)) != names:
        raise ImportFailed(f"the stored certificate in {path} names other domains")
    if os.stat(os.path.join(path, "privkey.pem")).st_mode & 0o007:
        raise ImportFailed(f"the stored key in {path} is readable by others")


def _import_account(plan: SitePlan, state_dir: str, entry: dict[str, Any]) -> str:
    """certbot's account for the lineage's CA, where mamoru's account code finds it."""
    account = plan.lineage.account
    directory = account_dir(state_dir, account.server)
    key_path = os.path.join(directory, "key.pem")
    info_path = os.path.join(directory, "account.json")
    try:
        with open(key_path, "rb") as handle:
            existing = handle.read()
    except FileNotFoundError:
        existing = None
    entry["account_dir"] = directory
    if existing is not None:
        if existing == account.key_pem or _same_key(existing, account.key_pem):
            return account.uri
        raise ImportFailed(f"mamoru already has another account for {account.server} "
                           f"({directory}); importing certbot's would replace it. Move that "
                           "directory away to use certbot's account, or keep mamoru's")
    ensure_dir(directory, 0o700)
    entry["account_created"] = directory
    write_file(key_path, account.key_pem, mode=0o600)
    info = {"url": account.uri, "directory": account.server, "contact": list(account.contact),
            "imported_from": f"certbot:{account.id}"}
    write_file(info_path, json.dumps(info, indent=2).encode(), mode=0o600)
    return account.uri


def _same_key(a: bytes, b: bytes) -> bool:
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    try:
        one = serialization.load_pem_private_key(a, password=None).public_key()
        two = serialization.load_pem_private_key(b, password=None).public_key()
    except (ValueError, TypeError):
        return False
    return one.public_bytes(*fmt) == two.public_bytes(*fmt)


# -- backup and restore --------------------------------------------------------------------------

def backup(plan: SitePlan, state_dir: str) -> dict[str, Any]:
    """Copy, byte for byte, every certbot file the import will change, before the first change.
    Returns the manifest entry."""
    lineage = plan.lineage
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    where = os.path.join(import_dir(state_dir), "backup", f"{stamp}-{plan.site}")
    ensure_dir(os.path.join(import_dir(state_dir), "backup"), 0o700)
    ensure_dir(where, 0o700)
    with open(lineage.conf_path, "rb") as handle:
        conf_bytes = handle.read()
    stat = os.stat(lineage.conf_path)
    write_file(os.path.join(where, os.path.basename(lineage.conf_path)), conf_bytes, 0o600)
    links = {kind: {"path": path, "target": os.readlink(path)}
             for kind, path in lineage.live_links.items()}
    numbers = [0]
    for name in os.listdir(lineage.archive_dir):
        digits = "".join(ch for ch in name if ch.isdigit())
        if name.endswith(".pem") and digits:
            numbers.append(int(digits))
    entry: dict[str, Any] = {
        "lineage": lineage.name, "site": plan.site, "backup": where,
        "conf": {"path": lineage.conf_path, "mode": stat.st_mode & 0o7777,
                 "sha256_b64": base64.b64encode(_sha256(conf_bytes)).decode()},
        "links": links, "archive_number": max(numbers) + 1, "added": [],
        "site_created": False, "account_created": None, "state": "importing",
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_file(os.path.join(where, "entry.json"), json.dumps(entry, indent=2).encode(), 0o600)
    return entry


def restore(entry: dict[str, Any], storage: FileStorage, state_dir: str) -> None:
    """Put one lineage's certbot files back exactly as backed up; remove what was made."""
    for link in entry["links"].values():
        replace_symlink(link["path"], link["target"])
    for added in entry["added"]:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(added)
    conf = entry["conf"]
    with open(os.path.join(entry["backup"], os.path.basename(conf["path"])), "rb") as handle:
        data = handle.read()
    if base64.b64encode(_sha256(data)).decode() != conf["sha256_b64"]:
        raise StorageError(f"the backup of {conf['path']} in {entry['backup']} is damaged; "
                           "it was not restored")
    write_file(conf["path"], data, conf["mode"])
    if entry["site_created"] or entry.get("site_dir_created"):
        storage.deactivate(entry["site"])
        shutil.rmtree(storage.site_dir(entry["site"]), ignore_errors=True)
    if entry["account_created"] and not _account_still_used(entry, state_dir):
        shutil.rmtree(entry["account_created"], ignore_errors=True)


def _account_still_used(entry: dict[str, Any], state_dir: str) -> bool:
    manifest = load_manifest(state_dir)
    return any(other.get("account_dir") == entry["account_created"]
               and other.get("lineage") != entry["lineage"]
               for other in manifest.get("imports", []))


@dataclass(frozen=True)
class Undone:
    lineage: str
    site: str
    warning: str | None = None  # set when mamoru had renewed the site since the import


def undo(storage: FileStorage, state_dir: str) -> list[Undone]:
    """Give every imported lineage back to certbot, newest first."""
    manifest = load_manifest(state_dir)
    entries = list(manifest.get("imports", []))
    undone: list[Undone] = []
    # An account made by an earlier import and used by later ones goes with the last of them.
    for entry in reversed(entries):
        with storage.lock(entry["site"]):
            live = storage.live(entry["site"])
            warning = None
            if live is not None and live.number > 1:
                warning = (f"mamoru renewed {entry['site']} since the import; certbot's files "
                           f"are back as they were, so live/{entry['lineage']}/ holds certbot's "
                           "older certificate again: run `certbot renew --cert-name "
                           f"{entry['lineage']} --force-renewal` and reload the web server")
            restore(entry, storage, state_dir)
        manifest["imports"].remove(entry)
        save_manifest(state_dir, manifest)
        undone.append(Undone(entry["lineage"], entry["site"], warning))
    return undone


def load_manifest(state_dir: str) -> dict[str, Any]:
    path = os.path.join(import_dir(state_dir), MANIFEST)
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        return {"imports": []}
    except (OSError, ValueError) as error:
        raise StorageError(f"{path} is unreadable ({error}); restore certbot's files from the "
                           f"backups in {import_dir(state_dir)}/backup by hand") from error
    return data if isinstance(data, dict) else {"imports": []}


def save_manifest(state_dir: str, manifest: dict[str, Any]) -> None:
    ensure_dir(state_dir, 0o700)
    ensure_dir(import_dir(state_dir), 0o700)
    write_file(os.path.join(import_dir(state_dir), MANIFEST),
               json.dumps(manifest, sort_keys=True).encode(), 0o600)


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()
