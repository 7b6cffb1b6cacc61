"""A tiny authoritative-for-everything DNS responder (dnspython), UDP and TCP, on loopback.

acme2certifier resolves identifiers with dnspython against its ``dns_server_list`` on port 53
and ignores /etc/hosts, so its tests need a DNS server on ``127.0.0.1:53``. This one answers:

* ``A``: ``127.0.0.1`` for every name (or what ``add_a`` set for a name);
* ``AAAA``: no data (NOERROR, empty answer), so validation never tries ``::1``;
* ``TXT``: the values given with ``set_txt`` (for dns-01 tests), else no data;
* anything else: no data.

It runs in threads of the test process (``start()``/``stop()``, a context manager).
``DnsStub.check_port_free(53)`` tells clearly when another resolver holds the port.
"""

from __future__ import annotations

import socket
import socketserver
import struct
import threading
from types import TracebackType

import dns.flags
import dns.message
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from .ports import LOOPBACK, tcp_port_is_free, udp_port_is_free
from .process import ServerError


class DnsStub:
    """DNS responder on ``host:port`` (UDP + TCP).

    Args:
        port: 53 for acme2certifier's stock resolver path; any port when the resolver's port
            can be patched.
        host: bind address (127.0.0.1).
        default_ipv4: answer for every ``A`` query without an explicit record.

    Attributes: ``.queries`` (list of ``(qname, qtype)`` strings, in order).
    """

    def __init__(
        self, port: int = 53, *, host: str = LOOPBACK, default_ipv4: str = "127.0.0.1"
    ) -> None:
        self.host = host
        self.port = int(port)
        self.default_ipv4 = default_ipv4
        self.a_records: dict[str, list[str]] = {}
        self.txt_records: dict[str, list[str]] = {}
        self.queries: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._udp: socketserver.ThreadingUDPServer | None = None
        self._tcp: socketserver.ThreadingTCPServer | None = None
        self._threads: list[threading.Thread] = []

    # ---- records ---------------------------------------------------------------------------

    @staticmethod
    def _key(name: str) -> str:
        return name.rstrip(".").lower() + "."

    def add_a(self, name: str, addresses: list[str]) -> None:
        with self._lock:
            self.a_records[self._key(name)] = list(addresses)

    def set_txt(self, name: str, *values: str) -> None:
        with self._lock:
            self.txt_records[self._key(name)] = list(values)

    def clear_txt(self, name: str) -> None:
        with self._lock:
            self.txt_records.pop(self._key(name), None)

    # ---- answering -------------------------------------------------------------------------

    def answer(self, wire: bytes) -> bytes | None:
        """Build the wire-format response to one query (None for garbage)."""
        try:
            query = dns.message.from_wire(wire)
        except Exception:
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        for q in query.question:
            name = q.name.to_text().lower()
            with self._lock:
                self.queries.append((name, dns.rdatatype.to_text(q.rdtype)))
                if q.rdtype == dns.rdatatype.A:
                    values = self.a_records.get(name, [self.default_ipv4])
                elif q.rdtype == dns.rdatatype.TXT:
                    values = [
                        '"' + v.replace('"', '\\"') + '"' for v in self.txt_records.get(name, [])
                    ]
                else:
                    values = []
            if values:
                response.answer.append(
                    dns.rrset.from_text_list(q.name, 0, dns.rdataclass.IN, q.rdtype, values)
                )
        return response.to_wire()

    # ---- lifecycle -------------------------------------------------------------------------

    @staticmethod
    def check_port_free(port: int, host: str = LOOPBACK) -> None:
        """Raise ``ServerError`` with a clear message if ``host:port`` is taken (UDP or TCP)."""
        busy = [
            proto
            for proto, free in (
                ("udp", udp_port_is_free(port, host)),
                ("tcp", tcp_port_is_free(port, host)),
            )
            if not free
        ]
        if busy:
            raise ServerError(
                f"{host}:{port} ({'/'.join(busy)}) is already in use by another process "
                f"(a local resolver such as dnsmasq/systemd-resolved/named?). acme2certifier "
                f"resolves challenge names only through DNS on port {port}, so its tests need "
                f"this port: stop that service (see `ss -lunp 'sport = :{port}'`)."
            )

    def start(self) -> DnsStub:
        self.check_port_free(self.port, self.host)
        stub = self

        class UDPHandler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                data, sock = self.request
                out = stub.answer(data)
                if out is not None:
                    sock.sendto(out, self.client_address)

        class TCPHandler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                conn: socket.socket = self.request
                conn.settimeout(5)
                try:
                    while True:
                        head = _recv_exact(conn, 2)
                        if not head:
                            return
                        (length,) = struct.unpack("!H", head)
                        out = stub.answer(_recv_exact(conn, length))
                        if out is None:
                            return
                        conn.sendall(struct.pack("!H", len(out)) + out)
                except OSError:
                    return

        class UDPServer(socketserver.ThreadingUDPServer):
            daemon_threads = True
            allow_reuse_address = True

        class TCPServer(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        try:
            self._udp = UDPServer((self.host, self.port), UDPHandler)
            self._tcp = TCPServer((self.host, self.port), TCPHandler)
        except OSError as exc:
            self.stop()
            raise ServerError(f"DNS stub cannot bind {self.host}:{self.port}: {exc}") from exc
        for srv in (self._udp, self._tcp):
            t = threading.Thread(
                target=srv.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"dns-stub-{self.port}",
                daemon=True,
            )
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        for srv in (self._udp, self._tcp):
            if srv is not None:
                srv.shutdown()
                srv.server_close()
        for t in self._threads:
            t.join(timeout=5)
        self._udp = self._tcp = None
        self._threads = []

    def __enter__(self) -> DnsStub:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            return b""
        buf += chunk
    return buf
