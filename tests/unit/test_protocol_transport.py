"""The ACME request signer (JWS, RFC 7515/7518/7638/8555) and the keep-alive connection pool.

Signatures are checked with `cryptography`'s own verifiers; the pool talks to a real HTTPS
server on loopback (keep-alive, a connection the server drops, redirects, a wrong trust root)
and through a real CONNECT proxy.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import select
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from tests.servers.tls import make_ca, make_leaf

from mamoru.protocol.jws import AccountSigner, b64, b64decode, thumbprint
from mamoru.protocol.transport import ConnectionPool

URL = "https://ca.test/acme/new-order"


def decode(body: bytes) -> tuple[dict[str, Any], str, bytes, bytes]:
    """(protected header, payload text, signing input, signature) of a flattened JWS."""
    jws = json.loads(body)
    assert set(jws) == {"protected", "payload", "signature"}
    header = json.loads(b64decode(jws["protected"]))
    payload = b64decode(jws["payload"]).decode() if jws["payload"] else ""
    signing_input = f"{jws['protected']}.{jws['payload']}".encode()
    return header, payload, signing_input, b64decode(jws["signature"])


def test_rfc7638_thumbprint_example() -> None:
    # RFC 7638 §3.1, the worked example.
    jwk = {"kty": "RSA", "e": "AQAB", "alg": "RS256", "kid": "2011-04-29",
           "n": ("0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1"
                 "L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4"
                 "QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbO"
                 "pbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csF"
                 "Cur-kEgU8awapJzKnqDKgw")}
    assert thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


@pytest.mark.parametrize("curve", [ec.SECP256R1(), ec.SECP384R1()])
def test_ec_signature_verifies_and_header_carries_kid(curve: ec.EllipticCurve) -> None:
    key = ec.generate_private_key(curve)
    signer = AccountSigner(key)
    body = signer.sign({"identifiers": [{"type": "dns", "value": "clinic.example"}]}, url=URL,
                       nonce="bm9uY2UtMQ", kid="https://ca.test/acct/7")
    header, payload, signing_input, signature = decode(body)
    size = (curve.key_size + 7) // 8
    assert header == {"alg": "ES256" if size == 32 else "ES384", "nonce": "bm9uY2UtMQ", "url": URL,
                      "kid": "https://ca.test/acct/7"}
    assert json.loads(payload)["identifiers"][0]["value"] == "clinic.example"
    assert len(signature) == 2 * size  # raw R||S (RFC 7518 §3.4), not DER
    der = encode_dss_signature(int.from_bytes(signature[:size], "big"),
                               int.from_bytes(signature[size:], "big"))
    digest = hashes.SHA256() if size == 32 else hashes.SHA384()
    key.public_key().verify(der, signing_input, ec.ECDSA(digest))  # raises if wrong


def test_new_account_carries_the_public_key_and_post_as_get_is_empty() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    signer = AccountSigner(key)
    header, payload, _, _ = decode(signer.sign(None, url=URL, nonce="bm9uY2U", kid=None))
    assert payload == ""  # POST-as-GET: the empty string, not "{}" or "null"
    assert "kid" not in header
    jwk = header["jwk"]
    numbers = key.public_key().public_numbers()
    assert int.from_bytes(b64decode(jwk["x"]), "big") == numbers.x
    assert int.from_bytes(b64decode(jwk["y"]), "big") == numbers.y
    assert len(b64decode(jwk["x"])) == 32  # fixed length, leading zeros kept
    assert signer.thumbprint == thumbprint(jwk)
    digest = hashlib.sha256(json.dumps({"crv": "P-256", "kty": "EC", "x": jwk["x"],
                                        "y": jwk["y"]}, separators=(",", ":")).encode())
    assert signer.thumbprint == b64(digest.digest())


def test_rsa_account_key_signs_rs256() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    signer = AccountSigner(key)
    body = signer.sign({}, url=URL, nonce="bm9uY2U", kid="k")
    header, _, signing_input, signature = decode(body)
    assert header["alg"] == "RS256"
    key.public_key().verify(signature, signing_input, padding.PKCS1v15(), hashes.SHA256())


@pytest.mark.parametrize("make", [lambda: ec.generate_private_key(ec.SECP256R1()),
                                  lambda: ec.generate_private_key(ec.SECP384R1()),
                                  lambda: rsa.generate_private_key(65537, 2048)])
@pytest.mark.parametrize("kid", ["https://ca.test/acct/7", None])
def test_josepy_reads_and_verifies_our_jws(make: Any, kid: str | None) -> None:
    # mamoru signs by itself (not with josepy's JWS objects): josepy, an independent
    # implementation, must parse the same header and accept the signature.
    from acme.jws import JWS as JoseJWS  # josepy's JWS with ACME's header members
    from josepy.jwk import JWK

    key = make()
    signer = AccountSigner(key)
    jws = JoseJWS.json_loads(signer.sign({"csr": "x"}, url=URL, nonce="bm9uY2UtMQ", kid=kid))
    public = JWK.load(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    assert jws.verify(public)
    header = jws.signature.combined
    assert (header.url, header.kid, header.alg.name) == (URL, kid, signer.alg)
    assert header.nonce == b"nonce-1"
    assert (header.jwk is None) == (kid is not None)
    assert json.loads(jws.payload) == {"csr": "x"}


@pytest.mark.parametrize("make", [lambda: ec.generate_private_key(ec.SECP256R1()),
                                  lambda: ec.generate_private_key(ec.SECP384R1()),
                                  lambda: rsa.generate_private_key(65537, 2048)])
def test_public_jwk_and_thumbprint_are_josepys(make: Any) -> None:
    # The JWK sent in newAccount and the thumbprint in every key authorization, made from
    # cryptography's numbers, are what josepy (an independent implementation) makes.
    from josepy.jwk import JWK

    key = make()
    signer = AccountSigner(key)
    theirs = JWK.load(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    assert signer.jwk == theirs.to_partial_json()
    assert signer.thumbprint == b64(theirs.thumbprint())


def test_unsupported_account_key_is_refused() -> None:
    with pytest.raises(ValueError, match="curve"):
        AccountSigner(ec.generate_private_key(ec.SECP521R1()))


def test_external_account_binding_is_an_hmac_over_the_account_key() -> None:
    signer = AccountSigner(ec.generate_private_key(ec.SECP256R1()))
    secret = b"\x00\x01the CA's HMAC key\xff"
    hmac_key = base64.urlsafe_b64encode(secret).decode().rstrip("=")
    binding = signer.external_binding("kid-7", hmac_key, "https://ca.test/new-acct")
    header = json.loads(b64decode(binding["protected"]))
    assert header == {"alg": "HS256", "kid": "kid-7", "url": "https://ca.test/new-acct"}
    assert json.loads(b64decode(binding["payload"])) == signer.jwk
    expected = hmac.new(secret, f"{binding['protected']}.{binding['payload']}".encode(),
                        hashlib.sha256).digest()
    assert b64decode(binding["signature"]) == expected
    with pytest.raises(ValueError):
        signer.external_binding("kid-7", "not base64 at all!", "https://ca.test/new-acct")


# -- the connection pool -------------------------------------------------------------------


@dataclass
class Seen:
    connections: int = 0  # accepted
    paths: list[str] = field(default_factory=list)
    user_agents: list[str] = field(default_factory=list)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    server: _TLSServer

    def do_GET(self) -> None:
        seen = self.server.seen
        seen.paths.append(self.path)
        seen.user_agents.append(self.headers.get("User-Agent", ""))
        if self.path == "/moved":
            self.send_response(301)
            self.send_header("Location", "/directory")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = json.dumps({"path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Replay-Nonce", "abc")
        self.send_header("Content-Length", str(len(body)))
        if self.path == "/close":
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.server.seen.paths.append(self.path)
        answer = json.dumps({"path": self.path, "body": body.decode()}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _TLSServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, context: ssl.SSLContext) -> None:
        self.seen = Seen()
        self.context = context
        super().__init__(("127.0.0.1", 0), _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = super().get_request()
        self.seen.connections += 1
        return self.context.wrap_socket(sock, server_side=True), address


@pytest.fixture
def https(tmp_path: Path) -> Iterator[tuple[_TLSServer, str]]:
    ca = make_ca()
    leaf = make_leaf(ca)
    leaf.write(tmp_path / "cert.pem", tmp_path / "key.pem")
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    server = _TLSServer(context)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield server, str(tmp_path / "ca.pem")
    finally:
        server.shutdown()
        server.server_close()


def _url(server: _TLSServer, path: str) -> str:
    return f"https://127.0.0.1:{server.server_address[1]}{path}"


def test_requests_share_one_kept_alive_connection(https: tuple[_TLSServer, str]) -> None:
    server, bundle = https
    pool = ConnectionPool(ca_bundle=bundle, timeout=5, headers={"User-Agent": "mamoru/test"})
    for index in range(5):
        answer = pool.request("GET", _url(server, f"/r{index}"))
        assert answer.ok and answer.status == 200
        assert answer.json() == {"path": f"/r{index}"}
        assert answer.headers.get("replay-nonce") == "abc"  # case-insensitive
    assert server.seen.connections == 1
    assert server.seen.user_agents == ["mamoru/test"] * 5
    pool.close()


def test_a_post_goes_out_in_one_write(https: tuple[_TLSServer, str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # Head and body in one write: one TLS record and one read at the CA per signed request
    # (http.client alone sends them apart). A body that is not bytes is sent as it does.
    server, bundle = https
    writes: list[bytes] = []
    send = http.client.HTTPConnection.send

    def counted(self: http.client.HTTPConnection, data: Any) -> None:
        writes.append(bytes(data))
        send(self, data)

    monkeypatch.setattr(http.client.HTTPConnection, "send", counted)
    pool = ConnectionPool(ca_bundle=bundle, timeout=5)
    body = json.dumps({"protected": "p" * 300, "payload": "", "signature": "s"}).encode()
    answer = pool.request("POST", _url(server, "/order"), body,
                          {"Content-Type": "application/jose+json"})
    assert answer.json() == {"path": "/order", "body": body.decode()}
    assert len(writes) == 1 and writes[0].startswith(b"POST /order HTTP/1.1\r\n")
    assert writes[0].endswith(b"\r\n\r\n" + body)
    writes.clear()
    chunks = iter([b'{"a":', b"1}"])
    answer = pool.request("POST", _url(server, "/chunks"), chunks,  # type: ignore[arg-type]
                          {"Content-Length": "7"})
    assert answer.json() == {"path": "/chunks", "body": '{"a":1}'}
    assert len(writes) == 3  # head, then each chunk: http.client's own way
    pool.close()


def test_connection_the_server_closed_is_replaced(https: tuple[_TLSServer, str]) -> None:
    server, bundle = https
    pool = ConnectionPool(ca_bundle=bundle, timeout=5)
    assert pool.request("GET", _url(server, "/first")).ok
    # The server drops every idle connection (a restart, an idle timeout): the next request
    # notices the dead connection and succeeds on a fresh one, without an error.
    for connections in pool._idle.values():
        for connection in connections:
            assert connection.sock is not None
            connection.sock.shutdown(socket.SHUT_RDWR)
    assert pool.request("GET", _url(server, "/second")).json() == {"path": "/second"}
    assert pool.request("GET", _url(server, "/close")).ok  # Connection: close is honoured
    assert pool.request("GET", _url(server, "/third")).ok
    assert server.seen.connections == 3
    pool.close()


def test_get_follows_a_redirect(https: tuple[_TLSServer, str]) -> None:
    server, bundle = https
    answer = ConnectionPool(ca_bundle=bundle, timeout=5).request("GET", _url(server, "/moved"))
    assert answer.status == 200
    assert answer.url == _url(server, "/directory")
    assert server.seen.paths == ["/moved", "/directory"]


def test_a_server_outside_the_bundle_is_refused(https: tuple[_TLSServer, str],
                                                tmp_path: Path) -> None:
    server, _ = https
    other = tmp_path / "other-ca.pem"
    other.write_bytes(make_ca("another CA").cert_pem)
    with pytest.raises(ssl.SSLCertVerificationError):
        ConnectionPool(ca_bundle=str(other), timeout=5).request("GET", _url(server, "/"))
    assert server.seen.paths == []


class _ConnectProxy(threading.Thread):
    """A minimal HTTP CONNECT proxy on loopback that records what it was asked."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.requests: list[str] = []

    def run(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._tunnel, args=(client,), daemon=True).start()

    def _tunnel(self, client: socket.socket) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = client.recv(4096)
            if not chunk:
                return
            head += chunk
        self.requests.append(head.decode())
        target = head.split()[1].decode()
        host, port = target.rsplit(":", 1)
        upstream = socket.create_connection((host, int(port)))
        client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        sockets = [client, upstream]
        while True:
            readable, _, _ = select.select(sockets, [], [], 5)
            if not readable:
                break
            for sock in readable:
                data = sock.recv(65536)
                if not data:
                    client.close()
                    upstream.close()
                    return
                (upstream if sock is client else client).sendall(data)

    def stop(self) -> None:
        self.listener.close()


def test_https_proxy_from_the_environment_is_used_with_connect(
        https: tuple[_TLSServer, str], monkeypatch: pytest.MonkeyPatch) -> None:
    server, bundle = https
    proxy = _ConnectProxy()
    proxy.start()
    try:
        monkeypatch.setenv("https_proxy", f"http://user:p%40ss@127.0.0.1:{proxy.port}")
        monkeypatch.delenv("no_proxy", raising=False)
        monkeypatch.delenv("NO_PROXY", raising=False)
        answer = ConnectionPool(ca_bundle=bundle, timeout=5).request("GET", _url(server, "/p"))
        assert answer.json() == {"path": "/p"}
        assert len(proxy.requests) == 1
        connect = proxy.requests[0]
        assert connect.startswith(f"CONNECT 127.0.0.1:{server.server_address[1]} ")
        credentials = base64.b64encode(b"user:p@ss").decode()
        assert f"Proxy-Authorization: Basic {credentials}" in connect
        # no_proxy exempts a host: the request goes direct.
        monkeypatch.setenv("no_proxy", "127.0.0.1")
        assert ConnectionPool(ca_bundle=bundle, timeout=5).request("GET", _url(server, "/d")).ok
        assert len(proxy.requests) == 1
    finally:
        proxy.stop()
