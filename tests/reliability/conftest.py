"""Fixtures and helpers for the reliability and security suite (issue 6).

=================  ========  ==========================================================
fixture            scope     gives
=================  ========  ==========================================================
``proxied``        function  a started Pebble behind a started :class:`FaultProxy`
                             (``.pebble``, ``.proxy``, ``.directory_url``, ``.ca_bundle``)
``live_nginx``     function  ``live_nginx(live_dir, site, names) -> port``: a real nginx
                             serving ``live/<site>/fullchain.pem`` + ``privkey.pem`` over
                             TLS on a free loopback port (what "the site keeps serving its
                             certificate" is checked against)
=================  ========  ==========================================================
"""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from tests.servers.fault_proxy import FaultProxy
from tests.servers.nginx import Nginx
from tests.servers.pebble import Pebble
from tests.servers.ports import free_port


@dataclass
class Proxied:
    pebble: Pebble
    proxy: FaultProxy

    @property
    def directory_url(self) -> str:
        return self.proxy.url("/dir")

    @property
    def ca_bundle(self) -> str:
        return self.proxy.ca_bundle


@pytest.fixture
def proxied(tmp_path: Path, pebble_factory: Callable[..., Pebble]) -> Iterator[Proxied]:
    pebble = pebble_factory()
    with FaultProxy(tmp_path / "proxy", upstream=pebble.base_url,
                    upstream_ca=pebble.ca_bundle, timeout=10) as proxy:
        yield Proxied(pebble, proxy)


@pytest.fixture
def live_nginx(nginx_factory: Callable[..., Nginx]) -> Callable[[Path, str, list[str]], int]:
    def start(live_dir: Path, site: str, names: list[str]) -> int:
        port = free_port()
        nginx = nginx_factory()
        nginx.write_conf(site, f"""
server {{
    listen 127.0.0.1:{port} ssl;
    server_name {' '.join(names)};
    ssl_certificate {live_dir / site / 'fullchain.pem'};
    ssl_certificate_key {live_dir / site / 'privkey.pem'};
    location / {{ return 200 "ok\\n"; }}
}}
""")
        nginx.start(wait_ports=(port,))
        return port

    return start


def served_serial(port: int, name: str, timeout: float = 5.0) -> str:
    """The serial (hex) of the leaf certificate 127.0.0.1:`port` serves for SNI `name`."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw, \
            context.wrap_socket(raw, server_hostname=name) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return format(x509.load_der_x509_certificate(der).serial_number, "x")


def read_state(tmp_path: Path, site: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        (tmp_path / "state" / "sites" / site / "state.json").read_text())
    return data


def read_events(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "log" / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def standalone_site(names: list[str], port: int, **extra: Any) -> dict[str, Any]:
    return {"domains": names, "challenge": {"standalone": f"127.0.0.1:{port}"}, **extra}
