"""Why a served chain does not verify, in words (finding ``cert.chain``): expired or not yet
valid, self-signed, missing intermediate, unknown issuer."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from cryptography import x509
from cryptography.x509.oid import AuthorityInformationAccessOID

from mamoru.check.certificate import date_of, subject_cn
from mamoru.check.report import Finding
from mamoru.i18n import _


def load_certs(ders: Sequence[bytes]) -> list[x509.Certificate]:
    """The certificates among ``ders`` that parse (DER), in order."""
    certs = []
    for der in ders:
        try:
            certs.append(x509.load_der_x509_certificate(der))
        except ValueError:
            continue
    return certs


def chain_ok_finding(chain: list[x509.Certificate], ca_bundle: str | None) -> Finding:
    """``cert.chain`` when the served chain verified."""
    issuer = subject_cn(chain[0].issuer) if chain else "?"
    return Finding(
        "cert.chain",
        "ok",
        _("The certificate chain is trusted (issued by {issuer}).").format(issuer=issuer),
        details={
            "trust_store": ca_bundle or "system",
            "served_chain": [c.subject.rfc4514_string() for c in chain],
        },
    )


def chain_problem_finding(
    code: int,
    verify_message: str,
    chain: list[x509.Certificate],
    ca_bundle: str | None,
    now: dt.datetime,
    otherwise_ok: bool | None,
) -> Finding:
    """Explain a failed verification in words, using what the server actually sent."""
    details: dict[str, object] = {
        "verify_code": code,
        "verify_message": verify_message,
        "trust_store": ca_bundle or "system",
        "served_chain": [c.subject.rfc4514_string() for c in chain],
    }
    leaf = chain[0] if chain else None
    issuer = subject_cn(leaf.issuer) if leaf is not None else "its issuer"
    store = (_("the CA bundle {path}").format(path=ca_bundle) if ca_bundle
             else _("this computer's trusted authorities"))
    if otherwise_ok is not None:
        details["chain_otherwise_ok"] = otherwise_ok
    # OpenSSL X509_V_ERR_* codes, see openssl/x509_vfy.h.
    if code in (9, 10):
        expired = [c for c in chain if c.not_valid_after_utc < now]
        early = [c for c in chain if c.not_valid_before_utc > now]
        if code == 9 or (early and not expired):
            details["reason"] = "not-yet-valid"
            return Finding(
                "cert.chain",
                "problem",
                _("Browsers reject the certificate because it is not valid yet."),
                _("Check the server's clock (timedatectl) and that it serves the certificate "
                  "you expect."),
                details,
            )
        details["reason"] = "expired"
        when = date_of(expired[0].not_valid_after_utc) if expired else "?"
        if expired and expired[0] is not leaf:
            said = _("The intermediate certificate {name} expired on {date}: patients' "
                     "browsers show a full-page error instead of the site (\"Your connection "
                     "is not private\", ERR_CERT_DATE_INVALID).").format(
                         name=repr(subject_cn(expired[0].subject)), date=when)
            fix = _(
                "Install the current chain file (fullchain.pem) from mamoru's certificate "
                "directory and reload the web server."
            )
        else:
            said = _("The certificate expired on {date}: patients' browsers show a full-page "
                     "error instead of the site (\"Your connection is not private\", "
                     "ERR_CERT_DATE_INVALID).").format(date=when)
            fix = _(
                "Renew the certificate (mamoru renew) and reload the web server; then find "
                "out why automatic renewal did not happen (mamoru status, the service log)."
            )
        extra = "" if otherwise_ok in (None, True) else _(" The chain has other faults as well.")
        return Finding(
            "cert.chain",
            "problem",
            said + extra,
            fix,
            details,
        )
    if code == 18 or (leaf is not None and len(chain) == 1 and leaf.issuer == leaf.subject):
        details["reason"] = "self-signed"
        return Finding(
            "cert.chain",
            "problem",
            _("The certificate is self-signed: patients' browsers show a full-page error "
              "instead of the site (\"Your connection is not private\", "
              "ERR_CERT_AUTHORITY_INVALID)."),
            _("Serve a certificate from a public authority (the one mamoru obtains) instead "
              "of the self-signed placeholder, and reload the web server."),
            details,
        )
    if code in (2, 20, 21) and len(chain) == 1:
        details["reason"] = "incomplete-chain"
        aia = ca_issuers_url(leaf) if leaf is not None else None
        details["aia_ca_issuers"] = aia
        if aia:
            said = _("The server sends only its own certificate, without the intermediate "
                     "certificate of {issuer} that links it to a trusted authority. Chrome, "
                     "Edge and other Chromium browsers fetch it from {url} (named in the "
                     "certificate) and show the site normally, but programs that do not fetch "
                     "it (apps, scripts, mamoru's own check) refuse the connection.").format(
                         issuer=repr(issuer), url=aia)
        else:
            said = _("The server sends only its own certificate, without the intermediate "
                     "certificate of {issuer} that links it to a trusted authority. Patients' "
                     "browsers show a full-page error instead of the site (\"Your connection "
                     "is not private\", ERR_CERT_AUTHORITY_INVALID).").format(
                         issuer=repr(issuer))
        return Finding(
            "cert.chain",
            "problem",
            said,
            _("Point the web server at the full chain file (fullchain.pem), not the bare "
              "certificate (cert.pem), and reload it."),
            details,
        )
    if code in (2, 19, 20, 21):
        details["reason"] = "unknown-issuer"
        root = subject_cn(chain[-1].issuer) if chain else issuer
        return Finding(
            "cert.chain",
            "problem",
            _("The certificate was issued by {root}, which is not among {store}: patients' "
              "browsers show a full-page error instead of the site (\"Your connection is not "
              "private\", ERR_CERT_AUTHORITY_INVALID).").format(root=repr(root), store=store),
            _("Use a certificate from a publicly trusted authority (or, for an internal "
              "authority, install its root certificate on every device and pass "
              "--ca-bundle)."),
            details,
        )
    details["reason"] = "other"
    return Finding(
        "cert.chain",
        "problem",
        _("Browsers would reject the certificate: {reason}.").format(reason=verify_message),
        _("Replace the certificate with one freshly issued by mamoru and reload the web "
          "server."),
        details,
    )


def ca_issuers_url(cert: x509.Certificate) -> str | None:
    """The certificate's AIA caIssuers URL (where its issuer's certificate can be fetched),
    or None."""
    try:
        aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except (x509.ExtensionNotFound, ValueError):
        return None
    for access in aia:
        if access.access_method == AuthorityInformationAccessOID.CA_ISSUERS and isinstance(
                access.access_location, x509.UniformResourceIdentifier):
            return str(access.access_location.value)
    return None
