"""The resident daemon process stays small: the ACME stack, cryptography, YAML and asyncio live
only in its worker processes (service/worker.py), and a worker's messages can never make it
import them. A real daemon, in a subprocess, runs a site through a real worker."""

from __future__ import annotations

import io
import json
import os
import pickle
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from mamoru.service.worker import _PlainUnpickler, plain, read_frame, write_frame

SRC = Path(__file__).resolve().parents[2] / "src"
# Never in the resident process (each is megabytes, or pulls the ACME stack in).
HEAVY = ("cryptography", "acme", "josepy", "requests", "urllib3", "yaml", "asyncio",
         "mamoru.protocol", "mamoru.issuance", "mamoru.install", "mamoru.check",
         "mamoru.challenges", "mamoru.config.schema")

RESIDENT = textwrap.dedent("""
    import json, sys, time
    from mamoru.app import build_app
    from mamoru.service.daemon import Daemon
    from mamoru.service.worker import load_settings

    app = build_app(load_settings(sys.argv[1]), stderr=False)
    daemon = Daemon(app)
    daemon.start()
    deadline = time.monotonic() + 60
    while app.storage.load_state("clinic").attempts < 1:  # the worker's run failed
        assert time.monotonic() < deadline, "no attempt recorded within 60 s"
        time.sleep(0.05)
    daemon.stop()
    print(json.dumps({"modules": sorted(sys.modules), "workers": daemon.workers.started}))
""")


def test_the_resident_process_never_imports_the_acme_stack(tmp_path: Path) -> None:
    # A site due now at a CA that is not there: its run happens in a worker, which imports the
    # whole pipeline, fails to reach the CA and records the failure; the daemon reads it.
    config = tmp_path / "config.yaml"
    config.write_text(textwrap.dedent(f"""
        acme:
          directory: https://127.0.0.1:9/directory
          timeout: 2
        paths:
          state: {tmp_path}/state
          live: {tmp_path}/live
          event_log: {tmp_path}/events.jsonl
        sites:
          clinic:
            domains: [clinic.example]
            challenge: {{webroot: {tmp_path}/www}}
    """))
    config.chmod(0o600)
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    done = subprocess.run([sys.executable, "-c", RESIDENT, str(config)], capture_output=True,
                          text=True, timeout=120, env=env, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    loaded = [m for m in report["modules"] if m.split(".")[0] in HEAVY or m in HEAVY
              or any(m.startswith(h + ".") for h in HEAVY)]
    assert loaded == [], loaded
    assert report["workers"] == 1
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    failed = [e for e in events if e["kind"] == "failed"]
    assert failed and failed[0]["site"] == "clinic", events  # the worker's event, forwarded
    assert failed[0]["error_class"] != "RunLost"


def test_the_daemon_unpickles_plain_values_only() -> None:
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    stream = io.BytesIO()
    write_frame(stream, ("event", "renewed", "clinic", "text", plain({"at": when, "n": 1,
                                                                       "p": Path("/x")}),
                         when, -1))
    stream.seek(0)
    assert read_frame(stream, plain=True) == ("event", "renewed", "clinic", "text",
                                              {"at": when, "n": 1, "p": "/x"}, when, -1)
    hostile = pickle.dumps(("event", Path("/etc")))
    with pytest.raises(pickle.UnpicklingError):
        _PlainUnpickler(io.BytesIO(hostile)).load()


def test_a_torn_frame_reads_as_the_end() -> None:
    stream = io.BytesIO()
    write_frame(stream, ("done", "clinic", "done"))
    torn = io.BytesIO(stream.getvalue()[:-3])
    assert read_frame(torn) is None
    assert read_frame(io.BytesIO(b"")) is None


def test_a_worker_that_dies_before_a_site_orders_costs_it_one_attempt_with_backoff(
        tmp_path: Path) -> None:
    # A real Daemon and real storage; its worker is a process that kills itself at once, so
    # the site's run is lost before anything was ordered (no in-flight marker).
    from mamoru.app import build_app
    from mamoru.config import load_config_text
    from mamoru.observe.sinks import MemorySink
    from mamoru.service.daemon import Daemon

    settings = load_config_text(textwrap.dedent(f"""
        acme: {{directory: "https://127.0.0.1:9/directory"}}
        renewal: {{retry_first_seconds: 60}}
        paths: {{state: {tmp_path}/state, live: {tmp_path}/live,
                 event_log: {tmp_path}/events.jsonl}}
        sites:
          clinic: {{domains: [clinic.example], challenge: {{webroot: {tmp_path}/www}}}}
    """))
    memory = MemorySink()
    app = build_app(settings, sinks=[memory], stderr=False)
    daemon = Daemon(app)
    assert daemon.workers is not None
    daemon.workers.argv = [sys.executable, "-c",
                           "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"]
    daemon.start()
    try:
        deadline = time.monotonic() + 30
        while app.storage.load_state("clinic").attempts < 1:
            assert time.monotonic() < deadline, [e.kind for e in memory.events]
            time.sleep(0.02)
        time.sleep(0.2)  # the job reschedules after recording
        state = app.storage.load_state("clinic")
        assert state.attempts == 1 and state.in_flight is None
        assert state.last_attempt is not None
        assert state.last_attempt.error_class == "RunLost"
        assert "SIGKILL" in (state.last_attempt.message or "")
        assert state.next_attempt is not None
        wait = (state.next_attempt - datetime.now(UTC)).total_seconds()
        assert 30 < wait <= 60 * 1.1 + 1, wait  # the first retry's backoff (jittered)
        failed = [e for e in memory.events if e.kind == "failed"]
        assert [e.get("error_class") for e in failed] == ["RunLost"]
        assert [e.kind for e in memory.events].count("backoff") == 1
        assert daemon.jobs()["clinic"] == state.next_attempt  # planned from the state
        assert daemon.workers.started == 1  # the daemon did not try again meanwhile
    finally:
        daemon.stop()
