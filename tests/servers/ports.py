"""Loopback port helpers for the test-server launchers.

Every launcher in :mod:`tests.servers` binds ``127.0.0.1`` only, on ports picked here.

``free_port()`` asks the kernel for an unused port (bind to port 0) and releases it at once,
so there is a small window in which another process could take it; the launchers start their
server right after picking and fail loudly (``wait_for_port`` times out) if that ever happens.

The kernel may give the same port to two binds in a row once the first is released, so a test
that picks two ports before starting anything (an HTTP and an HTTPS port) could get one port
twice. ``free_port()`` therefore never returns a port it has already returned in this process.
"""

from __future__ import annotations

import errno
import socket
import time

LOOPBACK = "127.0.0.1"

_HANDED_OUT: set[int] = set()


def free_port(*, udp: bool = False) -> int:
    """Return a TCP port on 127.0.0.1 that is free right now.

    With ``udp=True`` the same port number is also checked free for UDP (for DNS servers,
    which listen on both). A port is never returned twice by one process.
    """
    for _ in range(500):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((LOOPBACK, 0))
            port = int(tcp.getsockname()[1])
        if port in _HANDED_OUT or (udp and not udp_port_is_free(port)):
            continue
        _HANDED_OUT.add(port)
        return port
    kind = "TCP and UDP" if udp else "TCP"
    raise RuntimeError(f"could not find a new port free for {kind} on 127.0.0.1")


def tcp_port_is_free(port: int, host: str = LOOPBACK) -> bool:
    """True when ``host:port`` can be bound for TCP right now (SO_REUSEADDR like servers)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def udp_port_is_free(port: int, host: str = LOOPBACK) -> bool:
    """True when ``host:port`` can be bound for UDP right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def port_is_open(host: str, port: int, timeout: float = 0.2) -> bool:
    """True when a TCP connection to ``host:port`` succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for_port(host: str, port: int, timeout: float = 10.0, *, proc=None) -> None:
    """Block until ``host:port`` accepts TCP connections.

    ``proc`` (a ``subprocess.Popen``) is polled too: if the server process exits first, fail at
    once instead of waiting out the timeout. Raises ``TimeoutError`` / ``RuntimeError``.
    """
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        if port_is_open(host, port):
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(
                f"process {proc.args!r} exited with {proc.returncode} before "
                f"{host}:{port} accepted connections"
            )
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{host}:{port} did not accept connections within {timeout}s")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)
