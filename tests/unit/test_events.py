"""Events and their sinks: scrubbing, fan-out, stderr/journald lines, the JSON-lines log under
concurrent writers from several processes (with rotation), and the sinks' on-disk state."""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mamoru.observe.events import Event, Events, scrub
from mamoru.observe.logquery import log_files
from mamoru.observe.sinks import JsonlSink, MemorySink, SinkState, StderrSink

KEY_PEM = ("-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIBfakefakefakefakefakefakefakefakefake\n"
           "-----END EC PRIVATE KEY-----\n")
TOKEN = "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0"


def test_scrub_removes_keys_tokens_and_secret_fields() -> None:
    dirty = {
        "message": f"oops {KEY_PEM} end",
        "detail": f"Fetching http://a.example/.well-known/acme-challenge/{TOKEN}: refused",
        "nested": [{"hmac_key": "c2VjcmV0", "ok": 1}, f"acme-challenge/{TOKEN}.thumbprintXYZ"],
        "password": "hunter2",
        "names": ["a.example"],
    }
    clean = scrub(dirty)
    text = json.dumps(clean)
    assert "PRIVATE KEY" not in text and "fakefake" not in text
    assert TOKEN not in text and "thumbprintXYZ" not in text
    assert "c2VjcmV0" not in text and "hunter2" not in text
    assert clean["detail"] == ("Fetching http://a.example/.well-known/acme-challenge/[token]: "
                               "refused")
    assert clean["nested"][0] == {"hmac_key": "[redacted]", "ok": 1}
    assert clean["names"] == ["a.example"]


def test_emit_scrubs_drops_none_and_survives_a_broken_sink() -> None:
    class Broken:
        def emit(self, event: Event) -> None:
            raise RuntimeError("sink bug")

    memory = MemorySink()
    when = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    events = Events([Broken(), memory], clock=lambda: when)
    event = events.emit("failed", "clinic", f"could not fetch acme-challenge/{TOKEN}",
                        error_class="ChallengeFailed", detail=None, attempt=2, level=None)
    assert memory.events == [event]
    assert event.time == when
    assert event.fields == {"error_class": "ChallengeFailed", "attempt": 2}
    assert TOKEN not in event.message
    as_json = event.to_json()
    assert list(as_json)[:5] == ["time", "kind", "level", "site", "message"]
    assert as_json["time"] == "2030-01-02T03:04:05Z"
    assert as_json["level"] == "error"


def test_explicit_level_overrides_the_kind() -> None:
    memory = MemorySink()
    Events([memory]).emit("check", "clinic", "browser check: problem", level=3)
    assert memory.events[0].priority == 3
    assert memory.events[0].to_json()["level"] == "error"
    Events([memory]).emit("due-check", "clinic", "not due")
    assert memory.events[1].to_json()["level"] == "info"


def test_stderr_lines_with_and_without_journald() -> None:
    plain, journal = io.StringIO(), io.StringIO()
    events = Events([StderrSink(plain, journald=False), StderrSink(journal, journald=True)])
    events.emit("failed", "clinic", "validation failed\nsecond line")
    events.emit("backoff", "clinic", "next attempt at 12:00")
    events.emit("renewed", "clinic", "done")
    events.emit("due-check", "clinic", "not due")
    events.emit("debugging", None, "noise", level=7)  # below the default threshold
    assert plain.getvalue().splitlines() == [
        "clinic: error: validation failed second line",
        "clinic: warning: next attempt at 12:00",
        "clinic: done",
        "clinic: not due",
    ]
    assert journal.getvalue().splitlines() == [
        "<3>clinic: validation failed second line",
        "<4>clinic: next attempt at 12:00",
        "<5>clinic: done",
        "<6>clinic: not due",
    ]


def test_journald_is_detected_only_on_the_journal_stream(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    with open(tmp_path / "stream", "w") as stream, open(tmp_path / "other", "w") as other:
        info = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{info.st_dev}:{info.st_ino}")
        assert StderrSink(stream).journald is True
        assert StderrSink(other).journald is False  # stderr redirected elsewhere
        monkeypatch.delenv("JOURNAL_STREAM")
        assert StderrSink(stream).journald is False


WRITER = textwrap.dedent("""
    import sys
    from mamoru.observe.events import Events
    from mamoru.observe.sinks import JsonlSink
    path, writer, count, max_bytes = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    events = Events([JsonlSink(path, max_bytes=max_bytes, keep=1000)])
    for index in range(count):
        events.emit("due-check", "site-" + writer, "x" * (index % 50), writer=writer, seq=index)
""")


def test_jsonl_many_processes_with_rotation_lose_and_tear_nothing(tmp_path: Path) -> None:
    path = tmp_path / "log" / "events.jsonl"
    writers, count, max_bytes = 4, 400, 16_000
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(w), str(count),
                               str(max_bytes)]) for w in range(writers)]
    assert [p.wait(timeout=120) for p in procs] == [0] * writers
    files = log_files(str(path))
    assert len(files) > 5  # it really rotated, many times
    seen: dict[str, list[int]] = {str(w): [] for w in range(writers)}
    for name in files:
        data = Path(name).read_bytes()
        assert len(data) <= max_bytes
        assert data.endswith(b"\n")
        for line in data.splitlines():
            event = json.loads(line)  # every line is whole
            seen[event["writer"]].append(event["seq"])
    for sequence in seen.values():
        assert sequence == list(range(count))  # none lost, none doubled, in order across files
    assert oct(os.stat(path).st_mode & 0o777) == "0o640"


def test_jsonl_keeps_only_keep_old_files(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    sink = JsonlSink(str(path), max_bytes=1000, keep=2)
    events = Events([sink])
    for index in range(100):
        events.emit("due-check", "clinic", f"event {index}", seq=index)
    assert sorted(os.listdir(tmp_path)) == ["events.jsonl", "events.jsonl.1", "events.jsonl.2"]
    sequences = [json.loads(line)["seq"] for name in log_files(str(path))
                 for line in Path(name).read_text().splitlines()]
    assert sequences == list(range(sequences[0], 100))  # the newest, contiguous, in order


def test_jsonl_unwritable_log_does_not_raise(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    sink = JsonlSink(str(blocker / "events.jsonl"))
    Events([sink]).emit("failed", "clinic", "boom")
    assert sink.failed is True


COUNTER = textwrap.dedent("""
    import sys
    from mamoru.observe.sinks import SinkState
    state = SinkState(sys.argv[1])
    for _ in range(int(sys.argv[2])):
        state.update(lambda data: data.__setitem__("n", data.get("n", 0) + 1))
""")


def test_sink_state_updates_from_processes_are_never_lost(tmp_path: Path) -> None:
    path = tmp_path / "state" / "counter.json"
    procs = [subprocess.Popen([sys.executable, "-c", COUNTER, str(path), "60"])
             for _ in range(4)]
    assert [p.wait(timeout=120) for p in procs] == [0] * 4
    assert SinkState(str(path)).read() == {"n": 240}
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"


def test_sinks_are_still_importable_from_events() -> None:
    """Emitters written against the old layout import the sinks from observe.events."""
    from mamoru.observe import events, sinks

    for name in ("JsonlSink", "StderrSink", "MemorySink", "SinkState"):
        assert getattr(events, name) is getattr(sinks, name)
    with pytest.raises(AttributeError):
        _ = events.NoSuchSink  # type: ignore[attr-defined]


def test_jsonl_keeps_its_descriptor_and_follows_a_rotation_or_removal(tmp_path: Path) -> None:
    """The descriptor stays open between events; a file renamed away (another process
    rotated it) or removed is noticed at the next event, which goes to a new file there."""
    path = tmp_path / "events.jsonl"
    sink = JsonlSink(str(path))
    events = Events([sink])
    events.emit("due-check", "clinic", "first", seq=1)
    fds = set(os.listdir("/proc/self/fd"))
    events.emit("due-check", "clinic", "second", seq=2)
    assert set(os.listdir("/proc/self/fd")) == fds  # no descriptor opened or closed
    os.rename(path, tmp_path / "events.jsonl.1")
    events.emit("due-check", "clinic", "third", seq=3)
    path.unlink()
    events.emit("due-check", "clinic", "fourth", seq=4)
    old = [json.loads(line)["seq"] for line in (tmp_path / "events.jsonl.1").read_text()
           .splitlines()]
    assert old == [1, 2]
    assert [json.loads(line)["seq"] for line in path.read_text().splitlines()] == [4]
    sink.close()
    assert len(set(os.listdir("/proc/self/fd"))) == len(fds) - 1
