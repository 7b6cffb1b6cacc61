"""mamoru.service.sdnotify against a real AF_UNIX datagram socket standing in for systemd's.

Each test binds its own receiving socket (a path under tmp_path, or an abstract name) and
asserts the exact bytes systemd would read.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mamoru.service import sdnotify
from mamoru.service.sdnotify import Notifier

RECV_TIMEOUT = 5.0


class Receiver:
    """The systemd side: a bound SOCK_DGRAM socket that records what arrives."""

    def __init__(self, address: str) -> None:
        self.notify_socket = address  # the $NOTIFY_SOCKET value
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        bind_to = "\0" + address[1:] if address.startswith("@") else address
        self.sock.bind(bind_to)
        self.sock.settimeout(RECV_TIMEOUT)

    def recv(self) -> bytes:
        return self.sock.recv(65536)

    def assert_empty(self) -> None:
        self.sock.settimeout(0.05)
        try:
            with pytest.raises(TimeoutError):
                self.sock.recv(65536)
        finally:
            self.sock.settimeout(RECV_TIMEOUT)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def path_receiver(tmp_path: Path) -> Iterator[Receiver]:
    receiver = Receiver(str(tmp_path / "notify"))
    yield receiver
    receiver.close()


@pytest.fixture
def abstract_receiver() -> Iterator[Receiver]:
    receiver = Receiver(f"@mamoru-test-{os.getpid()}-{secrets.token_hex(8)}")
    yield receiver
    receiver.close()


@pytest.fixture(params=["path", "abstract"])
def receiver(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Receiver]:
    if request.param == "path":
        address = str(tmp_path / "notify")
    else:
        address = f"@mamoru-test-{os.getpid()}-{secrets.token_hex(8)}"
    receiver = Receiver(address)
    yield receiver
    receiver.close()


def notifier_for(receiver: Receiver, **extra: str) -> Notifier:
    return Notifier({"NOTIFY_SOCKET": receiver.notify_socket, **extra})


# -- messages ---------------------------------------------------------------------------------


def test_ready(receiver: Receiver) -> None:
    notifier = notifier_for(receiver)
    assert notifier.enabled
    assert notifier.ready() is True
    assert receiver.recv() == b"READY=1"


def test_ready_with_status(receiver: Receiver) -> None:
    assert notifier_for(receiver).ready("watching 3 sites") is True
    assert receiver.recv() == b"READY=1\nSTATUS=watching 3 sites"


def test_status(receiver: Receiver) -> None:
    assert notifier_for(receiver).status("renewing clinic-a (1 of 2)") is True
    assert receiver.recv() == b"STATUS=renewing clinic-a (1 of 2)"


def test_status_is_utf8(receiver: Receiver) -> None:
    notifier_for(receiver).status("証明書を更新中")
    assert receiver.recv() == "STATUS=証明書を更新中".encode()


def test_status_cannot_inject_assignments(receiver: Receiver) -> None:
    notifier_for(receiver).status("broken\nREADY=1\r\nWATCHDOG=1\rx\0y")
    assert receiver.recv() == b"STATUS=broken READY=1 WATCHDOG=1 x y"


def test_watchdog(receiver: Receiver) -> None:
    assert notifier_for(receiver).watchdog() is True
    assert receiver.recv() == b"WATCHDOG=1"


def test_stopping(receiver: Receiver) -> None:
    notifier = notifier_for(receiver)
    assert notifier.stopping() is True
    assert notifier.stopping("finishing clinic-a") is True
    assert receiver.recv() == b"STOPPING=1"
    assert receiver.recv() == b"STOPPING=1\nSTATUS=finishing clinic-a"


def test_reloading_carries_monotonic_usec(receiver: Receiver) -> None:
    notifier = notifier_for(receiver)
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert notifier.reloading() is True
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    match = re.fullmatch(rb"RELOADING=1\nMONOTONIC_USEC=(\d+)", receiver.recv())
    assert match, "expected exactly RELOADING=1 and MONOTONIC_USEC="
    assert before <= int(match.group(1)) <= after


def test_reloading_with_status(receiver: Receiver) -> None:
    notifier_for(receiver).reloading("re-reading /etc/mamoru/config.yaml")
    message = receiver.recv()
    assert re.fullmatch(
        rb"RELOADING=1\nMONOTONIC_USEC=\d+\nSTATUS=re-reading /etc/mamoru/config.yaml", message
    )


def test_many_messages_in_order(path_receiver: Receiver) -> None:
    notifier = notifier_for(path_receiver)
    notifier.ready()
    notifier.watchdog()
    notifier.status("ok")
    notifier.stopping()
    got = [path_receiver.recv() for _ in range(4)]
    assert got == [b"READY=1", b"WATCHDOG=1", b"STATUS=ok", b"STOPPING=1"]


def test_sender_credentials_are_the_main_pid_from_any_thread(path_receiver: Receiver) -> None:
    # NotifyAccess=main accepts a message only when the kernel-attached sender PID is the main
    # PID; a ping from the watchdog thread must carry the process's PID, not a thread id.
    path_receiver.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    notifier = notifier_for(path_receiver)
    thread = threading.Thread(target=notifier.watchdog)
    thread.start()
    thread.join()
    data, ancillary, _flags, _addr = path_receiver.sock.recvmsg(
        1024, socket.CMSG_SPACE(struct.calcsize("3i"))
    )
    assert data == b"WATCHDOG=1"
    creds = [d for level, kind, d in ancillary
             if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS]
    assert creds, "the kernel attached no credentials"
    pid, uid, _gid = struct.unpack("3i", creds[0][: struct.calcsize("3i")])
    assert (pid, uid) == (os.getpid(), os.getuid())


# -- disabled ------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [None, "", "@", "relative/notify", "vsock:2:1234"])
def test_unusable_or_absent_socket_disables_every_call(
    value: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    environ = {} if value is None else {"NOTIFY_SOCKET": value}
    created: list[object] = []
    real_socket = socket.socket

    def spy(*args: object, **kwargs: object) -> socket.socket:
        created.append(args)
        return real_socket(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr("mamoru.service.sdnotify.socket.socket", spy)
    notifier = Notifier(environ)
    assert not notifier.enabled
    assert notifier.ready("x") is False
    assert notifier.status("x") is False
    assert notifier.watchdog() is False
    assert notifier.stopping() is False
    assert notifier.reloading() is False
    notifier.close()
    assert created == [], "a disabled notifier must not even create a socket"


def test_default_environment_is_os_environ(
    path_receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", path_receiver.notify_socket)
    Notifier().ready()
    assert path_receiver.recv() == b"READY=1"


def test_no_notify_socket_in_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert Notifier().ready() is False


# -- failures never raise ----------------------------------------------------------------------


def test_missing_socket_path_logs_at_debug_and_returns_false(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    assert notifier.enabled
    with caplog.at_level(logging.DEBUG, logger="mamoru.service.sdnotify"):
        assert notifier.ready() is False
        assert notifier.watchdog() is False
    records = [r for r in caplog.records if r.name == "mamoru.service.sdnotify"]
    assert len(records) == 2
    assert all(r.levelno == logging.DEBUG for r in records)
    assert "READY=1" in records[0].getMessage()


def test_receiver_gone_then_back(tmp_path: Path) -> None:
    address = str(tmp_path / "notify")
    receiver = Receiver(address)
    notifier = Notifier({"NOTIFY_SOCKET": address})
    assert notifier.watchdog() is True
    assert receiver.recv() == b"WATCHDOG=1"
    receiver.close()
    os.unlink(address)
    assert notifier.watchdog() is False  # no exception while systemd is away
    # PID 1 re-executed: a new socket at the same path gets the next message.
    receiver = Receiver(address)
    try:
        assert notifier.watchdog() is True
        assert receiver.recv() == b"WATCHDOG=1"
    finally:
        receiver.close()


def test_full_receiver_times_out_instead_of_hanging(
    path_receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Nobody reads: once the receive queue is full, sends block. They must give up quickly.
    monkeypatch.setattr(sdnotify, "SEND_TIMEOUT_SECONDS", 0.2)
    notifier = notifier_for(path_receiver)
    assert notifier.status("first") is True
    for _ in range(10_000):
        started = time.monotonic()
        if not notifier.status("x" * 1000):
            break
    else:
        pytest.fail("10000 unread messages were all accepted: the queue never filled")
    elapsed = time.monotonic() - started
    assert 0.1 <= elapsed < 2.0, f"a blocked send took {elapsed:.2f}s"
    assert path_receiver.recv() == b"STATUS=first"


def test_socket_creation_failure_returns_false(
    path_receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # E.g. RestrictAddressFamilies= without AF_UNIX: socket() itself fails.
    def refuse(*args: object, **kwargs: object) -> socket.socket:
        raise OSError(97, "Address family not supported by protocol")

    monkeypatch.setattr("mamoru.service.sdnotify.socket.socket", refuse)
    assert notifier_for(path_receiver).ready() is False


def test_close_then_send_reopens(path_receiver: Receiver) -> None:
    notifier = notifier_for(path_receiver)
    notifier.ready()
    notifier.close()
    notifier.close()
    assert notifier.watchdog() is True
    assert [path_receiver.recv(), path_receiver.recv()] == [b"READY=1", b"WATCHDOG=1"]


# -- threads -----------------------------------------------------------------------------------


def test_concurrent_senders_deliver_every_message_intact(path_receiver: Receiver) -> None:
    notifier = notifier_for(path_receiver)
    threads_n, per_thread = 8, 50
    expected = {f"STATUS=t{t}-m{m}".encode() for t in range(threads_n) for m in range(per_thread)}
    received: list[bytes] = []

    def drain() -> None:
        # Keep reading so senders never wait on a full queue (max_dgram_qlen is small).
        while len(received) < len(expected):
            received.append(path_receiver.recv())

    def send(t: int) -> None:
        for m in range(per_thread):
            assert notifier.status(f"t{t}-m{m}") is True

    reader = threading.Thread(target=drain)
    reader.start()
    senders = [threading.Thread(target=send, args=(t,)) for t in range(threads_n)]
    for thread in senders:
        thread.start()
    for thread in senders:
        thread.join()
    reader.join(timeout=10)
    assert not reader.is_alive()
    assert sorted(received) == sorted(expected)
    path_receiver.assert_empty()


def test_concurrent_close_and_send_never_raise(path_receiver: Receiver) -> None:
    notifier = notifier_for(path_receiver)
    errors: list[BaseException] = []
    stop = threading.Event()

    def drain() -> None:
        path_receiver.sock.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                path_receiver.sock.recv(1024)

    def hammer(action: str) -> None:
        try:
            for _ in range(300):
                notifier.close() if action == "close" else notifier.watchdog()
        except BaseException as error:  # pragma: no cover - the failure being tested for
            errors.append(error)

    reader = threading.Thread(target=drain)
    reader.start()
    workers = [threading.Thread(target=hammer, args=(a,)) for a in ("close", "send", "send")]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    stop.set()
    reader.join()
    assert errors == []


# -- watchdog_interval ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"WATCHDOG_USEC": "120000000"}, 120.0),
        ({"WATCHDOG_USEC": "1500000"}, 1.5),
        ({"WATCHDOG_USEC": "120000000", "WATCHDOG_PID": str(os.getpid())}, 120.0),
        ({"WATCHDOG_USEC": "120000000", "WATCHDOG_PID": "1"}, None),  # inherited: not ours
        ({"WATCHDOG_USEC": "120000000", "WATCHDOG_PID": "abc"}, None),
        ({"WATCHDOG_USEC": "120000000", "WATCHDOG_PID": ""}, 120.0),  # empty = unset
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "2m"}, None),
        ({"WATCHDOG_USEC": ""}, None),
        ({"WATCHDOG_PID": str(os.getpid())}, None),
        ({}, None),
    ],
)
def test_watchdog_interval(environ: dict[str, str], expected: float | None) -> None:
    assert Notifier(environ).watchdog_interval() == expected


def test_watchdog_interval_reads_os_environ_at_call_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    notifier = Notifier()
    assert notifier.watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_USEC", "120000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert notifier.watchdog_interval() == 120.0


def test_watchdog_interval_does_not_need_a_notify_socket() -> None:
    # Same as sd_watchdog_enabled(3): the interval is about the watchdog, not the socket.
    assert Notifier({"WATCHDOG_USEC": "60000000"}).watchdog_interval() == 60.0


def test_environ_mapping_is_copied() -> None:
    environ = {"WATCHDOG_USEC": "60000000"}
    notifier = Notifier(environ)
    environ["WATCHDOG_USEC"] = "0"
    assert notifier.watchdog_interval() == 60.0
