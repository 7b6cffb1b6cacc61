"""Shared pytest fixtures.

Real test servers (launchers live in ``tests/servers/``; see each module's docstring):

=================  ========  ==========================================================
fixture            scope     gives
=================  ========  ==========================================================
``pebble``         function  a started :class:`~tests.servers.pebble.Pebble` with default
                             options (no nonce rejection, no authz reuse, Pebble's default
                             validity); ``pebble.http_port`` is a free port where the test
                             must serve http-01 (e.g. ``WebrootServer(root, pebble.http_port)``)
``pebble_factory`` function  ``pebble_factory(**Pebble_kwargs) -> Pebble`` (started;
                             ``http_port`` defaults to a free port)
``nginx_factory``  function  ``nginx_factory(**Nginx_kwargs) -> Nginx`` (NOT started: write
                             ``conf.d`` first, then ``.start()``)
``apache_factory`` function  ``apache_factory(listen=[...], **Apache_kwargs) -> Apache`` (NOT
                             started)
``a2c``            function  a started :class:`~tests.servers.acme2certifier.Acme2Certifier`
                             (ARI, profiles, cn_enforce); ``a2c.http_port`` is a free port
                             where the test serves http-01; needs 127.0.0.1:53 free
``a2c_factory``    function  ``a2c_factory(**Acme2Certifier_kwargs)`` (started), e.g.
                             ``renewal_force=True`` or ``ari_window=(-7200, -3600)``
=================  ========  ==========================================================

Everything binds 127.0.0.1 on free ports, keeps its files and logs under ``tmp_path`` and is
stopped by PID at teardown. A missing server binary is an error, never a skip: CI installs
them all.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# mamoru keeps validated configs in a cache directory (src/mamoru/config/cache.py); as root
# that is /var/cache/mamoru. The suite keeps its own, for every mamoru it runs (subprocesses
# inherit it), so it never writes there, and the cache is exercised by every test that runs a
# command twice on one config. Tests of the cache itself set their own.
os.environ.setdefault("MAMORU_CACHE_DIR", tempfile.mkdtemp(prefix="mamoru-test-cache-"))

from tests.servers.acme2certifier import Acme2Certifier
from tests.servers.apache import Apache
from tests.servers.nginx import Nginx
from tests.servers.pebble import Pebble
from tests.servers.ports import free_port


def _numbered(tmp_path: Path, stem: str, n: int) -> Path:
    return tmp_path / (stem if n == 0 else f"{stem}{n}")


@pytest.fixture
def pebble_factory(tmp_path: Path) -> Iterator[Callable[..., Pebble]]:
    """Start Pebbles with custom options; all are stopped at teardown."""
    started: list[Pebble] = []

    def make(**kwargs: Any) -> Pebble:
        kwargs.setdefault("http_port", free_port())
        workdir = kwargs.pop("workdir", None) or _numbered(tmp_path, "pebble", len(started))
        p = Pebble(workdir, **kwargs)
        started.append(p)
        return p.start()

    yield make
    for p in reversed(started):
        p.stop()


@pytest.fixture
def pebble(pebble_factory: Callable[..., Pebble]) -> Pebble:
    """A fresh Pebble (default options) per test; serve http-01 on ``pebble.http_port``."""
    return pebble_factory()


@pytest.fixture
def nginx_factory(tmp_path: Path) -> Iterator[Callable[..., Nginx]]:
    """Create nginx instances (unstarted); any still running are stopped at teardown."""
    made: list[Nginx] = []

    def make(**kwargs: Any) -> Nginx:
        workdir = kwargs.pop("workdir", None) or _numbered(tmp_path, "nginx", len(made))
        n = Nginx(workdir, **kwargs)
        made.append(n)
        return n

    yield make
    for n in reversed(made):
        n.stop()


@pytest.fixture
def apache_factory(tmp_path: Path) -> Iterator[Callable[..., Apache]]:
    """Create Apache instances (unstarted); any still running are stopped at teardown.

    Serve files from ``apache.docroot`` (children run as www-data; see tests/servers/apache.py).
    """
    made: list[Apache] = []

    def make(**kwargs: Any) -> Apache:
        workdir = kwargs.pop("workdir", None) or _numbered(tmp_path, "apache", len(made))
        a = Apache(workdir, **kwargs)
        made.append(a)
        return a

    yield make
    for a in reversed(made):
        a.stop()


@pytest.fixture
def a2c_factory(tmp_path: Path) -> Iterator[Callable[..., Acme2Certifier]]:
    """Start acme2certifier instances with custom options; stopped at teardown.

    Only one at a time can use the default ``dns_port=53``; pass ``dns_port=0`` for more.
    """
    started: list[Acme2Certifier] = []

    def make(**kwargs: Any) -> Acme2Certifier:
        kwargs.setdefault("http_port", free_port())
        workdir = kwargs.pop("workdir", None) or _numbered(tmp_path, "a2c", len(started))
        a = Acme2Certifier(workdir, **kwargs)
        started.append(a)
        return a.start()

    yield make
    for a in reversed(started):
        a.stop()


@pytest.fixture
def a2c(a2c_factory: Callable[..., Acme2Certifier]) -> Acme2Certifier:
    """A fresh acme2certifier (defaults) per test; serve http-01 on ``a2c.http_port``."""
    return a2c_factory()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the secret scan last, so it sees the files and output of every other test."""
    items.sort(key=lambda item: "test_zz_secret_scan" in item.nodeid)
