"""The web server side fails: the reload command fails or hangs, the certificate served after
the reload is not ours. Each time the install transaction must roll back (live/ link and the
generated config as before), the old certificate must stay served, nothing may be left
running, and a person must hear about it (the alert). Real nginx, real Pebble.

(A server config that is broken already, or that rejects mamoru's generated file, is never
reloaded: tests/e2e/test_install_servers.py::test_broken_config_is_never_reloaded_and_a_failed_
reload_rolls_back and tests/integration/test_install_servers.py::test_generated_config_
rejected_by_the_server_names_it, for nginx and Apache.)
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import run_mamoru, write_config
from tests.reliability.checks import check_live
from tests.reliability.conftest import read_events, read_state, served_serial, standalone_site
from tests.servers.nginx import Nginx
from tests.servers.pebble import Pebble
from tests.servers.ports import free_port
from tests.servers.process import pid_alive
from tests.servers.receivers import WebhookReceiver
from tests.servers.tls import make_ca, make_leaf

pytestmark = pytest.mark.e2e

NAMES = ["clinic.example", "www.clinic.example"]


@dataclass
class Site:
    tmp: Path
    pebble: Pebble
    nginx: Nginx
    https: int
    http: int
    docroot: Path

    def config(self, *, extra: dict[str, Any] | None = None, **server: Any) -> Path:
        settings = {"type": "nginx", "mode": "site", "conf_dir": str(self.nginx.conf_dir),
                    "listen": {"https": f"127.0.0.1:{self.https}",
                               "http": f"127.0.0.1:{self.http}"},
                    "root": str(self.docroot), "test": list(self.nginx.test_argv),
                    "reload": list(self.nginx.reload_argv), "verify_timeout": 3,
                    "command_timeout": 5, **server}
        return write_config(self.tmp, self.pebble.directory_url, self.pebble.ca_bundle, {
            "clinic": standalone_site(NAMES, self.pebble.http_port, server=settings)},
            extra={"check": {"after_install": False}, **(extra or {})})

    def generated(self) -> bytes:
        return (self.nginx.conf_dir / "mamoru-clinic.conf").read_bytes()

    def live_version(self) -> str:
        return os.path.basename(os.readlink(self.tmp / "live" / "clinic"))


@pytest.fixture
def site(tmp_path: Path, pebble: Pebble, nginx_factory: Callable[..., Nginx]) -> Iterator[Site]:
    nginx = nginx_factory()
    https, http = free_port(), free_port()
    docroot = tmp_path / "www"
    docroot.mkdir()
    (docroot / "index.html").write_text("clinic\n")
    nginx.write_conf("000-default", f"server {{\n    listen 127.0.0.1:{http} default_server;\n"
                     "    location / { return 404; }\n}\n")
    nginx.start(wait_ports=(http,))
    yield Site(tmp_path, pebble, nginx, https, http, docroot)


def provision(config: Path, *args: str, check: int) -> dict[str, Any]:
    result = run_mamoru("provision", "--json", "-c", str(config), *args, check=check,
                        timeout=120)
    assert "Traceback" not in result.stderr, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)["sites"][0]
    return data


@pytest.mark.parametrize("fault", ["fails", "hangs"])
def test_reload_that_fails_or_hangs_is_rolled_back(fault: str, site: Site) -> None:
    first = provision(site.config(), check=0)
    assert first["status"] == "issued", first
    assert served_serial(site.https, NAMES[0]) == first["serial"]
    version, generated = site.live_version(), site.generated()

    pids = site.tmp / "reload-pids"
    script = ("import os, sys, time\n"
              f"open({str(pids)!r}, 'a').write(f'{{os.getpid()}}\\n')\n"
              + ("sys.stderr.write('reload refused: maintenance window\\n'); sys.exit(1)\n"
                 if fault == "fails" else "time.sleep(600)\n"))
    config = site.config(reload=[sys.executable, "-c", script], command_timeout=1)
    started = time.monotonic()
    failed = provision(config, "--force", check=1)
    took = time.monotonic() - started
    error = failed["error"]
    assert error["class"] == "ReloadFailed", error
    if fault == "fails":
        assert "reload refused: maintenance window" in error["message"]
    else:
        assert "did not finish within 1 s" in error["message"], error
        assert took < 20, took  # two 1-second timeouts (the reload, the reload after rollback)
    assert "put back" in error["hint"]

    # Rolled back: the same version is live, the generated file is byte for byte the old one,
    # nginx still serves the previous certificate.
    assert site.live_version() == version
    assert site.generated() == generated
    check_live(site.tmp / "live", "clinic")
    assert served_serial(site.https, NAMES[0]) == first["serial"]
    kinds = [e["kind"] for e in read_events(site.tmp)]
    failing_run = kinds[kinds.index("provisioned") + 1:]
    assert failing_run.index("config-test") < failing_run.index("rollback") \
        < failing_run.index("failed"), failing_run
    assert "reloaded" not in failing_run and "verified" not in failing_run
    state = read_state(site.tmp, "clinic")
    assert state["attempts"] == 1 and state["next_attempt"]
    # Nothing left running: every reload process mamoru started is gone.
    started_pids = [int(p) for p in pids.read_text().split()]
    assert len(started_pids) == 2  # the reload, and the reload again after the rollback
    assert not [pid for pid in started_pids if pid_alive(pid)]

    # The reload command is fixed: the next run completes and serves a new certificate.
    renewed = provision(site.config(), "--force", check=0)
    assert renewed["status"] == "renewed"
    assert served_serial(site.https, NAMES[0]) == renewed["serial"] != first["serial"]
    assert read_state(site.tmp, "clinic")["attempts"] == 0


def test_verify_mismatch_rolls_back_and_alerts(site: Site, tmp_path: Path,
                                               nginx_factory: Callable[..., Nginx]) -> None:
    first = provision(site.config(), check=0)
    assert served_serial(site.https, NAMES[0]) == first["serial"]
    version = site.live_version()

    # A TLS front end (a load balancer, say) that still serves an old certificate of its own:
    # after the reload, the address clients reach does not serve the new certificate.
    front = nginx_factory()
    front_port = free_port()
    old = make_leaf(make_ca("old front-end CA"), NAMES, ())
    old.write(tmp_path / "front.pem", tmp_path / "front.key")
    front.write_conf("front", f"server {{\n    listen 127.0.0.1:{front_port} ssl;\n"
                     f"    ssl_certificate {tmp_path / 'front.pem'};\n"
                     f"    ssl_certificate_key {tmp_path / 'front.key'};\n"
                     "    return 200;\n}\n")
    front.start(wait_ports=(front_port,))
    front_serial = served_serial(front_port, NAMES[0])

    with WebhookReceiver() as hook:
        config = site.config(verify=f"127.0.0.1:{front_port}", verify_timeout=1,
                             extra={"alerts": {"webhook": {"url": hook.url}}})
        failed = provision(config, "--force", check=1)
        alerts = hook.wait_for(1, timeout=15)
    error = failed["error"]
    assert error["class"] == "VerifyFailed", error
    assert sorted(error["names"]) == sorted(NAMES)
    assert "serve a certificate mamoru did not install" in error["message"], error
    assert front_serial in error["message"]
    # Rolled back, and the site itself still serves its previous certificate.
    assert site.live_version() == version
    assert served_serial(site.https, NAMES[0]) == first["serial"]
    # A person hears about it: one verify-failed alert naming the site and its names.
    payload = alerts[0].json
    assert payload["alert"] == "verify-failed", payload
    assert payload["site"] == "clinic"
    assert sorted(payload["names"]) == sorted(NAMES)
    assert len(hook.requests) == 1
