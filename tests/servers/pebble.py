"""Pebble (Let's Encrypt's test ACME server) plus pebble-challtestsrv as its DNS, on loopback.

Usage::

    with Pebble(tmp_path, http_port=free_port()) as pebble:
        client = acme_client(pebble.directory_url, verify=pebble.ca_bundle)
        ...
        root = pebble.root_pem()          # issuing root, changes at every start

What it runs (Debian package ``pebble`` 2.4.0):

* ``pebble-challtestsrv`` with its own http-01/https-01/tls-alpn-01 responders switched off,
  DNS on ``127.0.0.1:<free>`` (TCP+UDP) answering ``A 127.0.0.1`` for every name (no AAAA), and
  its management API on ``127.0.0.1:<free>`` (``add_a``/``set_txt``... below, for dns-01 tests).
* ``pebble -config <workdir>/pebble-config.json -dnsserver 127.0.0.1:<dns> -strict=false`` with
  ``PEBBLE_VA_NOSLEEP=1``, ``PEBBLE_WFE_NONCEREJECT=<nonce_reject>``,
  ``PEBBLE_AUTHZREUSE=<authz_reuse>``. Its config JSON nests everything under a top-level
  ``"pebble"`` key (Go decodes keys case-insensitively; we write the documented camelCase).
  Pebble dials ``127.0.0.1:<http_port>`` for http-01 (any name resolves to 127.0.0.1).

Pebble's own HTTPS listener gets a certificate from a throwaway CA made here: trust it with
``.ca_bundle``. The *issuing* hierarchy is Pebble's (``root_pem()``/``intermediate_pem()``).

Logs: ``<workdir>/pebble.log`` and ``<workdir>/challtestsrv.log``. Pebble logs one line per
request, ``"<METHOD> <path> -> calling handler()"`` (a newOrder request is
``POST /order-plz -> calling handler()``, also when refused for a bad nonce), then
``Added order "<id>" to the db`` for each order it creates and
``Issued certificate serial <hex> for order <id>`` for each certificate.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from types import TracebackType

import requests

from .ports import LOOPBACK, free_port, wait_for_port
from .process import ServerError, require_binary, spawn, stop_process, tail
from .tls import make_ca, make_leaf

PEBBLE_BIN = "/usr/bin/pebble"
CHALLTESTSRV_BIN = "/usr/bin/pebble-challtestsrv"

#: Pebble logs this for every request to the newOrder endpoint (accepted or not).
NEW_ORDER_LOG_RE = re.compile(r"POST /order-plz -> calling handler\(\)")
#: And this once an order object exists: exactly one per created order.
ORDER_CREATED_LOG_RE = re.compile(r'Added order "[^"]+" to the db')
#: One per issued certificate.
ISSUED_LOG_RE = re.compile(r"Issued certificate serial [0-9a-f]+ for order")


class Pebble:
    """Pebble ACME server + challtestsrv DNS, both on 127.0.0.1, as a context manager.

    Args:
        workdir: directory for config, TLS files and logs (created if missing).
        nonce_reject: percentage of valid nonces Pebble rejects with badNonce (Pebble's own
            default is 5; ours is 0 so tests are deterministic unless they ask for chaos).
        validity_seconds: ``certificateValidityPeriod`` (seconds); None = Pebble's default
            (about 5 years).
        eab_keys: ``{kid: base64url HMAC key}``; when given, EAB is *required*.
        http_port: the port Pebble connects to on 127.0.0.1 for http-01 (required: the test
            runs its webroot server / nginx / Apache there).
        authz_reuse: percentage of new orders that reuse a valid authorization (Pebble default
            50; ours 0 so every order needs a fresh challenge).
        tls_port: the port Pebble dials for tls-alpn-01 (free port by default; unused by the
            ``acme`` library, which has no tls-alpn-01).
        extra_env: more environment for pebble (e.g. ``{"PEBBLE_CHAIN_LENGTH": "3"}``).
        dns_server: ``host:port`` Pebble resolves every name through (``-dnsserver``), e.g. a
            test BIND, so dns-01 is validated against that server's records; None (default) =
            challtestsrv's DNS. challtestsrv runs either way (its management API stays usable).
    """

    def __init__(
        self,
        workdir: str | os.PathLike[str],
        *,
        nonce_reject: int = 0,
        validity_seconds: int | None = None,
        eab_keys: dict[str, str] | None = None,
        http_port: int,
        authz_reuse: int = 0,
        tls_port: int | None = None,
        extra_env: dict[str, str] | None = None,
        dns_server: str | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.nonce_reject = int(nonce_reject)
        self.validity_seconds = validity_seconds
        self.eab_keys = dict(eab_keys) if eab_keys else None
        self.http_port = int(http_port)
        self.authz_reuse = int(authz_reuse)
        self.tls_port = tls_port
        self.extra_env = dict(extra_env or {})
        self.dns_server = dns_server

        self.listen_port: int | None = None
        self.management_port: int | None = None
        self.dns_port: int | None = None
        self.challtestsrv_management_port: int | None = None
        self.config_path = self.workdir / "pebble-config.json"
        self.ca_bundle = str(self.workdir / "pebble-listener-ca.pem")
        self.log_path = self.workdir / "pebble.log"
        self.challtestsrv_log_path = self.workdir / "challtestsrv.log"
        self._pebble = None
        self._challtestsrv = None

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> Pebble:
        """Start challtestsrv, then Pebble; return once the directory answers."""
        if self._pebble is not None:
            raise ServerError("Pebble already started")
        pebble_bin = require_binary(PEBBLE_BIN, "pebble")
        challtestsrv_bin = require_binary(CHALLTESTSRV_BIN, "pebble")
        self.workdir.mkdir(parents=True, exist_ok=True)

        self._write_tls_files()
        self.listen_port = free_port()
        self.management_port = free_port()
        self.dns_port = free_port(udp=True)
        self.challtestsrv_management_port = free_port()
        if self.tls_port is None:
            self.tls_port = free_port()
        self._write_config()

        try:
            self._challtestsrv = spawn(
                [
                    challtestsrv_bin,
                    "-http01",
                    "",
                    "-https01",
                    "",
                    "-tlsalpn01",
                    "",
                    "-dns01",
                    f"{LOOPBACK}:{self.dns_port}",
                    "-management",
                    f"{LOOPBACK}:{self.challtestsrv_management_port}",
                    "-defaultIPv4",
                    LOOPBACK,
                    "-defaultIPv6",
                    "",
                ],
                self.challtestsrv_log_path,
            )
            # challtestsrv's DNS must be up before Pebble validates anything; its management
            # port opens last, after the DNS servers.
            wait_for_port(LOOPBACK, self.challtestsrv_management_port, 10, proc=self._challtestsrv)
            self._spawn_pebble(pebble_bin)
        except BaseException as exc:
            self.stop()
            raise ServerError(
                f"Pebble did not start: {exc}\n--- pebble.log ---\n{tail(self.log_path)}"
                f"\n--- challtestsrv.log ---\n{tail(self.challtestsrv_log_path)}"
            ) from exc
        return self

    def _spawn_pebble(self, pebble_bin: str) -> None:
        env = dict(os.environ)
        env.update(
            PEBBLE_VA_NOSLEEP="1",
            PEBBLE_WFE_NONCEREJECT=str(self.nonce_reject),
            PEBBLE_AUTHZREUSE=str(self.authz_reuse),
        )
        env.update(self.extra_env)
        self._pebble = spawn(
            [
                pebble_bin,
                "-config",
                str(self.config_path),
                "-dnsserver",
                self.dns_server or f"{LOOPBACK}:{self.dns_port}",
                "-strict=false",
            ],
            self.log_path,
            env=env,
            cwd=self.workdir,
        )
        self._wait_ready()

    def restart(self) -> None:
        """Stop Pebble and start it again on the same ports with the same listener
        certificate (challtestsrv keeps running). Pebble keeps everything in memory, so it
        forgets every account, order and certificate, and its issuing root changes."""
        if self._pebble is None:
            raise ServerError("Pebble is not running")
        stop_process(self._pebble)
        self._spawn_pebble(require_binary(PEBBLE_BIN, "pebble"))

    def stop(self) -> None:
        """Stop Pebble and challtestsrv by PID (SIGTERM, then SIGKILL after 5 s)."""
        stop_process(self._pebble)
        stop_process(self._challtestsrv)

    def __enter__(self) -> Pebble:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def pid(self) -> int | None:
        return self._pebble.pid if self._pebble else None

    # ---- what tests use ---------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"https://{LOOPBACK}:{self.listen_port}"

    @property
    def directory_url(self) -> str:
        return f"{self.base_url}/dir"

    @property
    def management_url(self) -> str:
        return f"https://{LOOPBACK}:{self.management_port}"

    def root_pem(self, index: int = 0) -> str:
        """PEM of Pebble's issuing root (GET <management>/roots/<index>); new at each start."""
        return self._management_get(f"/roots/{index}")

    def intermediate_pem(self, index: int = 0) -> str:
        """PEM of Pebble's intermediate (GET <management>/intermediates/<index>)."""
        return self._management_get(f"/intermediates/{index}")

    def log_text(self) -> str:
        """Pebble's log so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def order_count(self) -> int:
        """Number of orders Pebble *created* so far (its ``Added order "<id>"`` log lines).

        Requests refused before an order exists (badNonce, malformed, EAB...) are not counted;
        ``new_order_requests()`` counts every POST to the newOrder URL.
        """
        return len(ORDER_CREATED_LOG_RE.findall(self.log_text()))

    def issued_count(self) -> int:
        """Number of certificates issued (``Issued certificate serial ... for order`` lines)."""
        return len(ISSUED_LOG_RE.findall(self.log_text()))

    def new_order_requests(self) -> int:
        """Number of POSTs to the newOrder endpoint, including refused ones (bad nonces...)."""
        return len(NEW_ORDER_LOG_RE.findall(self.log_text()))

    # ---- challtestsrv management (mock DNS for dns-01 tests) ---------------------------------

    def _challtestsrv_post(self, path: str, body: dict[str, object]) -> None:
        url = f"http://{LOOPBACK}:{self.challtestsrv_management_port}{path}"
        resp = requests.post(url, json=body, timeout=5)
        resp.raise_for_status()

    def set_txt(self, host: str, value: str) -> None:
        """Serve ``TXT value`` for ``host`` (e.g. ``_acme-challenge.clinic.test``)."""
        self._challtestsrv_post("/set-txt", {"host": _fqdn(host), "value": value})

    def clear_txt(self, host: str) -> None:
        self._challtestsrv_post("/clear-txt", {"host": _fqdn(host)})

    def add_a(self, host: str, addresses: list[str]) -> None:
        """Answer ``A`` queries for ``host`` with ``addresses`` instead of 127.0.0.1."""
        self._challtestsrv_post("/add-a", {"host": _fqdn(host), "addresses": addresses})

    def clear_a(self, host: str) -> None:
        self._challtestsrv_post("/clear-a", {"host": _fqdn(host)})

    # ---- internals ---------------------------------------------------------------------------

    def _write_tls_files(self) -> None:
        ca = make_ca("Pebble listener test CA")
        leaf = make_leaf(ca, names=["localhost"], ips=["127.0.0.1"])
        Path(self.ca_bundle).write_bytes(ca.cert_pem)
        leaf.write(
            self.workdir / "pebble-listener-cert.pem", self.workdir / "pebble-listener-key.pem"
        )

    def _write_config(self) -> None:
        cfg: dict[str, object] = {
            "listenAddress": f"{LOOPBACK}:{self.listen_port}",
            "managementListenAddress": f"{LOOPBACK}:{self.management_port}",
            "certificate": str(self.workdir / "pebble-listener-cert.pem"),
            "privateKey": str(self.workdir / "pebble-listener-key.pem"),
            "httpPort": self.http_port,
            "tlsPort": self.tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": bool(self.eab_keys),
        }
        if self.eab_keys:
            cfg["externalAccountMACKeys"] = self.eab_keys
        if self.validity_seconds is not None:
            cfg["certificateValidityPeriod"] = int(self.validity_seconds)
        self.config_path.write_text(json.dumps({"pebble": cfg}, indent=2) + "\n")

    def _wait_ready(self, timeout: float = 15.0) -> None:
        """Poll the directory over HTTPS (no bare TCP probes: they leave TLS noise in the log)."""
        assert self._pebble is not None
        deadline = time.monotonic() + timeout
        delay = 0.01
        while True:
            if self._pebble.poll() is not None:
                raise ServerError(f"pebble exited with status {self._pebble.returncode}")
            try:
                resp = requests.get(self.directory_url, verify=self.ca_bundle, timeout=2)
                if resp.status_code == 200 and "newOrder" in resp.json():
                    resp = requests.get(
                        self.management_url + "/roots/0", verify=self.ca_bundle, timeout=2
                    )
                    if resp.status_code == 200:
                        return
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.directory_url} did not answer within {timeout}s")
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    def _management_get(self, path: str) -> str:
        resp = requests.get(self.management_url + path, verify=self.ca_bundle, timeout=5)
        resp.raise_for_status()
        return resp.text


def _fqdn(host: str) -> str:
    return host if host.endswith(".") else host + "."
