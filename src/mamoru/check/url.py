"""``check_url``: one site checked the way a patient's browser sees it, all checks together.

The HTTPS side (:mod:`mamoru.check.https`) and the two plain-HTTP checks
(:mod:`mamoru.check.redirect`) run side by side; their findings come back in report order.
Nothing here raises for network trouble: refused, reset, timed-out or garbled connections all
become findings.
"""

from __future__ import annotations

import datetime as dt
import ssl
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from mamoru.check.https import check_https
from mamoru.check.redirect import check_acme_challenge, check_http_redirect
from mamoru.check.report import CHECK_IDS, Finding, TargetReport
from mamoru.check.target import parse_target
from mamoru.check.tls import verifying_context


def check_url(
    url: str,
    *,
    ca_bundle: str | None = None,
    connect: tuple[str, int] | None = None,
    http_connect: tuple[str, int] | None = None,
    expected_cert_pem: bytes | None = None,
    timeout: float = 5.0,
    now: dt.datetime | None = None,
) -> TargetReport:
    """Check one site the way a patient's browser sees it and return the findings.

    ``url`` may be ``https://host[:port]/path``, ``http://host/path`` or a bare host name
    (see :func:`normalize_url`). ``connect=(address, port)`` sends the HTTPS connections there
    while SNI, the Host header and name matching still use the URL's host (like curl
    --connect-to); ``http_connect`` does the same for the plain-HTTP checks and defaults to
    ``connect``'s address on port 80, or the URL's host on port 80. ``ca_bundle`` is a PEM file
    that replaces the system trust store. ``expected_cert_pem`` (the leaf first if it is a
    chain) adds the ``cert.matches-stored`` check. ``now`` (UTC if naive) only changes the
    expiry arithmetic; chain verification uses the real clock.

    ``timeout`` bounds every single connection, including servers that accept and never
    answer; the HTTPS side as a whole stops after 3 x ``timeout`` and the plain-HTTP checks run
    in parallel with it, so the call returns within about 3 x ``timeout``.

    Network failures never raise: they become findings. Raises ValueError for a URL that
    cannot be checked and for an unreadable ``ca_bundle``.
    """
    target = parse_target(url)
    if ca_bundle is not None:
        try:
            verifying_context(ca_bundle)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"cannot use CA bundle {ca_bundle}: {exc}") from exc
    if timeout <= 0:
        raise ValueError("timeout must be positive")
    when = now or dt.datetime.now(dt.UTC)
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    https_address = connect or (target.host, target.port)
    http_address = http_connect or ((connect[0], 80) if connect else (target.host, 80))

    jobs: list[Callable[[], list[Finding]]] = [
        lambda: check_https(target, https_address, ca_bundle, expected_cert_pem, timeout, when),
        lambda: [check_http_redirect(target, http_address, timeout)],
        lambda: [check_acme_challenge(target, http_address, timeout)],
    ]
    # The three sides are independent; running them side by side keeps a dead server from
    # costing three timeouts in a row.
    with ThreadPoolExecutor(max_workers=len(jobs), thread_name_prefix="mamoru-check") as pool:
        futures = [pool.submit(job) for job in jobs]
        collected = [f for future in futures for f in future.result()]
    order = {check: i for i, check in enumerate(CHECK_IDS)}
    collected.sort(key=lambda f: order.get(f.check, len(order)))
    return TargetReport(url=target.url, host=target.host, findings=collected)
