"""Run `mamoru.check.url.check_url` for configured sites: every name, against the stored
certificate.

Used by `mamoru check SITE` and, after every install, by the pipeline (its result becomes a
`check` event, so it reaches the event log and alerts).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from mamoru.check.report import TargetReport
from mamoru.check.url import check_url
from mamoru.config.model import Site
from mamoru.netaddr import connect_address
from mamoru.storage import CertVersion


def local_addresses(site: Site) -> tuple[tuple[str, int] | None, tuple[str, int] | None]:
    """Where this machine's own server answers for the site: (https, http) addresses.
    Used after an install, so the check sees this server even before DNS points here."""
    server = site.server
    if server.type == "none":
        return None, None
    return server.verify or connect_address(server.listen_https), connect_address(
        server.listen_http)


def check_site(site: Site, version: CertVersion | None, *, ca_bundle: str | None,
               timeout: float, connect: tuple[str, int] | None = None,
               http_connect: tuple[str, int] | None = None, local: bool = False,
               browser: bool = False) -> list[TargetReport]:
    """Check every name of `site` (concurrently). With `local`, talk to this machine's server
    (the configured verify/listen addresses) instead of whatever DNS says. With `browser`,
    each name is also loaded in a real headless Chromium (one after the other), adding a
    `browser` finding; a missing Chromium is a warning saying how to install it."""
    if local:
        local_https, local_http = local_addresses(site)
        connect = connect or local_https
        http_connect = http_connect or local_http
    expected = version.read("cert.pem") if version is not None else None
    names = [n for n in site.domains if not n.startswith("*.")]

    # A server on a non-standard HTTPS port redirects to that port: check the URL patients
    # of that server really use, so the redirect is judged against the right port.
    port = f":{connect[1]}" if connect and connect[1] != 443 else ""

    def one(name: str) -> TargetReport:
        return check_url(f"https://{name}{port}/", ca_bundle=ca_bundle, connect=connect,
                         http_connect=http_connect, expected_cert_pem=expected, timeout=timeout)

    with ThreadPoolExecutor(max_workers=min(8, max(1, len(names)))) as pool:
        reports = list(pool.map(one, names))
    if browser:
        from mamoru.check.browser import add_browser_findings

        add_browser_findings(reports, ca_bundle=ca_bundle, connect=connect,
                             http_connect=http_connect, timeout=max(timeout * 3, 15.0),
                             missing_is_problem=False)
    return reports
