"""The test world of `mamoru check`: a test PKI (root -> intermediate -> leaves) and small
HTTPS/HTTP apps on 127.0.0.1, served by threads in the test process; nothing in ssl or
socket is mocked. The URL host is always ``clinic.test``; ``connect``/``http_connect`` aim
the connections at 127.0.0.1, exactly how the CLI's ``--connect`` works against a real
server. The fixtures that start and stop servers are in test_check.py.
"""

from __future__ import annotations

import datetime as dt
import http.server
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mamoru.check.report import Finding, TargetReport

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


def make_pki(directory: Path) -> PKI:
    """Root, intermediate and the leaves the tests serve; the roots as PEM files in `directory`."""
    root = make_ca("Mamoru Test Root")
    intermediate = make_ca("Mamoru Test Intermediate R1", root)
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


class AppHandler(http.server.BaseHTTPRequestHandler):
    server: AppServer

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


class AppServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, app: App, context: ssl.SSLContext | None) -> None:
        super().__init__(("127.0.0.1", 0), AppHandler)
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


