"""Sites' on-disk state as mamoru leaves it, for status / metrics / alert tests and benchmarks.

``install_site(storage, site, names, not_before, not_after)`` stores a real certificate (EC
P-256, signed by a throwaway CA from :mod:`tests.servers.tls`) through ``FileStorage`` exactly
as a provision does (versions/NNNN + meta.json, live/<site> flipped) and returns the version;
``failed_attempt(storage, site, ...)`` and ``succeeded(storage, site, version, ...)`` write
the state.json the renewal schedule writes after a failure or a success.
"""

from __future__ import annotations

import datetime as dt
from functools import lru_cache
from typing import Any

from cryptography.hazmat.primitives import serialization

from mamoru.storage import CertVersion, FileStorage
from mamoru.storage.sitestate import SiteState

from .tls import CertAndKey, make_ca, make_leaf


@lru_cache(maxsize=1)
def _ca() -> CertAndKey:
    return make_ca("status test intermediate", days=3650)


def install_site(storage: FileStorage, site: str, names: list[str], not_before: dt.datetime,
                 not_after: dt.datetime) -> CertVersion:
    ca = _ca()
    leaf = make_leaf(ca, names=names, ips=[], not_before=not_before, not_after=not_after)
    chain = leaf.cert.public_bytes(serialization.Encoding.PEM) + ca.cert_pem
    version = storage.store(site, leaf.key_pem, chain, {"key": "ec-p256", "profile": None,
                                                        "order": f"https://ca.test/order/{site}"})
    storage.activate(version)
    return version


def succeeded(storage: FileStorage, site: str, version: CertVersion, *, at: dt.datetime,
              next_due: dt.datetime, why: str = "1/3 of the lifetime left",
              verified: bool | None = None, ari: dict[str, Any] | None = None) -> None:
    state: dict[str, Any] = {
        "attempts": 0, "next_attempt": None, "last_success": at.isoformat(),
        "last_attempt": {"time": at.isoformat(), "outcome": "ok",
                         "serial": version.meta["serial"]},
        "next_due": next_due.isoformat(), "next_check": next_due.isoformat(), "why": why,
        "installed": {"time": at.isoformat(), "serial": version.meta["serial"],
                      "verified": verified},
    }
    if ari is not None:
        state["ari"] = ari
    storage.save_state(site, SiteState.from_json(state))


def failed_attempt(storage: FileStorage, site: str, *, at: dt.datetime, attempts: int,
                   retry_at: dt.datetime, error_class: str = "ChallengeFailed",
                   problem_type: str = "urn:ietf:params:acme:error:connection",
                   detail: str = "127.0.0.1: Connection refused") -> None:
    state = storage.load_state(site).to_json()
    state.update(attempts=attempts, next_attempt=retry_at.isoformat(),
                 next_check=retry_at.isoformat(),
                 last_attempt={"time": at.isoformat(), "outcome": "failed",
                               "error_class": error_class,
                               "message": f"validating the name: {detail}",
                               "retryable": True, "problem_type": problem_type,
                               "detail": detail})
    storage.save_state(site, SiteState.from_json(state))
