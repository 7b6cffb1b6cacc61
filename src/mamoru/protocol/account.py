"""The ACME account per CA: its key (0600) and URL under state/accounts/<ca-host>/<id>/, with
the CA's directory kept beside them for a few minutes (directory.json, `directory_cache`).

An account this state registered before is used from its stored URL, with no request to the
CA. Otherwise loading is "load or register" in one step: newAccount with the stored key returns
the existing account. A corrupt key file is moved aside and a new account registered, so state
damage never turns into a loop of failures.

When the CA refuses the account later (`AccountGone`: it forgot it, or it was deactivated),
`replace_account` moves the key and account.json aside (never deleted: `*.gone-<time>`) and
registers a new account with a new key, since a CA refuses a deactivated account's key for ever.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric import ec

from mamoru.config.model import AcmeSettings
from mamoru.protocol.jws import AccountSigner
from mamoru.protocol.keys import PrivateKey, key_pem, load_key
from mamoru.protocol.session import AcmeSession
from mamoru.storage.atomic import ensure_dir, write_file

log = logging.getLogger(__name__)


def account_dir(state_dir: str, directory_url: str) -> str:
    parts = urlsplit(directory_url)
    host = re.sub(r"[^a-z0-9.-]", "_", (parts.hostname or "ca").lower())
    port = f"_{parts.port}" if parts.port else ""
    digest = hashlib.sha256(directory_url.encode()).hexdigest()[:12]
    return os.path.join(state_dir, "accounts", f"{host}{port}", digest)


def directory_cache(state_dir: str, directory_url: str) -> str:
    """Where the CA's directory is kept between processes (`AcmeSession.directory_cache`):
    beside the account for that directory."""
    return os.path.join(account_dir(state_dir, directory_url), "directory.json")


def load_or_create_key(directory: str) -> tuple[PrivateKey, bool]:
    """The account key in `directory` (created 0600 if missing). Returns (key, created)."""
    ensure_dir(directory, 0o700)
    path = os.path.join(directory, "key.pem")
    try:
        with open(path, "rb") as handle:
            return load_key(handle.read()), False
    except FileNotFoundError:
        pass
    except (ValueError, TypeError) as error:
        aside = f"{path}.corrupt-{int(time.time())}"
        os.replace(path, aside)
        log.warning("account key %s was unreadable (%s); moved to %s, registering anew",
                    path, error, aside)
    key = ec.generate_private_key(ec.SECP256R1())  # ES256: small, fast to sign
    write_file(path, key_pem(key), mode=0o600)
    return key, True


@dataclass(frozen=True)
class Opened:
    """The account in use (`url`), and the stored account the CA no longer knew, if any
    (`forgotten`: newAccount with the stored key made a new account, so the CA had lost the
    old one; its account.json is kept aside)."""

    url: str
    forgotten: str | None = None


def open_account(session: AcmeSession, acme: AcmeSettings, state_dir: str, *,
                 look_up: bool = False) -> Opened:
    """Load or register the account for `acme.directory` on `session`.

    An account this state has used before (its key, and account.json naming its URL for the
    same directory, the same contact and this key's thumbprint) is used as it is, with no
    request to the CA: a process that orders one certificate saves the newAccount round trip.
    Should the CA no longer accept it, the first signed request is refused with
    `AccountGone`, and the caller replaces the account (`App.recover_account`).
    `look_up=True` always asks the CA (newAccount).
    Raises `AccountGone` when the stored key's account is deactivated."""
    directory = account_dir(state_dir, acme.directory)
    key, created = load_or_create_key(directory)
    info_path = os.path.join(directory, "account.json")
    stored: object = None
    try:
        with open(info_path, encoding="utf-8") as handle:
            stored = json.load(handle)
    except (OSError, ValueError):
        pass
    thumbprint = AccountSigner(key).thumbprint  # a key put back from elsewhere is looked up
    if not created and not look_up and isinstance(stored, dict) \
            and _usable_url(stored.get("url")) and stored.get("directory") == acme.directory \
            and stored.get("contact") == list(acme.contact) \
            and stored.get("thumbprint") == thumbprint:
        session.adopt_account(key, str(stored["url"]))
        return Opened(str(stored["url"]))
    eab = (acme.eab.kid, acme.eab.hmac_key.reveal()) if acme.eab else None
    url = session.use_account(key, contact=acme.contact, eab=eab)
    info = {"url": url, "directory": acme.directory, "contact": list(acme.contact),
            "thumbprint": thumbprint}
    forgotten = None
    if not created and isinstance(stored, dict) and isinstance(stored.get("url"), str) \
            and stored["url"] != url:
        forgotten = str(stored["url"])
        _move_aside(info_path)
    if stored != info or created:
        write_file(info_path, json.dumps(info, indent=2).encode(), mode=0o600)
    return Opened(url, forgotten)


def _usable_url(url: object) -> bool:
    return isinstance(url, str) and urlsplit(url).scheme in ("https", "http") \
        and bool(urlsplit(url).netloc)


def _move_aside(path: str) -> None:
    """Rename `path` to `path.gone-<unix time>` (never deleted; a free name is found)."""
    aside = base = f"{path}.gone-{int(time.time())}"
    suffix = 1
    while os.path.exists(aside):  # two replacements within a second keep both
        aside = f"{base}-{suffix}"
        suffix += 1
    try:
        os.replace(path, aside)
    except FileNotFoundError:
        return
    log.warning("ACME account file %s moved to %s (the CA no longer accepts the account)",
                path, aside)


def replace_account(session: AcmeSession, acme: AcmeSettings, state_dir: str) -> Opened:
    """Move the stored account aside and register a new one (new key) on `session`.
    The old key and account.json stay next to the new ones with a `.gone-<unix time>` suffix.
    Returns the new account's URL, and the old one's (`forgotten`) when it was recorded."""
    directory = account_dir(state_dir, acme.directory)
    ensure_dir(directory, 0o700)
    old = None
    try:
        with open(os.path.join(directory, "account.json"), encoding="utf-8") as handle:
            stored = json.load(handle)
        old = str(stored["url"]) if isinstance(stored, dict) and "url" in stored else None
    except (OSError, ValueError):
        pass
    for name in ("key.pem", "account.json"):
        _move_aside(os.path.join(directory, name))
    return Opened(open_account(session, acme, state_dir).url, old)
