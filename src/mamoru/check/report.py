"""Look at a clinic's live site the way a patient's browser does (``mamoru check``).

The entry point is :func:`check_url`. It opens real connections to the site and returns a
:class:`TargetReport`: a list of :class:`Finding` objects, one per aspect checked, each with a
stable id (``"cert.expiry"``), a status (``"ok"``, ``"warning"`` or ``"problem"``), a message a
clinic's sysadmin can read without knowing TLS internals, and a suggested fix.

What is checked, by id:

``https.reachable``
    A TLS connection can be made and the page answers an HTTP request.
``tls.version``
    The negotiated protocol is TLS 1.2 or newer.
``cert.chain``
    The served chain verifies against the system trust store (or ``ca_bundle``); on failure
    the reason is named: expired, not yet valid, self-signed, missing intermediate, unknown
    issuer.
``cert.names``
    The host name is among the certificate's subjectAltName entries (browser wildcard rules).
``cert.expiry``
    Time left: warning under 1/3 of the lifetime, problem under 1/6 or expired.
``cert.matches-stored``
    Only with ``expected_cert_pem``: the server serves the certificate mamoru last installed.
``http.redirect``
    ``http://host/path`` permanently redirects (301/308) to ``https://host/path``.
``http.acme-challenge``
    ``http://host/.well-known/acme-challenge/<random>`` is not sent to another host, so
    HTTP-01 validation can reach the files mamoru publishes.
``hsts``
    The HTTPS response carries ``Strict-Transport-Security`` with a useful max-age.
``mixed-content``
    The HTML page does not load scripts, styles, frames, images... over ``http://``.

Checks that cannot run (because the site is unreachable, say) are left out of the report; the
finding that stopped them explains why. Nothing here raises for network trouble: refused,
reset, timed-out or garbled connections all become findings.

The module uses :mod:`ssl`, :mod:`socket` and :mod:`http.client` directly rather than
``requests`` so that a connection can be aimed at one address (``connect``) while SNI, the
Host header and name matching use the real host name, and so every step has a hard deadline.
"""

from __future__ import annotations

import datetime as dt
import html.parser
import http.client
import ipaddress
import re
import secrets
import socket
import ssl
import textwrap
import threading
import time
import urllib.parse
import zlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

__all__ = [
    "CHECK_IDS",
    "MAX_LISTED",
    "MAX_REDIRECTS",
    "PAGE_SIZE_CAP",
    "Finding",
    "InsecureReference",
    "MixedContentScan",
    "Status",
    "TargetReport",
    "check_url",
    "dns_name_matches",
    "exit_code",
    "hostname_matches",
    "mixed_content_finding",
    "normalize_url",
    "parse_hsts",
    "render_table",
    "scan_mixed_content",
    "to_json",
]

Status = Literal["ok", "warning", "problem"]

_RANK: dict[str, int] = {"ok": 0, "warning": 1, "problem": 2}

CHECK_IDS: tuple[str, ...] = (
    "https.reachable",
    "tls.version",
    "cert.chain",
    "cert.names",
    "cert.expiry",
    "cert.matches-stored",
    "http.redirect",
    "http.acme-challenge",
    "hsts",
    "mixed-content",
)
"""Every check id this module can emit, in report order."""

PAGE_SIZE_CAP = 2 * 1024 * 1024
"""Bytes of the HTML page read for the mixed-content scan; the rest is ignored."""

MAX_REDIRECTS = 5
"""Redirects followed, both for the HTTPS page and for the plain-HTTP redirect check."""

MAX_LISTED = 10
"""Offending URLs listed per kind in mixed-content details."""

_PERMANENT = frozenset({301, 308})
_TEMPORARY = frozenset({302, 303, 307})
_REDIRECTS = _PERMANENT | _TEMPORARY
_ONE_DAY = 86_400
# OpenSSL's X509_V_FLAG_NO_CHECK_TIME; ssl.VerifyFlags does not name it.
_NO_CHECK_TIME = 0x200000
_USER_AGENT = "Mozilla/5.0 (compatible; mamoru-check/0.1)"


# --------------------------------------------------------------------------------------------
# Public result types
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """The outcome of one check.

    ``check`` is a stable id from :data:`CHECK_IDS`; ``status`` is ``"ok"``, ``"warning"`` or
    ``"problem"``; ``message`` says what was seen in plain words; ``fix`` says what to do next
    and is empty when the status is ok; ``details`` holds JSON-serialisable facts (numbers,
    strings, lists, dicts) for scripts and support.
    """

    check: str
    status: Status
    message: str
    fix: str = ""
    # Excluded from hashing because dicts are unhashable; equality still compares it.
    details: dict[str, object] = field(default_factory=dict, hash=False)


@dataclass
class TargetReport:
    """All findings for one checked URL, in the order of :data:`CHECK_IDS`."""

    url: str
    host: str
    findings: list[Finding] = field(default_factory=list)

    @property
    def worst(self) -> Status:
        """The most severe status among the findings (``"ok"`` when there are none)."""
        worst: Status = "ok"
        for finding in self.findings:
            if _RANK[finding.status] > _RANK[worst]:
                worst = finding.status
        return worst

    def get(self, check: str) -> Finding | None:
        """The finding with id ``check``, or None when that check did not run."""
        for finding in self.findings:
            if finding.check == check:
                return finding
        return None


# --------------------------------------------------------------------------------------------
# Targets and addresses
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Target:
    url: str  # normalised https:// URL
    host: str  # ASCII (IDNA) lower-case host, IPv6 without brackets
    port: int  # HTTPS port
    path: str  # path plus ?query, always starting with "/"


def normalize_url(url: str) -> str:
    """Turn ``clinic.example``, ``http://clinic.example/x`` or ``https://...`` into the
    ``https://`` URL that will be checked.

    A plain ``http://`` URL is checked as its ``https://`` twin (the plain-HTTP checks look at
    the http side anyway); an explicit port is kept only for https URLs. Raises ValueError for
    other schemes or a URL without a host.
    """
    return _parse_target(url).url


def _parse_target(url: str) -> _Target:
    raw = url.strip()
    if "://" not in raw:
        raw = "https://" + raw
    parts = urllib.parse.urlsplit(raw)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise ValueError(f"cannot check {url!r}: only http:// and https:// addresses make sense")
    if not parts.hostname:
        raise ValueError(f"cannot check {url!r}: there is no host name in it")
    host = _ascii_host(parts.hostname)
    try:
        explicit_port = parts.port
    except ValueError as exc:
        raise ValueError(f"cannot check {url!r}: {exc}") from exc
    port = explicit_port if scheme == "https" and explicit_port else 443
    path = _request_target(parts.path or "/", parts.query)
    return _Target(
        url=f"https://{_authority(host, port, 443)}{path}", host=host, port=port, path=path
    )


def _ascii_host(host: str) -> str:
    host = host.strip().rstrip(".").lower()
    if _is_ip(host):
        return host
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise ValueError(f"{host!r} is not a valid host name: {exc}") from exc


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _authority(host: str, port: int, default_port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return shown if port == default_port else f"{shown}:{port}"


# Every printable ASCII character is left alone so an already-encoded path is sent verbatim;
# spaces, control characters (header injection) and non-ASCII get percent-encoded.
_PATH_SAFE = "".join(chr(c) for c in range(33, 127))


def _request_target(path: str, query: str = "") -> str:
    if not path.startswith("/"):
        path = "/" + path
    target = urllib.parse.quote(path, safe=_PATH_SAFE)
    if query:
        target += "?" + urllib.parse.quote(query, safe=_PATH_SAFE)
    return target


def _same_host(a: str | None, b: str) -> bool:
    if not a:
        return False
    try:
        return _ascii_host(a) == b
    except ValueError:
        return False


def _www_variant(a: str, b: str) -> bool:
    return a == "www." + b or b == "www." + a


# --------------------------------------------------------------------------------------------
# Deadlines and connections
# --------------------------------------------------------------------------------------------


class _Deadline:
    """A point in (monotonic) time after which a network step gives up."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._end = time.monotonic() + seconds

    def left(self) -> float:
        return max(self._end - time.monotonic(), 0.0)

    @property
    def expired(self) -> bool:
        return time.monotonic() >= self._end

    def sub(self, seconds: float) -> _Deadline:
        """A deadline of ``seconds`` that still ends no later than this one."""
        return _Deadline(min(seconds, self.left()))


class _Timeout(TimeoutError):
    pass


def _resolve(host: str, port: int, deadline: _Deadline) -> list[tuple[int, tuple[str, int]]]:
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
        raise _Timeout(f"looking up {host} took too long")
    if errors:
        raise errors[0]
    if not result:
        raise socket.gaierror(f"no addresses for {host}")
    return result


def _tcp_connect(address: tuple[str, int], deadline: _Deadline) -> socket.socket:
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
    raise _Timeout(f"connecting to {address[0]}:{address[1]} took too long")


@contextmanager
def _guard(sock: socket.socket, deadline: _Deadline) -> Iterator[None]:
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
            raise _Timeout("the deadline passed") from exc
        raise
    finally:
        timer.cancel()
    if fired.is_set():
        raise _Timeout("the deadline passed")


def _tls_connect(
    address: tuple[str, int], server_name: str, context: ssl.SSLContext, deadline: _Deadline
) -> ssl.SSLSocket:
    raw = _tcp_connect(address, deadline)
    try:
        # An IP address is not sent as SNI; Python's ssl already knows that.
        sock = context.wrap_socket(raw, server_hostname=server_name, do_handshake_on_connect=False)
    except BaseException:
        raw.close()
        raise
    try:
        with _guard(sock, deadline):
            sock.do_handshake()
    except BaseException:
        sock.close()
        raise
    return sock


def _verifying_context(ca_bundle: str | None, *, ignore_time: bool = False) -> ssl.SSLContext:
    # cafile replaces the system store rather than adding to it, like curl --cacert: a test
    # CA or a clinic's private CA is checked on its own.
    context = ssl.create_default_context(cafile=ca_bundle)
    # Names are matched by hostname_matches() so that a wrong name and a bad chain are
    # reported separately instead of OpenSSL stopping at whichever it meets first.
    context.check_hostname = False
    # Browsers do not apply OpenSSL's RFC 5280 strictness (and Python 3.13 turned it on by
    # default), so keep results the same across Python versions.
    context.verify_flags &= ~ssl.VERIFY_X509_STRICT
    if ignore_time:
        context.verify_flags |= _NO_CHECK_TIME
    return context


def _unverified_context(*, legacy: bool = False) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if legacy:
        # Only used to learn which outdated protocol a server insists on.
        context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        with suppress(ssl.SSLError):
            context.set_ciphers("DEFAULT:@SECLEVEL=0")
    return context


def _served_chain(sock: ssl.SSLSocket) -> list[bytes]:
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


# --------------------------------------------------------------------------------------------
# Minimal HTTP over an open socket
# --------------------------------------------------------------------------------------------


@dataclass
class _Response:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    truncated: bool = False

    def header(self, name: str) -> str | None:
        lowered = name.lower()
        for key, value in self.headers:
            if key.lower() == lowered:
                return value
        return None

    def header_all(self, name: str) -> list[str]:
        lowered = name.lower()
        return [value for key, value in self.headers if key.lower() == lowered]


def _exchange(
    sock: socket.socket,
    host_header: str,
    target: str,
    deadline: _Deadline,
    *,
    read_body: bool,
) -> _Response:
    """Send one GET on ``sock`` and read the answer (the body only when asked, capped)."""
    request = (
        f"GET {target} HTTP/1.1\r\n"
        f"Host: {host_header}\r\n"
        f"User-Agent: {_USER_AGENT}\r\n"
        "Accept: text/html,application/xhtml+xml,*/*;q=0.8\r\n"
        # Compressed bodies are still handled below, but asking for none keeps the cap honest.
        "Accept-Encoding: identity\r\n"
        "Connection: close\r\n\r\n"
    ).encode("latin-1")
    with _guard(sock, deadline):
        sock.sendall(request)
        response = http.client.HTTPResponse(sock, method="GET")
        try:
            response.begin()
            result = _Response(response.status, response.reason, list(response.getheaders()))
            if read_body:
                result.body, result.truncated = _read_capped(response, result)
        finally:
            response.close()
    return result


def _read_capped(response: http.client.HTTPResponse, meta: _Response) -> tuple[bytes, bool]:
    encoding = (meta.header("Content-Encoding") or "identity").strip().lower()
    # wbits=47 accepts both gzip and zlib framing.
    inflater = zlib.decompressobj(47) if encoding in ("gzip", "x-gzip", "deflate") else None
    body = bytearray()
    truncated = False
    while True:
        chunk = response.read(64 * 1024)
        if not chunk:
            break
        if inflater is not None:
            try:
                chunk = inflater.decompress(chunk, PAGE_SIZE_CAP + 1 - len(body))
            except zlib.error:
                break
        body += chunk
        if len(body) > PAGE_SIZE_CAP:
            del body[PAGE_SIZE_CAP:]
            truncated = True
            break
    return bytes(body), truncated


def _https_get(
    address: tuple[str, int],
    target: _Target,
    path: str,
    context: ssl.SSLContext,
    deadline: _Deadline,
) -> _Response:
    sock = _tls_connect(address, target.host, context, deadline)
    try:
        return _exchange(
            sock, _authority(target.host, target.port, 443), path, deadline, read_body=True
        )
    finally:
        sock.close()


def _http_get(address: tuple[str, int], host: str, path: str, deadline: _Deadline) -> _Response:
    sock = _tcp_connect(address, deadline)
    try:
        return _exchange(sock, _authority(host, 80, 80), path, deadline, read_body=False)
    finally:
        sock.close()


# --------------------------------------------------------------------------------------------
# Errors in plain words
# --------------------------------------------------------------------------------------------

_TLS_REASONS: dict[str, str] = {
    "WRONG_VERSION_NUMBER": (
        "answered in plain HTTP where a secure (TLS) connection was expected; the HTTPS port "
        "is not set up for TLS"
    ),
    "HTTP_REQUEST": "answered in plain HTTP where a secure (TLS) connection was expected",
    "SSLV3_ALERT_HANDSHAKE_FAILURE": (
        "refused the secure handshake (no encryption settings in common with browsers, or no "
        "certificate configured for this name)"
    ),
    "TLSV1_ALERT_INTERNAL_ERROR": (
        "failed the secure handshake with an internal error (often: no certificate configured "
        "for this name)"
    ),
    "TLSV1_UNRECOGNIZED_NAME": "does not recognise the site name during the secure handshake",
    "NO_SHARED_CIPHER": "has no encryption settings in common with browsers",
}

_VERSION_REASONS = frozenset(
    {
        "UNSUPPORTED_PROTOCOL",
        "TLSV1_ALERT_PROTOCOL_VERSION",
        "NO_PROTOCOLS_AVAILABLE",
        "WRONG_SSL_VERSION",
        "VERSION_TOO_LOW",
    }
)


def _describe_error(exc: BaseException, deadline: _Deadline, where: str) -> tuple[str, str]:
    """A short reason code and a lower-case clause ("the server at <where> ...") for a
    connection failure; :func:`_sentence` turns the clause into a sentence start."""
    if isinstance(exc, socket.gaierror):
        return "dns", f"the name in {where} could not be found in DNS"
    seconds = f"{deadline.seconds:g} second" + ("" if deadline.seconds == 1 else "s")
    where = f"the server at {where}"
    if deadline.expired or isinstance(exc, TimeoutError):
        return "timeout", f"{where} did not answer within {seconds}"
    if isinstance(exc, ConnectionRefusedError):
        return "refused", f"{where} refused the connection (nothing is listening on that port)"
    if isinstance(exc, http.client.RemoteDisconnected | ssl.SSLEOFError):
        return "closed", f"{where} closed the connection without answering"
    if isinstance(exc, ConnectionResetError | BrokenPipeError | ConnectionAbortedError):
        return "reset", f"{where} dropped the connection (connection reset)"
    if isinstance(exc, ssl.SSLError):
        reason = str(getattr(exc, "reason", "") or "")
        if reason in _TLS_REASONS:
            return "tls", f"{where} {_TLS_REASONS[reason]}"
        return "tls", f"{where} failed the secure (TLS) handshake: {reason or exc}"
    if isinstance(exc, http.client.HTTPException):
        return "bad-response", f"{where} answered with something that is not valid HTTP"
    detail = (exc.strerror if isinstance(exc, OSError) else None) or str(exc)
    return "unreachable", f"{where} could not be reached ({detail})"


_NETWORK_ERRORS = (OSError, http.client.HTTPException)


def _sentence(clause: str) -> str:
    return clause[:1].upper() + clause[1:]


# --------------------------------------------------------------------------------------------
# Certificates
# --------------------------------------------------------------------------------------------


def _subject_cn(name: x509.Name) -> str:
    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    if attrs:
        value = attrs[0].value
        return value if isinstance(value, str) else value.decode("utf-8", "replace")
    return name.rfc4514_string()


def _san(cert: x509.Certificate) -> x509.SubjectAlternativeName | None:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (x509.ExtensionNotFound, ValueError):
        # ValueError: a malformed extension; treat it like a missing one, as browsers do.
        return None


def dns_name_matches(pattern: str, host: str) -> bool:
    """Whether one subjectAltName DNS entry covers ``host``, by the rules browsers apply.

    Case-insensitive; a trailing dot is ignored. A wildcard is honoured only as the whole
    left-most label (``*.clinic.example``), matches exactly one non-empty label (not
    ``clinic.example`` itself, not ``a.b.clinic.example``), and needs at least two labels after
    it (``*.example`` is refused, as browsers refuse it). Partial wildcards (``w*.example.org``)
    never match, as in Chrome and Firefox. IP addresses never match DNS entries.
    """
    pattern = pattern.strip().rstrip(".").lower()
    host = host.strip().rstrip(".").lower()
    if not pattern or not host or _is_ip(host):
        return False
    if "*" not in pattern:
        return pattern == host
    p_labels = pattern.split(".")
    h_labels = host.split(".")
    if p_labels[0] != "*" or "*" in ".".join(p_labels[1:]) or len(p_labels) < 3:
        return False
    if len(h_labels) != len(p_labels) or not h_labels[0]:
        return False
    return h_labels[1:] == p_labels[1:]


def hostname_matches(host: str, cert: x509.Certificate) -> bool:
    """Whether ``cert`` is valid for ``host`` (ASCII/IDNA form), as a browser decides.

    Only subjectAltName counts; browsers ignore the subject common name. IP-address hosts
    match iPAddress entries, names match dNSName entries via :func:`dns_name_matches`.
    """
    san = _san(cert)
    if san is None:
        return False
    if _is_ip(host):
        wanted = ipaddress.ip_address(host)
        return any(ip == wanted for ip in san.get_values_for_type(x509.IPAddress))
    return any(dns_name_matches(name, host) for name in san.get_values_for_type(x509.DNSName))


def _cert_names(cert: x509.Certificate) -> list[str]:
    san = _san(cert)
    if san is None:
        return []
    names = list(san.get_values_for_type(x509.DNSName))
    names += [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    return names


def _fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex(":")


def _cert_summary(cert: x509.Certificate) -> dict[str, object]:
    return {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "serial": format(cert.serial_number, "x"),
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "sha256": _fingerprint(cert),
    }


def _load_certs(ders: Sequence[bytes]) -> list[x509.Certificate]:
    certs = []
    for der in ders:
        try:
            certs.append(x509.load_der_x509_certificate(der))
        except ValueError:
            continue
    return certs


def _date(when: dt.datetime) -> str:
    return when.strftime("%Y-%m-%d")


def _days(delta: dt.timedelta) -> float:
    return delta.total_seconds() / _ONE_DAY


def _tls_version_finding(version: str | None) -> Finding:
    if version in ("TLSv1.2", "TLSv1.3"):
        return Finding(
            "tls.version", "ok", f"The connection uses {version}.", details={"version": version}
        )
    shown = version or "an unknown protocol"
    return Finding(
        "tls.version",
        "problem",
        f"The server only speaks {shown}, which browsers have refused since 2020.",
        "Enable TLS 1.2 and 1.3 in the web server (nginx: ssl_protocols TLSv1.2 TLSv1.3; "
        "Apache: SSLProtocol -all +TLSv1.2 +TLSv1.3) and reload it.",
        {"version": version},
    )


def _chain_ok_finding(chain: list[x509.Certificate], ca_bundle: str | None) -> Finding:
    issuer = _subject_cn(chain[0].issuer) if chain else "?"
    return Finding(
        "cert.chain",
        "ok",
        f"The certificate chain is trusted (issued by {issuer}).",
        details={
            "trust_store": ca_bundle or "system",
            "served_chain": [c.subject.rfc4514_string() for c in chain],
        },
    )


def _chain_problem_finding(
    code: int,
    verify_message: str,
    chain: list[x509.Certificate],
    ca_bundle: str | None,
    now: dt.datetime,
    otherwise_ok: bool | None,
) -> Finding:
    """Explain a failed verification in words, using what the server actually sent."""
    details: dict[str, object] = {
        "verify_code": code,
        "verify_message": verify_message,
        "trust_store": ca_bundle or "system",
        "served_chain": [c.subject.rfc4514_string() for c in chain],
    }
    leaf = chain[0] if chain else None
    issuer = _subject_cn(leaf.issuer) if leaf is not None else "its issuer"
    store = f"the CA bundle {ca_bundle}" if ca_bundle else "this computer's trusted authorities"
    if otherwise_ok is not None:
        details["chain_otherwise_ok"] = otherwise_ok
    # OpenSSL X509_V_ERR_* codes, see openssl/x509_vfy.h.
    if code in (9, 10):
        expired = [c for c in chain if c.not_valid_after_utc < now]
        early = [c for c in chain if c.not_valid_before_utc > now]
        if code == 9 or (early and not expired):
            details["reason"] = "not-yet-valid"
            return Finding(
                "cert.chain",
                "problem",
                "Browsers reject the certificate because it is not valid yet.",
                "Check the server's clock (timedatectl) and that it serves the certificate "
                "you expect.",
                details,
            )
        details["reason"] = "expired"
        if expired and expired[0] is not leaf:
            who = f"The intermediate certificate {_subject_cn(expired[0].subject)!r}"
            fix = (
                "Install the current chain file (fullchain.pem) from mamoru's certificate "
                "directory and reload the web server."
            )
        else:
            who = "The certificate"
            fix = (
                "Renew the certificate (mamoru renew) and reload the web server; then find "
                "out why automatic renewal did not happen (mamoru status, the service log)."
            )
        when = f" on {_date(expired[0].not_valid_after_utc)}" if expired else ""
        extra = "" if otherwise_ok in (None, True) else " The chain has other faults as well."
        return Finding(
            "cert.chain",
            "problem",
            f"{who} expired{when}, so browsers refuse the site.{extra}",
            fix,
            details,
        )
    if code == 18 or (leaf is not None and len(chain) == 1 and leaf.issuer == leaf.subject):
        details["reason"] = "self-signed"
        return Finding(
            "cert.chain",
            "problem",
            "The certificate is self-signed: browsers warn every patient that the site is "
            "not safe.",
            "Serve a certificate from a public authority (the one mamoru obtains) instead of "
            "the self-signed placeholder, and reload the web server.",
            details,
        )
    if code in (2, 20, 21) and len(chain) == 1:
        details["reason"] = "incomplete-chain"
        return Finding(
            "cert.chain",
            "problem",
            f"The server sends only its own certificate, without the intermediate certificate "
            f"of {issuer!r} that links it to a trusted authority. Some browsers and phones "
            "will refuse the site.",
            "Point the web server at the full chain file (fullchain.pem), not the bare "
            "certificate (cert.pem), and reload it.",
            details,
        )
    if code in (2, 19, 20, 21):
        details["reason"] = "unknown-issuer"
        root = _subject_cn(chain[-1].issuer) if chain else issuer
        return Finding(
            "cert.chain",
            "problem",
            f"The certificate was issued by {root!r}, which is not among {store}.",
            "Use a certificate from a publicly trusted authority (or, for an internal "
            "authority, install its root certificate on every device and pass --ca-bundle).",
            details,
        )
    details["reason"] = "other"
    return Finding(
        "cert.chain",
        "problem",
        f"Browsers would reject the certificate: {verify_message}.",
        "Replace the certificate with one freshly issued by mamoru and reload the web server.",
        details,
    )


def _names_finding(host: str, leaf: x509.Certificate) -> Finding:
    names = _cert_names(leaf)
    details: dict[str, object] = {"host": host, "names": names}
    if hostname_matches(host, leaf):
        return Finding("cert.names", "ok", f"The certificate is valid for {host}.", details=details)
    if not names:
        listed = f"has no subjectAltName (only the old common name {_subject_cn(leaf.subject)!r})"
    else:
        shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        listed = f"is for {shown}"
    return Finding(
        "cert.names",
        "problem",
        f"The certificate {listed}, not {host}: browsers show a warning.",
        f"Make sure the web server uses the certificate that includes {host} for this site "
        f"(nginx server_name / Apache ServerName), or add {host} to the site's names in "
        "mamoru's configuration so the next certificate covers it.",
        details,
    )


def _expiry_finding(leaf: x509.Certificate, now: dt.datetime) -> Finding:
    not_before = leaf.not_valid_before_utc
    not_after = leaf.not_valid_after_utc
    lifetime = not_after - not_before
    left = not_after - now
    details: dict[str, object] = {
        "not_before": not_before.isoformat(),
        "not_after": not_after.isoformat(),
        "days_left": round(_days(left), 2),
        "lifetime_days": round(_days(lifetime), 2),
    }
    renew_fix = (
        "Automatic renewal should have replaced it by now: run mamoru renew, then "
        "check mamoru status and the service log for why it did not happen."
    )
    if left <= dt.timedelta(0):
        ago = -_days(left)
        return Finding(
            "cert.expiry",
            "problem",
            f"The certificate expired {_plural(int(ago), 'day')} ago (on {_date(not_after)}).",
            renew_fix,
            details,
        )
    if now < not_before:
        return Finding(
            "cert.expiry",
            "problem",
            f"The certificate is not valid until {_date(not_before)}.",
            "Check the server's clock (timedatectl).",
            details,
        )
    days = int(_days(left))
    message = f"The certificate expires in {_plural(days, 'day')} (on {_date(not_after)})."
    if left < lifetime / 6:
        return Finding(
            "cert.expiry", "problem", message + " That is very close.", renew_fix, details
        )
    if left < lifetime / 3:
        return Finding(
            "cert.expiry",
            "warning",
            message + " It should have been renewed already.",
            "Check that the mamoru service is running (mamoru status) and look at "
            "its log for failed renewals.",
            details,
        )
    return Finding("cert.expiry", "ok", message, details=details)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _matches_stored_finding(leaf: x509.Certificate, expected_pem: bytes) -> Finding:
    try:
        expected = x509.load_pem_x509_certificates(expected_pem)[0]
    except (ValueError, IndexError):
        return Finding(
            "cert.matches-stored",
            "warning",
            "The stored certificate could not be read, so it was not compared.",
            "Check the certificate file in mamoru's storage directory.",
            {},
        )
    details: dict[str, object] = {
        "served": _cert_summary(leaf),
        "stored": _cert_summary(expected),
    }
    served_der = leaf.public_bytes(serialization.Encoding.DER)
    if served_der == expected.public_bytes(serialization.Encoding.DER):
        return Finding(
            "cert.matches-stored",
            "ok",
            "The server serves the certificate mamoru installed.",
            details=details,
        )
    if leaf.not_valid_after_utc < expected.not_valid_after_utc:
        message = (
            f"The server still serves the old certificate (expires "
            f"{_date(leaf.not_valid_after_utc)}), not the one mamoru installed (expires "
            f"{_date(expected.not_valid_after_utc)})."
        )
    else:
        message = (
            "The server serves a different certificate from the one mamoru installed "
            f"(served expires {_date(leaf.not_valid_after_utc)}, stored expires "
            f"{_date(expected.not_valid_after_utc)})."
        )
    return Finding(
        "cert.matches-stored",
        "problem",
        message,
        "Reload the web server (systemctl reload nginx / apache2) and check that its "
        "configuration includes the certificate files mamoru writes.",
        details,
    )


# --------------------------------------------------------------------------------------------
# HSTS
# --------------------------------------------------------------------------------------------


def parse_hsts(value: str) -> dict[str, object]:
    """Parse a Strict-Transport-Security header value (RFC 6797).

    Returns ``{"max_age": int | None, "include_subdomains": bool, "preload": bool}``;
    ``max_age`` is None when the directive is missing or not a number (browsers then ignore
    the header).
    """
    max_age: int | None = None
    include_subdomains = False
    preload = False
    for directive in value.split(";"):
        name, _, arg = directive.strip().partition("=")
        name = name.strip().lower()
        arg = arg.strip().strip('"')
        if name == "max-age":
            max_age = int(arg) if arg.isdigit() else None
        elif name == "includesubdomains":
            include_subdomains = True
        elif name == "preload":
            preload = True
    return {"max_age": max_age, "include_subdomains": include_subdomains, "preload": preload}


def _hsts_finding(value: str | None) -> Finding:
    fix_add = (
        "Add the header to the HTTPS site, e.g. nginx: add_header "
        'Strict-Transport-Security "max-age=31536000" always; Apache: Header always '
        'set Strict-Transport-Security "max-age=31536000".'
    )
    if value is None:
        return Finding(
            "hsts",
            "warning",
            "The site does not tell browsers to always use HTTPS (no Strict-Transport-Security "
            "header), so a patient on a hostile Wi-Fi can be sent to a fake http:// copy.",
            fix_add,
            {"header": None},
        )
    details: dict[str, object] = {"header": value, **parse_hsts(value)}
    max_age = details["max_age"]
    if not isinstance(max_age, int):
        return Finding(
            "hsts",
            "warning",
            "The Strict-Transport-Security header has no valid max-age, so browsers ignore it.",
            fix_add,
            details,
        )
    if max_age < _ONE_DAY:
        return Finding(
            "hsts",
            "warning",
            f"Strict-Transport-Security is set, but for only {max_age} seconds "
            "(less than a day), so it protects almost nothing.",
            "Raise max-age to at least 31536000 (one year) once HTTPS works reliably.",
            details,
        )
    return Finding(
        "hsts",
        "ok",
        f"Browsers are told to use HTTPS for {_plural(max_age // _ONE_DAY, 'day')} "
        f"(max-age={max_age}).",
        details=details,
    )


# --------------------------------------------------------------------------------------------
# Mixed content
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InsecureReference:
    """One ``http://`` resource reference found in a page.

    ``active`` is True for content that can change the page (scripts, stylesheets, frames,
    plugins, form targets), which browsers block or flag as dangerous; False for passive media
    (images, audio, video), which browsers load with a warning or upgrade.
    """

    url: str
    tag: str
    attribute: str
    active: bool
    line: int


@dataclass(frozen=True)
class MixedContentScan:
    """What :func:`scan_mixed_content` found in one HTML document."""

    references: tuple[InsecureReference, ...]
    upgrade_insecure_requests: bool = False

    @property
    def active(self) -> list[InsecureReference]:
        return [r for r in self.references if r.active]

    @property
    def passive(self) -> list[InsecureReference]:
        return [r for r in self.references if not r.active]


_ACTIVE_LINK_RELS = frozenset({"stylesheet", "preload", "modulepreload", "prefetch"})
_PASSIVE_LINK_RELS = frozenset(
    {"icon", "apple-touch-icon", "apple-touch-icon-precomposed", "mask-icon"}
)
# (tag, attribute) -> active?
_URL_ATTRS: dict[tuple[str, str], bool] = {
    ("script", "src"): True,
    ("iframe", "src"): True,
    ("frame", "src"): True,
    ("object", "data"): True,
    ("embed", "src"): True,
    ("form", "action"): True,
    ("button", "formaction"): True,
    ("input", "formaction"): True,
    ("img", "src"): False,
    ("img", "srcset"): False,
    ("source", "src"): False,
    ("source", "srcset"): False,
    ("audio", "src"): False,
    ("video", "src"): False,
    ("video", "poster"): False,
    ("track", "src"): False,
}


# Elements whose content a browser treats as text, not markup (or, for noscript with scripting
# on, never renders). html.parser only knows this for script and style, so markup inside these
# is skipped here.
_TEXT_ELEMENTS = frozenset({"textarea", "title", "xmp", "noscript", "noembed", "noframes"})


class _MixedContentParser(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.base_href: str | None = None
        self.upgrade = False
        # (url as written, tag, attribute, active, line); resolved once <base> is known.
        self.raw: list[tuple[str, str, str, bool, int]] = []
        self._inside_text: str | None = None

    def handle_endtag(self, tag: str) -> None:
        if tag == self._inside_text:
            self._inside_text = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self._inside_text is not None:
            return
        if tag in _TEXT_ELEMENTS:
            self._inside_text = tag
            return
        values = {name.lower(): (value or "") for name, value in attrs}
        line = self.getpos()[0]
        if tag == "base" and self.base_href is None and "href" in values:
            # Only the first <base href> counts, and it applies to the whole document.
            self.base_href = values["href"].strip()
            return
        if tag == "meta":
            if values.get(
                "http-equiv", ""
            ).strip().lower() == "content-security-policy" and _csp_upgrades(
                values.get("content", "")
            ):
                self.upgrade = True
            return
        if tag == "link":
            self._link(values, line)
            return
        if tag == "input" and values.get("type", "").strip().lower() == "image":
            self._add(values.get("src"), tag, "src", False, line)
        for (t, attr), active in _URL_ATTRS.items():
            if t != tag or attr not in values:
                continue
            if attr == "srcset":
                for url in _srcset_urls(values[attr]):
                    self._add(url, tag, attr, active, line)
            else:
                self._add(values[attr], tag, attr, active, line)

    def _link(self, values: dict[str, str], line: int) -> None:
        rels = set(values.get("rel", "").lower().split())
        if rels & _ACTIVE_LINK_RELS:
            # A preload of an image or font is passive; of a script or style, active.
            as_ = values.get("as", "").strip().lower()
            active = "stylesheet" in rels or as_ in ("", "script", "style", "worker", "document")
            self._add(values.get("href"), "link", "href", active, line)
            if "imagesrcset" in values:
                for url in _srcset_urls(values["imagesrcset"]):
                    self._add(url, "link", "imagesrcset", False, line)
        elif rels & _PASSIVE_LINK_RELS or "shortcut" in rels:
            self._add(values.get("href"), "link", "href", False, line)

    def _add(self, url: str | None, tag: str, attr: str, active: bool, line: int) -> None:
        if url is None:
            return
        # Browsers strip leading/trailing ASCII whitespace from URL attributes.
        url = url.strip(" \t\n\r\f")
        if url:
            self.raw.append((url, tag, attr, active, line))


def _csp_upgrades(policy: str) -> bool:
    return any(
        d.strip().lower().split(" ")[0] == "upgrade-insecure-requests"
        for d in policy.split(";")
        if d.strip()
    )


def _srcset_urls(value: str) -> list[str]:
    """The URLs of a srcset attribute, following the HTML spec's candidate parsing."""
    urls: list[str] = []
    i, n = 0, len(value)
    while i < n:
        while i < n and (value[i].isspace() or value[i] == ","):
            i += 1
        start = i
        while i < n and not value[i].isspace():
            i += 1
        url = value[start:i]
        if url.endswith(","):
            url = url.rstrip(",")
        else:
            depth = 0
            while i < n:
                char = value[i]
                if char == "(":
                    depth += 1
                elif char == ")":
                    depth = max(depth - 1, 0)
                elif char == "," and depth == 0:
                    break
                i += 1
        if url:
            urls.append(url)
    return urls


def scan_mixed_content(document: str, page_url: str) -> MixedContentScan:
    """Find resource references in ``document`` that a browser would fetch over ``http://``.

    Relative URLs are resolved against the first ``<base href>`` (itself resolved against
    ``page_url``) or ``page_url``, so a ``<base href="http://...">`` makes relative references
    insecure too. Looks at script src, link rel=stylesheet/preload/icon href, img and source
    src/srcset, iframe/frame src, audio/video/track src, video poster, object data, embed src,
    form action and formaction, input type=image src. Plain links (``<a href>``) are
    navigation, not mixed content, and are ignored; so are inline CSS ``url(...)`` values.
    Each URL is reported once per (kind, tag, attribute), in document order. The scan notes
    ``<meta http-equiv="Content-Security-Policy" content="upgrade-insecure-requests">``.
    """
    parser = _MixedContentParser()
    parser.feed(document)
    parser.close()
    base = page_url
    if parser.base_href:
        base = urllib.parse.urljoin(page_url, parser.base_href)
    seen: set[tuple[str, str, str, bool]] = set()
    found: list[InsecureReference] = []
    for raw, tag, attr, active, line in parser.raw:
        try:
            url = urllib.parse.urljoin(base, raw)
        except ValueError:
            continue
        if urllib.parse.urlsplit(url).scheme.lower() != "http":
            continue
        key = (url, tag, attr, active)
        if key in seen:
            continue
        seen.add(key)
        found.append(InsecureReference(url, tag, attr, active, line))
    return MixedContentScan(tuple(found), parser.upgrade)


def mixed_content_finding(
    scan: MixedContentScan,
    *,
    truncated: bool = False,
    header_upgrade: bool = False,
    page_url: str = "",
) -> Finding:
    """The ``mixed-content`` finding for a scan.

    Active insecure content is a problem, passive only a warning. When the page asks browsers
    to upgrade insecure requests (CSP ``upgrade-insecure-requests`` in a header,
    ``header_upgrade``, or a meta tag), browsers fetch those URLs over https instead, so any
    references found are only a warning (they break if the other server has no https).
    """
    upgrade = header_upgrade or scan.upgrade_insecure_requests
    active = scan.active
    passive = scan.passive
    details: dict[str, object] = {
        "page": page_url,
        "active_count": len(active),
        "passive_count": len(passive),
        "active": [_ref_detail(r) for r in active[:MAX_LISTED]],
        "passive": [_ref_detail(r) for r in passive[:MAX_LISTED]],
        "upgrade_insecure_requests": upgrade,
        "truncated": truncated,
    }
    note = f" (only the first {PAGE_SIZE_CAP // (1024 * 1024)} MB were read)" if truncated else ""
    if not active and not passive:
        return Finding(
            "mixed-content",
            "ok",
            f"The page loads nothing over insecure http://{note}.",
            details=details,
        )
    examples = ", ".join(r.url for r in (active or passive)[:3])
    fix = (
        "Change these addresses to https:// (or to relative addresses) in the page or its "
        "theme/template; if the other server has no https, host the file on the clinic's "
        "own site."
    )
    if upgrade:
        return Finding(
            "mixed-content",
            "warning",
            f"The page refers to {_plural(len(active) + len(passive), 'http:// address')} "
            f"(e.g. {examples}); browsers upgrade them to https because of "
            f"upgrade-insecure-requests, and they break if that server has no https{note}.",
            fix,
            details,
        )
    if active:
        kinds = sorted({_KIND_WORDS.get(r.tag, r.tag) for r in active})
        return Finding(
            "mixed-content",
            "problem",
            f"The page loads {' and '.join(kinds)} over insecure http:// (e.g. {examples}); "
            f"browsers block these, so parts of the page break or forms send data "
            f"unencrypted{note}.",
            fix,
            details,
        )
    return Finding(
        "mixed-content",
        "warning",
        f"The page shows {_plural(len(passive), 'image or media file')} over insecure http:// "
        f"(e.g. {examples}); browsers mark the page as not fully secure{note}.",
        fix,
        details,
    )


_KIND_WORDS = {
    "script": "scripts",
    "link": "stylesheets",
    "iframe": "frames",
    "frame": "frames",
    "object": "plugins",
    "embed": "plugins",
    "form": "form submissions",
    "button": "form submissions",
    "input": "form submissions",
}


def _ref_detail(ref: InsecureReference) -> dict[str, object]:
    return {"url": ref.url, "tag": ref.tag, "attribute": ref.attribute, "line": ref.line}


def _is_html(content_type: str | None, body: bytes) -> bool:
    if content_type:
        media = content_type.split(";")[0].strip().lower()
        return media in ("text/html", "application/xhtml+xml")
    head = body[:1024].lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html"))


def _decode(body: bytes, content_type: str | None) -> str:
    charset = "utf-8"
    if content_type:
        match = re.search(r"charset=\"?([\w.:-]+)", content_type, re.IGNORECASE)
        if match:
            charset = match.group(1)
    try:
        return body.decode(charset, errors="replace")
    except LookupError:
        return body.decode("utf-8", errors="replace")


# --------------------------------------------------------------------------------------------
# The HTTPS side
# --------------------------------------------------------------------------------------------


def _check_https(
    target: _Target,
    address: tuple[str, int],
    ca_bundle: str | None,
    expected_cert_pem: bytes | None,
    timeout: float,
    now: dt.datetime,
) -> list[Finding]:
    # Several connections may be needed (diagnosis, page redirects); together they get a
    # bounded budget so a slow site cannot stretch the check indefinitely.
    budget = _Deadline(timeout * 3)
    where = f"https://{_authority(target.host, target.port, 443)}"
    via = {"address": f"{address[0]}:{address[1]}"}
    findings: list[Finding] = []

    verified = True
    verify_error: ssl.SSLCertVerificationError | None = None
    context = _verifying_context(ca_bundle)
    deadline = budget.sub(timeout)
    try:
        sock = _tls_connect(address, target.host, context, deadline)
    except ssl.SSLCertVerificationError as exc:
        verified = False
        verify_error = exc
        context = _unverified_context()
        deadline = budget.sub(timeout)
        try:
            sock = _tls_connect(address, target.host, context, deadline)
        except _NETWORK_ERRORS as again:
            return [_unreachable(where, again, deadline, via)]
    except ssl.SSLError as exc:
        if str(getattr(exc, "reason", "")) in _VERSION_REASONS:
            return _legacy_only(target, address, where, budget.sub(timeout), exc, via)
        return [_unreachable(where, exc, deadline, via)]
    except _NETWORK_ERRORS as exc:
        return [_unreachable(where, exc, deadline, via)]

    first: _Response | None = None
    page_error: BaseException | None = None
    try:
        version = sock.version()
        leaf_der = sock.getpeercert(binary_form=True)
        chain_der = _served_chain(sock) or ([leaf_der] if leaf_der else [])
        try:
            first = _exchange(
                sock,
                _authority(target.host, target.port, 443),
                target.path,
                deadline,
                read_body=True,
            )
        except _NETWORK_ERRORS as exc:
            page_error = exc
    finally:
        sock.close()

    if page_error is not None:
        reason, text = _describe_error(page_error, deadline, where)
        findings.append(
            Finding(
                "https.reachable",
                "problem",
                f"A secure connection was made, but {text} when asked for {target.path}.",
                "Check the web server's error log; the application behind it may be down or hung.",
                {**via, "reason": reason, "error": str(page_error)},
            )
        )
    elif first is not None:
        findings.append(_reachable_finding(first, where, via))
    findings.append(_tls_version_finding(version))

    chain = _load_certs(chain_der)
    leaf = chain[0] if chain else None
    if verified:
        findings.append(_chain_ok_finding(chain, ca_bundle))
    elif verify_error is not None:
        code = int(verify_error.verify_code or 0)
        otherwise_ok: bool | None = None
        if code in (9, 10) and not budget.expired:
            otherwise_ok = _verifies_ignoring_time(
                address, target.host, ca_bundle, budget.sub(timeout)
            )
        findings.append(
            _chain_problem_finding(
                code,
                str(verify_error.verify_message or verify_error),
                chain,
                ca_bundle,
                now,
                otherwise_ok,
            )
        )
    if leaf is not None:
        findings.append(_names_finding(target.host, leaf))
        findings.append(_expiry_finding(leaf, now))
        if expected_cert_pem is not None:
            findings.append(_matches_stored_finding(leaf, expected_cert_pem))

    if first is not None:
        findings.extend(_page_findings(target, address, first, context, budget, timeout))
    return findings


def _reachable_finding(first: _Response, where: str, via: dict[str, str]) -> Finding:
    details: dict[str, object] = {**via, "status": first.status}
    said = f"{first.status} {first.reason}".strip()
    if first.status >= 500:
        return Finding(
            "https.reachable",
            "problem",
            f"{where} answers, but with a server error ({said}).",
            "Check the web server's error log; the application behind it may be down.",
            details,
        )
    if first.status >= 400:
        return Finding(
            "https.reachable",
            "warning",
            f"{where} answers, but with an error page ({said}).",
            "Check that the address is right and the site's home page exists.",
            details,
        )
    return Finding(
        "https.reachable", "ok", f"{where} answers over HTTPS ({said}).", details=details
    )


def _unreachable(
    where: str, exc: BaseException, deadline: _Deadline, via: dict[str, str]
) -> Finding:
    reason, text = _describe_error(exc, deadline, where)
    fixes = {
        "timeout": "Check that the server is up and that a firewall is not silently dropping "
        "port 443; if it is overloaded, restart the web server.",
        "refused": "Start the web server (systemctl start nginx / apache2) and make sure it "
        "listens on port 443.",
        "dns": "Check the domain's DNS records (an A/AAAA record must point to the server).",
        "reset": "Check the web server's error log and any firewall or proxy in front of it.",
        "closed": "Check the web server's error log; the TLS configuration may be broken.",
        "tls": "Check the web server's TLS settings (certificate and key paths, listen ... "
        "ssl) and its error log.",
    }
    return Finding(
        "https.reachable",
        "problem",
        _sentence(text) + ".",
        fixes.get(reason, "Check that the server is up and reachable on port 443."),
        {**via, "reason": reason, "error": str(exc) or type(exc).__name__},
    )


def _legacy_only(
    target: _Target,
    address: tuple[str, int],
    where: str,
    deadline: _Deadline,
    original: ssl.SSLError,
    via: dict[str, str],
) -> list[Finding]:
    """The modern handshake failed on the protocol version: learn what the server speaks."""
    try:
        sock = _tls_connect(address, target.host, _unverified_context(legacy=True), deadline)
    except _NETWORK_ERRORS:
        return [
            _unreachable(where, original, deadline, via),
            _tls_version_finding(None),
        ]
    try:
        version = sock.version()
    finally:
        sock.close()
    return [
        Finding(
            "https.reachable",
            "problem",
            f"{where} only accepts outdated encryption, so browsers cannot open it.",
            "Enable TLS 1.2 and 1.3 in the web server and reload it.",
            {**via, "reason": "tls-version", "version": version},
        ),
        _tls_version_finding(version),
    ]


def _verifies_ignoring_time(
    address: tuple[str, int], host: str, ca_bundle: str | None, deadline: _Deadline
) -> bool | None:
    try:
        sock = _tls_connect(
            address, host, _verifying_context(ca_bundle, ignore_time=True), deadline
        )
    except ssl.SSLCertVerificationError:
        return False
    except _NETWORK_ERRORS:
        return None
    sock.close()
    return True


def _page_findings(
    target: _Target,
    address: tuple[str, int],
    first: _Response,
    context: ssl.SSLContext,
    budget: _Deadline,
    timeout: float,
) -> list[Finding]:
    """HSTS from the first answer, mixed content from the page the redirects lead to."""
    responses = [first]
    url = target.url
    response = first
    stopped: Finding | None = None
    while response.status in _REDIRECTS and response.header("Location"):
        location = urllib.parse.urljoin(url, response.header("Location") or "")
        parts = urllib.parse.urlsplit(location)
        if parts.scheme.lower() == "http":
            stopped = Finding(
                "mixed-content",
                "problem",
                f"The secure page {url} sends visitors back to insecure {location}.",
                "Fix the site's own address setting (e.g. the CMS 'site URL') to use https://, "
                "and remove the redirect to http://.",
                {"page": url, "redirect": location},
            )
            break
        if (
            not _same_host(parts.hostname, target.host)
            or (parts.port or 443) != target.port
            or parts.scheme.lower() != "https"
        ):
            stopped = Finding(
                "mixed-content",
                "ok",
                f"The page redirects to another site ({location}); that site was not scanned.",
                details={"page": url, "redirect": location, "scanned": False},
            )
            break
        if len(responses) > MAX_REDIRECTS:
            stopped = Finding(
                "mixed-content",
                "warning",
                f"The page redirected more than {MAX_REDIRECTS} times, so it was not scanned.",
                "Check the site's redirect rules for a loop.",
                {"page": url, "redirects": len(responses) - 1, "scanned": False},
            )
            break
        if budget.expired:
            break
        path = _request_target(parts.path or "/", parts.query)
        deadline = budget.sub(timeout)
        try:
            response = _https_get(address, target, path, context, deadline)
        except _NETWORK_ERRORS as exc:
            _reason, text = _describe_error(exc, deadline, location)
            stopped = Finding(
                "mixed-content",
                "warning",
                f"The page could not be scanned: {text}.",
                "Check that the page the site redirects to loads.",
                {"page": location, "scanned": False},
            )
            break
        url = location
        responses.append(response)

    hsts_value = next(
        (
            r.header("Strict-Transport-Security")
            for r in responses
            if r.header("Strict-Transport-Security") is not None
        ),
        None,
    )
    findings = [_hsts_finding(hsts_value)]
    if stopped is not None:
        findings.append(stopped)
    elif response.status in _REDIRECTS:
        findings.append(
            Finding(
                "mixed-content",
                "ok",
                "The page is a redirect without a target; nothing to scan.",
                details={"page": url, "scanned": False},
            )
        )
    elif not _is_html(response.header("Content-Type"), response.body):
        findings.append(
            Finding(
                "mixed-content",
                "ok",
                "The page is not HTML; nothing to scan for mixed content.",
                details={
                    "page": url,
                    "scanned": False,
                    "content_type": response.header("Content-Type"),
                },
            )
        )
    else:
        text = _decode(response.body, response.header("Content-Type"))
        header_upgrade = any(
            _csp_upgrades(v) for v in response.header_all("Content-Security-Policy")
        )
        findings.append(
            mixed_content_finding(
                scan_mixed_content(text, url),
                truncated=response.truncated,
                header_upgrade=header_upgrade,
                page_url=url,
            )
        )
    return findings


# --------------------------------------------------------------------------------------------
# The plain-HTTP side
# --------------------------------------------------------------------------------------------


def _check_http_redirect(target: _Target, address: tuple[str, int], timeout: float) -> Finding:
    budget = _Deadline(timeout * 2)
    expected = target.url
    url = f"http://{_authority(target.host, 80, 80)}{target.path}"
    hops: list[dict[str, object]] = []
    permanent = True
    path = target.path
    for _ in range(MAX_REDIRECTS + 1):
        deadline = budget.sub(timeout)
        try:
            response = _http_get(address, target.host, path, deadline)
        except _NETWORK_ERRORS as exc:
            reason, text = _describe_error(exc, deadline, url)
            return Finding(
                "http.redirect",
                "warning",
                f"{_sentence(text)}: patients who type the address without "
                "https:// get an error instead of the secure site.",
                "Open port 80 and redirect it to https:// (nginx: return 301 "
                "https://$host$request_uri;).",
                {"url": url, "reason": reason, "hops": hops},
            )
        location = response.header("Location")
        hops.append({"url": url, "status": response.status, "location": location})
        if response.status not in _REDIRECTS:
            break
        if not location:
            return Finding(
                "http.redirect",
                "problem",
                f"{url} answers {response.status} but says nowhere to go.",
                "Fix the redirect: return 301 https://$host$request_uri;",
                {"hops": hops},
            )
        permanent = permanent and response.status in _PERMANENT
        resolved = urllib.parse.urljoin(url, location)
        parts = urllib.parse.urlsplit(resolved)
        if parts.scheme.lower() == "http" and _same_host(parts.hostname, target.host):
            # Some sites normalise the path over http first; follow those hops.
            url = resolved
            path = _request_target(parts.path or "/", parts.query)
            continue
        return _judge_redirect(target, expected, resolved, permanent, hops)
    else:
        return Finding(
            "http.redirect",
            "problem",
            f"http://{target.host} redirects more than {MAX_REDIRECTS} times "
            "without reaching https:// (a redirect loop).",
            "Fix the port-80 redirect rules: return 301 https://$host$request_uri;",
            {"hops": hops},
        )

    status = hops[-1]["status"]
    assert isinstance(status, int)
    if 200 <= status < 300:
        return Finding(
            "http.redirect",
            "problem",
            f"{url} shows the site over plain, unencrypted HTTP instead of sending visitors "
            "to https://.",
            "Make the port-80 site redirect everything permanently: nginx: return 301 "
            "https://$host$request_uri; Apache: Redirect permanent / https://<site>/",
            {"hops": hops, "expected": expected},
        )
    return Finding(
        "http.redirect",
        "warning",
        f"{url} answers with {status} instead of redirecting to https://; patients who type "
        "the address without https:// see an error.",
        "Make the port-80 site redirect everything permanently: return 301 "
        "https://$host$request_uri;",
        {"hops": hops, "expected": expected},
    )


def _judge_redirect(
    target: _Target,
    expected: str,
    resolved: str,
    permanent: bool,
    hops: list[dict[str, object]],
) -> Finding:
    parts = urllib.parse.urlsplit(resolved)
    details: dict[str, object] = {
        "hops": hops,
        "expected": expected,
        "target": resolved,
        "permanent": permanent,
    }
    host = (parts.hostname or "").lower()
    if not _same_host(parts.hostname, target.host):
        if parts.scheme.lower() == "https" and _www_variant(host, target.host):
            return Finding(
                "http.redirect",
                "warning",
                f"http://{target.host} redirects to another name, {resolved}.",
                f"That is fine if {host} is the site's main name; run mamoru check on it too. "
                f"Otherwise redirect to https://{target.host} instead.",
                details,
            )
        return Finding(
            "http.redirect",
            "problem",
            f"http://{target.host} sends visitors to a different site: {resolved}.",
            f"Redirect to the same name over https: return 301 https://$host$request_uri; "
            f"(and check the server_name of the port-80 site for {target.host}).",
            details,
        )
    if parts.scheme.lower() != "https":
        return Finding(
            "http.redirect",
            "problem",
            f"http://{target.host} redirects to {resolved}, which is not https://.",
            "Redirect to https: return 301 https://$host$request_uri;",
            details,
        )
    same_port = (parts.port or 443) == target.port
    got_path = _request_target(parts.path or "/", parts.query)
    notes: list[str] = []
    if not same_port:
        notes.append(f"it goes to port {parts.port or 443} instead of {target.port}")
    if got_path != target.path:
        notes.append(f"it goes to {got_path} instead of the same page {target.path}")
    if not permanent:
        notes.append(
            "it is temporary (302/303/307), so browsers and search engines keep using http://"
        )
    if not notes:
        return Finding(
            "http.redirect",
            "ok",
            f"http://{target.host}{target.path} redirects permanently to {resolved}.",
            details=details,
        )
    return Finding(
        "http.redirect",
        "warning",
        f"http://{target.host}{target.path} redirects to https, but " + "; ".join(notes) + ".",
        "Use a permanent redirect that keeps the page: nginx: return 301 "
        "https://$host$request_uri; Apache: Redirect permanent / https://<site>/",
        details,
    )


def _check_acme_challenge(target: _Target, address: tuple[str, int], timeout: float) -> Finding:
    token = secrets.token_urlsafe(32)
    path = f"/.well-known/acme-challenge/{token}"
    url = f"http://{_authority(target.host, 80, 80)}{path}"
    deadline = _Deadline(timeout)
    try:
        response = _http_get(address, target.host, path, deadline)
    except _NETWORK_ERRORS as exc:
        reason, text = _describe_error(exc, deadline, f"http://{target.host}")
        return Finding(
            "http.acme-challenge",
            "warning",
            f"{_sentence(text)}. If this site renews its certificate with HTTP "
            "validation, renewals will fail.",
            "Open port 80 for the validation requests (the rest can redirect to https).",
            {"url": url, "reason": reason},
        )
    location = response.header("Location")
    details: dict[str, object] = {"url": url, "status": response.status, "location": location}
    if response.status in _REDIRECTS and location:
        resolved = urllib.parse.urljoin(url, location)
        details["target"] = resolved
        parts = urllib.parse.urlsplit(resolved)
        if _same_host(parts.hostname, target.host):
            return Finding(
                "http.acme-challenge",
                "ok",
                f"Validation requests are redirected to {resolved} on the same site; the "
                "certificate authority follows that, so HTTP validation still works.",
                details=details,
            )
        return Finding(
            "http.acme-challenge",
            "problem",
            f"Validation requests for {target.host} are redirected to another site "
            f"({resolved}), so HTTP validation will fail unless that site serves mamoru's "
            "files.",
            "Exempt /.well-known/acme-challenge/ from the redirect in the port-80 site and "
            "serve it from mamoru's webroot.",
            details,
        )
    if response.status >= 500:
        return Finding(
            "http.acme-challenge",
            "warning",
            f"Validation requests get a server error ({response.status}).",
            "Check the port-80 site's error log and its /.well-known/acme-challenge/ location.",
            details,
        )
    if response.status in _REDIRECTS:
        return Finding(
            "http.acme-challenge",
            "warning",
            f"Validation requests get a {response.status} redirect with no target.",
            "Serve /.well-known/acme-challenge/ from mamoru's webroot.",
            details,
        )
    said = (
        "not found (expected for a made-up file)"
        if response.status == 404
        else (f"{response.status} {response.reason}".strip())
    )
    return Finding(
        "http.acme-challenge",
        "ok",
        f"Validation requests reach {target.host} itself ({said}).",
        details=details,
    )


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


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
    target = _parse_target(url)
    if ca_bundle is not None:
        try:
            _verifying_context(ca_bundle)
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
        lambda: _check_https(target, https_address, ca_bundle, expected_cert_pem, timeout, when),
        lambda: [_check_http_redirect(target, http_address, timeout)],
        lambda: [_check_acme_challenge(target, http_address, timeout)],
    ]
    # The three sides are independent; running them side by side keeps a dead server from
    # costing three timeouts in a row.
    with ThreadPoolExecutor(max_workers=len(jobs), thread_name_prefix="mamoru-check") as pool:
        futures = [pool.submit(job) for job in jobs]
        collected = [f for future in futures for f in future.result()]
    order = {check: i for i, check in enumerate(CHECK_IDS)}
    collected.sort(key=lambda f: order.get(f.check, len(order)))
    return TargetReport(url=target.url, host=target.host, findings=collected)


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------

_MARKS: dict[str, str] = {"ok": "✓", "warning": "!", "problem": "✗"}


def render_table(reports: Sequence[TargetReport], *, width: int = 100) -> str:
    """A compact human-readable table: per target a header line, then one row per finding
    with a mark (✓ ok, ! warning, ✗ problem), the check id and the message, and the fix on
    an indented line below when there is one. Ends with a newline."""
    id_width = max((len(c) for c in CHECK_IDS), default=0) + 2
    indent = " " * (4 + id_width)
    lines: list[str] = []
    for report in reports:
        counts = {s: sum(1 for f in report.findings if f.status == s) for s in _MARKS}
        summary = (
            ", ".join(
                _plural(counts[s], label)
                for s, label in (("problem", "problem"), ("warning", "warning"))
                if counts[s]
            )
            or "all good"
        )
        lines.append(f"{report.url}  [{summary}]")
        for finding in report.findings:
            head = f"  {_MARKS[finding.status]} {finding.check:<{id_width}}"
            # Never split inside a word: header names and URLs must stay copyable.
            lines.extend(
                textwrap.wrap(
                    finding.message,
                    width=width,
                    initial_indent=head,
                    subsequent_indent=indent,
                    break_long_words=False,
                    break_on_hyphens=False,
                )
                or [head.rstrip()]
            )
            if finding.fix:
                lines.extend(
                    textwrap.wrap(
                        "Fix: " + finding.fix,
                        width=width,
                        initial_indent=indent,
                        subsequent_indent=indent,
                        break_long_words=False,
                        break_on_hyphens=False,
                    )
                )
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


def to_json(reports: Sequence[TargetReport]) -> dict[str, object]:
    """The reports as a JSON-ready dict with stable keys::

    {"worst": status, "targets": [{"url", "host", "worst",
      "findings": [{"check", "status", "message", "fix", "details"}]}]}
    """
    worst: Status = "ok"
    targets: list[dict[str, object]] = []
    for report in reports:
        if _RANK[report.worst] > _RANK[worst]:
            worst = report.worst
        targets.append(
            {
                "url": report.url,
                "host": report.host,
                "worst": report.worst,
                "findings": [
                    {
                        "check": f.check,
                        "status": f.status,
                        "message": f.message,
                        "fix": f.fix,
                        "details": _jsonable(f.details),
                    }
                    for f in report.findings
                ],
            }
        )
    return {"worst": worst, "targets": targets}


def _jsonable(value: object) -> object:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, dt.datetime):
        return value.isoformat()
    return str(value)


def exit_code(reports: Sequence[TargetReport], strict: bool) -> int:
    """2 if any finding is a problem; 1 if ``strict`` and any is a warning; else 0."""
    statuses = {f.status for r in reports for f in r.findings}
    if "problem" in statuses:
        return 2
    if strict and "warning" in statuses:
        return 1
    return 0
