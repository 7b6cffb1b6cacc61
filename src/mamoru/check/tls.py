"""The one TLS probe stack of mamoru: connect with SNI under a hard deadline, and look at what
the server sent (its chain, its leaf, the protocol version).

Both ``mamoru check`` (which also verifies the chain) and the install's proof that the new
certificate is served (:mod:`mamoru.install.verify`, which compares the leaf byte for byte)
open their connections here. Python's :mod:`ssl` and :mod:`socket` are used directly so a
connection can be aimed at one address while SNI uses the real host name, and so every step,
DNS included, ends at its deadline: a server that accepts and never answers, or drips one byte
a second, cannot hold a probe longer than asked.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from mamoru.tlstrust import client_context

# OpenSSL's X509_V_FLAG_NO_CHECK_TIME; ssl.VerifyFlags does not name it.
_NO_CHECK_TIME = 0x200000


class Deadline:
    """A point in (monotonic) time after which a network step gives up."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._end = time.monotonic() + seconds

    def left(self) -> float:
        return max(self._end - time.monotonic(), 0.0)

    @property
    def expired(self) -> bool:
        return time.monotonic() >= self._end

    def sub(self, seconds: float) -> Deadline:
        """A deadline of ``seconds`` that still ends no later than this one."""
        return Deadline(min(seconds, self.left()))


class DeadlinePassed(TimeoutError):
    """A step was cut off (or never started) because its deadline passed."""


def _resolve(host: str, port: int, deadline: Deadline) -> list[tuple[int, tuple[str, int]]]:
    # getaddrinfo has no timeout of its own, and a broken resolver can hang for a long time;
    # a daemon thread lets us stop waiting at the deadline.
    result: list[tuple[int, tuple[str, int]]] = []
    errors: list[OSError] = []

    def lookup() -> None:
        try:
            for family, _type, _proto, _name, sockaddr in socket.getaddrinfo(
                host, port, type=socket.SOCK_STREAM
            ):
                result.append((int(family), (str(sockaddr[0]), int(sockaddr[1]))))
        except OSError as exc:
            errors.append(exc)

    worker = threading.Thread(target=lookup, name="mamoru-check-dns", daemon=True)
    worker.start()
    worker.join(deadline.left())
    if worker.is_alive():
        raise DeadlinePassed(f"looking up {host} took too long")
    if errors:
        raise errors[0]
    if not result:
        raise socket.gaierror(f"no addresses for {host}")
    return result


def tcp_connect(address: tuple[str, int], deadline: Deadline) -> socket.socket:
    """A TCP connection to ``address`` (a name or an IP), trying each resolved address in
    turn before ``deadline``. Raises OSError (DeadlinePassed when time ran out)."""
    last: OSError | None = None
    candidates = _resolve(address[0], address[1], deadline)
    for index, (family, sockaddr) in enumerate(candidates):
        if deadline.expired:
            break
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            # Share the time between the remaining addresses, so one black-holed address
            # (typically IPv6 without a route) does not use up the whole deadline.
            sock.settimeout(max(deadline.left() / (len(candidates) - index), 0.001))
            sock.connect(sockaddr)
        except OSError as exc:
            sock.close()
            last = exc
            continue
        return sock
    if last is not None:
        raise last
    raise DeadlinePassed(f"connecting to {address[0]}:{address[1]} took too long")


@contextmanager
def cut_at_deadline(sock: socket.socket, deadline: Deadline) -> Iterator[None]:
    """Cut ``sock`` when ``deadline`` passes, whatever call it is blocked in, and raise
    TimeoutError if that happened.

    Socket timeouts bound each recv(), but a server dripping one byte per second would keep a
    handshake or a header read alive for ever; shutting the socket down from a timer thread
    wakes the blocked call. The cut looks like an ordinary end of stream to ssl and
    http.client (a half-read header block even parses), so the block's outcome cannot be
    trusted once the timer has fired: it is replaced by a timeout.
    """
    fired = threading.Event()

    def cut() -> None:
        fired.set()
        with suppress(OSError):
            # The base-class method acts on the file descriptor without touching the TLS
            # state that the blocked thread is using.
            socket.socket.shutdown(sock, socket.SHUT_RDWR)

    sock.settimeout(max(deadline.left(), 0.001))
    timer = threading.Timer(deadline.left(), cut)
    timer.daemon = True
    timer.start()
    try:
        yield
    except Exception as exc:
        if fired.is_set():
            raise DeadlinePassed("the deadline passed") from exc
        raise
    finally:
        timer.cancel()
    if fired.is_set():
        raise DeadlinePassed("the deadline passed")


def tls_connect(
    address: tuple[str, int], server_name: str, context: ssl.SSLContext, deadline: Deadline
) -> ssl.SSLSocket:
    """A TLS connection to ``address`` with SNI ``server_name``, handshake done before
    ``deadline``; the caller closes it. Raises OSError, including ssl.SSLError (and
    ssl.SSLCertVerificationError when ``context`` verifies and the chain fails)."""
    raw = tcp_connect(address, deadline)
    try:
        # An IP address is not sent as SNI; Python's ssl already knows that.
        sock = context.wrap_socket(raw, server_hostname=server_name, do_handshake_on_connect=False)
    except BaseException:
        raw.close()
        raise
    try:
        with cut_at_deadline(sock, deadline):
            sock.do_handshake()
    except BaseException:
        sock.close()
        raise
    return sock


def verifying_context(ca_bundle: str | None, *, ignore_time: bool = False) -> ssl.SSLContext:
    """A context that verifies the chain as browsers do (against ``ca_bundle`` alone when
    given; without the clock when ``ignore_time``) but leaves host names to the caller."""
    # cafile replaces the system store rather than adding to it, like curl --cacert: a test
    # CA or a clinic's private CA is checked on its own. The system's roots are read only as
    # a chain needs them (mamoru.tlstrust).
    context = client_context(ca_bundle)
    # Names are matched by hostname_matches() so that a wrong name and a bad chain are
    # reported separately instead of OpenSSL stopping at whichever it meets first.
    context.check_hostname = False
    # Browsers do not apply OpenSSL's RFC 5280 strictness (and Python 3.13 turned it on by
    # default), so keep results the same across Python versions.
    context.verify_flags &= ~ssl.VERIFY_X509_STRICT
    if ignore_time:
        context.verify_flags |= _NO_CHECK_TIME
    return context


def unverified_context(*, legacy: bool = False) -> ssl.SSLContext:
    """A context that trusts anything: for looking at what a server sends (``legacy``: down
    to the oldest protocol OpenSSL still speaks)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if legacy:
        # Only used to learn which outdated protocol a server insists on.
        context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        with suppress(ssl.SSLError):
            context.set_ciphers("DEFAULT:@SECLEVEL=0")
    return context


def served_chain(sock: ssl.SSLSocket) -> list[bytes]:
    """The certificates the server sent, leaf first, as DER; [] when Python cannot tell."""
    getter = getattr(sock, "get_unverified_chain", None)  # public since Python 3.13
    if getter is None:
        # Python 3.10-3.12 have the same method, unadvertised, on the underlying object.
        getter = getattr(getattr(sock, "_sslobj", None), "get_unverified_chain", None)
    if getter is None:
        return []
    try:
        items = getter()
    except (ssl.SSLError, ValueError, AttributeError):
        return []
    chain: list[bytes] = []
    for item in items or ():
        if isinstance(item, bytes):
            chain.append(item)
            continue
        public_bytes = getattr(item, "public_bytes", None)
        if public_bytes is None:
            return []
        pem = public_bytes()
        if not isinstance(pem, str):
            return []
        chain.append(ssl.PEM_cert_to_DER_cert(pem))
    return chain


# OpenSSL reasons for a handshake refused on the protocol version alone.
VERSION_REASONS = frozenset(
    {
        "UNSUPPORTED_PROTOCOL",
        "TLSV1_ALERT_PROTOCOL_VERSION",
        "NO_PROTOCOLS_AVAILABLE",
        "WRONG_SSL_VERSION",
        "VERSION_TOO_LOW",
    }
)


def served_leaf(address: tuple[str, int], server_name: str, timeout: float) -> bytes | None:
    """The leaf certificate (DER) a server sends to a client asking for ``server_name``, or None
    when it sends none. Nothing is trusted or verified: this is for comparing the served
    certificate with a known one. Connecting and the handshake together take at most
    ``timeout`` seconds. Raises OSError (ssl.SSLError for a failed handshake, DeadlinePassed
    or TimeoutError when time ran out)."""
    sock = tls_connect(address, server_name, unverified_context(), Deadline(timeout))
    try:
        return sock.getpeercert(binary_form=True)
    finally:
        sock.close()
