"""The real-browser test world: one real nginx on 127.0.0.1 with a server block per name, each
name showing one fault, and a test PKI (root -> intermediate -> leaves) whose root Chromium
trusts through its profile's NSS database.

HTTPS and HTTP are one port each; Chromium reaches them through `--host-resolver-rules`
(`MAP *:443 127.0.0.1:HTTPS`), the plain check through `--connect`/`--http-connect`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

from tests.servers.nginx import Nginx
from tests.servers.ports import free_port
from tests.unit.check_sites import Issued, make_ca

NOW = dt.datetime.now(dt.UTC)
DAY = dt.timedelta(days=1)

# A 1x1 PNG, so an image that loads is a real image.
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489"
    "0000000d4944415478da63f8cfc0f01f0005000201a5dd2ebe0000000049454e44ae426082")

GOOD_PAGE = ("<!doctype html><title>Clinic</title><h1>Welcome to the clinic</h1>"
             "<img src='/logo.png' width=40 height=40>")
MIXED_PAGE = ("<!doctype html><title>Mixed</title><h1>Mixed</h1>"
              "<script src='http://cdn.example/app.js'></script>"
              "<img src='http://cdn.example/logo.png'>")
UPGRADED_PAGE = ("<!doctype html><title>Upgraded</title><h1>Upgraded</h1>"
                 "<img id=up src='http://images.example/logo.png'>")
# An analytics-style snippet: nothing insecure in the HTML, an http:// script and image
# added after the page has loaded.
INSERTED_PAGE = ("<!doctype html><title>Inserted</title><h1>Inserted</h1><script>"
                 "addEventListener('load', function () { setTimeout(function () {"
                 "var s = document.createElement('script'); s.src = 'http://cdn.example/track.js';"
                 "document.body.appendChild(s);"
                 "var i = document.createElement('img'); i.src = 'http://cdn.example/pixel.png';"
                 "document.body.appendChild(i); }, 100); });</script>")
FORM_PAGE = ("<!doctype html><title>Booking</title><h1>Book</h1>"
             "<form method=post action='http://form.example/book'>"
             "<input name=n value=x><button>Send</button></form>")
HSTS = 'add_header Strict-Transport-Security "max-age=31536000" always;'

NAMES = ("good.example", "wrongname.example", "nosan.example", "nochain.example",
         "aia.example", "expired.example", "selfsigned.example", "unknownca.example",
         "mixed.example",
         "upgraded.example", "inserted.example", "form.example", "found.example",
         "noredirect.example")


def leaf(cn: str, issuer: Issued | None, *, san: list[str] | None = None,
         aia: str | None = None, not_before: dt.datetime | None = None,
         not_after: dt.datetime | None = None) -> Issued:
    """A server certificate for `cn`; `san=[]` leaves subjectAltName out, `aia` adds a
    caIssuers URL, issuer None makes it self-signed."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    builder = (
        x509.CertificateBuilder().subject_name(name)
        .issuer_name(issuer.cert.subject if issuer else name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(not_before or NOW - 30 * DAY)
        .not_valid_after(not_after or NOW + 60 * DAY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    )
    names = [cn] if san is None else san
    if names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
            critical=False)
    if aia:
        builder = builder.add_extension(x509.AuthorityInformationAccess([
            x509.AccessDescription(AuthorityInformationAccessOID.CA_ISSUERS,
                                   x509.UniformResourceIdentifier(aia))]), critical=False)
    return Issued(builder.sign(issuer.key if issuer else key, hashes.SHA256()), key)


@dataclass
class World:
    https: int
    http: int
    root: str  # the CA bundle (PEM) that trusts the test root
    dir: Path

    def connect_args(self) -> list[str]:
        return ["--connect", f"127.0.0.1:{self.https}", "--http-connect",
                f"127.0.0.1:{self.http}", "--ca-bundle", self.root]


def start_world(tmp: Path) -> Iterator[World]:
    root = make_ca("Mamoru Browser Test Root")
    intermediate = make_ca("Mamoru Browser Test Intermediate", root)
    stranger = make_ca("Somebody Else's Intermediate", make_ca("Somebody Else's Root"))
    (tmp / "root.pem").write_bytes(root.pem)
    www = tmp / "www"
    www.mkdir()
    (www / "logo.png").write_bytes(PNG)
    (www / "intermediate.der").write_bytes(
        intermediate.cert.public_bytes(serialization.Encoding.DER))
    pages = {"index.html": GOOD_PAGE, "mixed.html": MIXED_PAGE, "upgraded.html": UPGRADED_PAGE,
             "inserted.html": INSERTED_PAGE, "form.html": FORM_PAGE}
    for page, text in pages.items():
        (www / page).write_text(text)
    https, http = free_port(), free_port()
    certs = tmp / "certs"
    certs.mkdir()

    def write(name: str, issued: Issued, chain: Issued | None) -> tuple[Path, Path]:
        cert, key = certs / f"{name}.pem", certs / f"{name}.key"
        cert.write_bytes(issued.pem + (chain.pem if chain else b""))
        key.write_bytes(issued.key_pem)
        key.chmod(0o600)
        return cert, key

    def tls(name: str, issued: Issued, *, chain: bool = True, hsts: bool = True,
            index: str = "index.html", default: bool = False,
            chain_of: Issued | None = None) -> str:
        cert, key = write(name, issued, (chain_of or intermediate) if chain else None)
        return f"""
server {{
    listen 127.0.0.1:{https} ssl{" default_server" if default else ""};
    server_name {name};
    ssl_certificate {cert};
    ssl_certificate_key {key};
    ssl_protocols TLSv1.2 TLSv1.3;
    root {www};
    index {index};
    {HSTS if hsts else ""}
}}"""

    def plain(name: str, body: str) -> str:
        return f"""
server {{
    listen 127.0.0.1:{http};
    server_name {name};
    location / {{ {body} }}
}}"""

    redirect = "return 301 https://$host$request_uri;"
    conf = [
        # cdn.example has no HTTPS server block: the default one (a certificate for
        # nothing.example) answers, so an upgraded request to it fails like a host without https.
        tls("nothing.example", leaf("nothing.example", intermediate), default=True),
        tls("good.example", leaf("good.example", intermediate)),
        tls("wrongname.example", leaf("other.example", intermediate)),
        tls("nosan.example", leaf("nosan.example", intermediate, san=[])),
        tls("nochain.example", leaf("nochain.example", intermediate), chain=False),
        tls("aia.example", leaf("aia.example", intermediate,
                                aia="http://files.example/intermediate.der"), chain=False),
        tls("expired.example", leaf("expired.example", intermediate,
                                    not_before=NOW - 100 * DAY, not_after=NOW - 10 * DAY)),
        tls("selfsigned.example", leaf("selfsigned.example", None), chain=False),
        tls("unknownca.example", leaf("unknownca.example", stranger), chain_of=stranger),
        tls("mixed.example", leaf("mixed.example", intermediate), index="mixed.html"),
        tls("upgraded.example", leaf("upgraded.example", intermediate), index="upgraded.html"),
        tls("images.example", leaf("images.example", intermediate)),
        tls("inserted.example", leaf("inserted.example", intermediate), index="inserted.html"),
        tls("form.example", leaf("form.example", intermediate), index="form.html"),
        tls("found.example", leaf("found.example", intermediate)),
        tls("noredirect.example", leaf("noredirect.example", intermediate)),
        plain("files.example", f"root {www};"),
        plain("cdn.example", "return 404;"),
        plain("found.example", "return 302 https://$host$request_uri;"),
        plain("noredirect.example", f"root {www};"),
        plain("~.", redirect),
    ]
    nginx = Nginx(tmp / "nginx")
    nginx.write_conf("browser.conf", "".join(conf))
    nginx.start(wait_ports=(https, http))
    try:
        yield World(https=https, http=http, root=str(tmp / "root.pem"), dir=tmp)
    finally:
        nginx.stop()
