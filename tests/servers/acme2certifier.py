"""acme2certifier 0.46.3 (PyPI) as a local ACME CA with ARI and profiles, on loopback.

Usage::

    with Acme2Certifier(tmp_path, http_port=web.port) as a2c:
        directory = requests.get(a2c.directory_url).json()   # has renewalInfo, meta.profiles
        ... issue via http-01 served on web.port ...
        assert any(o["payload"].get("replaces") for o in a2c.orders())

What runs:

* acme2certifier's stock WSGI application (``acme2certifier.share.acme2certifier_wsgi``) in a
  subprocess (``a2c_serve.py``) on ``http://127.0.0.1:<free>`` — plain HTTP, threaded wsgiref —
  instead of its stock script that binds ``0.0.0.0:80``. Config: ``<workdir>/acme_srv.cfg``
  (passed with ``ACME_SRV_CONFIGFILE``; acme2certifier reads it once per process, so options
  are fixed per instance), sqlite DB ``<workdir>/acme_srv.db``.
* CA: ``openssl_ca_handler`` (pure Python) with a self-signed CA made here (``.ca_cert_pem``);
  leaf validity ``cert_validity_days`` (whole days: the handler has no finer unit);
  ``cn_enforce: True`` so a CSR without a CN still gets ``CN=<first SAN>`` (the stock ``False``
  yields an empty subject that strict verifiers reject).
* DNS: acme2certifier resolves identifiers with dnspython against ``dns_server_list``
  (``[DEFAULT]``) on port 53 and ignores /etc/hosts. A :class:`DnsStub` in this process
  answers ``A 127.0.0.1`` for every name on ``127.0.0.1:<dns_port>``; with the default
  ``dns_port=53`` this is exactly acme2certifier's stock path (we fail clearly if 53 is busy);
  ``dns_port=0`` picks a free port and patches the resolver's port inside the subprocess.
* http-01: acme2certifier always dials port 80; with ``http_port`` != 80 the subprocess wraps
  its URL builder (``helpers.network._http_url_host``) to dial ``127.0.0.1:<http_port>``,
  keeping ``Host: <identifier>`` without a port.

ARI: the directory has ``renewalInfo``. Windows come from ``[Renewalinfo]``:
``renewalthreshold_pctg`` (default 85: window starts at 85 % of the lifetime, ends at expiry),
``retry_after_timeout`` (the ``Retry-After`` header, seconds, default 86400) and
``renewal_force: True`` ("renew now": window start = now + 1 day - 365 days, end = now + 1 day;
a random point in it is in the past ~99.7 % of the time). For a window *wholly* in the past
use ``ari_window=(-7200, -3600)`` (seconds relative to each request; done by patching the
window builder in the subprocess). acme2certifier accepts ``replaces`` in new orders but does
not act on it; see ``orders()`` to assert what the client sent.

Profiles: ``[Order] profiles`` (JSON ``{name: description}``) appear as ``meta.profiles``; an
order's ``profile`` is checked against them (the chosen profile is not echoed in the order).

Logs: ``<workdir>/a2c.log`` (server), ``<workdir>/requests.jsonl`` (one JSON object per
request: method, path, status, protected, payload, location, response for errors).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import requests

from .dns_stub import DnsStub
from .ports import LOOPBACK, free_port
from .process import ServerError, spawn, stop_process, tail
from .tls import make_ca

SERVE_SCRIPT = Path(__file__).with_name("a2c_serve.py")

DEFAULT_PROFILES: dict[str, str] = {
    "classic": "Default profile (test CA)",
    "tlsserver": "Short-lived TLS server profile (test CA)",
    "shortlived": "Very short-lived profile (test CA)",
}


class Acme2Certifier:
    """acme2certifier + DNS stub as a context manager.

    Args:
        workdir: config, CA, DB and logs go here (created if missing).
        http_port: port a2c connects to on 127.0.0.1 for http-01 (80 = unpatched stock).
        dns_port: 53 (stock resolver path; must be free) or 0 (free port + resolver patch).
        profiles: ``meta.profiles``; None = ``DEFAULT_PROFILES``; ``{}`` = no profiles.
        renewal_force: ``[Renewalinfo] renewal_force`` (ARI "renew now", see module doc).
        ari_window: ``(start, end)`` seconds relative to now for every ARI answer (patch).
        ari_retry_after: ``[Renewalinfo] retry_after_timeout`` (seconds).
        renewal_threshold_pctg: ``[Renewalinfo] renewalthreshold_pctg``.
        cert_validity_days: leaf lifetime in days.
        cn_enforce: ``[CAhandler] cn_enforce``.
        tos_url: ``meta.termsOfService`` (the server also requires agreement and a contact,
            unless ``extra_config`` disables the checks).
        extra_config: ``{section: {key: value}}`` merged over the generated config.
        debug: acme2certifier debug logging (very verbose) in a2c.log.
    """

    def __init__(
        self,
        workdir: str | os.PathLike[str],
        *,
        http_port: int = 80,
        dns_port: int = 53,
        profiles: Mapping[str, str] | None = None,
        renewal_force: bool = False,
        ari_window: tuple[int, int] | None = None,
        ari_retry_after: int | None = None,
        renewal_threshold_pctg: float | None = None,
        cert_validity_days: int = 90,
        cn_enforce: bool = True,
        tos_url: str | None = "https://ca.test/terms",
        extra_config: Mapping[str, Mapping[str, Any]] | None = None,
        debug: bool = False,
    ) -> None:
        self.workdir = Path(workdir).absolute()
        self.http_port = int(http_port)
        self.dns_port = int(dns_port)
        self.profiles = dict(DEFAULT_PROFILES if profiles is None else profiles)
        self.renewal_force = renewal_force
        self.ari_window = ari_window
        self.ari_retry_after = ari_retry_after
        self.renewal_threshold_pctg = renewal_threshold_pctg
        self.cert_validity_days = int(cert_validity_days)
        self.cn_enforce = cn_enforce
        self.tos_url = tos_url
        self.extra_config = {k: dict(v) for k, v in (extra_config or {}).items()}
        self.debug = debug

        self.port: int | None = None
        self.config_path = self.workdir / "acme_srv.cfg"
        self.db_path = self.workdir / "acme_srv.db"
        self.ca_dir = self.workdir / "ca"
        self.ca_cert_path = self.ca_dir / "ca-cert.pem"
        self.ca_key_path = self.ca_dir / "ca-key.pem"
        self.log_path = self.workdir / "a2c.log"
        self.request_log_path = self.workdir / "requests.jsonl"
        self.ca_cert_pem: str = ""
        self.dns: DnsStub | None = None
        self._proc = None

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> Acme2Certifier:
        """Start the DNS stub and the WSGI subprocess; return when the directory answers."""
        if self._proc is not None:
            raise ServerError("acme2certifier already started")
        try:
            import acme2certifier  # noqa: F401
        except ImportError as exc:
            raise ServerError(
                "acme2certifier is not installed in this Python: pip install acme2certifier==0.46.3"
            ) from exc
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.ca_dir / "certs").mkdir(parents=True, exist_ok=True)
        self._make_ca()

        dns_port = self.dns_port if self.dns_port else free_port(udp=True)
        self.dns = DnsStub(dns_port)
        self.dns.start()  # raises a clear ServerError when the port is busy
        self.port = free_port()
        self._write_config()
        self.request_log_path.touch()

        env = dict(os.environ)
        env["ACME_SRV_CONFIGFILE"] = str(self.config_path)
        env["ACME2CERTIFIER_BASE_DIR"] = str(self.workdir)
        env.pop("ACME_SRV_DB_HANDLER", None)
        argv = [
            sys.executable,
            "-P",
            str(SERVE_SCRIPT),
            "--port",
            str(self.port),
            "--request-log",
            str(self.request_log_path),
            "--http01-port",
            str(self.http_port),
            "--dns-port",
            str(dns_port),
        ]
        if self.ari_window is not None:
            argv.append(f"--ari-window={int(self.ari_window[0])},{int(self.ari_window[1])}")
        try:
            self._proc = spawn(argv, self.log_path, env=env, cwd=self.workdir)
            self._wait_ready(timeout)
        except BaseException as exc:
            self.stop()
            raise ServerError(
                f"acme2certifier did not start: {exc}\n--- a2c.log ---\n{tail(self.log_path)}"
            ) from exc
        return self

    def stop(self) -> None:
        """Stop the WSGI subprocess by PID (SIGTERM, then SIGKILL) and the DNS stub."""
        stop_process(self._proc)
        if self.dns is not None:
            self.dns.stop()

    def __enter__(self) -> Acme2Certifier:
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
        return self._proc.pid if self._proc else None

    # ---- what tests use ---------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def directory_url(self) -> str:
        return f"{self.base_url}/directory"

    def directory(self) -> dict[str, Any]:
        resp = requests.get(self.directory_url, timeout=10)
        resp.raise_for_status()
        return resp.json()

    def requests(self) -> list[dict[str, Any]]:
        """Every request so far, oldest first (see module doc for the fields)."""
        try:
            lines = self.request_log_path.read_text().splitlines()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in lines if line.strip()]

    def orders(self) -> list[dict[str, Any]]:
        """newOrder requests so far (any status). Each record's ``payload`` is the decoded
        order (``identifiers``, ``profile``, ``replaces``...); ``status`` is the HTTP status
        (201 = created) and ``location`` the order URL when created."""
        return [
            r
            for r in self.requests()
            if r.get("method") == "POST" and str(r.get("path", "")).endswith("/neworders")
        ]

    def orders_with_replaces(self) -> list[dict[str, Any]]:
        return [
            o
            for o in self.orders()
            if isinstance(o.get("payload"), dict) and "replaces" in o["payload"]
        ]

    def renewal_info_requests(self) -> list[dict[str, Any]]:
        return [r for r in self.requests() if "/renewal-info" in str(r.get("path", ""))]

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # ---- internals ---------------------------------------------------------------------------

    def _make_ca(self) -> None:
        ca = make_ca("mamoru test acme2certifier CA", days=3650)
        ca.write(self.ca_cert_path, self.ca_key_path)
        self.ca_cert_pem = ca.cert_pem.decode()

    def _config_sections(self) -> dict[str, dict[str, str]]:
        ca = self.ca_dir
        cfg: dict[str, dict[str, str]] = {
            # dns_server_list belongs in DEFAULT (in [Challenge] it still works but warns).
            "DEFAULT": {"debug": str(self.debug), "dns_server_list": json.dumps([LOOPBACK])},
            "Helper": {"log_format": "%(asctime)s a2c %(levelname)s %(message)s"},
            "Nonce": {"nonce_check_disable": "False"},
            "CAhandler": {
                "handler_module": "acme2certifier.cahandlers.openssl_ca_handler",
                "issuing_ca_key": str(self.ca_key_path),
                "issuing_ca_cert": str(self.ca_cert_path),
                "issuing_ca_crl": str(ca / "crl.pem"),
                "cert_save_path": str(ca / "certs"),
                "cert_validity_days": str(self.cert_validity_days),
                "cn_enforce": str(self.cn_enforce),
                "ca_cert_chain_list": "[]",
            },
            "DBhandler": {"handler": "wsgi", "dbfile": str(self.db_path)},
            "Directory": {},
            "Challenge": {
                "challenge_validation_disable": "False",
                "challenge_validation_timeout": "10",
            },
            "Order": {"tnauthlist_support": "False"},
            "Renewalinfo": {"renewal_force": str(self.renewal_force)},
            "Certificate": {"revocation_reason_check_disable": "False"},
        }
        if self.tos_url:
            cfg["Directory"]["tos_url"] = self.tos_url
        if self.profiles:
            cfg["Order"]["profiles"] = json.dumps(self.profiles)
        if self.ari_retry_after is not None:
            cfg["Renewalinfo"]["retry_after_timeout"] = str(int(self.ari_retry_after))
        if self.renewal_threshold_pctg is not None:
            cfg["Renewalinfo"]["renewalthreshold_pctg"] = str(self.renewal_threshold_pctg)
        for section, values in self.extra_config.items():
            cfg.setdefault(section, {}).update({k: str(v) for k, v in values.items()})
        return cfg

    def _write_config(self) -> None:
        out = ["# generated by tests/servers/acme2certifier.py"]
        for section, values in self._config_sections().items():
            out.append(f"\n[{section}]")
            out += [f"{k}: {v}" for k, v in values.items()]
        self.config_path.write_text("\n".join(out) + "\n")

    def _wait_ready(self, timeout: float) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        delay = 0.02
        while True:
            if self._proc.poll() is not None:
                raise ServerError(f"a2c_serve exited with status {self._proc.returncode}")
            try:
                resp = requests.get(self.directory_url, timeout=5)
                if resp.status_code == 200 and "newOrder" in resp.json():
                    return
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.directory_url} did not answer within {timeout}s")
            time.sleep(delay)
            delay = min(delay * 2, 0.2)
