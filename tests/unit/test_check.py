"""mamoru check against real sockets: whole sites, the plain-HTTP side, HSTS and mixed content
over HTTPS, and broken servers (every failure a finding, within the timeout). The PKI and the
apps the servers run are in check_sites.
"""

from __future__ import annotations

import json
import socket
import ssl
import struct
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tests.unit.check_sites import (
    DAY,
    GOOD_PAGE,
    HOST,
    HSTS_YEAR,
    NOT_FOUND,
    NOW,
    PKI,
    URL,
    App,
    AppServer,
    Issued,
    Reply,
    closed_port,
    finding,
    good_https,
    make_leaf,
    make_pki,
    page,
    redirect_http,
    statuses,
)

from mamoru.check.report import (
    CHECK_IDS,
    TargetReport,
    exit_code,
    render_table,
    to_json,
)
from mamoru.check.url import check_url


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., tuple[str, int]]]:
    """Start an app server; returns its (address, port). Pass ``chain`` for HTTPS."""
    servers: list[AppServer] = []

    def start(
        app: App,
        chain: list[Issued] | None = None,
        key: Issued | None = None,
        context: ssl.SSLContext | None = None,
    ) -> tuple[str, int]:
        if chain is not None and context is None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            certfile = tmp_path / f"chain{len(servers)}.pem"
            keyfile = tmp_path / f"key{len(servers)}.pem"
            certfile.write_bytes(b"".join(c.pem for c in chain))
            keyfile.write_bytes((key or chain[0]).key_pem)
            context.load_cert_chain(certfile, keyfile)
        server = AppServer(app, context)
        threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        servers.append(server)
        return "127.0.0.1", server.server_address[1]

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def raw_server() -> Iterator[Callable[[Callable[[socket.socket], None] | None], tuple[str, int]]]:
    """A bare TCP listener. With a handler, each accepted socket is passed to it in a thread;
    without one, connections are never accepted (the kernel still completes them)."""
    listeners: list[socket.socket] = []
    stop = threading.Event()

    def start(handler: Callable[[socket.socket], None] | None) -> tuple[str, int]:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        listeners.append(listener)
        if handler is not None:
            listener.settimeout(0.05)

            def loop() -> None:
                while not stop.is_set():
                    try:
                        conn, _ = listener.accept()
                    except TimeoutError:
                        continue
                    except OSError:
                        return
                    threading.Thread(target=handler, args=(conn,), daemon=True).start()

            threading.Thread(target=loop, daemon=True).start()
        return "127.0.0.1", listener.getsockname()[1]

    yield start
    stop.set()
    for listener in listeners:
        listener.close()


@pytest.fixture
def good_site(
    pki: PKI, serve: Callable[..., tuple[str, int]]
) -> tuple[tuple[str, int], tuple[str, int]]:
    https = serve(good_https, [pki.good, pki.intermediate])
    http_ = serve(redirect_http(301, challenge=NOT_FOUND))
    return https, http_


# --------------------------------------------------------------------------------------------
# Whole-site scenarios
# --------------------------------------------------------------------------------------------


def test_good_site_is_all_ok(pki: PKI, good_site: tuple[tuple[str, int], tuple[str, int]]) -> None:
    https, http_ = good_site
    report = check_url(
        URL,
        ca_bundle=pki.bundle,
        connect=https,
        http_connect=http_,
        expected_cert_pem=pki.good.pem + pki.intermediate.pem,
        timeout=3,
    )
    assert report.url == URL
    assert report.host == HOST
    plain = [c for c in CHECK_IDS if c != "browser"]  # "browser" only with --browser
    assert [f.check for f in report.findings] == plain
    assert statuses(report) == dict.fromkeys(plain, "ok"), render_table([report])
    assert report.worst == "ok"
    assert all(f.fix == "" for f in report.findings)
    assert finding(report, "tls.version").details["version"] in ("TLSv1.2", "TLSv1.3")
    assert finding(report, "cert.chain").details["served_chain"] == [
        f"CN={HOST}",
        "CN=Mamoru Test Intermediate R1",
    ]
    assert finding(report, "hsts").details["max_age"] == 31536000
    assert exit_code([report], strict=True) == 0
    # The JSON form is really JSON and keeps the documented keys.
    data = json.loads(json.dumps(to_json([report])))
    assert data["worst"] == "ok"
    assert set(data["targets"][0]) == {"url", "host", "worst", "findings"}
    assert set(data["targets"][0]["findings"][0]) == {
        "check",
        "status",
        "message",
        "fix",
        "details",
    }


def test_expired_certificate(pki: PKI, serve: Callable[..., tuple[str, int]]) -> None:
    https = serve(good_https, [pki.expired, pki.intermediate])
    http_ = serve(redirect_http(301, challenge=NOT_FOUND))
    report = check_url(URL, ca_bundle=pki.bundle, connect=https, http_connect=http_, timeout=3)
    chain = finding(report, "cert.chain")
    assert chain.status == "problem"
    assert chain.details["reason"] == "expired"
    assert chain.details["chain_otherwise_ok"] is True
    assert "expired" in chain.message
    expiry = finding(report, "cert.expiry")
    assert expiry.status == "problem"
    assert "expired 10 days ago" in expiry.message
    # The rest of the site is still examined over the unverified connection.
    assert finding(report, "https.reachable").status == "ok"
    assert finding(report, "hsts").status == "ok"
    assert exit_code([report], strict=False) == 2


def test_wrong_name(pki: PKI, serve: Callable[..., tuple[str, int]]) -> None:
    https = serve(good_https, [pki.other_name, pki.intermediate])
    http_ = serve(redirect_http(301, challenge=NOT_FOUND))
    report = check_url(URL, ca_bundle=pki.bundle, connect=https, http_connect=http_, timeout=3)
    names = finding(report, "cert.names")
    assert names.status == "problem"
    assert "other.test" in names.message and HOST in names.message
    assert names.details["names"] == ["other.test", "www.other.test"]
    # A wrong name is not a chain fault: the two are reported separately.
    assert finding(report, "cert.chain").status == "ok"


def test_chain_missing_intermediate(pki: PKI, serve: Callable[..., tuple[str, int]]) -> None:
    https = serve(good_https, [pki.good])
    http_ = serve(redirect_http(301, challenge=NOT_FOUND))
    report = check_url(URL, ca_bundle=pki.bundle, connect=https, http_connect=http_, timeout=3)
    chain = finding(report, "cert.chain")
    assert chain.status == "problem"
    assert chain.details["reason"] == "incomplete-chain"
    assert "intermediate" in chain.message
    assert "fullchain.pem" in chain.fix
    assert finding(report, "cert.names").status == "ok"
    assert finding(report, "cert.expiry").status == "ok"


def test_self_signed(pki: PKI, serve: Callable[..., tuple[str, int]]) -> None:
    https = serve(good_https, [pki.self_signed])
    http_ = serve(redirect_http(301, challenge=NOT_FOUND))
    report = check_url(URL, ca_bundle=pki.bundle, connect=https, http_connect=http_, timeout=3)
    chain = finding(report, "cert.chain")
    assert (chain.status, chain.details["reason"]) == ("problem", "self-signed")


def test_unknown_issuer(pki: PKI, serve: Callable[..., tuple[str, int]]) -> None:
    https = serve(good_https, [pki.good, pki.intermediate])
    http_ = serve(redirect_http(301, challenge=NOT_FOUND))
    report = check_url(
        URL, ca_bundle=pki.other_bundle, connect=https, http_connect=http_, timeout=3
    )
    chain = finding(report, "cert.chain")
    assert (chain.status, chain.details["reason"]) == ("problem", "unknown-issuer")
    assert "Mamoru Test Root" in chain.message


def test_served_certificate_differs_from_stored(
    pki: PKI, good_site: tuple[tuple[str, int], tuple[str, int]]
) -> None:
    https, http_ = good_site
    newer = make_leaf([HOST], pki.intermediate, not_before=NOW, not_after=NOW + 90 * DAY)
    report = check_url(
        URL,
        ca_bundle=pki.bundle,
        connect=https,
        http_connect=http_,
        expected_cert_pem=newer.pem,
        timeout=3,
    )
    stored = finding(report, "cert.matches-stored")
    assert stored.status == "problem"
    assert "still serves the old certificate" in stored.message
    assert "Reload the web server" in stored.fix


@pytest.mark.parametrize(
    ("days_ahead", "status"),
    [(0, "ok"), (35, "warning"), (48, "problem"), (61, "problem")],
)
def test_expiry_thresholds(
    pki: PKI, good_site: tuple[tuple[str, int], tuple[str, int]], days_ahead: int, status: str
) -> None:
    # The good leaf lives 90 days and has 60 left: warning under 30 left, problem under 15.
    https, http_ = good_site
    report = check_url(
        URL,
        ca_bundle=pki.bundle,
        connect=https,
        http_connect=http_,
        timeout=3,
        now=NOW + days_ahead * DAY,
    )
    assert finding(report, "cert.expiry").status == status


# --------------------------------------------------------------------------------------------
# Plain HTTP: redirect and ACME challenge
# --------------------------------------------------------------------------------------------


def _http_only(
    pki: PKI, serve: Callable[..., tuple[str, int]], http_app: App, url: str = URL
) -> TargetReport:
    https = serve(good_https, [pki.good, pki.intermediate])
    return check_url(
        url, ca_bundle=pki.bundle, connect=https, http_connect=serve(http_app), timeout=3
    )


def test_plain_http_without_redirect(pki: PKI, serve: Callable[..., tuple[str, int]]) -> None:
    report = _http_only(pki, serve, page(b"<html>hello</html>"))
    redirect = finding(report, "http.redirect")
    assert redirect.status == "problem"
    assert "plain" in redirect.message
    assert "301" in redirect.fix
    assert finding(report, "http.acme-challenge").status == "ok"  # 200 from the same host


def test_redirect_to_another_host(pki: PKI, serve: Callable[..., tuple[str, int]]) -> None:
    report = _http_only(pki, serve, redirect_http(301, to="https://parked.example/"))
    assert finding(report, "http.redirect").status == "problem"
    acme = finding(report, "http.acme-challenge")
    assert acme.status == "problem"
    assert "another site" in acme.message


def test_redirect_to_www_variant_is_a_warning(
    pki: PKI, serve: Callable[..., tuple[str, int]]
) -> None:
    report = _http_only(
        pki, serve, redirect_http(301, to=f"https://www.{HOST}/", challenge=NOT_FOUND)
    )
    assert finding(report, "http.redirect").status == "warning"


def test_temporary_redirect_is_a_warning(pki: PKI, serve: Callable[..., tuple[str, int]]) -> None:
    report = _http_only(pki, serve, redirect_http(302, challenge=NOT_FOUND))
    redirect = finding(report, "http.redirect")
    assert redirect.status == "warning"
    assert "temporary" in redirect.message
    assert redirect.details["permanent"] is False


def test_redirect_308_keeping_the_path_is_ok(
    pki: PKI, serve: Callable[..., tuple[str, int]]
) -> None:
    report = _http_only(
        pki,
        serve,
        redirect_http(308, challenge=NOT_FOUND),
        url=f"https://{HOST}/appointments?day=1",
    )
    redirect = finding(report, "http.redirect")
    assert redirect.status == "ok", redirect.message
    assert redirect.details["target"] == f"https://{HOST}/appointments?day=1"


def test_redirect_dropping_the_path_is_a_warning(
    pki: PKI, serve: Callable[..., tuple[str, int]]
) -> None:
    report = _http_only(
        pki,
        serve,
        redirect_http(301, keep_path=False, challenge=NOT_FOUND),
        url=f"https://{HOST}/appointments",
    )
    redirect = finding(report, "http.redirect")
    assert redirect.status == "warning"
    assert "/appointments" in redirect.message


def test_http_hops_on_the_same_host_are_followed(
    pki: PKI, serve: Callable[..., tuple[str, int]]
) -> None:
    def app(path: str, host: str) -> Reply:
        if path == "/x":
            return 301, [("Location", "/x/")], b""
        return 301, [("Location", f"https://{host}{path}")], b""

    report = _http_only(pki, serve, app, url=f"https://{HOST}/x")
    redirect = finding(report, "http.redirect")
    assert redirect.status == "warning"  # ends on /x/, not /x
    assert len(redirect.details["hops"]) == 2  # type: ignore[arg-type]


def test_acme_challenge_redirected_to_https_same_host_is_ok_with_a_note(
    pki: PKI, serve: Callable[..., tuple[str, int]]
) -> None:
    report = _http_only(pki, serve, redirect_http(301))  # challenge paths redirected too
    acme = finding(report, "http.acme-challenge")
    assert acme.status == "ok"
    assert "redirected" in acme.message
    assert str(acme.details["target"]).startswith(f"https://{HOST}/.well-known/acme-challenge/")


def test_port_80_closed(pki: PKI, serve: Callable[..., tuple[str, int]]) -> None:
    https = serve(good_https, [pki.good, pki.intermediate])
    report = check_url(
        URL, ca_bundle=pki.bundle, connect=https, http_connect=closed_port(), timeout=3
    )
    assert finding(report, "http.redirect").status == "warning"
    assert finding(report, "http.redirect").details["reason"] == "refused"
    assert finding(report, "http.acme-challenge").status == "warning"


# --------------------------------------------------------------------------------------------
# HSTS and mixed content over HTTPS
# --------------------------------------------------------------------------------------------


def _https_app(pki: PKI, serve: Callable[..., tuple[str, int]], app: App) -> TargetReport:
    https = serve(app, [pki.good, pki.intermediate])
    http_ = serve(redirect_http(301, challenge=NOT_FOUND))
    return check_url(URL, ca_bundle=pki.bundle, connect=https, http_connect=http_, timeout=3)


def test_no_hsts(pki: PKI, serve: Callable[..., tuple[str, int]]) -> None:
    report = _https_app(pki, serve, page())
    hsts = finding(report, "hsts")
    assert hsts.status == "warning"
    assert "Strict-Transport-Security" in hsts.fix
    assert exit_code([report], strict=False) == 0
    assert exit_code([report], strict=True) == 1


def test_short_hsts(pki: PKI, serve: Callable[..., tuple[str, int]]) -> None:
    report = _https_app(pki, serve, page(GOOD_PAGE, ("Strict-Transport-Security", "max-age=300")))
    hsts = finding(report, "hsts")
    assert hsts.status == "warning"
    assert hsts.details["max_age"] == 300


@pytest.mark.parametrize(
    ("snippet", "status", "kind"),
    [
        (b'<script src="http://cdn.example/jquery.js"></script>', "problem", "active"),
        (b'<img src="http://photos.example/team.jpg">', "warning", "passive"),
        (b'<form action="http://clinic.test/book" method="post"></form>', "problem", "active"),
    ],
)
def test_mixed_content(
    pki: PKI, serve: Callable[..., tuple[str, int]], snippet: bytes, status: str, kind: str
) -> None:
    body = b"<!doctype html><html><body>" + snippet + b"</body></html>"
    report = _https_app(pki, serve, page(body, HSTS_YEAR))
    mixed = finding(report, "mixed-content")
    assert mixed.status == status
    assert mixed.details[f"{kind}_count"] == 1
    listed = mixed.details[kind]
    assert isinstance(listed, list)
    assert listed[0]["url"].startswith("http://")
    assert finding(report, "hsts").status == "ok"


def test_mixed_content_follows_same_site_page_redirects(
    pki: PKI, serve: Callable[..., tuple[str, int]]
) -> None:
    def app(path: str, host: str) -> Reply:
        if path == "/":
            return 302, [("Location", "/home"), HSTS_YEAR], b""
        return page(b'<html><script src="http://x.example/a.js"></script></html>')(path, host)

    report = _https_app(pki, serve, app)
    mixed = finding(report, "mixed-content")
    assert mixed.status == "problem"
    assert mixed.details["page"] == f"https://{HOST}/home"
    assert finding(report, "hsts").status == "ok"  # taken from the first answer


def test_https_page_redirecting_to_http(pki: PKI, serve: Callable[..., tuple[str, int]]) -> None:
    def app(path: str, host: str) -> Reply:
        return 301, [("Location", f"http://{host}/"), HSTS_YEAR], b""

    report = _https_app(pki, serve, app)
    mixed = finding(report, "mixed-content")
    assert mixed.status == "problem"
    assert "back to insecure" in mixed.message


def test_server_error_page(pki: PKI, serve: Callable[..., tuple[str, int]]) -> None:
    def app(path: str, host: str) -> Reply:
        return 502, [("Content-Type", "text/html")], b"<html>Bad Gateway</html>"

    reachable = finding(_https_app(pki, serve, app), "https.reachable")
    assert reachable.status == "problem"
    assert "502" in reachable.message


def test_oversized_page_is_capped(pki: PKI, serve: Callable[..., tuple[str, int]]) -> None:
    body = b"<html><body>" + b"<p>x</p>" * (300 * 1024) + b'<script src="http://late.example/'
    body += b'a.js"></script></body></html>'
    mixed = finding(_https_app(pki, serve, page(body, HSTS_YEAR)), "mixed-content")
    assert mixed.details["truncated"] is True
    # The script sits beyond the 2 MB cap, so it is not seen.
    assert mixed.status == "ok"


# --------------------------------------------------------------------------------------------
# Broken servers: every failure is a finding, within the timeout
# --------------------------------------------------------------------------------------------


def _reset(conn: socket.socket) -> None:
    # SO_LINGER with a zero timeout makes close() send a TCP RST.
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


def test_server_that_resets_connections(raw_server: Callable[..., tuple[str, int]]) -> None:
    address = raw_server(_reset)
    report = check_url(URL, connect=address, http_connect=address, timeout=2)
    reachable = finding(report, "https.reachable")
    assert reachable.status == "problem"
    assert reachable.details["reason"] in ("reset", "closed")
    # Nothing else about HTTPS can be known.
    assert {f.check for f in report.findings} == {
        "https.reachable",
        "http.redirect",
        "http.acme-challenge",
    }
    assert finding(report, "http.redirect").status == "warning"


def test_server_that_never_answers(raw_server: Callable[..., tuple[str, int]]) -> None:
    address = raw_server(None)  # connections complete in the kernel but nobody reads
    started = time.monotonic()
    report = check_url(URL, connect=address, http_connect=address, timeout=1)
    elapsed = time.monotonic() - started
    assert elapsed < 2.5, elapsed  # the three sides run in parallel, each bounded by 1 s
    reachable = finding(report, "https.reachable")
    assert reachable.status == "problem"
    assert reachable.details["reason"] == "timeout"
    assert "did not answer within 1 second" in reachable.message
    assert finding(report, "http.redirect").details["reason"] == "timeout"


def test_server_that_drips_its_answer(
    pki: PKI, tmp_path: Path, raw_server: Callable[..., tuple[str, int]]
) -> None:
    """A server sending one header byte at a time is cut off at the deadline, not after the
    (unbounded) time it would take to finish."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    (tmp_path / "c.pem").write_bytes(pki.good.pem + pki.intermediate.pem)
    (tmp_path / "k.pem").write_bytes(pki.good.key_pem)
    context.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")

    def drip(conn: socket.socket) -> None:
        try:
            tls = context.wrap_socket(conn, server_side=True)
            tls.recv(4096)
            tls.sendall(b"HTTP/1.1 200 OK\r\n")
            for _ in range(200):
                tls.sendall(b"X")
                time.sleep(0.1)
        except OSError:
            pass

    address = raw_server(drip)
    started = time.monotonic()
    report = check_url(
        URL, ca_bundle=pki.bundle, connect=address, http_connect=closed_port(), timeout=1
    )
    assert time.monotonic() - started < 2.5
    reachable = finding(report, "https.reachable")
    assert reachable.status == "problem"
    assert reachable.details["reason"] == "timeout"
    # The handshake itself succeeded, so the certificate is still judged.
    assert finding(report, "cert.chain").status == "ok"


def test_nothing_listening(raw_server: Callable[..., tuple[str, int]]) -> None:
    address = closed_port()
    report = check_url(URL, connect=address, http_connect=address, timeout=2)
    reachable = finding(report, "https.reachable")
    assert (reachable.status, reachable.details["reason"]) == ("problem", "refused")
    assert "443" in reachable.fix


def test_plain_http_on_the_https_port(serve: Callable[..., tuple[str, int]]) -> None:
    address = serve(page())
    reachable = finding(
        check_url(URL, connect=address, http_connect=address, timeout=2), "https.reachable"
    )
    assert (reachable.status, reachable.details["reason"]) == ("problem", "tls")
    assert "plain HTTP" in reachable.message


def test_outdated_tls_version(pki: PKI, serve: Callable[..., tuple[str, int]]) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    try:
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
    except ssl.SSLError:
        pytest.skip("this OpenSSL cannot offer TLS 1.1 at all")
    tmp = pki.dir / "legacy"
    tmp.mkdir(exist_ok=True)
    (tmp / "c.pem").write_bytes(pki.good.pem + pki.intermediate.pem)
    (tmp / "k.pem").write_bytes(pki.good.key_pem)
    context.load_cert_chain(tmp / "c.pem", tmp / "k.pem")
    address = serve(good_https, context=context)
    report = check_url(
        URL, ca_bundle=pki.bundle, connect=address, http_connect=closed_port(), timeout=2
    )
    version = finding(report, "tls.version")
    assert version.status == "problem"
    if version.details["version"] is None:
        pytest.skip("this OpenSSL build cannot speak TLS 1.1 even to diagnose it")
    assert version.details["version"] == "TLSv1.1"
    assert finding(report, "https.reachable").details["reason"] == "tls-version"


def test_bad_inputs_raise_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="only http"):
        check_url("ftp://clinic.test/")
    with pytest.raises(ValueError, match="CA bundle"):
        check_url(URL, ca_bundle=str(tmp_path / "missing.pem"))
