"""The plain-HTTP side of a check: does ``http://`` send patients to the same page over
``https://`` (finding ``http.redirect``), and can the CA still reach
``/.well-known/acme-challenge/`` for HTTP-01 validation (finding ``http.acme-challenge``)."""

from __future__ import annotations

import secrets
import urllib.parse

from mamoru.check.fetch import (
    MAX_REDIRECTS,
    NETWORK_ERRORS,
    PERMANENT_REDIRECTS,
    REDIRECTS,
    describe_failure,
    http_get,
    sentence,
)
from mamoru.check.report import Finding
from mamoru.check.target import Target, authority, request_target, same_host, www_variant
from mamoru.check.tls import Deadline
from mamoru.i18n import _


def check_http_redirect(target: Target, address: tuple[str, int], timeout: float) -> Finding:
    """``http.redirect``: follow ``http://`` for ``target`` (same-host hops
    too) and judge where it ends."""
    budget = Deadline(timeout * 2)
    expected = target.url
    url = f"http://{authority(target.host, 80, 80)}{target.path}"
    hops: list[dict[str, object]] = []
    permanent = True
    path = target.path
    for _hop in range(MAX_REDIRECTS + 1):
        deadline = budget.sub(timeout)
        try:
            response = http_get(address, target.host, path, deadline)
        except NETWORK_ERRORS as exc:
            reason, text = describe_failure(exc, deadline, url)
            return Finding(
                "http.redirect",
                "warning",
                f"{sentence(text)}: patients who type the address without "
                "https:// get an error instead of the secure site.",
                "Open port 80 and redirect it to https:// (nginx: return 301 "
                "https://$host$request_uri;).",
                {"url": url, "reason": reason, "hops": hops},
            )
        location = response.header("Location")
        hops.append({"url": url, "status": response.status, "location": location})
        if response.status not in REDIRECTS:
            break
        if not location:
            return Finding(
                "http.redirect",
                "problem",
                f"{url} answers {response.status} but says nowhere to go.",
                "Fix the redirect: return 301 https://$host$request_uri;",
                {"hops": hops},
            )
        permanent = permanent and response.status in PERMANENT_REDIRECTS
        resolved = urllib.parse.urljoin(url, location)
        parts = urllib.parse.urlsplit(resolved)
        if parts.scheme.lower() == "http" and same_host(parts.hostname, target.host):
            # Some sites normalise the path over http first; follow those hops.
            url = resolved
            path = request_target(parts.path or "/", parts.query)
            continue
        return _judge_redirect(target, expected, resolved, permanent, hops)
    else:
        return Finding(
            "http.redirect",
            "problem",
            f"http://{target.host} redirects more than {MAX_REDIRECTS} times "
            "without reaching https:// (a redirect loop).",
            "Fix the port-80 redirect rules: return 301 https://$host$request_uri;",
            {"hops": hops},
        )

    status = hops[-1]["status"]
    assert isinstance(status, int)
    if 200 <= status < 300:
        return Finding(
            "http.redirect",
            "problem",
            _("{url} shows the site over plain, unencrypted HTTP instead of sending visitors "
              "to https://: patients who type the address see \"Not secure\" in the address "
              "bar, and what they enter is sent unencrypted.").format(url=url),
            _("Make the port-80 site redirect everything permanently: nginx: return 301 "
              "https://$host$request_uri; Apache: Redirect permanent / https://<site>/"),
            {"hops": hops, "expected": expected},
        )
    return Finding(
        "http.redirect",
        "warning",
        f"{url} answers with {status} instead of redirecting to https://; patients who type "
        "the address without https:// see an error.",
        "Make the port-80 site redirect everything permanently: return 301 "
        "https://$host$request_uri;",
        {"hops": hops, "expected": expected},
    )


def _judge_redirect(
    target: Target,
    expected: str,
    resolved: str,
    permanent: bool,
    hops: list[dict[str, object]],
) -> Finding:
    parts = urllib.parse.urlsplit(resolved)
    details: dict[str, object] = {
        "hops": hops,
        "expected": expected,
        "target": resolved,
        "permanent": permanent,
    }
    host = (parts.hostname or "").lower()
    if not same_host(parts.hostname, target.host):
        if parts.scheme.lower() == "https" and www_variant(host, target.host):
            return Finding(
                "http.redirect",
                "warning",
                f"http://{target.host} redirects to another name, {resolved}.",
                f"That is fine if {host} is the site's main name; run mamoru check on it too. "
                f"Otherwise redirect to https://{target.host} instead.",
                details,
            )
        return Finding(
            "http.redirect",
            "problem",
            f"http://{target.host} sends visitors to a different site: {resolved}.",
            f"Redirect to the same name over https: return 301 https://$host$request_uri; "
            f"(and check the server_name of the port-80 site for {target.host}).",
            details,
        )
    if parts.scheme.lower() != "https":
        return Finding(
            "http.redirect",
            "problem",
            f"http://{target.host} redirects to {resolved}, which is not https://.",
            "Redirect to https: return 301 https://$host$request_uri;",
            details,
        )
    same_port = (parts.port or 443) == target.port
    got_path = request_target(parts.path or "/", parts.query)
    notes: list[str] = []
    if not same_port:
        notes.append(_("it goes to port {got} instead of {wanted}").format(
            got=parts.port or 443, wanted=target.port))
    if got_path != target.path:
        notes.append(_("it goes to {got} instead of the same page {wanted}").format(
            got=got_path, wanted=target.path))
    if not permanent:
        notes.append(_(
            "it is temporary (302/303/307): patients' browsers still follow it to https:// "
            "(and once they have stored the site's HSTS they go there directly), but search "
            "engines keep listing the http:// address"
        ))
    if not notes:
        return Finding(
            "http.redirect",
            "ok",
            _("{url} redirects permanently to {target}.").format(
                url=f"http://{target.host}{target.path}", target=resolved),
            details=details,
        )
    return Finding(
        "http.redirect",
        "warning",
        _("{url} redirects to https, but {notes}.").format(
            url=f"http://{target.host}{target.path}", notes=_("; ").join(notes)),
        _("Use a permanent redirect that keeps the page: nginx: return 301 "
          "https://$host$request_uri; Apache: Redirect permanent / https://<site>/"),
        details,
    )


def check_acme_challenge(target: Target, address: tuple[str, int], timeout: float) -> Finding:
    """``http.acme-challenge``: where a made-up validation path on port 80
    leads."""
    token = secrets.token_urlsafe(32)
    path = f"/.well-known/acme-challenge/{token}"
    url = f"http://{authority(target.host, 80, 80)}{path}"
    deadline = Deadline(timeout)
    try:
        response = http_get(address, target.host, path, deadline)
    except NETWORK_ERRORS as exc:
        reason, text = describe_failure(exc, deadline, f"http://{target.host}")
        return Finding(
            "http.acme-challenge",
            "warning",
            f"{sentence(text)}. If this site renews its certificate with HTTP "
            "validation, renewals will fail.",
            "Open port 80 for the validation requests (the rest can redirect to https).",
            {"url": url, "reason": reason},
        )
    location = response.header("Location")
    details: dict[str, object] = {"url": url, "status": response.status, "location": location}
    if response.status in REDIRECTS and location:
        resolved = urllib.parse.urljoin(url, location)
        details["target"] = resolved
        parts = urllib.parse.urlsplit(resolved)
        if same_host(parts.hostname, target.host):
            return Finding(
                "http.acme-challenge",
                "ok",
                _("Validation requests are redirected to {url} on the same site; the "
                  "certificate authority follows that, so HTTP validation still works.").format(
                      url=resolved),
                details=details,
            )
        return Finding(
            "http.acme-challenge",
            "problem",
            f"Validation requests for {target.host} are redirected to another site "
            f"({resolved}), so HTTP validation will fail unless that site serves mamoru's "
            "files.",
            "Exempt /.well-known/acme-challenge/ from the redirect in the port-80 site and "
            "serve it from mamoru's webroot.",
            details,
        )
    if response.status >= 500:
        return Finding(
            "http.acme-challenge",
            "warning",
            f"Validation requests get a server error ({response.status}).",
            "Check the port-80 site's error log and its /.well-known/acme-challenge/ location.",
            details,
        )
    if response.status in REDIRECTS:
        return Finding(
            "http.acme-challenge",
            "warning",
            f"Validation requests get a {response.status} redirect with no target.",
            "Serve /.well-known/acme-challenge/ from mamoru's webroot.",
            details,
        )
    said = (
        _("not found (expected for a made-up file)")
        if response.status == 404
        else (f"{response.status} {response.reason}".strip())
    )
    return Finding(
        "http.acme-challenge",
        "ok",
        _("Validation requests reach {host} itself ({status}).").format(host=target.host,
                                                                       status=said),
        details=details,
    )
