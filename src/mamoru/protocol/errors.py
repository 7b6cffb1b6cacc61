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
    "accountDoesNotExist": (AccountError, "The CA does not know this account."),
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
