"""CA problem documents (RFC 8555 §6.7) and transport faults -> mamoru's typed errors.

This is the one table that decides what the caller does about a CA's answer: retry soon
(transient), retry slowly and alert (permanent), or fix the config.
"""

from __future__ import annotations

import email.utils
from datetime import UTC, datetime, timedelta

from mamoru.errors import (
    AccountError,
    CAUnavailable,
    ChallengeFailed,
    IssuanceError,
    OrderFailed,
    RateLimited,
)

ACME_ERROR = "urn:ietf:params:acme:error:"


class AccountGone(AccountError):
    """The CA no longer accepts our account: it does not know it (deleted, a test CA
    restarted, state restored from an old backup) or it was deactivated. The caller moves the
    stored account aside, registers a new one once, and retries (see `account.replace_account`).
    `why` is a few words for the event; `account_url` the account the CA refused."""

    hint = ("The CA no longer accepts this ACME account; mamoru registers a new one and "
            "retries once. If that fails too, check acme.directory and acme.eab.")

    def __init__(self, message: str, *, account_url: str | None = None, why: str = "",
                 hint: str | None = None, problem_type: str | None = None,
                 detail: str | None = None, status: int | None = None,
                 retry_after: datetime | None = None) -> None:
        super().__init__(message, hint=hint, problem_type=problem_type, detail=detail,
                         status=status, retry_after=retry_after)
        self.account_url = account_url
        self.why = why or "the CA does not know the account"

    @property
    def kind(self) -> str:
        return "AccountError"  # the kind events and metrics have always shown for it

    @classmethod
    def from_error(cls, error: IssuanceError, account_url: str | None) -> AccountGone:
        detail = (error.detail or "").lower()
        why = ("account deactivated" if "deactivated" in detail else
               "account revoked" if "revoked" in detail else
               "the CA does not know the account")
        return cls(str(error), account_url=account_url, why=why, problem_type=error.problem_type,
                   detail=error.detail, status=error.status, retry_after=error.retry_after)

# problem type (without the urn prefix) -> (error class, what to do)
_TABLE: dict[str, tuple[type[IssuanceError], str]] = {
    "rateLimited": (RateLimited, "Wait until the time the CA named; mamoru retries then."),
    "serverInternal": (CAUnavailable, "The CA had an internal error; mamoru retries later."),
    "badNonce": (CAUnavailable, "The CA kept rejecting request nonces; mamoru retries later."),
    "connection": (ChallengeFailed, "The CA could not connect to this server on port 80: check "
                   "the firewall and that the name's DNS points here."),
    "dns": (ChallengeFailed, "The CA could not resolve the name: check its DNS A/AAAA records."),
    "incorrectResponse": (ChallengeFailed, "The CA fetched a wrong challenge answer: check that "
                          "the webroot is the directory this name's web server serves."),
    "unauthorized": (ChallengeFailed, "The CA could not confirm this server controls the name: "
                     "check DNS and that /.well-known/acme-challenge/ is served from the webroot."),
    "tls": (ChallengeFailed, "The CA had a TLS problem reaching this server for the challenge."),
    "caa": (OrderFailed, "A DNS CAA record forbids this CA for the name: add the CA to it."),
    "rejectedIdentifier": (OrderFailed, "The CA will not issue for this name: remove it or use "
                           "another CA."),
    "unsupportedIdentifier": (OrderFailed, "The CA does not support this kind of name."),
    "badCSR": (OrderFailed, "The CA rejected the certificate request (key type or names)."),
    "malformed": (OrderFailed, "The CA said the request was malformed."),
    "invalidProfile": (OrderFailed, "The CA does not offer the configured profile: check "
                       "acme.profile against the CA's directory."),
    "orderNotReady": (OrderFailed, "The order was not ready to finalize."),
    "alreadyRevoked": (OrderFailed, "The certificate was already revoked."),
    "badRevocationReason": (OrderFailed, "The CA does not accept that revocation reason."),
    "externalAccountRequired": (AccountError, "This CA needs External Account Binding: set "
                                "acme.eab.kid and acme.eab.hmac_key_file."),
    "accountDoesNotExist": (AccountGone, "The CA does not know this account; mamoru registers "
                            "a new one and retries once."),
    "invalidContact": (AccountError, "The CA refused the contact address: fix acme.contact."),
    "unsupportedContact": (AccountError, "The CA refused the contact address: fix acme.contact."),
    "userActionRequired": (AccountError, "The CA needs a person to act (for example to accept "
                           "new terms of service); see the detail."),
    "badSignatureAlgorithm": (AccountError, "The CA does not accept the account key's "
                              "signature algorithm."),
    "badPublicKey": (OrderFailed, "The CA does not accept this key type: change the site's key."),
}


def parse_retry_after(value: str | None, now: datetime | None = None) -> datetime | None:
    """`Retry-After` (seconds or an HTTP date, RFC 9110 §10.2.3) as an aware datetime."""
    if not value:
        return None
    now = now or datetime.now(UTC)
    value = value.strip()
    if value.isdigit():
        return now + timedelta(seconds=min(int(value), 86400 * 30))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when


def problem_error(
    problem: dict[str, object] | None,
    *,
    status: int | None,
    retry_after: datetime | None,
    url: str,
    context: str = "",
) -> IssuanceError:
    """The typed error for a CA problem document (or a bare HTTP error status)."""
    problem = problem or {}
    ptype = str(problem.get("type") or "")
    detail = str(problem.get("detail") or "")
    short = ptype[len(ACME_ERROR):] if ptype.startswith(ACME_ERROR) else ptype
    subproblems = problem.get("subproblems")
    if isinstance(subproblems, list) and subproblems:
        parts = []
        for sub in subproblems[:5]:
            if isinstance(sub, dict):
                ident = sub.get("identifier")
                name = ident.get("value") if isinstance(ident, dict) else "?"
                parts.append(f"{name}: {sub.get('detail', '')}")
        if parts:
            detail = f"{detail} ({'; '.join(parts)})" if detail else "; ".join(parts)
    entry = _TABLE.get(short)
    cls: type[IssuanceError]
    if entry is not None:
        cls, hint = entry
    else:
        if status == 429:
            cls, hint = RateLimited, "The CA asked to slow down; mamoru retries later."
        elif status is not None and (status >= 500 or status in (408, 425)):
            cls, hint = CAUnavailable, "The CA is having trouble; mamoru retries with backoff."
        else:
            cls, hint = OrderFailed, "See the CA's detail above."
    if status == 503 and cls is not RateLimited:
        cls = CAUnavailable
    what = f"{context}: " if context else ""
    said = f"the CA answered {status}" if status else "the CA answered"
    body = f" {short}" if short else ""
    message = f"{what}{said}{body}{': ' + detail if detail else ''} ({url})"
    return cls(message, hint=hint, problem_type=ptype or None, detail=detail or None,
               status=status, retry_after=retry_after)
