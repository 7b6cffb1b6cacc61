"""The one TLS probe stack (mamoru.check.tls), as the install's proof of the served certificate
(mamoru.install.verify.fetch_leaf) uses it: real TLS servers on 127.0.0.1, nothing mocked."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from tests.unit.check_sites import HOST, Issued, make_ca, make_leaf

from mamoru.check.tls import served_leaf
from mamoru.install.verify import fetch_leaf

Handler = Callable[[socket.socket], None]


@pytest.fixture
def listen() -> Iterator[Callable[[Handler], tuple[str, int]]]:
    """A TCP listener on 127.0.0.1 that hands each connection to `handler` in a thread."""
    listeners: list[socket.socket] = []
    stop = threading.Event()

    def start(handler: Handler) -> tuple[str, int]:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.settimeout(0.05)
        listeners.append(listener)

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


def tls_server(tmp_path: Path, leaf: Issued, seen: list[str | None]) -> Handler:
    """Completes a handshake serving `leaf`, noting the SNI each client sent in `seen`."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    (tmp_path / "leaf.pem").write_bytes(leaf.pem)
    (tmp_path / "leaf.key").write_bytes(leaf.key_pem)
    (tmp_path / "leaf.key").chmod(0o600)
    context.load_cert_chain(tmp_path / "leaf.pem", tmp_path / "leaf.key")
    context.sni_callback = lambda _sock, name, _ctx: seen.append(name)

    def handle(conn: socket.socket) -> None:
        try:
            with context.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)
        except OSError:
            pass

    return handle


def test_served_leaf_is_the_certificate_the_server_sends_for_that_name(
    tmp_path: Path, listen: Callable[[Handler], tuple[str, int]]
) -> None:
    leaf = make_leaf([HOST], make_ca("Mamoru Test Root"))
    seen: list[str | None] = []
    address = listen(tls_server(tmp_path, leaf, seen))
    assert served_leaf(address, HOST, timeout=3) == leaf.cert.public_bytes(Encoding.DER)
    assert seen == [HOST]


def test_verify_probes_a_wildcard_with_one_label_in_place(
    tmp_path: Path, listen: Callable[[Handler], tuple[str, int]]
) -> None:
    leaf = make_leaf([f"*.{HOST}"], make_ca("Mamoru Test Root"))
    seen: list[str | None] = []
    served = fetch_leaf(listen(tls_server(tmp_path, leaf, seen)), f"*.{HOST}")
    assert served.error is None and served.der == leaf.cert.public_bytes(Encoding.DER)
    assert seen == [f"mamoru-verify.{HOST}"]


def test_verify_probe_ends_at_its_deadline_against_a_dripping_server(
    listen: Callable[[Handler], tuple[str, int]],
) -> None:
    """A server that starts a TLS record and then sends one byte every 0.1 s keeps every read
    alive; the probe still gives up at its timeout, with the words the install reports."""

    def drip(conn: socket.socket) -> None:
        try:
            conn.recv(4096)
            conn.sendall(b"\x16\x03\x03\x40\x00")  # a 16 KiB handshake record follows...
            for _ in range(300):
                conn.sendall(b"\x00")
                time.sleep(0.1)
        except OSError:
            pass
        finally:
            conn.close()

    address = listen(drip)
    started = time.monotonic()
    served = fetch_leaf(address, HOST, timeout=1.0)
    elapsed = time.monotonic() - started
    assert served.der is None and served.error == "no answer in time", served
    assert elapsed < 2.0, f"the probe took {elapsed:.1f} s"


def test_verify_probe_names_a_refused_connection() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        address = ("127.0.0.1", sock.getsockname()[1])
    served = fetch_leaf(address, HOST, timeout=1.0)
    assert served.der is None
    assert served.error == "connection refused (is the server listening there?)"
