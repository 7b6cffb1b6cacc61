"""Verifying TLS client contexts whose system roots are read only when a handshake needs one.

`ssl.create_default_context()` parses the whole system bundle (Debian's
/etc/ssl/certs/ca-certificates.crt, ~140 roots) in every process that makes one: about 20 ms
and 1.5 MB, though a process talks to one or two servers. OpenSSL can instead be pointed at the
hashed certificate directory (`<subject hash>.0` links, made by `openssl rehash` and Debian's
update-ca-certificates from the same roots as the bundle): it then reads the one root a chain
needs, by its subject's hash, while verifying. That is used when it exists; otherwise (or when
SSL_CERT_FILE names a bundle explicitly) the roots are loaded as `create_default_context()`
loads them.

Verification is never optional here: every context checks the chain and the host name.
"""

from __future__ import annotations

import os
import re
import ssl

# OpenSSL's names for a hashed directory's entries: 8 hex digits of the subject hash, a dot
# and a sequence number (CRLs are `.r0`, not looked for).
_HASHED = re.compile(r"[0-9a-f]{8}\.[0-9]+")


def client_context(ca_bundle: str | None = None) -> ssl.SSLContext:
    """A client context that verifies the server's chain and host name (TLS 1.2 or newer).

    Trust: only the PEM roots in `ca_bundle` when it is given (raises OSError or ssl.SSLError
    if it cannot be read or holds none), else the system's roots (`load_system_roots`).
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca_bundle is not None:
        context.load_verify_locations(cafile=ca_bundle)
    else:
        load_system_roots(context)
    return context


def system_trust_context() -> ssl.SSLContext:
    """`client_context()` with the system's roots."""
    return client_context(None)


def load_system_roots(context: ssl.SSLContext) -> None:
    """Make `context` trust the system's roots, reading each one only when a chain needs it.

    The OpenSSL default directory (SSL_CERT_DIR when set) is used alone when it holds hashed
    links; with SSL_CERT_FILE set, or no such directory, `load_default_certs()` (which parses
    the default bundle at once, and honours both variables) as before.
    """
    paths = ssl.get_default_verify_paths()
    capath = paths.capath  # None unless it is a directory
    if paths.openssl_cafile_env not in os.environ and capath and _has_hash_links(capath):
        context.load_verify_locations(capath=capath)
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)


def _has_hash_links(directory: str) -> bool:
    try:
        with os.scandir(directory) as entries:
            return any(_HASHED.fullmatch(entry.name) for entry in entries)
    except OSError:  # unreadable: the other way reports the problem, if any
        return False
