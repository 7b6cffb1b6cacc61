"""http-01 from a webroot mamoru is the first to use, under `UMask=0077` (what `mamoru.service`
sets) and from a root shell with `umask 077`: a real nginx whose workers run as `www-data`
serves the answer, and a real Pebble validates through it.

Under umask 077 a plain `os.makedirs(mode=0o755)` makes `.well-known/acme-challenge` 0700:
the workers get 403 for the answer, the CA says unauthorized, and the site never renews.

pytest's temporary directories are 0700 (www-data cannot enter them), so the webroot lives in
a directory of its own under /tmp, made searchable (0711) and removed after the test.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import MAMORU, write_config
from tests.servers.nginx import Nginx
from tests.servers.pebble import Pebble

pytestmark = pytest.mark.e2e

UMASK = 0o077  # mamoru.service: UMask=0077
WWW_DATA = 33  # Debian's www-data uid
NAMES = ["clinic.example", "www.clinic.example"]


@dataclass
class Web:
    pebble: Pebble
    nginx: Nginx
    webroot: Path  # fresh: no .well-known yet
    config: Path
    events: Path


def http_status(port: int, path: str, host: str = "clinic.example") -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path, headers={"Host": host})
        return connection.getresponse().status
    finally:
        connection.close()


def worker_uids(nginx: Nginx) -> set[int]:
    uids = set()
    for pid in nginx.worker_pids():
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Uid:"):
                uids.add(int(line.split()[1]))  # the real uid
    return uids


def read_events(path: Path) -> list[dict[str, Any]]:
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    events = []
    for line in lines:
        try:
            events.append(json.loads(line))
        except ValueError:  # a line being written
            continue
    return events


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def open_base() -> Iterator[Path]:
    """A directory www-data can traverse (not list), removed after the test."""
    base = Path(tempfile.mkdtemp(prefix="mamoru-umask-", dir="/tmp"))
    try:
        base.chmod(0o711)
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def web(tmp_path: Path, open_base: Path, pebble_factory: Callable[..., Pebble],
        nginx_factory: Callable[..., Nginx]) -> Web:
    # 30-second certificates: the daemon renews at about half the lifetime.
    pebble = pebble_factory(validity_seconds=30)
    webroot = open_base / "www"
    webroot.mkdir()
    webroot.chmod(0o755)  # what a clinic's webroot is; mamoru makes everything below it
    nginx = nginx_factory(user="www-data")
    nginx.write_conf("000-default", f"server {{\n    listen 127.0.0.1:{pebble.http_port} "
                     f"default_server;\n    root {webroot};\n}}\n")
    nginx.start(wait_ports=(pebble.http_port,))
    assert worker_uids(nginx) == {WWW_DATA}, "nginx's workers do not run as www-data"
    # The control: a 0700 directory in this webroot is closed to the workers (this setup sees
    # the defect), and an open one is served.
    probe = webroot / "probe"
    probe.mkdir()
    (probe / "answer").write_text("ok")
    (probe / "answer").chmod(0o644)
    probe.chmod(0o700)
    assert http_status(pebble.http_port, "/probe/answer") == 403
    probe.chmod(0o755)
    assert http_status(pebble.http_port, "/probe/answer") == 200
    shutil.rmtree(probe)
    assert os.listdir(webroot) == []
    config = write_config(tmp_path, pebble.directory_url, pebble.ca_bundle, {
        "clinic": {"domains": NAMES, "challenge": {"webroot": str(webroot)}}})
    return Web(pebble, nginx, webroot, config, tmp_path / "log" / "events.jsonl")


def assert_answered_through_nginx(web: Web) -> None:
    """Every challenge fetch reached nginx's workers and got 200; mamoru's directories are
    0755 and its answers gone."""
    challenge = web.webroot / ".well-known" / "acme-challenge"
    assert mode(web.webroot / ".well-known") == 0o755
    assert mode(challenge) == 0o755
    assert os.listdir(challenge) == []  # cleaned up
    fetches = [line for line in web.nginx.access_log.read_text().splitlines()
               if "/.well-known/acme-challenge/" in line]
    assert fetches, "the CA never fetched a challenge through nginx"
    assert all('" 200 ' in line for line in fetches), fetches


def test_the_daemon_under_umask_0077_issues_and_renews_from_a_fresh_webroot(
        web: Web, tmp_path: Path) -> None:
    log = tmp_path / "mamoru-run.log"
    with open(log, "wb") as output:
        daemon = subprocess.Popen([*MAMORU, "run", "-c", str(web.config)],
                                  stdin=subprocess.DEVNULL, stdout=output, stderr=output,
                                  umask=UMASK, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            events = read_events(web.events)
            failed = [e for e in events if e["kind"] == "failed"]
            assert not failed, (f"{failed[0]['message']}\n"
                                f"{log.read_text(errors='replace')[-3000:]}")
            if any(e["kind"] == "renewed" for e in events):
                break
            assert daemon.poll() is None, log.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, (
                f"no renewal within 90 s: {[e['kind'] for e in events]}\n"
                f"{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.2)
        daemon.terminate()
        assert daemon.wait(20) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait(10)
    kinds = [e["kind"] for e in read_events(web.events)]
    assert "provisioned" in kinds and "renewed" in kinds, kinds
    # Issued, then renewed: two orders, both validated over http-01 through www-data's nginx.
    assert web.pebble.issued_count() >= 2
    assert_answered_through_nginx(web)
    # The state the daemon wrote stays private under its umask.
    assert mode(tmp_path / "state") == 0o700


def test_provision_from_a_umask_077_root_shell_uses_a_fresh_webroot(web: Web) -> None:
    result = subprocess.run([*MAMORU, "provision", "--json", "-c", str(web.config)],
                            capture_output=True, text=True, timeout=120, umask=UMASK)
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    summary = json.loads(result.stdout)
    assert summary["ok"] is True and summary["sites"][0]["status"] == "issued", summary
    assert "not searchable" not in result.stderr  # nothing to warn about: mamoru made them
    assert web.pebble.issued_count() == 1
    assert_answered_through_nginx(web)
