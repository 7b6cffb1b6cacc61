"""The test harness's port picker: two picks never give the same port."""

from __future__ import annotations

import socket
from typing import ClassVar

import pytest
from tests.servers import ports


class _ScriptedSocket:
    """A TCP socket whose kernel-chosen port comes from a script."""

    script: ClassVar[list[int]] = []

    def __init__(self, *args: object) -> None:
        self.port = 0

    def __enter__(self) -> _ScriptedSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def bind(self, address: tuple[str, int]) -> None:
        self.port = self.script.pop(0)

    def getsockname(self) -> tuple[str, int]:
        return (ports.LOOPBACK, self.port)


def test_the_kernel_repeating_a_port_does_not_repeat_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # The kernel may give a port again once its first bind is released: CI once got
    # https == http == 43085 from two picks in a row.
    monkeypatch.setattr(ports, "_HANDED_OUT", set())
    monkeypatch.setattr(_ScriptedSocket, "script", [40001, 40001, 40001, 40002])
    monkeypatch.setattr(ports.socket, "socket", _ScriptedSocket)
    assert [ports.free_port(), ports.free_port()] == [40001, 40002]


def test_real_picks_are_distinct_and_bindable() -> None:
    picked = [ports.free_port() for _ in range(200)]
    assert len(set(picked)) == len(picked)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((ports.LOOPBACK, picked[-1]))
