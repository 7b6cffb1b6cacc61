"""Issue-12 defect 4: a web server that is down is not one serving another certificate.
mamoru reports it (a failure with backoff and alerts) and never reloads it — a reload would
start a stopped Apache (`apachectl -k graceful`) behind the administrator's back. A renewal
while it is down puts the new files in place, so the server serves them when it starts.
Real nginx and Apache, real Pebble."""

from __future__ import annotations

import json
import socket

import pytest

from tests.e2e.test_install_servers import NAMES, Clinic, clinic, serves  # noqa: F401
from tests.helpers import provision_json, run_mamoru

pytestmark = pytest.mark.e2e


def accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def events(machine: Clinic) -> list[dict[str, object]]:
    lines = (machine.tmp / "log" / "events.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_a_stopped_server_is_reported_never_reloaded_and_gets_the_new_files(
        clinic: Clinic) -> None:  # noqa: F811 - the fixture imported above
    config = clinic.config()
    first = provision_json("-c", str(config))["sites"][0]
    assert first["status"] == "issued" and serves(clinic, first["serial"])

    clinic.server.stop()
    assert not accepts(clinic.https) and not accepts(clinic.http)
    before = len(events(clinic))

    # A check while it is down: reported, with backoff; nothing reinstalled or reloaded.
    down = run_mamoru("provision", "--json", "-c", str(config), check=1)
    failed = json.loads(down.stdout)["sites"][0]
    assert failed["status"] == "failed"
    assert failed["error"]["class"] == "ServerUnreachable", failed
    assert "does not answer" in failed["error"]["message"]
    assert "next_due" in failed  # a retry is planned
    kinds = [e["kind"] for e in events(clinic)[before:]]
    assert "reloaded" not in kinds and "installed" not in kinds
    assert not accepts(clinic.https)  # still down: mamoru started nothing

    # A forced renewal while it is down: the new certificate goes live on disk, no reload.
    # (Port 80 is free while the server is down, so mamoru answers http-01 by itself.)
    import yaml

    data = yaml.safe_load(config.read_text())
    data["sites"]["clinic"]["challenge"] = {"standalone": f"127.0.0.1:{clinic.http}"}
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    renewed = provision_json("-c", str(config), "--force")["sites"][0]
    assert renewed["status"] == "renewed"
    kinds = [e["kind"] for e in events(clinic)[before:]]
    assert "server-unreachable" in kinds and "reloaded" not in kinds
    assert not accepts(clinic.https) and not accepts(clinic.http)  # Apache was not started

    # The administrator starts it: it serves the new certificate at once.
    clinic.server.start()
    assert serves(clinic, renewed["serial"])
    again = provision_json("-c", str(config))["sites"][0]
    assert again["status"] == "skipped"  # served, good, and no longer failing
    state = json.loads((clinic.tmp / "state" / "sites" / "clinic" / "state.json").read_text())
    assert state["attempts"] == 0
