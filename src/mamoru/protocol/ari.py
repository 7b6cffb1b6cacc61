"""ACME Renewal Information (RFC 9773): the certificate identifier and the CA's suggested
renewal window. The window is advisory: callers fall back to the lifetime rule on any error."""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from mamoru.clock import parse_time
from mamoru.errors import CAUnavailable
from mamoru.protocol.errors import parse_retry_after
from mamoru.protocol.session import AcmeSession

# RFC 9773 §4.3: a Retry-After is clamped to a sane range; without one, ask again in 6 hours.
RETRY_AFTER_MIN = timedelta(minutes=1)
RETRY_AFTER_MAX = timedelta(days=1)
RETRY_AFTER_DEFAULT = timedelta(hours=6)


@dataclass(frozen=True)
class RenewalInfo:
    """The CA's suggested renewal window for one certificate (RFC 9773 §4.2)."""

    start: datetime
    end: datetime
    explanation_url: str | None
    retry_after: datetime  # when to ask again


def ari_cert_id(cert_pem: bytes) -> str:
    """The ARI certificate identifier: base64url(AKI keyIdentifier) "." base64url(serial DER)."""
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(cert_pem)
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    if aki.key_identifier is None:
        raise ValueError("certificate has no authority key identifier")
    serial = cert.serial_number
    serial_der = serial.to_bytes(math.ceil((serial.bit_length() + 1) / 8), "big", signed=True)

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")

    return f"{b64(aki.key_identifier)}.{b64(serial_der)}"


def cert_id_or_none(chain_pem: bytes) -> str | None:
    """The ARI id of the leaf in `chain_pem`, or None when it has none (no AKI, unparsable):
    such a certificate simply gets no ARI, never a failed renewal."""
    try:
        return ari_cert_id(chain_pem)
    except Exception:  # any unparsable certificate
        return None


def renewal_info(session: AcmeSession, cert_pem: bytes, now: datetime) -> RenewalInfo | None:
    """The CA's renewal window for `cert_pem`, or None when the CA does not offer ARI.
    Raises CAUnavailable on failure (callers treat ARI as advisory)."""
    base = session.directory().get("renewalInfo")
    if not base:
        return None
    url = f"{base.rstrip('/')}/{ari_cert_id(cert_pem)}"
    response = session.fetch(url, context="fetching renewal info")
    try:
        body = response.json()
        window = body["suggestedWindow"]
        start, end = parse_time(window["start"]), parse_time(window["end"])
        if start is None or end is None:
            raise ValueError("window")
    except (ValueError, KeyError, TypeError):
        raise CAUnavailable(f"the CA's renewal info at {url} is malformed") from None
    retry = parse_retry_after(response.headers.get("Retry-After"), now)
    retry = (min(max(retry, now + RETRY_AFTER_MIN), now + RETRY_AFTER_MAX) if retry
             else now + RETRY_AFTER_DEFAULT)
    explanation = body.get("explanationURL")
    return RenewalInfo(start=start, end=end, retry_after=retry,
                       explanation_url=str(explanation) if explanation else None)
