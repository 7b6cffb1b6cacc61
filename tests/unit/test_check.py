"""mamoru check against real sockets: small HTTPS/HTTP servers on 127.0.0.1 with a test PKI.

Every server here is a thread in this process; nothing in ssl or socket is mocked. The URL host
is always ``clinic.test`` and ``connect``/``http_connect`` aim the connections at 127.0.0.1,
which is exactly how the CLI's ``--connect`` works against a real server.
"""

from __future__ import annotations

import datetime as dt
import http.server
import json
import socket
import ssl
import struct
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mamoru.check.certificate import dns_name_matches, hostname_matches
from mamoru.check.hsts import parse_hsts
from mamoru.check.report import (
    CHECK_IDS,
    Finding,
    Status,
    TargetReport,
    exit_code,
    render_table,
    to_json,
)
from mamoru.check.target import normalize_url
from mamoru.check.url import check_url

HOST = "clinic.test"
URL = f"https://{HOST}/"
NOW = dt.datetime.now(dt.UTC)
DAY = dt.timedelta(days=1)

# --------------------------------------------------------------------------------------------
# A test PKI: root -> intermediate -> leaves
# --------------------------------------------------------------------------------------------


@dataclass
class Issued:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(cn: str, issuer: Issued | None = None) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    signer = issuer.key if issuer else key
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer.cert.subject if issuer else _name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - 365 * DAY)
        .not_valid_after(NOW + 3650 * DAY)
        .add_extension(
            x509.BasicConstraints(ca=True, path_length=None if issuer is None else 0), critical=True
        )
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
            critical=False,
        )
    return Issued(builder.sign(signer, hashes.SHA256()), key)


def make_leaf(
    names: list[str],
    issuer: Issued | None,
    *,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> Issued:
    """A server certificate; issuer None makes it self-signed."""
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(names[0]))
        .issuer_name(issuer.cert.subject if issuer else _name(names[0]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or NOW - 30 * DAY)
        .not_valid_after(not_after or NOW + 60 * DAY)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
            critical=False,
        )
    return Issued(builder.sign(issuer.key if issuer else key, hashes.SHA256()), key)


@dataclass
class PKI:
    root: Issued
    intermediate: Issued
    good: Issued
    expired: Issued
    other_name: Issued
    self_signed: Issued
    other_root: Issued
    dir: Path

    @property
    def bundle(self) -> str:
        return str(self.dir / "root.pem")

    @property
    def other_bundle(self) -> str:
        return str(self.dir / "other-root.pem")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    root = make_ca("Mamoru Test Root")
    intermediate = make_ca("Mamoru Test Intermediate R1", root)
    directory = tmp_path_factory.mktemp("pki")
    other_root = make_ca("Somebody Else's Root")
    (directory / "root.pem").write_bytes(root.pem)
    (directory / "other-root.pem").write_bytes(other_root.pem)
    return PKI(
        root=root,
        intermediate=intermediate,
        # 90-day lifetime, 60 days left: comfortably "ok".
        good=make_leaf([HOST, f"www.{HOST}"], intermediate),
        expired=make_leaf(
            [HOST], intermediate, not_before=NOW - 100 * DAY, not_after=NOW - 10 * DAY
        ),
        other_name=make_leaf(["other.test", "www.other.test"], intermediate),
        self_signed=make_leaf([HOST], None),
        other_root=other_root,
        dir=directory,
    )


# --------------------------------------------------------------------------------------------
# Servers
# --------------------------------------------------------------------------------------------

Reply = tuple[int, list[tuple[str, str]], bytes]
App = Callable[[str, str], Reply]  # (path, Host header) -> reply

GOOD_PAGE = b"""<!doctype html><html><head><title>Clinic</title>
<link rel="stylesheet" href="/style.css"><script src="https://cdn.example/app.js"></script>
</head><body><img src="/logo.png"><form action="/book" method="post"></form></body></html>"""

HSTS_YEAR = ("Strict-Transport-Security", "max-age=31536000; includeSubDomains")


def page(body: bytes = GOOD_PAGE, *headers: tuple[str, str]) -> App:
    """An HTTPS app answering every path with ``body`` (HTML) and ``headers``."""

    def app(path: str, host: str) -> Reply:
        return 200, [("Content-Type", "text/html; charset=utf-8"), *headers], body

    return app


def good_https(path: str, host: str) -> Reply:
    return page(GOOD_PAGE, HSTS_YEAR)(path, host)


def redirect_http(
    status: int = 301,
    *,
    to: str | None = None,
    keep_path: bool = True,
    challenge: Reply | None = None,
) -> App:
    """A port-80 app: redirect to https (or ``to``), answer ACME paths with ``challenge``."""

    def app(path: str, host: str) -> Reply:
        if path.startswith("/.well-known/acme-challenge/") and challenge is not None:
            return challenge
        target = to if to is not None else f"https://{host}" + (path if keep_path else "/")
        return status, [("Location", target)], b""

    return app


NOT_FOUND: Reply = (404, [("Content-Type", "text/plain")], b"not found")


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _AppServer

    def do_GET(self) -> None:
        status, headers, body = self.server.app(self.path, self.headers.get("Host", ""))
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _AppServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, app: App, context: ssl.SSLContext | None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.app = app
        self.context = context

    def get_request(self) -> tuple[socket.socket, object]:
        sock, addr = super().get_request()
        if self.context is not None:
            # The handshake then happens in the handler thread, on first read, so a client
            # that aborts it cannot stall the accept loop.
            sock = self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr

    def handle_error(self, request: object, client_address: object) -> None:
        # Clients rejecting our test certificates is the point of several tests.
        pass


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., tuple[str, int]]]:
    """Start an app server; returns its (address, port). Pass ``chain`` for HTTPS."""
    servers: list[_AppServer] = []

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
        server = _AppServer(app, context)
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


def closed_port() -> tuple[str, int]:
    """A port on 127.0.0.1 where nothing listens (bound then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return "127.0.0.1", sock.getsockname()[1]


def statuses(report: TargetReport) -> dict[str, str]:
    return {f.check: f.status for f in report.findings}


def finding(report: TargetReport, check: str) -> Finding:
    found = report.get(check)
    assert found is not None, f"no {check} finding in {statuses(report)}"
    return found


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
    assert [f.check for f in report.findings] == list(CHECK_IDS)
    assert statuses(report) == dict.fromkeys(CHECK_IDS, "ok"), render_table([report])
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


# --------------------------------------------------------------------------------------------
# Pure helpers
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("clinic.test", "https://clinic.test/"),
        ("Clinic.Test.", "https://clinic.test/"),
        ("http://clinic.test/a?b=c", "https://clinic.test/a?b=c"),
        ("http://clinic.test:8080/", "https://clinic.test/"),
        ("https://clinic.test:8443/x y", "https://clinic.test:8443/x%20y"),
        ("https://bücher.example/", "https://xn--bcher-kva.example/"),
        ("https://[::1]:8443/", "https://[::1]:8443/"),
    ],
)
def test_normalize_url(given: str, expected: str) -> None:
    assert normalize_url(given) == expected


@pytest.mark.parametrize(
    ("pattern", "host", "matches"),
    [
        ("clinic.test", "clinic.test", True),
        ("CLINIC.test.", "clinic.TEST", True),
        ("*.clinic.test", "www.clinic.test", True),
        ("*.clinic.test", "clinic.test", False),
        ("*.clinic.test", "a.b.clinic.test", False),
        ("*.test", "clinic.test", False),
        ("w*.clinic.test", "www.clinic.test", False),
        ("www.*.test", "www.clinic.test", False),
        ("clinic.test", "127.0.0.1", False),
        ("other.test", "clinic.test", False),
    ],
)
def test_dns_name_matches(pattern: str, host: str, matches: bool) -> None:
    assert dns_name_matches(pattern, host) is matches


def test_hostname_matches_uses_san_only(pki: PKI) -> None:
    assert hostname_matches("www.clinic.test", pki.good.cert)
    assert not hostname_matches("other.test", pki.good.cert)
    # A certificate whose only name is the subject CN: browsers refuse it.
    key = ec.generate_private_key(ec.SECP256R1())
    cn_only = (
        x509.CertificateBuilder()
        .subject_name(_name(HOST))
        .issuer_name(_name(HOST))
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW - DAY)
        .not_valid_after(NOW + DAY)
        .sign(key, hashes.SHA256())
    )
    assert not hostname_matches(HOST, cn_only)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (
            "max-age=31536000; includeSubDomains; preload",
            {"max_age": 31536000, "include_subdomains": True, "preload": True},
        ),
        ('MAX-AGE="600"', {"max_age": 600, "include_subdomains": False, "preload": False}),
        ("includeSubDomains", {"max_age": None, "include_subdomains": True, "preload": False}),
        ("max-age=soon", {"max_age": None, "include_subdomains": False, "preload": False}),
    ],
)
def test_parse_hsts(header: str, expected: dict[str, object]) -> None:
    assert parse_hsts(header) == expected


def _report(*pairs: tuple[str, Status]) -> TargetReport:
    return TargetReport(
        URL,
        HOST,
        [
            Finding(check, status, f"{check} says {status}", "" if status == "ok" else "do it")
            for check, status in pairs
        ],
    )


def test_exit_code() -> None:
    ok = _report(("hsts", "ok"))
    warn = _report(("hsts", "warning"))
    bad = _report(("cert.expiry", "problem"), ("hsts", "warning"))
    assert exit_code([ok], strict=True) == 0
    assert exit_code([ok, warn], strict=False) == 0
    assert exit_code([ok, warn], strict=True) == 1
    assert exit_code([warn, bad], strict=False) == 2
    assert exit_code([], strict=True) == 0
    assert (ok.worst, warn.worst, bad.worst) == ("ok", "warning", "problem")
    assert TargetReport(URL, HOST).worst == "ok"


def test_render_table_marks_and_fixes() -> None:
    text = render_table(
        [_report(("https.reachable", "ok"), ("hsts", "warning"), ("cert.expiry", "problem"))]
    )
    lines = text.splitlines()
    assert lines[0] == f"{URL}  [1 problem, 1 warning]"
    assert lines[1].startswith("  ✓ https.reachable")
    assert lines[2].startswith("  ! hsts")
    assert lines[3].strip() == "Fix: do it"
    assert lines[4].startswith("  ✗ cert.expiry")
    assert text.endswith("\n")
    assert all(len(line) <= 100 for line in lines)


def test_to_json_worst_over_targets() -> None:
    data = to_json([_report(("hsts", "ok")), _report(("hsts", "warning"))])
    assert data["worst"] == "warning"
    targets = data["targets"]
    assert isinstance(targets, list)
    assert [t["worst"] for t in targets] == ["ok", "warning"]
    assert targets[1]["findings"] == [
        {
            "check": "hsts",
            "status": "warning",
            "message": "hsts says warning",
            "fix": "do it",
            "details": {},
        }
    ]
