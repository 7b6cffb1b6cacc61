"""The fleet outbox on disk (mamoru.observe.outbox) and the `fleet:` config section: ordered,
durable across a writer killed mid-line, bounded, acknowledged by sequence number."""

from __future__ import annotations

import json
import os
import socket
import textwrap
from pathlib import Path

import pytest

from mamoru.config import load_config_text
from mamoru.errors import ConfigError
from mamoru.observe.outbox import Outbox

BASE = """\
acme: {directory: "https://ca.example/dir", contact: "a@clinic.example"}
paths: {state: /var/lib/mamoru-test}
sites: {www: {domains: [www.clinic.example], challenge: {webroot: /var/www/html}}}
"""


def records(n: int, start: int = 0) -> list[dict[str, object]]:
    return [{"time": "2026-12-01T00:00:00Z", "kind": "renewed", "site": "www",
             "body": {"message": f"event {i}"}} for i in range(start, start + n)]


def test_records_get_ids_and_sequence_numbers_in_order(tmp_path: Path) -> None:
    box = Outbox(str(tmp_path))
    box.append(records(3))
    box.append(records(2, 3))
    pending = box.pending(10)
    assert [r["seq"] for r in pending] == [1, 2, 3, 4, 5]
    assert [r["body"]["message"] for r in pending] == [f"event {i}" for i in range(5)]
    assert len({r["id"] for r in pending}) == 5
    assert os.stat(box.data).st_mode & 0o777 == 0o600


def test_acknowledged_records_are_not_sent_again_and_a_sent_file_starts_afresh(
        tmp_path: Path) -> None:
    box = Outbox(str(tmp_path))
    box.append(records(5))
    box.ack(3)
    assert [r["seq"] for r in box.pending(10)] == [4, 5]
    assert box.lag()["waiting"] == 2
    box.ack(5, last_sent="now")
    assert box.pending(10) == [] and os.path.getsize(box.data) == 0
    box.append(records(1))
    assert [r["seq"] for r in box.pending(10)] == [6]  # numbering goes on


def test_a_torn_last_line_from_a_killed_writer_is_cut_off(tmp_path: Path) -> None:
    box = Outbox(str(tmp_path))
    box.append(records(2))
    with open(box.data, "ab") as handle:  # kill -9 in the middle of a write(2)
        handle.write(b'{"id": "x", "seq": 3, "kind": "ren')
    assert [r["seq"] for r in box.pending(10)] == [1, 2]
    box.append(records(1, 2))
    assert [r["seq"] for r in box.pending(10)] == [1, 2, 3]
    for line in Path(box.data).read_bytes().splitlines():
        json.loads(line)


def test_the_outbox_is_bounded_dropping_sent_then_the_oldest_unsent(tmp_path: Path) -> None:
    box = Outbox(str(tmp_path), max_bytes=64 * 1024)
    for i in range(1000):
        box.append(records(1, i))
    assert os.path.getsize(box.data) <= 64 * 1024
    lag = box.lag()
    assert lag["dropped"] > 0 and lag["waiting"] + lag["dropped"] == 1000
    pending = box.pending(1000)
    assert pending[-1]["body"]["message"] == "event 999"  # the newest are kept
    seqs = [r["seq"] for r in pending]
    assert seqs == sorted(seqs) and seqs[0] == lag["acked"] + 1


def test_fleet_config_reads_the_token_file_and_defaults_clinic_to_the_host_name(
        tmp_path: Path) -> None:
    token = tmp_path / "fleet.token"
    token.write_text("mamoru-fleet-abc\n")
    token.chmod(0o600)
    settings = load_config_text(BASE + textwrap.dedent(f"""\
        fleet:
          url: "https://vendor.example:8443/"
          token_file: {token}
          ca_bundle: /etc/mamoru/vendor-ca.pem
        """))
    fleet = settings.fleet
    assert fleet is not None
    assert fleet.url == "https://vendor.example:8443" and fleet.token.reveal() == \
        "mamoru-fleet-abc"
    assert fleet.clinic == socket.gethostname().split(".")[0]
    assert fleet.outbox == "/var/lib/mamoru-test/fleet-outbox"
    assert fleet.ca_bundle == "/etc/mamoru/vendor-ca.pem"
    assert "abc" not in repr(fleet)
    assert load_config_text(BASE).fleet is None


@pytest.mark.parametrize(("section", "problem"), [
    ('fleet: {url: "http://vendor.example", token: t}', "https://"),
    ('fleet: {url: "https://vendor.example"}', "fleet.token_file"),
    ('fleet: {url: "https://vendor.example", token: t, clinic: "a b"}', "clinic name"),
    ('fleet: {url: "https://vendor.example", token: t, urll: x}', "unknown key"),
])
def test_fleet_config_problems_are_named(section: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        load_config_text(BASE + section + "\n")
