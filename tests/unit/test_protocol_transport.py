"""The ACME request signer (JWS, RFC 7515/7518/7638/8555) and the keep-alive connection pool.

Signatures are checked with `cryptography`'s own verifiers; the pool talks to a real HTTPS
server on loopback (keep-alive, a connection the server drops, redirects, a wrong trust root,
threads sharing it), through a real CONNECT proxy, and to a scripted loopback server that
sends exact bytes (every framing, every limit, malformed answers).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import re
import select
import shutil
import socket
import ssl
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from tests.servers.tls import CertAndKey, make_ca, make_leaf

import mamoru
from mamoru.protocol.jws import AccountSigner, b64, b64decode, thumbprint
from mamoru.protocol.transport import (
    MAX_BODY,
    AnswerTooLarge,
    ClosedWithoutAnswer,
    ConnectionPool,
    ProtocolError,
    ProxyRefused,
)
from mamoru.tlstrust import system_trust_context

URL = "https://ca.test/acme/new-order"
SRC = str(Path(mamoru.__file__).resolve().parents[1])  # the tree under test


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


@pytest.mark.parametrize(("given", "sent"), [
    ("bm9uY2UtMQ", "bm9uY2UtMQ"),        # as CAs send it: used as it is
    ("bm9uY2UtMQ==", "bm9uY2UtMQ"),      # padded: normalised to base64url without padding
    ("a+b/", "a-b_"),                    # standard base64 alphabet: to base64url
])
def test_the_nonce_goes_out_as_base64url(given: str, sent: str) -> None:
    signer = AccountSigner(ec.generate_private_key(ec.SECP256R1()))
    body = signer.sign({"a": 1}, url=URL, nonce=given, kid="k")
    header, _, _, _ = decode(body)
    assert header["nonce"] == sent
    jws = json.loads(body)  # the body is the compact JSON of the flattened JWS, nothing else
    assert body == json.dumps(jws, separators=(",", ":")).encode()
    with pytest.raises(ValueError):
        signer.sign(None, url=URL, nonce="not base64!", kid="k")


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


def _server_context(directory: Path, ca: CertAndKey) -> ssl.SSLContext:
    """A server context with a certificate for 127.0.0.1 from `ca`; ca.pem written beside."""
    directory.mkdir(parents=True, exist_ok=True)
    make_leaf(ca).write(directory / "cert.pem", directory / "key.pem")
    (directory / "ca.pem").write_bytes(ca.cert_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(directory / "cert.pem", directory / "key.pem")
    return context


@contextlib.contextmanager
def _serving(directory: Path, ca: CertAndKey) -> Iterator[tuple[_TLSServer, str]]:
    server = _TLSServer(_server_context(directory, ca))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield server, str(directory / "ca.pem")
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def https(tmp_path: Path) -> Iterator[tuple[_TLSServer, str]]:
    with _serving(tmp_path, make_ca()) as served:
        yield served


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
    # Head and body in one write: one TLS record and one read at the CA per signed request.
    server, bundle = https
    writes: list[bytes] = []
    send = ssl.SSLSocket.send  # each call one SSL_write (sendall calls it too)

    def counted(self: ssl.SSLSocket, data: Any, flags: int = 0) -> int:
        if not self.server_side:
            writes.append(bytes(data))
        return send(self, data, flags)

    monkeypatch.setattr(ssl.SSLSocket, "send", counted)
    pool = ConnectionPool(ca_bundle=bundle, timeout=5)
    body = json.dumps({"protected": "p" * 300, "payload": "", "signature": "s"}).encode()
    answer = pool.request("POST", _url(server, "/order"), body,
                          {"Content-Type": "application/jose+json"})
    assert answer.json() == {"path": "/order", "body": body.decode()}
    assert len(writes) == 1 and writes[0].startswith(b"POST /order HTTP/1.1\r\n")
    assert writes[0].endswith(b"\r\n\r\n" + body)
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


def test_threads_sharing_one_pool_each_get_their_own_answer(
        https: tuple[_TLSServer, str]) -> None:
    server, bundle = https
    pool = ConnectionPool(ca_bundle=bundle, timeout=10, max_idle=8)
    mismatches: list[str] = []

    def work(thread: int) -> None:
        for index in range(25):
            path = f"/t{thread}/{index}"
            if index % 2:
                answer = pool.request("POST", _url(server, path), f"body {path}".encode())
                expected = {"path": path, "body": f"body {path}"}
            else:
                answer = pool.request("GET", _url(server, path))
                expected = {"path": path}
            if answer.json() != expected:
                mismatches.append(path)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert mismatches == []
    assert len(server.seen.paths) == 200
    assert server.seen.connections <= 8  # at most one connection per thread at a time
    pool.close()


# -- system trust ----------------------------------------------------------------------------


@pytest.fixture
def system_trust_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    return monkeypatch


def test_system_roots_are_read_lazily_from_a_hashed_directory(
        https: tuple[_TLSServer, str], tmp_path: Path,
        system_trust_env: pytest.MonkeyPatch) -> None:
    openssl = shutil.which("openssl")
    assert openssl is not None, "the openssl command is missing: apt-get install openssl (CI does)"
    server, bundle = https
    roots = tmp_path / "roots"
    roots.mkdir()
    shutil.copy(bundle, roots / "test-ca.pem")
    subprocess.run([openssl, "rehash", str(roots)], check=True)
    assert any(name.endswith(".0") for name in os.listdir(roots))
    system_trust_env.setenv("SSL_CERT_DIR", str(roots))
    context = system_trust_context()
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context.cert_store_stats()["x509_ca"] == 0  # nothing parsed before a handshake
    pool = ConnectionPool(timeout=5)  # no ca_bundle: the system's roots
    assert pool.request("GET", _url(server, "/lazy")).json() == {"path": "/lazy"}
    with _serving(tmp_path / "other", make_ca("a CA outside the directory")) as (other, _):
        with pytest.raises(ssl.SSLCertVerificationError):
            pool.request("GET", _url(other, "/"))
        assert other.seen.paths == []
    pool.close()


@pytest.mark.parametrize("hashed", [False, True])
def test_ssl_cert_file_or_a_directory_without_hash_links_loads_the_bundle(
        https: tuple[_TLSServer, str], tmp_path: Path,
        system_trust_env: pytest.MonkeyPatch, hashed: bool) -> None:
    server, bundle = https
    roots = tmp_path / "roots"
    roots.mkdir()
    if hashed:  # a hashed directory too: SSL_CERT_FILE still wins
        (roots / "00000000.0").write_bytes(make_ca("not this one").cert_pem)
    system_trust_env.setenv("SSL_CERT_DIR", str(roots))
    system_trust_env.setenv("SSL_CERT_FILE", bundle)
    assert system_trust_context().cert_store_stats()["x509_ca"] == 1  # the file, parsed
    assert ConnectionPool(timeout=5).request("GET", _url(server, "/file")).ok


def test_without_hash_links_the_default_bundle_is_parsed(
        tmp_path: Path, system_trust_env: pytest.MonkeyPatch) -> None:
    assert os.path.isfile(ssl.get_default_verify_paths().openssl_cafile), (
        "no system CA bundle: apt-get install ca-certificates (CI does)")
    system_trust_env.setenv("SSL_CERT_DIR", str(tmp_path))  # empty
    assert system_trust_context().cert_store_stats()["x509_ca"] > 0


# -- answers, byte by byte -------------------------------------------------------------------


@dataclass
class Step:
    """What the scripted server does with one request."""

    answer: bytes | None  # None: never answer (hold the connection until the client goes)
    close: bool = False  # close the connection after the answer
    clean: bool = True  # over TLS: close_notify before closing
    dribble: bool = False  # one byte per write, so the client reads it in pieces
    pause: float = 0.0005  # between two dribbled bytes


class _Scripted:
    """A loopback server that answers each request with the next scripted step, on whichever
    connection it comes; it records the connections it accepted and the raw requests."""

    def __init__(self, steps: list[Step], context: ssl.SSLContext | None = None) -> None:
        self.steps = steps
        self.context = context
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self.requests: list[bytes] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, path: str = "/") -> str:
        scheme = "https" if self.context else "http"
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.context:
                sock = self.context.wrap_socket(sock, server_side=True)
            buffer = b""
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = sock.recv(65536)
                    if not data:
                        return
                    buffer += data
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                length = re.search(rb"(?im)^content-length: *(\d+)", head)
                size = int(length[1]) if length else 0
                while len(buffer) < size:
                    buffer += sock.recv(65536)
                with self.lock:
                    self.requests.append(head + b"\r\n\r\n" + buffer[:size])
                    step = self.steps.pop(0) if self.steps else None
                buffer = buffer[size:]
                if step is None:
                    return
                if step.answer is None:
                    while sock.recv(65536):
                        pass
                    return
                if step.dribble:
                    for index in range(len(step.answer)):
                        sock.sendall(step.answer[index:index + 1])
                        time.sleep(step.pause)  # lets the client read what has come
                else:
                    sock.sendall(step.answer)
                if step.close:
                    if isinstance(sock, ssl.SSLSocket) and step.clean:
                        with contextlib.suppress(OSError):
                            sock.unwrap()
                    return
        except OSError:
            return
        finally:
            sock.close()

    def stop(self) -> None:
        self.listener.close()


@pytest.fixture
def scripted() -> Iterator[Callable[..., _Scripted]]:
    servers: list[_Scripted] = []

    def start(*steps: Step, context: ssl.SSLContext | None = None) -> _Scripted:
        servers.append(_Scripted(list(steps), context))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def ok(body: bytes = b"{}", *fields: str, version: str = "1.1") -> bytes:
    """An answer with a Content-Length."""
    head = f"HTTP/{version} 200 OK\r\n" + "".join(f"{line}\r\n" for line in fields)
    return head.encode() + f"Content-Length: {len(body)}\r\n\r\n".encode() + body


def test_a_content_length_answer_and_the_request_the_pool_writes(
        scripted: Callable[..., _Scripted]) -> None:
    server = scripted(Step(ok(b'{"a": 1}', "Replay-Nonce: n1")), Step(ok(b"{}")),
                      Step(ok(b"")))
    pool = ConnectionPool(timeout=5, headers={"User-Agent": "mamoru/test", "Accept": "x"})
    answer = pool.request("GET", server.url("/dir?x=1"))
    assert (answer.status, answer.json(), answer.url) == (200, {"a": 1}, server.url("/dir?x=1"))
    assert answer.headers.get("replay-nonce") == "n1"
    pool.request("POST", server.url("/nonce"), b"jws", {"Content-Type": "application/jose+json",
                                                         "accept": "y"})
    assert pool.request("POST", server.url("/empty")).content == b""
    assert server.connections == 1
    host = f"Host: 127.0.0.1:{server.port}\r\nAccept-Encoding: identity\r\n"
    assert server.requests == [
        f"GET /dir?x=1 HTTP/1.1\r\n{host}User-Agent: mamoru/test\r\nAccept: x\r\n\r\n".encode(),
        f"POST /nonce HTTP/1.1\r\n{host}User-Agent: mamoru/test\r\naccept: y\r\n"
        "Content-Type: application/jose+json\r\nContent-Length: 3\r\n\r\njws".encode(),
        f"POST /empty HTTP/1.1\r\n{host}User-Agent: mamoru/test\r\nAccept: x\r\n"
        "Content-Length: 0\r\n\r\n".encode()]
    pool.close()


CHUNKED = (b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\nLocation: /order/1\r\n\r\n"
           b"5;name=value\r\nhello\r\n"
           b"1 ; ext ;other=\"quoted\"\r\n,\r\n"
           b"006\r\n world\r\n"
           b"0;last\r\nDigest: x\r\nExpires: y\r\n\r\n")


@pytest.mark.parametrize("dribble", [False, True])
def test_a_chunked_answer_with_extensions_and_trailers(
        scripted: Callable[..., _Scripted], dribble: bool) -> None:
    server = scripted(Step(CHUNKED, dribble=dribble), Step(ok(b"next"), dribble=dribble))
    pool = ConnectionPool(timeout=5)
    answer = pool.request("POST", server.url("/new-order"), b"{}")
    assert (answer.status, answer.content) == (201, b"hello, world")
    assert answer.headers.get("Location") == "/order/1"
    assert answer.headers.get("Digest") is None  # trailers are not header fields
    assert pool.request("GET", server.url("/")).content == b"next"
    assert server.connections == 1  # kept alive after the chunked answer
    pool.close()


def test_answers_with_bare_lf_line_ends_are_read(scripted: Callable[..., _Scripted]) -> None:
    server = scripted(Step(b"HTTP/1.1 200 OK\nContent-Length: 2\nX-A: b\n\n{}"),
                      Step(b"HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n\n2\n[]\n0\n\n"))
    pool = ConnectionPool(timeout=5)
    answer = pool.request("GET", server.url())
    assert (answer.content, answer.headers.get("x-a")) == (b"{}", "b")
    assert pool.request("GET", server.url()).content == b"[]"
    assert server.connections == 1
    pool.close()


def test_an_answer_read_until_close_is_not_reused(scripted: Callable[..., _Scripted]) -> None:
    server = scripted(Step(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it",
                           close=True), Step(ok(b"second")))
    pool = ConnectionPool(timeout=5)
    assert pool.request("GET", server.url()).content == b"all of it"
    assert pool.request("GET", server.url()).content == b"second"
    assert server.connections == 2
    pool.close()


def test_over_tls_an_answer_read_until_close_needs_close_notify(
        scripted: Callable[..., _Scripted], tmp_path: Path) -> None:
    context = _server_context(tmp_path, make_ca())
    unframed = b"HTTP/1.1 200 OK\r\n\r\n-----BEGIN CERTIFICATE-----"
    server = scripted(Step(unframed, close=True), Step(unframed, close=True, clean=False),
                      context=context)
    pool = ConnectionPool(ca_bundle=str(tmp_path / "ca.pem"), timeout=5)
    assert pool.request("GET", server.url()).content == unframed.split(b"\r\n\r\n")[1]
    # Cut without close_notify: the end of a chain could be missing.
    with pytest.raises(ProtocolError, match="close_notify"):
        pool.request("GET", server.url())
    pool.close()


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nReplay-Nonce: n\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nReplay-Nonce: n\r\n\r\n",
], ids=["content-length", "chunked"])
def test_head_answers_have_no_body(scripted: Callable[..., _Scripted], answer: bytes) -> None:
    server = scripted(Step(answer), Step(b"HTTP/1.1 204 No Content\r\nReplay-Nonce: m\r\n\r\n"),
                      Step(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n"),
                      Step(ok(b"after")))
    pool = ConnectionPool(timeout=5)
    answer_ = pool.request("HEAD", server.url("/new-nonce"))
    assert (answer_.status, answer_.content, answer_.headers.get("Replay-Nonce")) == (200, b"",
                                                                                      "n")
    assert pool.request("GET", server.url()).status == 204
    assert pool.request("GET", server.url()).status == 304
    assert pool.request("GET", server.url()).content == b"after"
    assert server.connections == 1
    pool.close()


def test_interim_answers_are_skipped(scripted: Callable[..., _Scripted]) -> None:
    server = scripted(Step(b"HTTP/1.1 100 Continue\r\n\r\n"
                           b"HTTP/1.1 103 Early Hints\r\nLink: </x>; rel=preload\r\n\r\n"
                           + ok(b"final")))
    answer = ConnectionPool(timeout=5).request("POST", server.url(), b"{}")
    assert (answer.status, answer.content, answer.headers.get("Link")) == (200, b"final", None)


@pytest.mark.parametrize(("answer", "reused"), [
    (ok(b"{}", "Connection: close"), False),
    (ok(b"{}", "Connection: Keep-Alive, CLOSE"), False),
    (ok(b"{}", version="1.0"), False),
    (ok(b"{}", "Connection: keep-alive", version="1.0"), True),
    (ok(b"{}", "Connection: keep-alive"), True),
])
def test_connection_close_and_http_1_0_are_honoured(
        scripted: Callable[..., _Scripted], answer: bytes, reused: bool) -> None:
    server = scripted(Step(answer), Step(ok(b"second")))
    pool = ConnectionPool(timeout=5)
    assert pool.request("GET", server.url()).json() == {}
    assert pool.request("GET", server.url()).content == b"second"
    assert server.connections == (1 if reused else 2)
    pool.close()


def test_repeated_headers_are_kept_and_names_match_in_any_case(
        scripted: Callable[..., _Scripted]) -> None:
    server = scripted(Step(ok(b"{}", 'Link: <https://ca.test/dir>;rel="index"',
                              "link: <https://ca.test/cert/1/alt>;rel=\"alternate\"",
                              'LINK: <https://ca.test/cert/1/alt2>;rel="alternate"',
                              "Content-Type:application/json", "X-Empty:")))
    headers = ConnectionPool(timeout=5).request("GET", server.url()).headers
    assert headers.get("link") == '<https://ca.test/dir>;rel="index"'  # the first
    assert [value.split(";")[0] for value in headers.get_all("Link")] == [
        "<https://ca.test/dir>", "<https://ca.test/cert/1/alt>", "<https://ca.test/cert/1/alt2>"]
    assert headers.get("content-type") == "application/json"
    assert headers.get("X-EMPTY") == ""
    assert headers.get("Retry-After") is None and headers.get("Retry-After", "") == ""
    assert headers.get_all("Retry-After") == []
    assert "CONTENT-TYPE" in headers and "Retry-After" not in headers


def _refused(server: _Scripted, pool: ConnectionPool, error: type[Exception],
             match: str) -> None:
    """The first request fails with `error`; its connection is dropped, the next works."""
    with pytest.raises(error, match=match):
        pool.request("GET", server.url("/bad"))
    assert pool.request("GET", server.url("/good")).content == b"good"
    assert server.connections == 2
    pool.close()


@pytest.mark.parametrize(("answer", "match"), [
    ("HTTP/1.1 200 OK\r\n" + "X-N: n\r\n" * 101 + "Content-Length: 0\r\n\r\n", "101|100"),
    ("HTTP/1.1 200 OK\r\nX-Long: " + "a" * 8200 + "\r\nContent-Length: 0\r\n\r\n", "8192"),
    ("HTTP/1.1 200 OK\r\n" + "".join(f"X-Big-{n}: {'b' * 4000}\r\n" for n in range(20))
     + "Content-Length: 0\r\n\r\n", "65536"),
    ("HTTP/1.1 200 OK\r\n" + "X-Endless: " + "c" * 70000, "65536"),
], ids=["too-many-headers", "line-too-long", "head-too-large", "head-without-end"])
def test_head_limits(scripted: Callable[..., _Scripted], answer: str, match: str) -> None:
    server = scripted(Step(answer.encode()), Step(ok(b"good")))
    _refused(server, ConnectionPool(timeout=5), ProtocolError, match)


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY + 1),
    b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999999\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n" % (MAX_BODY + 1),
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n%x\r\n" % (
        MAX_BODY // 2, b"x" * (MAX_BODY // 2), MAX_BODY // 2 + 1),
    b"HTTP/1.1 200 OK\r\n\r\n" + b"y" * (MAX_BODY + 1),
], ids=["content-length", "huge-content-length", "chunk", "chunks", "until-close"])
def test_a_body_over_max_body_is_refused(scripted: Callable[..., _Scripted],
                                         answer: bytes) -> None:
    server = scripted(Step(answer, close=b"Content-Length" not in answer
                           and b"chunked" not in answer), Step(ok(b"good")))
    _refused(server, ConnectionPool(timeout=5), AnswerTooLarge, str(MAX_BODY))


@pytest.mark.parametrize(("answer", "match"), [
    (b"HTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", "status line"),
    (b"HTTP/1.1 20 OK\r\nContent-Length: 0\r\n\r\n", "status line"),
    (b"HTTP/2 200\r\nContent-Length: 0\r\n\r\n", "status line"),
    (b"\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", "status line"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "chunk size"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
     "chunk size"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n", "chunk size"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n",
     "longer than its size"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nbad trailer\r\n\r\n",
     "header field line"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n" + b"T: t\r\n" * 101
     + b"\r\n", "trailer is too long"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;" + b"e" * 9000 + b"\r\n",
     "longer than 8192"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\rx\r\nhello\r\n0\r\n\r\n",
     "bare CR"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}", "conflicting"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2, 3\r\n\r\n{}", "conflicting"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "invalid Content-Length"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\n{}", "invalid Content-Length"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\n", "invalid Content-Length"),
    (b"HTTP/1.1 200 OK\r\nX-A: a\r\n folded\r\nContent-Length: 0\r\n\r\n", "line folding"),
    (b"HTTP/1.1 200 OK\r\nno colon here\r\nContent-Length: 0\r\n\r\n", "header field line"),
    (b"HTTP/1.1 200 OK\r\nX-A : a\r\nContent-Length: 0\r\n\r\n", "header field line"),
    (b"HTTP/1.1 200 OK\r\nX-A: a\rb\r\nContent-Length: 0\r\n\r\n", "bare CR"),
    (b"HTTP/1.1 200 OK\r\nX-A: a\x00\r\nContent-Length: 0\r\n\r\n", "NUL"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n0\r\n\r\n",
     "both"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
     "Transfer-Encoding"),
    (b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "HTTP/1.0"),
    (b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 2\r\n\r\n\x1f\x8b",
     "Content-Encoding"),
    (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n", "switched"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}", "after 2 of 10"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel", "after 3 of 5"),
    (b"HTTP/1.1 200 OK\r\nContent-Le", "middle of the answer's head"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5", "middle of a chunked body"),
    (b"HTTP/1.1 100 Continue\r\n\r\n" * 11, "interim"),
], ids=lambda value: value if isinstance(value, str) else None)
def test_malformed_answers_are_refused(scripted: Callable[..., _Scripted], answer: bytes,
                                       match: str) -> None:
    # An answer ended by the close where its framing promised more bytes; others stay open.
    truncated = match.startswith(("after", "middle")) or match == "interim"
    server = scripted(Step(answer, close=truncated), Step(ok(b"good")))
    _refused(server, ConnectionPool(timeout=5), ProtocolError, match)


def test_protocol_errors_are_os_errors() -> None:
    # The session retries and reports OSError; nothing else needs catching.
    for error in (ProtocolError, AnswerTooLarge, ClosedWithoutAnswer, ProxyRefused):
        assert issubclass(error, OSError)


def test_identical_content_lengths_are_one(scripted: Callable[..., _Scripted]) -> None:
    server = scripted(Step(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\ncontent-length: 2, 02"
                           b"\r\n\r\n{}"))
    assert ConnectionPool(timeout=5).request("GET", server.url()).content == b"{}"


def test_a_kept_connection_the_server_closed_is_replaced_once(
        scripted: Callable[..., _Scripted]) -> None:
    # The server answers as if keeping the connection, then closes it (an idle timeout).
    server = scripted(Step(ok(b"1"), close=True), Step(ok(b"2"), close=True),
                      Step(b"", close=True))
    pool = ConnectionPool(timeout=5)
    assert pool.request("POST", server.url(), b"a").content == b"1"
    assert pool.request("POST", server.url(), b"b").content == b"2"  # on a fresh connection
    assert (server.connections, len(server.requests)) == (2, 2)
    # Only once: the fresh connection closing without an answer is an error.
    with pytest.raises(ClosedWithoutAnswer):
        pool.request("POST", server.url(), b"c")
    assert (server.connections, len(server.requests)) == (3, 3)
    pool.close()


def test_a_new_connection_closed_without_answer_is_not_retried(
        scripted: Callable[..., _Scripted]) -> None:
    server = scripted(Step(b"", close=True), Step(ok(b"never")))
    with pytest.raises(ClosedWithoutAnswer, match="without answering"):
        ConnectionPool(timeout=5).request("POST", server.url(), b"{}")
    assert server.connections == 1


def test_a_server_that_never_answers_times_out(scripted: Callable[..., _Scripted]) -> None:
    server = scripted(Step(None), Step(ok(b"good")))
    pool = ConnectionPool(timeout=0.3)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        pool.request("GET", server.url())
    assert time.monotonic() - started < 2
    pool.timeout = 5
    assert pool.request("GET", server.url()).content == b"good"
    assert server.connections == 2


def test_a_server_that_trickles_its_answer_times_out(scripted: Callable[..., _Scripted]) -> None:
    # 40 bytes, one every 50 ms: each read gets a byte well within the timeout, but the whole
    # answer takes 2 s. A broken middlebox doing this must not hold a renewal indefinitely.
    server = scripted(Step(ok(b"{}"), dribble=True, pause=0.05))
    pool = ConnectionPool(timeout=0.5)
    with pytest.raises(TimeoutError):
        pool.request("GET", server.url())
    assert not any(pool._idle.values())  # the cut connection is not kept


def test_a_slow_answer_in_time_leaves_the_kept_connection_its_whole_timeout(
        scripted: Callable[..., _Scripted]) -> None:
    server = scripted(Step(ok(b"{}"), dribble=True, pause=0.005), Step(ok(b"again")))
    pool = ConnectionPool(timeout=3)
    assert pool.request("GET", server.url()).content == b"{}"
    (kept,), = pool._idle.values()
    assert kept.sock.gettimeout() == 3  # cut while that answer came in; now whole again
    assert pool.request("GET", server.url()).content == b"again"
    assert server.connections == 1


@pytest.mark.parametrize(("headers", "match"), [
    ({"X-A": "a\r\nInjected: yes"}, "invalid value"),
    ({"X A": "a"}, "invalid request header name"),
    ({"Content-Length": "5"}, "set by the connection pool"),
    ({"host": "elsewhere"}, "set by the connection pool"),
])
def test_request_headers_that_would_break_the_request_are_refused(
        scripted: Callable[..., _Scripted], headers: dict[str, str], match: str) -> None:
    server = scripted()
    with pytest.raises(ValueError, match=match):
        ConnectionPool(timeout=5).request("GET", server.url(), None, headers)
    with pytest.raises(ValueError, match=match):
        ConnectionPool(headers=headers)
    with pytest.raises(ValueError, match="request line"):
        ConnectionPool().request("GET", server.url("/a b"))
    with pytest.raises(ValueError, match="method"):
        ConnectionPool().request("GE T", server.url())
    with pytest.raises(ValueError, match="not an http"):
        ConnectionPool().request("GET", "ftp://127.0.0.1/")
    assert server.connections == 0


def test_importing_the_session_loads_neither_http_client_nor_email() -> None:
    # cryptography.x509 imports email.utils itself; mamoru must add nothing to that.
    code = ("import sys\n"
            "def loaded(): return {m for m in sys.modules if m.startswith(('http', 'email'))}\n"
            "import mamoru.protocol.transport\n"
            "print(sorted(loaded()))\n"
            "import cryptography.x509\n"
            "before = loaded()\n"
            "import mamoru.protocol.session\n"
            "print(sorted(loaded() - before))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, env={**os.environ, "PYTHONPATH": SRC})
    assert result.stdout.splitlines() == ["[]", "[]"]


# -- proxies ---------------------------------------------------------------------------------


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


@pytest.fixture
def proxy_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("no_proxy", "NO_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy",
                 "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_https_proxy_from_the_environment_is_used_with_connect(
        https: tuple[_TLSServer, str], proxy_env: pytest.MonkeyPatch) -> None:
    server, bundle = https
    proxy = _ConnectProxy()
    proxy.start()
    try:
        proxy_env.setenv("https_proxy", f"http://user:p%40ss@127.0.0.1:{proxy.port}")
        pool = ConnectionPool(ca_bundle=bundle, timeout=5)
        assert pool.request("GET", _url(server, "/p")).json() == {"path": "/p"}
        assert pool.request("GET", _url(server, "/q")).json() == {"path": "/q"}  # kept alive
        assert len(proxy.requests) == 1
        connect = proxy.requests[0]
        port = server.server_address[1]
        assert connect.startswith(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\n"
                                  f"Host: 127.0.0.1:{port}\r\n")
        credentials = base64.b64encode(b"user:p@ss").decode()
        assert f"Proxy-Authorization: Basic {credentials}" in connect
        # no_proxy exempts a host: the request goes direct.
        proxy_env.setenv("no_proxy", "127.0.0.1")
        assert ConnectionPool(ca_bundle=bundle, timeout=5).request("GET", _url(server, "/d")).ok
        assert len(proxy.requests) == 1
    finally:
        proxy.stop()


def test_a_proxy_refusing_connect_is_an_error_naming_its_status(
        scripted: Callable[..., _Scripted], proxy_env: pytest.MonkeyPatch) -> None:
    proxy = scripted(Step(b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                          b'Proxy-Authenticate: Basic realm="clinic"\r\n'
                          b"Content-Length: 5\r\n\r\nnope\n"))
    proxy_env.setenv("https_proxy", f"http://nurse:s3cr%40t@127.0.0.1:{proxy.port}")
    with pytest.raises(ProxyRefused) as refused:
        ConnectionPool(timeout=5).request("GET", "https://127.0.0.1:9/directory")
    message = str(refused.value)
    assert "407" in message and f"127.0.0.1:{proxy.port}" in message
    secret = base64.b64encode(b"nurse:s3cr@t").decode()
    assert not any(word in message for word in ("nurse", "s3cr", secret))
    assert proxy.requests[0].startswith(b"CONNECT 127.0.0.1:9 HTTP/1.1\r\n")
    assert f"Proxy-Authorization: Basic {secret}".encode() in proxy.requests[0]


def test_plain_http_goes_direct_despite_a_proxy(scripted: Callable[..., _Scripted],
                                                proxy_env: pytest.MonkeyPatch) -> None:
    server = scripted(Step(ok(b"direct")))
    proxy_env.setenv("https_proxy", "http://127.0.0.1:9")
    proxy_env.setenv("all_proxy", "http://127.0.0.1:9")
    assert ConnectionPool(timeout=5).request("GET", server.url()).content == b"direct"


def test_x509_is_imported_on_a_helper_thread_and_the_csr_waits_for_it() -> None:
    """An order needs cryptography.x509 only for its CSR: the session and the keys module
    load without it, `load_x509_meanwhile` imports it on a helper thread, and a CSR asked for
    meanwhile waits for that import (a whole process, so nothing imported it before)."""
    code = textwrap.dedent("""
        import sys
        import mamoru.issuance, mamoru.protocol.session
        from mamoru.protocol.keys import generate_key, load_x509_meanwhile, make_csr_der
        print("x509 before:", "cryptography.x509" in sys.modules)
        load_x509_meanwhile()
        der = make_csr_der(generate_key("ec-p256"), ["clinic.example", "www.clinic.example"])
        from cryptography import x509
        csr = x509.load_der_x509_csr(der)
        print("valid:", csr.is_signature_valid)
        print("names:", csr.extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.splitlines() == ["x509 before: False", "valid: True",
                                        "names: ['clinic.example', 'www.clinic.example']"]
