"""The served certificate itself: the names it covers (browser rules), its expiry, and whether
it is the one mamoru stored (findings ``cert.names``, ``cert.expiry``,
``cert.matches-stored``)."""

from __future__ import annotations

import datetime as dt
import ipaddress

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from mamoru.check.report import ONE_DAY, Finding
from mamoru.check.target import is_ip
from mamoru.i18n import _, ngettext


def subject_cn(name: x509.Name) -> str:
    """The common name of ``name`` (its RFC 4514 form when it has none)."""
    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    if attrs:
        value = attrs[0].value
        return value if isinstance(value, str) else value.decode("utf-8", "replace")
    return name.rfc4514_string()


def _san(cert: x509.Certificate) -> x509.SubjectAlternativeName | None:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (x509.ExtensionNotFound, ValueError):
        # ValueError: a malformed extension; treat it like a missing one, as browsers do.
        return None


def dns_name_matches(pattern: str, host: str) -> bool:
    """Whether one subjectAltName DNS entry covers ``host``, by the rules browsers apply.

    Case-insensitive; a trailing dot is ignored. A wildcard is honoured only as the whole
    left-most label (``*.clinic.example``), matches exactly one non-empty label (not
    ``clinic.example`` itself, not ``a.b.clinic.example``), and needs at least two labels after
    it (``*.example`` is refused, as browsers refuse it). Partial wildcards (``w*.example.org``)
    never match, as in Chrome and Firefox. IP addresses never match DNS entries.
    """
    pattern = pattern.strip().rstrip(".").lower()
    host = host.strip().rstrip(".").lower()
    if not pattern or not host or is_ip(host):
        return False
    if "*" not in pattern:
        return pattern == host
    p_labels = pattern.split(".")
    h_labels = host.split(".")
    if p_labels[0] != "*" or "*" in ".".join(p_labels[1:]) or len(p_labels) < 3:
        return False
    if len(h_labels) != len(p_labels) or not h_labels[0]:
        return False
    return h_labels[1:] == p_labels[1:]


def hostname_matches(host: str, cert: x509.Certificate) -> bool:
    """Whether ``cert`` is valid for ``host`` (ASCII/IDNA form), as a browser decides.

    Only subjectAltName counts; browsers ignore the subject common name. IP-address hosts
    match iPAddress entries, names match dNSName entries via :func:`dns_name_matches`.
    """
    san = _san(cert)
    if san is None:
        return False
    if is_ip(host):
        wanted = ipaddress.ip_address(host)
        return any(ip == wanted for ip in san.get_values_for_type(x509.IPAddress))
    return any(dns_name_matches(name, host) for name in san.get_values_for_type(x509.DNSName))


def _cert_names(cert: x509.Certificate) -> list[str]:
    san = _san(cert)
    if san is None:
        return []
    names = list(san.get_values_for_type(x509.DNSName))
    names += [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    return names


def _fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex(":")


def _cert_summary(cert: x509.Certificate) -> dict[str, object]:
    return {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "serial": format(cert.serial_number, "x"),
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "sha256": _fingerprint(cert),
    }


def date_of(when: dt.datetime) -> str:
    """``when`` as a date for messages (2025-01-31)."""
    return when.strftime("%Y-%m-%d")


def _days(delta: dt.timedelta) -> float:
    return delta.total_seconds() / ONE_DAY


def names_finding(host: str, leaf: x509.Certificate) -> Finding:
    """``cert.names``: is ``leaf`` valid for ``host`` by the rules browsers apply."""
    names = _cert_names(leaf)
    details: dict[str, object] = {"host": host, "names": names}
    if hostname_matches(host, leaf):
        return Finding("cert.names", "ok", _("The certificate is valid for {host}.").format(
            host=host), details=details)
    if not names:
        return Finding(
            "cert.names",
            "problem",
            _("The certificate has no list of names (subjectAltName), only the old common "
              "name {common}, which browsers ignore: patients' browsers show a full-page error "
              "instead of the site (\"Your connection is not private\", "
              "ERR_CERT_COMMON_NAME_INVALID), even though the name looks right.").format(
                  common=repr(subject_cn(leaf.subject))),
            _("Serve a certificate that lists {host} as a subjectAltName (every certificate "
              "mamoru obtains does; old self-made or vendor certificates often do not) and "
              "reload the web server.").format(host=host),
            details,
        )
    shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
    return Finding(
        "cert.names",
        "problem",
        _("The certificate is for {names}, not {host}: patients' browsers show a full-page "
          "error instead of the site (\"Your connection is not private\", "
          "ERR_CERT_COMMON_NAME_INVALID).").format(names=shown, host=host),
        _("Make sure the web server uses the certificate that includes {host} for this site "
          "(nginx server_name / Apache ServerName), or add {host} to the site's names in "
          "mamoru's configuration so the next certificate covers it.").format(host=host),
        details,
    )


def expiry_finding(leaf: x509.Certificate, now: dt.datetime) -> Finding:
    """``cert.expiry``: the time ``leaf`` has left, judged against its lifetime."""
    not_before = leaf.not_valid_before_utc
    not_after = leaf.not_valid_after_utc
    lifetime = not_after - not_before
    left = not_after - now
    details: dict[str, object] = {
        "not_before": not_before.isoformat(),
        "not_after": not_after.isoformat(),
        "days_left": round(_days(left), 2),
        "lifetime_days": round(_days(lifetime), 2),
    }
    renew_fix = _(
        "Automatic renewal should have replaced it by now: run mamoru renew, then "
        "check mamoru status and the service log for why it did not happen."
    )
    if left <= dt.timedelta(0):
        ago = int(-_days(left))
        return Finding(
            "cert.expiry",
            "problem",
            ngettext("The certificate expired {n} day ago (on {date}).",
                     "The certificate expired {n} days ago (on {date}).", ago).format(
                         n=ago, date=date_of(not_after)),
            renew_fix,
            details,
        )
    if now < not_before:
        return Finding(
            "cert.expiry",
            "problem",
            _("The certificate is not valid until {date}.").format(date=date_of(not_before)),
            _("Check the server's clock (timedatectl)."),
            details,
        )
    days = int(_days(left))
    message = ngettext("The certificate expires in {n} day (on {date}).",
                       "The certificate expires in {n} days (on {date}).", days).format(
                           n=days, date=date_of(not_after))
    if left < lifetime / 6:
        return Finding(
            "cert.expiry", "problem", message + _(" That is very close."), renew_fix, details
        )
    if left < lifetime / 3:
        return Finding(
            "cert.expiry",
            "warning",
            message + _(" It should have been renewed already."),
            _("Check that the mamoru service is running (mamoru status) and look at "
              "its log for failed renewals."),
            details,
        )
    return Finding("cert.expiry", "ok", message, details=details)


def matches_stored_finding(leaf: x509.Certificate, expected_pem: bytes) -> Finding:
    """``cert.matches-stored``: is ``leaf`` the certificate mamoru stored
    (the first one in ``expected_pem``)."""
    try:
        expected = x509.load_pem_x509_certificates(expected_pem)[0]
    except (ValueError, IndexError):
        return Finding(
            "cert.matches-stored",
            "warning",
            "The stored certificate could not be read, so it was not compared.",
            "Check the certificate file in mamoru's storage directory.",
            {},
        )
    details: dict[str, object] = {
        "served": _cert_summary(leaf),
        "stored": _cert_summary(expected),
    }
    served_der = leaf.public_bytes(serialization.Encoding.DER)
    if served_der == expected.public_bytes(serialization.Encoding.DER):
        return Finding(
            "cert.matches-stored",
            "ok",
            _("The server serves the certificate mamoru installed."),
            details=details,
        )
    if leaf.not_valid_after_utc < expected.not_valid_after_utc:
        message = _(
            "The server still serves the old certificate (expires {served}), not the one "
            "mamoru installed (expires {stored})."
        ).format(served=date_of(leaf.not_valid_after_utc),
                 stored=date_of(expected.not_valid_after_utc))
    else:
        message = _(
            "The server serves a different certificate from the one mamoru installed "
            "(served expires {served}, stored expires {stored})."
        ).format(served=date_of(leaf.not_valid_after_utc),
                 stored=date_of(expected.not_valid_after_utc))
    return Finding(
        "cert.matches-stored",
        "problem",
        message,
        _("Reload the web server (systemctl reload nginx / apache2) and check that its "
          "configuration includes the certificate files mamoru writes."),
        details,
    )
