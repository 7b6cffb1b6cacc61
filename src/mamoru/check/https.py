"""The HTTPS side of a check: one verified handshake (a second, unverified one to diagnose a
chain that fails), the page, and the page's redirects on the same site; the findings
``https.reachable``, ``tls.version``, the certificate ones, ``hsts`` and ``mixed-content``."""

from __future__ import annotations

import datetime as dt
import ssl
import urllib.parse

from mamoru.check.certificate import expiry_finding, matches_stored_finding, names_finding
from mamoru.check.chain import chain_ok_finding, chain_problem_finding, load_certs
from mamoru.check.fetch import (
    MAX_REDIRECTS,
    NETWORK_ERRORS,
    REDIRECTS,
    Response,
    describe_failure,
    exchange,
    https_get,
    sentence,
)
from mamoru.check.hsts import hsts_finding
from mamoru.check.mixed_content import page_finding
from mamoru.check.report import Finding
from mamoru.check.target import Target, authority, request_target, same_host
from mamoru.check.tls import (
    VERSION_REASONS,
    Deadline,
    served_chain,
    tls_connect,
    unverified_context,
    verifying_context,
)
from mamoru.i18n import _


def tls_version_finding(version: str | None) -> Finding:
    """``tls.version``: TLS 1.2 and 1.3 are fine, anything older a problem."""
    if version in ("TLSv1.2", "TLSv1.3"):
        return Finding(
            "tls.version", "ok", _("The connection uses {version}.").format(version=version),
            details={"version": version}
        )
    shown = version or "an unknown protocol"
    return Finding(
        "tls.version",
        "problem",
        _("The server only speaks {versions}, which browsers have refused since 2020.").format(
            versions=shown),
        _("Enable TLS 1.2 and 1.3 in the web server (nginx: ssl_protocols TLSv1.2 TLSv1.3; "
          "Apache: SSLProtocol -all +TLSv1.2 +TLSv1.3) and reload it."),
        {"version": version},
    )


def check_https(
    target: Target,
    address: tuple[str, int],
    ca_bundle: str | None,
    expected_cert_pem: bytes | None,
    timeout: float,
    now: dt.datetime,
) -> list[Finding]:
    """Every HTTPS-side finding for ``target``, connecting to ``address``; within
    about 3 x ``timeout`` in all."""
    # Several connections may be needed (diagnosis, page redirects); together they get a
    # bounded budget so a slow site cannot stretch the check indefinitely.
    budget = Deadline(timeout * 3)
    where = f"https://{authority(target.host, target.port, 443)}"
    via = {"address": f"{address[0]}:{address[1]}"}
    findings: list[Finding] = []

    verified = True
    verify_error: ssl.SSLCertVerificationError | None = None
    context = verifying_context(ca_bundle)
    deadline = budget.sub(timeout)
    try:
        sock = tls_connect(address, target.host, context, deadline)
    except ssl.SSLCertVerificationError as exc:
        verified = False
        verify_error = exc
        context = unverified_context()
        deadline = budget.sub(timeout)
        try:
            sock = tls_connect(address, target.host, context, deadline)
        except NETWORK_ERRORS as again:
            return [_unreachable(where, again, deadline, via)]
    except ssl.SSLError as exc:
        if str(getattr(exc, "reason", "")) in VERSION_REASONS:
            return _legacy_only(target, address, where, budget.sub(timeout), exc, via)
        return [_unreachable(where, exc, deadline, via)]
    except NETWORK_ERRORS as exc:
        return [_unreachable(where, exc, deadline, via)]

    first: Response | None = None
    page_error: BaseException | None = None
    try:
        version = sock.version()
        leaf_der = sock.getpeercert(binary_form=True)
        chain_der = served_chain(sock) or ([leaf_der] if leaf_der else [])
        try:
            first = exchange(
                sock,
                authority(target.host, target.port, 443),
                target.path,
                deadline,
                read_body=True,
            )
        except NETWORK_ERRORS as exc:
            page_error = exc
    finally:
        sock.close()

    if page_error is not None:
        reason, text = describe_failure(page_error, deadline, where)
        findings.append(
            Finding(
                "https.reachable",
                "problem",
                f"A secure connection was made, but {text} when asked for {target.path}.",
                "Check the web server's error log; the application behind it may be down or hung.",
                {**via, "reason": reason, "error": str(page_error)},
            )
        )
    elif first is not None:
        findings.append(_reachable_finding(first, where, via))
    findings.append(tls_version_finding(version))

    chain = load_certs(chain_der)
    leaf = chain[0] if chain else None
    if verified:
        findings.append(chain_ok_finding(chain, ca_bundle))
    elif verify_error is not None:
        code = int(verify_error.verify_code or 0)
        otherwise_ok: bool | None = None
        if code in (9, 10) and not budget.expired:
            otherwise_ok = _verifies_ignoring_time(
                address, target.host, ca_bundle, budget.sub(timeout)
            )
        findings.append(
            chain_problem_finding(
                code,
                str(verify_error.verify_message or verify_error),
                chain,
                ca_bundle,
                now,
                otherwise_ok,
            )
        )
    if leaf is not None:
        findings.append(names_finding(target.host, leaf))
        findings.append(expiry_finding(leaf, now))
        if expected_cert_pem is not None:
            findings.append(matches_stored_finding(leaf, expected_cert_pem))

    if first is not None:
        # HSTS from the first answer that sets it; mixed content from the page the same-site
        # redirects lead to.
        answers, url, stopped = _follow_page_redirects(
            target, address, first, context, budget, timeout
        )
        findings.append(hsts_finding(_first_header(answers, "Strict-Transport-Security")))
        findings.append(stopped if stopped is not None else page_finding(answers[-1], url))
    return findings


def _reachable_finding(first: Response, where: str, via: dict[str, str]) -> Finding:
    details: dict[str, object] = {**via, "status": first.status}
    said = f"{first.status} {first.reason}".strip()
    if first.status >= 500:
        return Finding(
            "https.reachable",
            "problem",
            _("{url} answers, but with a server error ({status}).").format(url=where,
                                                                          status=said),
            _("Check the web server's error log; the application behind it may be down."),
            details,
        )
    if first.status >= 400:
        return Finding(
            "https.reachable",
            "warning",
            _("{url} answers, but with an error page ({status}).").format(url=where,
                                                                         status=said),
            _("Check that the address is right and the site's home page exists."),
            details,
        )
    return Finding(
        "https.reachable", "ok",
        _("{url} answers over HTTPS ({status}).").format(url=where, status=said),
        details=details
    )


def _unreachable(
    where: str, exc: BaseException, deadline: Deadline, via: dict[str, str]
) -> Finding:
    reason, text = describe_failure(exc, deadline, where)
    fixes = {
        "timeout": "Check that the server is up and that a firewall is not silently dropping "
        "port 443; if it is overloaded, restart the web server.",
        "refused": "Start the web server (systemctl start nginx / apache2) and make sure it "
        "listens on port 443.",
        "dns": "Check the domain's DNS records (an A/AAAA record must point to the server).",
        "reset": "Check the web server's error log and any firewall or proxy in front of it.",
        "closed": "Check the web server's error log; the TLS configuration may be broken.",
        "tls": "Check the web server's TLS settings (certificate and key paths, listen ... "
        "ssl) and its error log.",
    }
    return Finding(
        "https.reachable",
        "problem",
        sentence(text) + ".",
        fixes.get(reason, "Check that the server is up and reachable on port 443."),
        {**via, "reason": reason, "error": str(exc) or type(exc).__name__},
    )


def _legacy_only(
    target: Target,
    address: tuple[str, int],
    where: str,
    deadline: Deadline,
    original: ssl.SSLError,
    via: dict[str, str],
) -> list[Finding]:
    """The modern handshake failed on the protocol version: learn what the server speaks."""
    try:
        sock = tls_connect(address, target.host, unverified_context(legacy=True), deadline)
    except NETWORK_ERRORS:
        return [
            _unreachable(where, original, deadline, via),
            tls_version_finding(None),
        ]
    try:
        version = sock.version()
    finally:
        sock.close()
    return [
        Finding(
            "https.reachable",
            "problem",
            f"{where} only accepts outdated encryption, so browsers cannot open it.",
            "Enable TLS 1.2 and 1.3 in the web server and reload it.",
            {**via, "reason": "tls-version", "version": version},
        ),
        tls_version_finding(version),
    ]


def _verifies_ignoring_time(
    address: tuple[str, int], host: str, ca_bundle: str | None, deadline: Deadline
) -> bool | None:
    try:
        sock = tls_connect(
            address, host, verifying_context(ca_bundle, ignore_time=True), deadline
        )
    except ssl.SSLCertVerificationError:
        return False
    except NETWORK_ERRORS:
        return None
    sock.close()
    return True


def _first_header(responses: list[Response], name: str) -> str | None:
    """The header ``name`` of the first answer that has it."""
    return next((r.header(name) for r in responses if r.header(name) is not None), None)


def _follow_page_redirects(
    target: Target,
    address: tuple[str, int],
    first: Response,
    context: ssl.SSLContext,
    budget: Deadline,
    timeout: float,
) -> tuple[list[Response], str, Finding | None]:
    """Follow the page's redirects on the same site (same host, port and https), at most
    MAX_REDIRECTS and within ``budget``: every answer in order, the URL of the last one, and
    the ``mixed-content`` finding that ended the walk early (back to http://, another site,
    a loop, a page that failed to load), or None when the last answer is the page to scan."""
    responses = [first]
    url = target.url
    response = first
    stopped: Finding | None = None
    while response.status in REDIRECTS and response.header("Location"):
        location = urllib.parse.urljoin(url, response.header("Location") or "")
        parts = urllib.parse.urlsplit(location)
        if parts.scheme.lower() == "http":
            stopped = Finding(
                "mixed-content",
                "problem",
                f"The secure page {url} sends visitors back to insecure {location}.",
                "Fix the site's own address setting (e.g. the CMS 'site URL') to use https://, "
                "and remove the redirect to http://.",
                {"page": url, "redirect": location},
            )
            break
        if (
            not same_host(parts.hostname, target.host)
            or (parts.port or 443) != target.port
            or parts.scheme.lower() != "https"
        ):
            stopped = Finding(
                "mixed-content",
                "ok",
                f"The page redirects to another site ({location}); that site was not scanned.",
                details={"page": url, "redirect": location, "scanned": False},
            )
            break
        if len(responses) > MAX_REDIRECTS:
            stopped = Finding(
                "mixed-content",
                "warning",
                f"The page redirected more than {MAX_REDIRECTS} times, so it was not scanned.",
                "Check the site's redirect rules for a loop.",
                {"page": url, "redirects": len(responses) - 1, "scanned": False},
            )
            break
        if budget.expired:
            break
        path = request_target(parts.path or "/", parts.query)
        deadline = budget.sub(timeout)
        try:
            response = https_get(address, target, path, context, deadline)
        except NETWORK_ERRORS as exc:
            _reason, text = describe_failure(exc, deadline, location)
            stopped = Finding(
                "mixed-content",
                "warning",
                f"The page could not be scanned: {text}.",
                "Check that the page the site redirects to loads.",
                {"page": location, "scanned": False},
            )
            break
        url = location
        responses.append(response)
    return responses, url, stopped
