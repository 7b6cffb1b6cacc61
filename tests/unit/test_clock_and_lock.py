"""Issue-12 defect 10: the clock comes from one place (the App's), and waiting for a site lock
does not spin."""

from __future__ import annotations

import resource
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from tests.servers.tls import make_ca, make_leaf

from mamoru.app import build_app
from mamoru.config.model import AcmeSettings, Paths, Settings, Site
from mamoru.errors import LockBusy
from mamoru.storage import FileStorage

FAKE_NOW = datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)


def settings(tmp_path: Path) -> Settings:
    return Settings(config_file=str(tmp_path / "c.yaml"),
                    acme=AcmeSettings("https://ca.test/directory"),
                    paths=Paths(str(tmp_path / "state"), str(tmp_path / "live"),
                                str(tmp_path / "events.jsonl")),
                    sites=(Site("clinic", ("clinic.example",)),))


def test_the_apps_clock_stamps_events_and_stored_versions(tmp_path: Path) -> None:
    app = build_app(settings(tmp_path), stderr=False, observers=False, clock=lambda: FAKE_NOW)
    try:
        assert app.clock() == FAKE_NOW
        event = app.events.emit("warning", "clinic", "a test event")
        assert event.time == FAKE_NOW
        ca = make_ca("clock test", days=30)
        leaf = make_leaf(ca, names=["clinic.example"], ips=[])
        from cryptography.hazmat.primitives.serialization import Encoding

        chain = leaf.cert.public_bytes(Encoding.PEM) + ca.cert_pem
        version = app.storage.store("clinic", leaf.key_pem, chain, {"key": "ec-p256"})
        assert version.meta["stored_at"] == FAKE_NOW.isoformat()
        assert (tmp_path / "events.jsonl").read_text().count("2031-05-06T07:08:09") == 1
    finally:
        app.events.close()


def _voluntary_switches() -> int:
    return resource.getrusage(resource.RUSAGE_THREAD).ru_nvcsw


def _polling_wait(seconds: float) -> int:
    """The wake-ups of a 50 ms polling wait of `seconds` on this machine, now (the baseline a
    spinning lock wait would show, measured under the same load)."""
    before = _voluntary_switches()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.05)
    return _voluntary_switches() - before


def test_waiting_for_a_lock_sleeps_instead_of_polling(tmp_path: Path) -> None:
    storage = FileStorage(str(tmp_path / "state"), str(tmp_path / "live"))
    holder = storage.lock("clinic")
    release_after = 2.0
    threading.Timer(release_after, holder.close).start()
    before = _voluntary_switches()
    started = time.monotonic()
    with storage.lock("clinic", timeout=30):
        waited = time.monotonic() - started
    switches = _voluntary_switches() - before
    assert waited >= release_after * 0.9
    polling = _polling_wait(release_after)
    # A poll every 50 ms wakes the thread about 40 times in two seconds; a real wait, a few
    # times at most, whatever else the machine is doing.
    assert polling >= 20
    assert switches * 4 <= polling, f"{switches} wake-ups waiting, {polling} when polling"


def test_a_lock_wait_that_times_out_leaves_the_lock_usable(tmp_path: Path) -> None:
    storage = FileStorage(str(tmp_path / "state"), str(tmp_path / "live"))
    holder = storage.lock("clinic")
    with pytest.raises(LockBusy):
        storage.lock("clinic", timeout=0.2)
    holder.close()
    # the abandoned waiter may take the lock for a moment after the holder lets go; it must
    # let go at once, so a new run gets it
    with storage.lock("clinic", timeout=5):
        pass
    with storage.lock("clinic", timeout=0), pytest.raises(LockBusy):  # it still excludes
        storage.lock("clinic", timeout=0)
